"""layerhub: a team's Docker image catalog and shared layer store."""

from __future__ import annotations
