"""Digests, DiffIDs, ChainIDs and image IDs as the OCI image-spec defines them.

Every expected value is computed here with hashlib, following the spec's wording, never with
the engine's own helpers.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerhub.engine.digest import (
    CHUNK,
    Digester,
    chain_id,
    chain_ids,
    digest_hex,
    image_id,
    sha256_bytes,
    sha256_file,
    sha256_stream,
    short_id,
    validate_digest,
)
from layerhub.engine.errors import InvalidDigest
from layerhub.engine.store import Store
from tests.support.blobs import local_blobs


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def spec_chain_id(diff_ids: list[str]) -> str:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    current = diff_ids[0]
    for diff_id in diff_ids[1:]:
        current = sha((current + " " + diff_id).encode("ascii"))
    return current


digests = st.binary(max_size=64).map(sha)
DIFF_IDS = [sha(b"layer zero"), sha(b"layer one"), sha(b"layer two")]
GOOD = "sha256:" + "0123456789abcdef" * 4


def test_chain_id_of_a_single_layer_is_its_diff_id() -> None:
    assert chain_id([DIFF_IDS[0]]) == DIFF_IDS[0]
    assert chain_ids([DIFF_IDS[0]]) == [DIFF_IDS[0]]


def test_chain_id_follows_the_image_spec_step_by_step() -> None:
    l0, l1, l2 = DIFF_IDS
    c1 = "sha256:" + hashlib.sha256(f"{l0} {l1}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {l2}".encode()).hexdigest()
    assert chain_id([l0, l1]) == c1
    assert chain_id([l0, l1, l2]) == c2
    assert chain_ids([l0, l1, l2]) == [l0, c1, c2]


def test_chain_id_depends_on_order() -> None:
    a, b = DIFF_IDS[:2]
    assert chain_id([a, b]) != chain_id([b, a])
    # a stack is not the concatenation of its DiffIDs: the same layer twice is a new ChainID
    assert chain_id([a, a]) != a


@given(st.lists(digests, min_size=1, max_size=8))
def test_chain_ids_are_the_chain_ids_of_every_prefix(diff_ids: list[str]) -> None:
    expected = [spec_chain_id(diff_ids[: i + 1]) for i in range(len(diff_ids))]
    assert chain_ids(diff_ids) == expected
    assert chain_ids(iter(diff_ids)) == expected  # any iterable, consumed once
    assert chain_id(diff_ids) == expected[-1]


def test_chain_id_of_no_layers_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        chain_id([])
    assert chain_ids([]) == []


def test_image_id_is_the_digest_of_the_exact_config_bytes() -> None:
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}
    compact = json.dumps(config, separators=(",", ":")).encode()
    pretty = json.dumps(config, indent=2, sort_keys=True).encode()
    assert image_id(compact) == sha(compact)
    assert image_id(pretty) == sha(pretty)
    # the same JSON written differently is a different image: never re-serialized
    assert image_id(compact) != image_id(pretty)
    assert image_id(compact + b"\n") != image_id(compact)


def test_sha256_bytes_and_short_id() -> None:
    assert sha256_bytes(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert sha256_bytes(b"hello") == sha(b"hello")
    assert digest_hex(GOOD) == GOOD[7:]
    assert short_id(GOOD) == GOOD[7:19]


INVALID = [
    "",
    "sha256:",
    "sha256",
    GOOD[7:],  # hex without algorithm
    GOOD[:-1],  # 63 hex digits
    GOOD + "0",  # 65 hex digits
    GOOD.upper(),
    "SHA256:" + GOOD[7:],
    "sha256:" + GOOD[7:].upper(),
    "sha256:" + "g" * 64,
    "sha512:" + "ab" * 64,
    "md5:" + "ab" * 16,
    " " + GOOD,
    GOOD + " ",
    GOOD + "\n",  # a digest becomes a file name: a trailing newline must not pass
    "sha256:" + "../" * 21 + "a",
    "sha256:/" + "a" * 63,
]


@pytest.mark.parametrize("bad", INVALID)
def test_invalid_digests_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        validate_digest(bad)
    with pytest.raises(InvalidDigest):
        digest_hex(bad)
    with pytest.raises(InvalidDigest):
        chain_id([bad])
    with pytest.raises(InvalidDigest):
        chain_id([GOOD, bad])
    with pytest.raises(InvalidDigest):
        chain_ids([GOOD, bad])


@pytest.mark.parametrize("bad", [None, b"sha256:" + b"0" * 64, 42])
def test_non_strings_are_invalid_digests(bad: object) -> None:
    with pytest.raises(InvalidDigest):
        validate_digest(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["sha256:" + "../" * 21 + "a", GOOD + "\n", GOOD.upper()])
def test_store_paths_refuse_invalid_digests(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "store", whiteouts="oci")
    for call in (
        lambda: local_blobs(store).path(bad),
        lambda: store.blobs.has(bad),
        lambda: store.blobs.writer(bad),
        lambda: store.snapshots.path(bad),
        lambda: store.snapshots.exists(bad),
        lambda: store.snapshots.unpack(bad, io.BytesIO(bytes(1024))),
    ):
        with pytest.raises(InvalidDigest):
            call()
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert list((tmp_path / "store" / "snapshots").iterdir()) == []


def test_validate_digest_returns_a_valid_digest_unchanged() -> None:
    assert validate_digest(GOOD) == GOOD


def test_streaming_digest_equals_hashlib_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK * 5 // 2 // 256) + b"tail"
    assert sha256_stream(io.BytesIO(data)) == (sha(data), len(data))
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == (sha(data), len(data))
    assert sha256_stream(io.BytesIO(b"")) == (sha(b""), 0)


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_digester_is_independent_of_chunking(chunks: list[bytes]) -> None:
    digester = Digester()
    for chunk in chunks:
        digester.update(chunk)
    whole = b"".join(chunks)
    assert digester.digest == sha(whole)
    assert digester.size == len(whole)
    digester2 = Digester()
    digester2.update(memoryview(whole))
    assert digester2.digest == digester.digest
