"""Which images contain a file: by path (exactly, under a prefix, or a glob) or by content.

Reads the layers' file indexes (FileEntry rows). A path is in an image when the image's FINAL
view has it, as a union filesystem stacks the layers: the provider of a path is the topmost
layer with an entry at it, unless a layer above that entry deletes it (a whiteout of the path
or of a parent directory, an opaque parent directory, or a parent directory replaced by a file
or a symlink). A file replaced by a later layer is provided by the later layer, and matches
only if the later copy still matches (a search by content finds the old copy no more).

Patterns, as a Docker user types them (a leading ``/`` is optional):
- ``/etc/os-release``: that path exactly;
- ``/usr/lib/``: every path under the directory (a trailing ``/`` makes a prefix);
- a glob, with ``*`` (any characters), ``?`` (one character) and ``[...]`` (one of;
  ``[!...]`` none of): ``*/libssl.so.3``, ``usr/lib/*/libcrypto*``. The last component is
  matched against a file's name (``*`` stays inside it), the directories before it as
  ``find -path`` does (``*`` spans any number of them: ``*/libssl.so.3`` is that name in
  any directory). A glob without any ``/`` matches names anywhere, as ``find -name`` does:
  ``libssl.so.*``.
- a content hash: ``sha256:<64 hex>`` or the bare hex.

SQL finds candidate entries through the indexes (a path, a path prefix, a name, a name
prefix, a hash; the glob's regular expression narrows them on the server), then one query
per batch of images reads what the layers above each candidate say about its path and its
parent directories, and the final view is decided here. Results are rows (image, path), the
newest images first, at most ``limit``.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.functions import Reverse
from django.db.models.lookups import StartsWith

from layerhub.core.permissions import named_by, restrict
from layerhub.engine.errors import LayerhubError
from layerhub.engine.file_index import CONTENT_KINDS, DIRECTORY, KINDS, OPAQUE, WHITEOUT
from layerhub.images.listing import familiar_repository, readable_tags
from layerhub.images.models import FileEntry, Image, ImageLayer, Layer

# a search answers at most this many (image, path) rows
SEARCH_LIMIT = 1000
# the longest pattern taken (Linux's PATH_MAX)
MAX_PATTERN = 4096
# wildcards in one glob (*, ? and [): enough for any real search, few enough for the server's
# regular expression engine
MAX_WILDCARDS = 32
# more candidate entries than this in the whole catalog (a broad prefix or glob): the images
# are walked newest first instead, each image's layers read a page of paths at a time
CANDIDATE_CAP = 20_000
# images decided per query of what the layers above say
IMAGE_BATCH = 200
# paths of one image read per query in the broad walk
PATH_PAGE = 2000

PATH, PREFIX, GLOB, SHA256 = "path", "prefix", "glob", "sha256"
_HEX = re.compile(r"[0-9a-f]{64}")
_GLOB_CHARS = "*?["
# what a layer may have at a parent directory's path that hides the layers below it (an
# IN list, not "<> 'd'", so the (path, kind) index finds only these rows)
HIDING_KINDS = sorted(KINDS - {DIRECTORY})
_ENTRY_COLUMNS = ("layer_id", "path", "kind", "mode", "uid", "gid", "size", "sha256", "link")


class InvalidFileQuery(LayerhubError):
    """A file search that cannot run: no pattern, a pattern too long or with a NUL byte, a
    glob it cannot read, a malformed sha256, or both a pattern and a hash."""


@dataclass(frozen=True)
class FileQuery:
    """A checked file search. ``text`` is the path or prefix without its leading ``/``, or
    the glob; ``digest`` the 32 bytes of a content search."""

    mode: str
    text: str = ""
    digest: bytes | None = None
    # a glob's regular expression (in the dialect PostgreSQL and Python share), and whether
    # it is matched against the name (a glob without "/") or the whole path
    regex: str = ""
    on_name: bool = False

    def describe(self) -> str:
        """The search as people read it."""
        if self.mode == SHA256:
            assert self.digest is not None
            return "sha256:" + self.digest.hex()
        return self.text if self.on_name else "/" + self.text


def _glob_regex(glob: str, *, across: bool) -> str:
    """``glob`` as a regular expression both PostgreSQL (``~``) and Python's ``re`` read the
    same way, unanchored; ``*`` spans ``/`` if ``across``, ``?`` and ``[...]`` never do."""
    out = []
    i = 0
    while i < len(glob):
        c = glob[i]
        i += 1
        if c == "*":
            while i < len(glob) and glob[i] == "*":
                i += 1
            out.append(".*" if across else "[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 1 if glob[i : i + 1] in ("!", "]") else i)
            if end < 0:
                out.append(re.escape(c))  # no closing bracket: a literal "[", as fnmatch does
                continue
            body = glob[i:end]
            i = end + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            if not body or any(ch in body for ch in "[\\"):
                raise InvalidFileQuery(
                    f"cannot read the bracket expression in {glob[:80]!r}: '[...]' takes "
                    "characters and ranges, without '[' or '\\' inside"
                )
            body = body.replace("^", r"\^")
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _path_regex(glob: str, on_name: bool) -> str:
    """The whole glob's expression: the directories part (``*`` spans directories), then
    the last component (matched against one name)."""
    directories, slash, name = glob.rpartition("/")
    name_regex = _glob_regex(name, across=False)
    if on_name:
        return f"(?s)^{name_regex}$"
    if not slash:
        return f"(?s)^{name_regex}$"
    return f"(?s)^{_glob_regex(directories, across=True)}/{name_regex}$"


def file_query(*, pattern: str | None = None, sha256: str | None = None) -> FileQuery:
    """Check a search (raises InvalidFileQuery with a message for a person): a path pattern
    or a content hash, not both."""
    pattern = (pattern or "").strip()
    sha256 = (sha256 or "").strip()
    if pattern and sha256:
        raise InvalidFileQuery("search by a path pattern or by a sha256, not both")
    if sha256:
        hex_digest = sha256.lower().removeprefix("sha256:")
        if not _HEX.fullmatch(hex_digest):
            raise InvalidFileQuery(
                f"not a sha256: {sha256[:80]!r} (64 hex digits, optionally after 'sha256:')"
            )
        return FileQuery(SHA256, digest=bytes.fromhex(hex_digest))
    if not pattern:
        raise InvalidFileQuery(
            "give a path (/etc/os-release), a prefix (/usr/lib/), a glob "
            "(*/libssl.so.3) or a sha256"
        )
    if len(pattern) > MAX_PATTERN:
        raise InvalidFileQuery(f"a pattern is at most {MAX_PATTERN} characters, not {len(pattern)}")
    if "\x00" in pattern:
        raise InvalidFileQuery("a pattern cannot hold a NUL byte")
    if any(c in pattern for c in _GLOB_CHARS):
        wildcards = sum(pattern.count(c) for c in _GLOB_CHARS)
        if wildcards > MAX_WILDCARDS:
            raise InvalidFileQuery(f"a glob has at most {MAX_WILDCARDS} wildcards, not {wildcards}")
        glob = pattern.lstrip("/")
        on_name = "/" not in pattern  # "libssl.so.*" is a name; "/e*" a path from the root
        if glob.endswith("/"):
            glob += "*"  # everything under what the glob names
        if not glob.strip("*"):
            raise InvalidFileQuery("a glob must hold more than '*': name part of the path")
        return FileQuery(GLOB, text=glob, regex=_path_regex(glob, on_name), on_name=on_name)
    text = pattern.lstrip("/")
    if not text:
        raise InvalidFileQuery("'/' is every file: give a path or a prefix below it")
    if "//" in text:
        raise InvalidFileQuery(f"not a path: {pattern[:80]!r} (an empty component)")
    return FileQuery(PREFIX if text.endswith("/") else PATH, text=text)


def _starts_with(column: str, prefix: str) -> Q:
    """``column`` starts with ``prefix``, through the column's index: PostgreSQL's LIKE is
    case-sensitive and uses the pattern index; SQLite's LIKE ignores case and its index, so
    there it is a range of the binary collation."""
    if connection.vendor == "postgresql":
        return Q(**{f"{column}__startswith": prefix})
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return Q(**{f"{column}__gte": prefix, f"{column}__lt": upper})


def _literal_suffix(glob: str) -> str:
    """What a glob ends with after its last wildcard."""
    end = len(glob)
    while end > 0 and glob[end - 1] not in "*?[]":
        end -= 1
    return glob[end:]


def _literal_prefix(glob: str) -> str:
    cut = min((i for i in (glob.find(c) for c in _GLOB_CHARS) if i >= 0), default=len(glob))
    return glob[:cut]


def _condition(query: FileQuery, *, markers: bool = False) -> Q:
    """The SQL filter of the candidate entries: what the indexes can find, and for a glob
    its regular expression (a candidate is checked again here, in ``_matches``). With
    ``markers``, a path search also takes the whiteouts and opaque markers at the paths."""
    if query.mode == SHA256:
        return Q(sha256=query.digest, kind__in=sorted(CONTENT_KINDS))
    live = Q() if markers else ~Q(kind__in=[WHITEOUT, OPAQUE])
    if query.mode == PATH:
        return Q(path=query.text) & live
    if query.mode == PREFIX:
        return _starts_with("path", query.text) & live
    glob = query.text
    name = glob.rpartition("/")[2]
    name_literal = _literal_prefix(name)
    name_suffix = _literal_suffix(name)
    if name_literal == name:
        condition = Q(name=name)
    elif name_literal:
        condition = _starts_with("name", name_literal)
    elif name_suffix and connection.vendor == "postgresql":
        # "*.so.3": the name's end, through the index of reversed names (migration 0013)
        condition = Q(StartsWith(Reverse("name"), name_suffix[::-1]))
    else:
        condition = Q()
    # PostgreSQL's regular expressions never backtrack without bound; SQLite's REGEXP is
    # Python's, which may on a hostile name: there the candidates are matched here only
    server_regex = connection.vendor == "postgresql"
    if query.on_name:
        if name_literal != name and server_regex:
            condition &= Q(name__regex=query.regex)
        return condition & live
    literal = _literal_prefix(glob)
    if literal:
        condition &= _starts_with("path", literal)
    if server_regex:
        condition &= Q(path__regex=query.regex)
    return condition & live


@dataclass(frozen=True)
class FileMatch:
    """One path of an image's final view that matches, and the layer that provides it."""

    image_id: int
    path: str  # absolute, as in the image: "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str  # "sha256:<hex>" for content, "" otherwise
    link: str
    layer_id: int
    layer_position: int  # 0: the image's bottom layer


