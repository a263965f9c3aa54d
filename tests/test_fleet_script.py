"""``make fleet`` (scripts/fleet.py): where the blobs go, and stopping a server that takes
its time on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from scripts import fleet, seaweedfs


def test_blobs_go_where_blobs_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seaweedfs, "weed_binary", lambda: "/usr/bin/weed")
    assert fleet.blobs_mode({}) == "seaweedfs"  # weed installed, nothing asked
    assert fleet.blobs_mode({"BLOBS": "local"}) == "local"
    assert fleet.blobs_mode({"LAYERHUB_BLOBS": "s3://b/p"}) == "s3"
    with pytest.raises(SystemExit, match="choose one"):
        fleet.blobs_mode({"BLOBS": "seaweedfs", "LAYERHUB_BLOBS": "s3://b/p"})
    with pytest.raises(SystemExit, match="BLOBS=s3 needs LAYERHUB_BLOBS"):
        fleet.blobs_mode({"BLOBS": "s3"})
    with pytest.raises(SystemExit, match="seaweedfs, s3 or local"):
        fleet.blobs_mode({"BLOBS": "minio"})
    monkeypatch.setattr(seaweedfs, "weed_binary", lambda: None)
    assert fleet.blobs_mode({}) == "local"


def test_each_host_has_a_store_of_its_own_with_an_object_store(tmp_path: Path) -> None:
    shared = fleet.host_env({"LAYERHUB_BLOBS": "s3://b/p"}, "host-2", tmp_path)
    assert shared["LAYERHUB_STORE"] == str(tmp_path / "host-2" / "store")
    assert "LAYERHUB_SNAPSHOTS" not in shared
    local = fleet.host_env({}, "host-2", tmp_path)
    assert local["LAYERHUB_STORE"] == str(tmp_path / "store")
    assert local["LAYERHUB_SNAPSHOTS"] == str(tmp_path / "host-2" / "snapshots")


def test_a_child_that_ignores_sigterm_is_killed_after_its_own_timeout() -> None:
    supervisor = fleet.dev.Supervisor({})
    supervisor.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], stop_timeout=0.5)
    time.sleep(0.3)  # let the shell set its trap
    (_name, proc), *_ = supervisor.children
    supervisor.stop_all()
    assert proc.poll() == -signal.SIGKILL  # ignored SIGTERM: killed


def test_a_server_removes_its_own_sockets_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another SeaweedFS running beside it (a second test run, a benchmark) keeps the sockets
    its master reaches its volume server through."""
    monkeypatch.setattr(seaweedfs, "SOCKETS", str(tmp_path / "seaweedfs-*.sock"))
    ours = seaweedfs.Ports(master=20001, volume=20002, filer=20003, s3=20004)
    names = {
        "seaweedfs-master-grpc-30001.sock": True,
        "seaweedfs-volume-grpc-30002.sock": True,
        "seaweedfs-filer-20003.sock": True,
        "seaweedfs-s3-20004.sock": True,
        "seaweedfs-volume-grpc-30012.sock": False,  # another server's
        "seaweedfs-s3-2000.sock": False,
    }
    for name in names:
        (tmp_path / name).touch()
    seaweedfs.remove_sockets(ours)
    assert {name for name in names if (tmp_path / name).exists()} == {
        name for name, own in names.items() if not own
    }
