"""Installed packages read from an image's merged file tree, and each ecosystem's version order.

Parse only: nothing in the image is ever run. Every file is hostile, so reads are capped, bad
encodings are replaced, symlinks are resolved inside the image (through the union view, never on
the host), and a file that cannot be read is a note in the scan, never an exception.
"""

from __future__ import annotations

from .scan import ECOSYSTEMS, FoundPackage, PackageScan, scan_packages
from .versions import compare_versions, version_matches

__all__ = [
    "ECOSYSTEMS",
    "FoundPackage",
    "PackageScan",
    "compare_versions",
    "scan_packages",
    "version_matches",
]