@dataclass
class FileSearchResult:
    """A search's rows (newest images first, each image's paths in order) and whether there
    were more than the limit."""

    query: FileQuery
    matches: list[FileMatch] = field(default_factory=list)
    truncated: bool = False
    # image id -> the names the user may read ("debian:bookworm"), filled by image_names
    names: dict[int, list[str]] = field(default_factory=dict)
    # layer id -> its digest, for the rows' LAYER column, and its ChainID (its page)
    layer_digests: dict[int, str] = field(default_factory=dict)
    layer_chains: dict[int, str] = field(default_factory=dict)


Row = tuple[int, str, str, int, int, int, int, Any, str]


def _matches(query: FileQuery, row: Row) -> bool:
    """Whether an entry (the one an image's final view shows) matches ``query``."""
    kind = row[2]
    if query.mode == SHA256:
        return kind in CONTENT_KINDS and row[7] is not None and bytes(row[7]) == query.digest
    if kind in (WHITEOUT, OPAQUE):
        return False
    return _path_matches(query, row[1])


def _path_matches(query: FileQuery, path: str) -> bool:
    """Whether ``path`` matches a path, prefix or glob search."""
    if query.mode == PATH:
        return path == query.text
    if query.mode == PREFIX:
        return path.startswith(query.text)
    directories, slash, name = path.rpartition("/")
    glob_directories, glob_slash, glob_name = query.text.rpartition("/")
    if not _wildcard_match(_glob_tokens(glob_name), name):
        return False
    if query.on_name:
        return True
    if not glob_slash:
        return not slash  # "/e*": a name at the root
    return bool(slash) and _wildcard_match(_glob_tokens(glob_directories), directories)


