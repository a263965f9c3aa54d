"""The union view merges layer directories as overlayfs does, in both whiteout forms.

The layers are written by hand (whiteouts as ``.wh.`` files or 0:0 character devices, opaque
directories as a marker file or the ``trusted.overlay.opaque`` xattr), bottom first.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from layerhub.engine.errors import InvalidPath, PathNotFound
from layerhub.engine.union import UnionView, split_path
from layerhub.engine.whiteouts import WhiteoutFormat

if TYPE_CHECKING:
    from tests.engine.layerkit import HandLayer, Kit


class Stack:
    """Layers made by hand under one directory, bottom first."""

    def __init__(self, root: Path, form: str, fmt: WhiteoutFormat, kit: Kit) -> None:
        self.root = root
        self.form = form
        self.fmt = fmt
        self.kit = kit
        self.layers: list[HandLayer] = []

    def layer(self) -> HandLayer:
        layer = self.kit.hand(self.root / f"L{len(self.layers)}", self.form)
        self.layers.append(layer)
        return layer

    def view(self) -> UnionView:
        return UnionView([layer.root for layer in self.layers], self.fmt)


@pytest.fixture
def stack(tmp_path: Path, whiteout_form: str, fmt: WhiteoutFormat, kit: Kit) -> Stack:
    return Stack(tmp_path / "layers", whiteout_form, fmt, kit)


def paths(view: UnionView, path: str = "/") -> list[str]:
    return [entry.path for entry in view.walk(path)]


def names(view: UnionView, path: str) -> list[str]:
    return [entry.path.rsplit("/", 1)[1] for entry in view.listdir(path)]


def test_top_layer_wins(stack: Stack) -> None:
    stack.layer().file("etc/hostname", b"lower").file("etc/motd", b"only below")
    stack.layer().file("etc/hostname", b"upper", mode=0o600)
    view = stack.view()
    assert view.read_bytes("/etc/hostname") == b"upper"
    entry = view.lstat("/etc/hostname")
    assert entry.layer == 1
    assert stat.S_IMODE(entry.st.st_mode) == 0o600
    assert entry.host_path == stack.layers[1].root / "etc/hostname"
    assert view.read_bytes("/etc/motd") == b"only below"
    assert view.lstat("/etc/motd").layer == 0
    assert names(view, "/etc") == ["hostname", "motd"]


def test_whiteout_hides_a_lower_file(stack: Stack) -> None:
    stack.layer().file("etc/passwd", b"root").file("etc/group", b"wheel")
    stack.layer().whiteout("etc/passwd")
    view = stack.view()
    assert not view.exists("/etc/passwd")
    assert view.lookup("/etc/passwd") is None
    with pytest.raises(PathNotFound):
        view.lstat("/etc/passwd")
    with pytest.raises(PathNotFound):
        view.read_bytes("/etc/passwd")
    assert names(view, "/etc") == ["group"]
    assert paths(view) == ["/etc", "/etc/group"]


def test_whiteout_hides_a_lower_directory_and_everything_in_it(stack: Stack) -> None:
    stack.layer().file("opt/app/bin/run", b"x").file("opt/keep", b"k")
    stack.layer().file("opt/app/lib/extra", b"y")
    stack.layer().whiteout("opt/app")
    view = stack.view()
    assert not view.exists("/opt/app")
    assert not view.exists("/opt/app/bin/run")
    assert not view.exists("/opt/app/lib")
    assert paths(view) == ["/opt", "/opt/keep"]


def test_whiteout_hides_only_what_lies_below(stack: Stack) -> None:
    stack.layer().file("a", b"first").file("d/old", b"old")
    stack.layer().whiteout("a").whiteout("d")
    stack.layer().file("a", b"again").file("d/new", b"new")
    view = stack.view()
    assert view.read_bytes("/a") == b"again"
    assert paths(view) == ["/a", "/d", "/d/new"]
    # a whiteout of something that never existed below is harmless and invisible
    stack.layer().whiteout("never-there")
    assert paths(stack.view()) == ["/a", "/d", "/d/new"]


def test_opaque_directory_hides_lower_children_but_keeps_its_own(stack: Stack) -> None:
    stack.layer().file("d/x", b"x").file("d/y", b"y").file("d/sub/z", b"z").file("other", b"o")
    stack.layer().opaque("d").file("d/mine", b"mine").file("d/y", b"new y")
    view = stack.view()
    assert names(view, "/d") == ["mine", "y"]
    assert view.read_bytes("/d/y") == b"new y"
    assert not view.exists("/d/x")
    assert not view.exists("/d/sub/z")
    assert paths(view) == ["/d", "/d/mine", "/d/y", "/other"]


def test_opaque_in_a_middle_layer(stack: Stack) -> None:
    stack.layer().file("d/bottom", b"")
    stack.layer().opaque("d").file("d/middle", b"")
    stack.layer().file("d/top", b"")
    view = stack.view()
    assert names(view, "/d") == ["middle", "top"]
    assert view.lookup("/d/bottom") is None


def test_opaque_markers_and_whiteouts_are_never_listed(stack: Stack) -> None:
    stack.layer().file("d/x", b"").file("d/y", b"")
    stack.layer().opaque("d").whiteout("d/y").file("d/z", b"")
    view = stack.view()
    assert names(view, "/d") == ["z"]
    assert paths(view) == ["/d", "/d/z"]


def test_markers_cannot_be_looked_up(stack: Stack) -> None:
    """What listdir does not show, lookup does not find: the view is one consistent tree."""
    stack.layer().file("d/x", b"").file("d/y", b"")
    stack.layer().opaque("d").whiteout("d/y").file("d/z", b"")
    view = stack.view()
    for marker in ["/d/.wh..wh..opq", "/d/.wh.y"]:
        assert view.lookup(marker) is None, marker
        assert not view.exists(marker), marker
        with pytest.raises(PathNotFound):
            view.read_bytes(marker)


def test_non_directory_over_a_directory_hides_the_whole_lower_directory(stack: Stack) -> None:
    stack.layer().file("d/x", b"x").file("l/y", b"y")
    stack.layer().file("d", b"now a file").symlink("l", "d")
    view = stack.view()
    assert view.lstat("/d").kind == "file"
    assert view.read_bytes("/d") == b"now a file"
    assert view.lstat("/l").kind == "symlink"
    assert view.lookup("/d/x") is None
    assert view.lookup("/l/y") is None
    with pytest.raises(InvalidPath):
        view.listdir("/d")
    assert paths(view) == ["/d", "/l"]


def test_directory_over_a_non_directory(stack: Stack) -> None:
    stack.layer().file("d", b"a file").symlink("s", "d")
    stack.layer().file("d/y", b"y").file("s/z", b"z")
    view = stack.view()
    assert view.lstat("/d").is_dir
    assert view.lstat("/s").is_dir
    assert names(view, "/d") == ["y"]
    assert paths(view) == ["/d", "/d/y", "/s", "/s/z"]


def test_a_non_directory_in_between_stops_the_merge(stack: Stack) -> None:
    stack.layer().file("d/bottom", b"")
    stack.layer().file("d", b"file in the middle")
    stack.layer().file("d/top", b"")
    view = stack.view()
    assert names(view, "/d") == ["top"]
    assert view.lookup("/d/bottom") is None


def test_a_directory_recreated_after_its_whiteout_in_the_same_layer(stack: Stack) -> None:
    stack.layer().file("d/old", b"old").file("d/sub/deep", b"deep")
    upper = stack.layer()
    if stack.form == "oci":
        # the tar's own form: a `.wh.d` marker next to the new `d/`
        upper.whiteout("d").file("d/new", b"new")
    else:
        # overlayfs cannot hold both at one name: the new directory is opaque instead
        upper.opaque("d").file("d/new", b"new")
    view = stack.view()
    assert names(view, "/d") == ["new"]
    assert view.lookup("/d/old") is None
    assert view.lookup("/d/sub/deep") is None
    assert paths(view) == ["/d", "/d/new"]


def test_layers_missing_a_directory_do_not_interrupt_the_merge(stack: Stack) -> None:
    stack.layer().file("a/x", b"")
    stack.layer().file("b", b"")
    stack.layer().file("a/y", b"")
    view = stack.view()
    assert names(view, "/a") == ["x", "y"]
    assert view.lstat("/a/x").layer == 0
    assert view.lstat("/a/y").layer == 2
    assert view.lstat("/a").layer == 2


def test_listdir_is_sorted(stack: Stack) -> None:
    stack.layer().file("d/zeta", b"").file("d/Beta", b"").file("d/é", b"")
    stack.layer().file("d/alpha", b"").file("d/_under", b"").file("d/10", b"").file("d/9", b"")
    view = stack.view()
    listed = names(view, "/d")
    assert listed == sorted(["zeta", "Beta", "é", "alpha", "_under", "10", "9"])
    assert listed == ["10", "9", "Beta", "_under", "alpha", "zeta", "é"]


def test_walk_is_pre_order_with_sorted_siblings(stack: Stack) -> None:
    stack.layer().file("b/y", b"").file("b/a/z", b"").file("a", b"").file("c/d/e", b"")
    stack.layer().file("b/a/y", b"").whiteout("c/d").file("b0", b"")
    view = stack.view()
    assert paths(view) == ["/a", "/b", "/b/a", "/b/a/y", "/b/a/z", "/b/y", "/b0", "/c"]
    assert paths(view, "/b") == ["/b/a", "/b/a/y", "/b/a/z", "/b/y"]
    assert paths(view, "/a") == []  # a file has nothing below it
    with pytest.raises(PathNotFound):
        list(view.walk("/c/d"))


def test_read_bytes_open_and_readlink(stack: Stack) -> None:
    stack.layer().file("f", b"contents").symlink("link", "/etc/absolute").dir("d")
    stack.layer().symlink("rel", "../up/there")
    view = stack.view()
    assert view.read_bytes("/f") == b"contents"
    with view.open("/f") as f:
        assert f.read(3) == b"con"
    assert view.readlink("/link") == "/etc/absolute"
    assert view.readlink("/rel") == "../up/there"
    with pytest.raises(InvalidPath):
        view.readlink("/f")
    with pytest.raises(InvalidPath):
        view.read_bytes("/d")
    with pytest.raises(InvalidPath):
        view.read_bytes("/link")  # symlinks are never followed
    with pytest.raises(PathNotFound):
        view.readlink("/nope")


def test_symlinks_are_not_followed_in_lookups(stack: Stack) -> None:
    stack.layer().file("usr/lib/libc.so", b"libc").symlink("lib", "usr/lib")
    view = stack.view()
    assert view.lookup("/lib/libc.so") is None
    assert view.lstat("/lib").kind == "symlink"
    assert view.read_bytes("/usr/lib/libc.so") == b"libc"


def test_paths_are_absolute_and_clean(stack: Stack) -> None:
    stack.layer().file("a/b", b"b")
    view = stack.view()
    assert view.read_bytes("//a//./b/") == b"b"
    assert view.lookup("/").is_dir  # type: ignore[union-attr]
    for bad in ["a/b", "", "/a/../a/b", "/..", "/a/b/..", "../a"]:
        with pytest.raises(InvalidPath):
            view.lookup(bad)
        with pytest.raises(InvalidPath):
            view.exists(bad)
    with pytest.raises(PathNotFound):
        view.lstat("/a/nope")
    with pytest.raises(PathNotFound):
        view.listdir("/nope")
    with pytest.raises(PathNotFound):
        list(view.walk("/nope"))
    with pytest.raises(PathNotFound):
        view.lstat("/a/b/c")  # below a file


def test_a_union_needs_a_layer(fmt: WhiteoutFormat) -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        UnionView([], fmt)


@pytest.mark.parametrize(
    ("path", "says"),
    [("etc/passwd", "absolute"), ("/etc/../passwd", "'..'"), ("/etc/pass\x00wd", "NUL byte")],
)
def test_bad_paths_say_what_is_wrong(path: str, says: str) -> None:
    with pytest.raises(InvalidPath, match=says):
        split_path(path)
