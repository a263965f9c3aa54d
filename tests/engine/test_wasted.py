"""Wasted space, counted exactly (pure: layers' records in, figures out)."""

from __future__ import annotations

import hashlib

from layerhub.engine.file_index import FileRecord
from layerhub.engine.wasted import (
    DELETED,
    HIDDEN,
    PARENT_DELETED,
    PARENT_REPLACED,
    REPLACED,
    WastedReport,
    wasted_space,
)


def d(path: str) -> FileRecord:
    return FileRecord(path, "d", 0o755)


def f(path: str, size: int, content: bytes = b"") -> FileRecord:
    digest = hashlib.sha256(content or path.encode() + bytes([size % 256])).digest()
    return FileRecord(path, "f", 0o644, size=size, sha256=digest)


def h(path: str, target: FileRecord) -> FileRecord:
    return FileRecord(path, "h", 0o644, size=target.size, sha256=target.sha256, link=target.path)


def w(path: str) -> FileRecord:
    return FileRecord(path, "w")


def o(path: str) -> FileRecord:
    return FileRecord(path, "o")


def check_balance(report: WastedReport) -> None:
    """Every copy is either visible (counted once per copy) or wasted."""
    visible = {
        (e.layer, e.record.link if e.record.kind == "h" else e.record.path): e.record.size
        for e in report.tree.values()
        if e.record.kind in ("f", "h")
    }
    assert report.kept == sum(visible.values())
    assert report.total == report.kept + report.wasted


def test_an_image_without_changes_wastes_nothing() -> None:
    report = wasted_space([[d("etc"), f("etc/a", 10)], [d("usr"), f("usr/b", 5)]])
    assert (report.total, report.wasted, report.efficiency) == (15, 0, 1.0)
    assert sorted(report.tree) == ["etc", "etc/a", "usr", "usr/b"]
    assert report.tree["usr/b"].layer == 1
    assert wasted_space([]).efficiency == 1.0


def test_a_file_added_and_removed_counts_once() -> None:
    report = wasted_space([[d("tmp"), f("tmp/big", 1000)], [d("tmp"), w("tmp/big")]])
    assert report.wasted == 1000
    assert [(c.path, c.size, c.added_by, c.removed_by, c.reason) for c in report.copies] == [
        ("tmp/big", 1000, 0, 1, DELETED)
    ]
    assert "tmp/big" not in report.tree
    assert report.efficiency == 0.0
    check_balance(report)


def test_a_file_replaced_twice_counts_each_superseded_copy_once() -> None:
    report = wasted_space(
        [[d("etc"), f("etc/conf", 100)], [d("etc"), f("etc/conf", 200)], [f("etc/conf", 300)]]
    )
    assert report.wasted == 300  # the copies of layers 0 and 1; the visible one is kept
    assert sorted((c.added_by, c.removed_by, c.size, c.reason) for c in report.copies) == [
        (0, 1, 100, REPLACED),
        (1, 2, 200, REPLACED),
    ]
    assert report.total == 600
    assert report.kept == 300
    assert report.efficiency == 0.5
    assert report.tree["etc/conf"].layer == 2
    assert [c.added_by for c in report.by_path()["etc/conf"]] == [0, 1]


def test_replacing_with_the_same_bytes_or_only_a_mode_change_still_wastes_the_copy() -> None:
    same = f("bin/tool", 50, b"x" * 50)
    chmod = FileRecord("bin/tool", "f", 0o755, size=50, sha256=same.sha256)
    report = wasted_space([[d("bin"), same], [chmod]])
    assert report.wasted == 50


def test_a_directory_removal_counts_every_file_under_it_once() -> None:
    # dive issue 684's case: files of two lower layers removed with their directory
    report = wasted_space(
        [
            [d("src"), d("src/a"), f("src/a/one", 10), f("src/two", 20)],
            [d("src"), d("src/b"), f("src/b/three", 30), f("src/two", 40)],
            [w("src")],
        ]
    )
    assert report.wasted == 100  # 10 + 20 + 30 + 40: every copy once, nothing twice
    reasons = {(c.path, c.added_by): c.reason for c in report.copies}
    assert reasons == {
        ("src/a/one", 0): PARENT_DELETED,
        ("src/two", 0): REPLACED,
        ("src/b/three", 1): PARENT_DELETED,
        ("src/two", 1): PARENT_DELETED,
    }
    assert not any(p.startswith("src") for p in report.tree)
    assert report.efficiency == 0.0
    check_balance(report)