Token = tuple[str, str, bool]  # ("*" | "?" | "[" | "=", characters, negated)


@functools.cache
def _glob_tokens(glob: str) -> tuple[Token, ...]:
    """A glob (checked by ``_glob_regex`` already) as tokens for ``_wildcard_match``."""
    tokens: list[Token] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1][0] != "*":
                tokens.append(("*", "", False))
        elif c == "?":
            tokens.append(("?", "", False))
        elif c == "[":
            end = glob.find("]", i + 1 if glob[i : i + 1] in ("!", "]") else i)
            if end < 0:
                tokens.append(("=", c, False))
                continue
            body = glob[i:end]
            i = end + 1
            negate = body.startswith("!")
            tokens.append(("[", body[1:] if negate else body, negate))
        else:
            tokens.append(("=", c, False))
    return tuple(tokens)


def _one(token: Token, char: str) -> bool:
    kind, chars, negate = token
    if kind == "=":
        return char == chars
    if char == "/":
        return False  # "?" and "[...]" stay inside a name
    if kind == "?":
        return True
    inside = False
    i = 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            inside |= chars[i] <= char <= chars[i + 2]
            i += 3
        else:
            inside |= chars[i] == char
            i += 1
    return inside != negate


def _wildcard_match(tokens: tuple[Token, ...], text: str) -> bool:
    """Whether ``text`` matches the glob ``tokens`` (``*`` any characters): the classic
    two-pointer match, back to the last ``*`` only, in at most len(tokens) x len(text)
    steps whatever the input (a regular expression can backtrack without bound)."""
    t = s = 0
    star = -1
    mark = 0
    while s < len(text):
        if t < len(tokens) and tokens[t][0] == "*":
            star, mark = t, s
            t += 1
        elif t < len(tokens) and _one(tokens[t], text[s]):
            t += 1
            s += 1
        elif star >= 0:
            mark += 1
            s, t = mark, star + 1
        else:
            return False
    while t < len(tokens) and tokens[t][0] == "*":
        t += 1
    return t == len(tokens)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _stacks(image_ids: list[int]) -> dict[int, list[int]]:
    """Each image's layer ids, bottom first."""
    stacks: dict[int, list[int]] = {i: [] for i in image_ids}
    rows = (
        ImageLayer.objects.filter(image_id__in=image_ids)
        .order_by("image_id", "position")
        .values_list("image_id", "layer_id")
    )
    for image_id, layer_id in rows:
        stacks[image_id].append(layer_id)
    return stacks


