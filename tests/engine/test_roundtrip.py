"""Property: base snapshot + diff of a copy-up upper directory = the changed tree, exactly.

Hypothesis draws a base tree and a sequence of container changes. The test keeps its own
model of the tree (a plain dict), writes the changes into an upper directory the way
overlayfs' copy-up records them (changed entries copied up with their parents, whiteouts for
deletions, an opaque directory where a directory was replaced), turns that upper directory
into a layer with ``diff_to_store``, unpacks the layer over the base snapshot and compares
the union view with the model: same paths, kinds, modes, contents and symlink targets.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerhub.engine.diff import diff_to_store
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.store import Store
from layerhub.engine.union import UnionView

if TYPE_CHECKING:
    from tests.engine.layerkit import Kit, Spec

# ("file", content, mode) | ("dir", mode) | ("symlink", target), by relative path
Node = tuple[object, ...]
Model = dict[str, Node]

NAMES = st.text(alphabet="abxyzé0_-", min_size=1, max_size=4)
FILE_MODES = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o444, 0o2711])
DIR_MODES = st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o2750])
TARGETS = st.sampled_from(["target", "../up", "/abs/path", "a/b/c", "é", ".", "x" * 120])
FILES = st.tuples(st.just("file"), st.binary(max_size=700), FILE_MODES)
LEAVES = st.one_of(FILES, st.tuples(st.just("symlink"), TARGETS))
TREES = st.recursive(
    LEAVES,
    lambda children: st.tuples(st.just("dir"), DIR_MODES, st.dictionaries(NAMES, children)),
    max_leaves=12,
)
OPS = ["add", "modify", "delete_leaf", "delete_dir", "dir_to_file", "file_to_dir", "recreate_dir"]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def flatten(children: dict[str, tuple[object, ...]], prefix: str = "") -> Model:
    out: Model = {}
    for name, node in children.items():
        path = join(prefix, name)
        if node[0] == "dir":
            out[path] = ("dir", node[1])
            out.update(flatten(node[2], path))  # type: ignore[arg-type]
        else:
            out[path] = node
    return out


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def kind(model: Model, path: str) -> object:
    node = model.get(path)
    return node[0] if node else None


def children(model: Model, directory: str) -> set[str]:
    prefix = directory + "/" if directory else ""
    return {p[len(prefix) :] for p in model if p.startswith(prefix) and "/" not in p[len(prefix) :]}


def remove_tree(model: Model, path: str, created: set[str]) -> None:
    for p in [p for p in model if under(p, path)]:
        del model[p]
    created.difference_update({p for p in created if under(p, path)})


def change(data: st.DataObject, model: Model, created: set[str]) -> None:
    """Apply one random container change to ``model``."""
    op = data.draw(st.sampled_from(OPS), label="op")
    dirs = sorted(p for p in model if kind(model, p) == "dir")
    files = sorted(p for p in model if kind(model, p) == "file")
    leaves = sorted(p for p in model if kind(model, p) != "dir")

    def new_children(directory: str) -> None:
        for name in data.draw(st.sets(NAMES, max_size=2), label="new children"):
            model[join(directory, name)] = data.draw(FILES, label="new child")

    if op == "add":
        parent = data.draw(st.sampled_from(["", *dirs]), label="parent")
        path = join(parent, data.draw(NAMES, label="name"))
        if path not in model:
            model[path] = data.draw(LEAVES, label="added")
    elif op == "modify" and files:
        model[data.draw(st.sampled_from(files), label="modified")] = data.draw(FILES)
    elif op == "delete_leaf" and leaves:
        remove_tree(model, data.draw(st.sampled_from(leaves), label="deleted"), created)
    elif op == "delete_dir" and dirs:
        remove_tree(model, data.draw(st.sampled_from(dirs), label="deleted dir"), created)
    elif op == "dir_to_file" and dirs:
        path = data.draw(st.sampled_from(dirs), label="dir to file")
        remove_tree(model, path, created)
        model[path] = data.draw(FILES)
    elif op == "file_to_dir" and leaves:
        path = data.draw(st.sampled_from(leaves), label="file to dir")
        model[path] = ("dir", data.draw(DIR_MODES))
        created.add(path)
        new_children(path)
    elif op == "recreate_dir" and dirs:
        path = data.draw(st.sampled_from(dirs), label="recreated dir")
        remove_tree(model, path, created)
        model[path] = ("dir", data.draw(DIR_MODES))
        created.add(path)
        new_children(path)


def write_upper(
    base: Model, final: Model, opaque: set[str], root: Path, kit: Kit, form: str
) -> None:
    """The upper directory a copy-up filesystem leaves after turning ``base`` into ``final``."""
    changed = {p for p in set(base) | set(final) if base.get(p) != final.get(p)} | opaque

    def write(path: str, node: Node) -> None:
        host = root / path
        if node[0] == "file":
            host.write_bytes(node[1])  # type: ignore[arg-type]
            host.chmod(node[2])  # type: ignore[arg-type]
        elif node[0] == "symlink":
            host.symlink_to(node[1])  # type: ignore[arg-type]
        else:
            host.mkdir()
            for name in sorted(children(final, path)):
                write(join(path, name), final[join(path, name)])
            host.chmod(node[1])  # type: ignore[arg-type]

    def merge(directory: str) -> None:
        for name in sorted(children(base, directory) | children(final, directory)):
            path = join(directory, name)
            b, f = base.get(path), final.get(path)
            if f is None:
                kit.make_whiteout(form, root / directory, name)
            elif b is None or b[0] != "dir" or f[0] != "dir":
                if b != f:
                    write(path, f)  # a non-directory, or a directory over a non-directory
            elif path in opaque:
                (root / path).mkdir()
                kit.make_opaque(form, root / path)
                for child in sorted(children(final, path)):
                    write(join(path, child), final[join(path, child)])
                (root / path).chmod(f[1])  # type: ignore[arg-type]
            elif any(under(p, path) for p in changed):
                (root / path).mkdir()  # copied up because something below it changed
                merge(path)
                (root / path).chmod(f[1])  # type: ignore[arg-type]

    root.mkdir()
    merge("")


def tar_entries(model: Model, kit: Kit) -> list[Spec]:
    specs = []
    for path in sorted(model, key=lambda p: p.split("/")):
        node = model[path]
        if node[0] == "dir":
            specs.append(kit.dir(path, mode=node[1]))  # type: ignore[arg-type]
        elif node[0] == "file":
            specs.append(kit.file(path, node[1], mode=node[2]))  # type: ignore[arg-type]
        else:
            specs.append(kit.symlink(path, node[1]))  # type: ignore[arg-type]
    return specs


def expected_view(model: Model) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for path, node in model.items():
        if node[0] == "file":
            out[path] = ("file", node[2], node[1])
        elif node[0] == "dir":
            out[path] = ("dir", node[1], None)
        else:
            out[path] = ("symlink", 0o777, node[1])
    return out


def actual_view(view: UnionView) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for entry in view.walk("/"):
        content: object = None
        if entry.kind == "file":
            content = view.read_bytes(entry.path)
        elif entry.kind == "symlink":
            content = view.readlink(entry.path)
        out[entry.path[1:]] = (entry.kind, stat.S_IMODE(entry.st.st_mode), content)
    return out


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base_tree=st.dictionaries(NAMES, TREES, min_size=1, max_size=5).map(flatten),
    tar_format=st.sampled_from(["pax", "gnu"]),
    data=st.data(),
)
def test_diff_over_base_equals_the_changed_tree(
    tmp_path: Path,
    kit: Kit,
    whiteout_form: str,
    base_tree: Model,
    tar_format: str,
    data: st.DataObject,
) -> None:
    final = dict(base_tree)
    created: set[str] = set()
    for _ in range(data.draw(st.integers(1, 8), label="changes")):
        change(data, final, created)
    # a directory made by the container where the base had one hides the base's children
    opaque = {p for p in created if kind(final, p) == "dir" and kind(base_tree, p) == "dir"}

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        store = Store(work / "store", whiteouts=whiteout_form)
        base_tar = kit.tar(tar_entries(base_tree, kit), tar_format)
        base_diff_id = sha256_bytes(base_tar)
        base = store.snapshots.unpack(
            base_diff_id, io.BytesIO(base_tar), diff_id=base_diff_id, durable=False
        )
        upper = work / "upper"
        write_upper(base_tree, final, opaque, upper, kit, whiteout_form)
        layer = diff_to_store(upper, store.whiteouts, store.blobs)
        chain = chain_ids([base_diff_id, layer.diff_id])[1]
        with store.blobs.open(layer.digest) as blob:
            top = store.snapshots.unpack(chain, blob, diff_id=layer.diff_id, durable=False)
        view = UnionView([base.path, top.path], store.whiteouts)
        assert actual_view(view) == expected_view(final)
    finally:
        shutil.rmtree(work)