def test_an_opaque_directory_hides_the_lower_files_not_its_own() -> None:
    report = wasted_space(
        [
            [
                d("var"),
                d("var/cache"),
                f("var/cache/old", 70),
                d("var/cache/sub"),
                f("var/cache/sub/x", 5),
            ],
            [d("var"), d("var/cache"), o("var/cache"), f("var/cache/new", 3)],
        ]
    )
    assert report.wasted == 75
    assert {c.reason for c in report.copies} == {HIDDEN}
    assert sorted(p for p in report.tree if p.startswith("var/cache/")) == ["var/cache/new"]
    assert report.children["var/cache"] == ["var/cache/new"]


def test_a_non_directory_where_a_directory_was_removes_what_was_under_it() -> None:
    report = wasted_space(
        [
            [d("opt"), d("opt/app"), f("opt/app/lib", 80)],
            [d("opt"), FileRecord("opt/app", "l", link="/x")],
        ]
    )
    assert [(c.path, c.reason) for c in report.copies] == [("opt/app/lib", PARENT_REPLACED)]
    assert report.tree["opt/app"].record.kind == "l"
    assert report.children["opt"] == ["opt/app"]
    assert "opt/app" not in report.children


def test_a_file_replaced_by_a_directory_is_wasted() -> None:
    report = wasted_space([[f("data", 9)], [d("data"), f("data/x", 1)]])
    assert [(c.path, c.reason) for c in report.copies] == [("data", REPLACED)]
    assert report.kept == 1


def test_a_layers_whiteouts_do_not_apply_to_its_own_files() -> None:
    # the layer deletes the lower copy and stores its own under the same name
    report = wasted_space(
        [
            [d("app"), f("app/x", 10), d("app/dir"), f("app/dir/y", 20)],
            [d("app"), w("app/x"), f("app/x", 11), w("app/dir"), d("app/dir"), f("app/dir/z", 1)],
        ]
    )
    assert report.wasted == 30
    assert report.tree["app/x"].layer == 1
    assert report.tree["app/dir/z"].layer == 1
    assert "app/dir/y" not in report.tree
    # and an opaque marker in the same layer keeps that layer's own children
    report = wasted_space([[d("c"), o("c"), f("c/own", 4)]])
    assert report.wasted == 0
    assert "c/own" in report.tree


def test_hardlinks_share_their_bytes() -> None:
    lib = f("usr/lib/libfoo.so.1", 1000)
    base = [d("usr"), d("usr/lib"), lib, h("usr/lib/libfoo.so", lib)]
    # the layer stores the content once
    assert wasted_space([base]).total == 1000
    # one name removed: the other still shows the bytes, nothing is wasted
    report = wasted_space([base, [d("usr"), d("usr/lib"), w("usr/lib/libfoo.so.1")]])
    assert (report.wasted, report.kept) == (0, 1000)
    assert report.tree["usr/lib/libfoo.so"].record.size == 1000
    # both names removed (in two layers): the copy is wasted once, when its last name goes
    report = wasted_space(
        [
            base,
            [d("usr"), d("usr/lib"), w("usr/lib/libfoo.so.1")],
            [d("usr"), d("usr/lib"), w("usr/lib/libfoo.so")],
        ]
    )
    assert report.wasted == 1000
    [copy] = report.copies
    assert (copy.path, copy.added_by, copy.removed_by, copy.links) == (lib.path, 0, 2, 2)
    check_balance(report)


def test_a_hardlink_to_a_file_its_layer_does_not_hold_is_a_copy_of_its_own() -> None:
    orphan = FileRecord("a", "h", 0o644, size=7, sha256=b"\0" * 32, link="elsewhere")
    report = wasted_space([[orphan], [w("a")]])
    assert (report.total, report.wasted) == (7, 7)


def test_a_whiteout_of_a_missing_path_and_a_deep_tree() -> None:
    deep = [d("/".join(["x"] * i)) for i in range(1, 3000)]
    deep.append(f("/".join(["x"] * 3000), 12))
    report = wasted_space([deep, [w("nothing"), w("x")]])
    assert report.wasted == 12
    assert report.tree == {}


def test_biggest_copies_come_first() -> None:
    report = wasted_space([[f("a", 1), f("b", 300), f("c", 20)], [w("a"), w("b"), w("c")]])
    assert [c.path for c in report.copies] == ["b", "c", "a"]
    assert report.layer_wasted == [321, 0]
    assert report.layer_totals == [321, 0]


def test_the_readmes_worked_example() -> None:
    report = wasted_space(
        [
            [d("etc"), f("etc/conf", 100), d("tmp"), f("tmp/big", 5000)],
            [d("etc"), f("etc/conf", 200), d("tmp"), w("tmp/big")],
            [d("etc"), f("etc/conf", 300)],
        ]
    )
    assert (report.total, report.wasted, report.kept) == (5600, 5300, 300)
    assert round(report.efficiency_percent, 1) == 5.4