def _final_matches(
    query: FileQuery,
    stacks: dict[int, list[int]],
    paths: dict[int, set[str]],
    at_path: dict[tuple[int, str], Row] | None = None,
) -> list[FileMatch]:
    """For each image (``stacks``, in the order wanted) and each of its candidate ``paths``,
    the entry its final view shows, if that entry matches: a query for the deletions at
    their parent directories, and one for the entries at the paths unless ``at_path`` has
    them all already (for every layer of the batch)."""
    layer_ids = sorted({lid for image_id in paths for lid in stacks[image_id]})
    all_paths = sorted({p for image_paths in paths.values() for p in image_paths})
    if not layer_ids or not all_paths:
        return []
    parents = sorted({a for p in all_paths for a in _ancestors(p)})
    hidden: set[tuple[int, str]] = set()
    if at_path is None:
        at_path = {}
        for chunk in _chunks(all_paths, 1000):
            entries = FileEntry.objects.filter(layer_id__in=layer_ids, path__in=chunk).exclude(
                kind=OPAQUE
            )
            for row in entries.values_list(*_ENTRY_COLUMNS):
                at_path[(row[0], row[1])] = row
    for chunk in _chunks(parents, 1000):
        # a parent that a layer deletes, makes opaque or replaces with a non-directory
        deleting = FileEntry.objects.filter(
            layer_id__in=layer_ids, path__in=chunk, kind__in=HIDING_KINDS
        )
        hidden.update(deleting.values_list("layer_id", "path"))
    found: list[FileMatch] = []
    for image_id, stack in stacks.items():
        for path in sorted(paths.get(image_id, ())):
            above = _ancestors(path)
            for position in range(len(stack) - 1, -1, -1):
                layer_id = stack[position]
                row = at_path.get((layer_id, path))
                if row is not None:
                    # this layer's own entry wins over its own whiteouts and opaque parents,
                    # which hide only the layers below it
                    if row[2] != WHITEOUT and _matches(query, row):
                        found.append(_match(image_id, row, position))
                    break
                if any((layer_id, parent) in hidden for parent in above):
                    break
    return found


def _match(image_id: int, row: Row, position: int) -> FileMatch:
    layer_id, path, kind, mode, uid, gid, size, sha256, link = row
    return FileMatch(
        image_id=image_id,
        path="/" + path,
        kind=kind,
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        sha256="sha256:" + bytes(sha256).hex() if sha256 else "",
        link=link,
        layer_id=layer_id,
        layer_position=position,
    )


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _growing_chunks(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in batches of 25, 50, 100, then IMAGE_BATCH: a search that fills its limit
    with the newest images decides no more of them than it must."""
    start, size = 0, 25
    while start < len(items):
        yield items[start : start + size]
        start += size
        size = min(size * 2, IMAGE_BATCH)


def _visible(user: Any) -> QuerySet[Image]:
    return Image.objects.all() if user is None else restrict(Image.objects.all(), user)


def file_search(*, user: Any, query: FileQuery, limit: int = SEARCH_LIMIT) -> FileSearchResult:
    """The paths matching ``query`` in the final view of each image ``user`` may see, with
    the layer providing each, the newest images first (at most ``limit`` rows; ``truncated``
    says there were more). ``user`` None is the machine's operator (the CLI with no
    superuser yet): every image. Layers without a file index are not searched."""
    result = FileSearchResult(query)
    # a path search takes every entry at the matching paths, whiteouts included: the rows
    # the final view is decided on come with the candidates
    condition = _condition(query, markers=query.mode != SHA256)
    entries = FileEntry.objects.filter(condition)
    rows: list[Row] = []
    # a path search asks its index alone whether there are too many, before reading rows
    broad = query.mode != SHA256 and entries.values("path")[CANDIDATE_CAP:].exists()
    if not broad:
        rows = list(entries.values_list(*_ENTRY_COLUMNS)[: CANDIDATE_CAP + 1])
        broad = len(rows) > CANDIDATE_CAP
    if not broad:
        _narrow(result, rows, user, limit)
    else:
        _broad(result, condition, user, limit)
    _describe(result, user)
    return result


def _narrow(result: FileSearchResult, rows: list[Row], user: Any, limit: int) -> None:
    """Every candidate entry is known: decide the images that hold their layers, newest
    first, a batch at a time, until ``limit`` rows."""
    query = result.query
    by_layer: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        if _matches(query, row):
            by_layer[row[0]].add(row[1])
    if not by_layer:
        return
    # a path search has every entry at its paths; a hash search reads them per batch
    at_path = None
    if query.mode != SHA256:
        at_path = {(row[0], row[1]): row for row in rows if row[2] != OPAQUE}
    holders = ImageLayer.objects.filter(layer_id__in=list(by_layer)).values("image_id")
    image_ids = list(
        _visible(user)
        .filter(pk__in=holders)
        .order_by("-added_at", "-pk")
        .values_list("pk", flat=True)
    )
    for batch in _growing_chunks(image_ids):
        stacks = _stacks(batch)
        paths = {
            image_id: {p for lid in stack for p in by_layer.get(lid, ())}
            for image_id, stack in stacks.items()
        }
        if _add(result, _final_matches(query, stacks, paths, at_path), limit):
            return


def _broad(result: FileSearchResult, condition: Q, user: Any, limit: int) -> None:
    """Too many candidates to hold: walk the images newest first, each image's candidate
    paths a page at a time, until ``limit`` rows."""
    image_ids = _visible(user).order_by("-added_at", "-pk").values_list("pk", flat=True)
    for image_id in image_ids.iterator(chunk_size=IMAGE_BATCH):
        stack = _stacks([image_id])
        after = None
        while True:
            rows = FileEntry.objects.filter(condition, layer_id__in=stack[image_id])
            if after is not None:
                rows = rows.filter(path__gt=after)
            page = sorted(set(rows.order_by("path").values_list("path", flat=True)[:PATH_PAGE]))
            if not page:
                break
            # SQLite's SQL leaves a glob's expression out: its paths are matched here first
            wanted = {
                p for p in page if result.query.mode == SHA256 or _path_matches(result.query, p)
            }
            if _add(result, _final_matches(result.query, stack, {image_id: wanted}), limit):
                return
            after = page[-1]


def _add(result: FileSearchResult, found: list[FileMatch], limit: int) -> bool:
    """Append ``found`` up to ``limit``; True when the limit is passed (there is more)."""
    room = limit - len(result.matches)
    result.matches.extend(found[:room])
    if len(found) > room:
        result.truncated = True
        return True
    return False


def image_names(image_ids: Iterable[int], user: Any) -> dict[int, list[str]]:
    """Each image's names as ``docker images`` prints them (``debian:bookworm``), only those
    of repositories ``user`` may read (a shared image's other names stay hidden)."""
    ids = list(set(image_ids))
    names: dict[int, list[str]] = {i: [] for i in ids}
    tags = readable_tags(None if user is None else named_by(user)).filter(image_id__in=ids)
    for tag in tags.order_by("repository__registry", "repository__name", "name"):
        repository = familiar_repository(tag.repository.registry, tag.repository.name)
        names[tag.image_id].append(f"{repository}:{tag.name}")
    return names


def _describe(result: FileSearchResult, user: Any) -> None:
    result.names = image_names((m.image_id for m in result.matches), user)
    layer_ids = {m.layer_id for m in result.matches}
    result.layer_digests = dict(Layer.objects.filter(pk__in=layer_ids).values_list("pk", "digest"))
