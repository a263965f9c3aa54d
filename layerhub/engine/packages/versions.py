"""Version ordering, each ecosystem its own: dpkg, apk, rpm and Python (PEP 440).

Each ``*_compare`` answers -1, 0 or 1 for two version strings. The Debian order is dpkg's
(Debian policy 5.6.12: epoch, upstream version, revision, ``~`` before everything, even the end);
apk's is apk-tools' (``digit{.digit}...{letter}{_suffix{#}}...{~hash}{-r#}``); rpm's is
``rpmvercmp`` over epoch, version and release; Python's is ``packaging``'s. Strings that an
ecosystem would call invalid still get a deterministic answer, except Python, where an invalid
version is not comparable at all (``IncomparableVersion``).
"""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

from ..errors import LayerhubError

DEB = "deb"
APK = "apk"
RPM = "rpm"
PYTHON = "python"

OPERATORS = ("<", "<=", "=", ">=", ">")


class IncomparableVersion(LayerhubError):
    """A version that its ecosystem's ordering cannot place (an invalid PEP 440 version)."""


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


# -- Debian -----------------------------------------------------------------------------------


def _deb_order(c: int) -> int:
    """A byte's weight outside digit runs: letters first, then the rest, ``~`` lowest, and
    the end of the string (-1 here) weighs as a digit does (0)."""
    if c < 0 or 0x30 <= c <= 0x39:
        return 0
    if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
        return c
    if c == 0x7E:  # ~
        return -1
    return c + 256


def _deb_part_compare(a: bytes, b: bytes) -> int:
    """dpkg's ``verrevcmp`` over bytes: alternate non-digit runs (by weight) and digit runs
    (by value)."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not _isdigit_byte(a[i])) or (j < len(b) and not _isdigit_byte(b[j])):
            ac = _deb_order(a[i] if i < len(a) else -1)
            bc = _deb_order(b[j] if j < len(b) else -1)
            if ac != bc:
                return _sign(ac - bc)
            i += 1
            j += 1
        si = i
        while i < len(a) and _isdigit_byte(a[i]):
            i += 1
        sj = j
        while j < len(b) and _isdigit_byte(b[j]):
            j += 1
        na = int(a[si:i] or b"0")
        nb = int(b[sj:j] or b"0")
        if na != nb:
            return _sign(na - nb)
    return 0


def _isdigit_byte(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def deb_split(version: str) -> tuple[int, str, str]:
    """``[epoch:]upstream[-revision]`` as (epoch, upstream, revision); a missing epoch is 0, a
    missing revision is empty (which dpkg orders as "0")."""
    version = version.strip()
    epoch = 0
    if ":" in version:
        head, rest = version.split(":", 1)
        if head.isdigit() and head.isascii():
            epoch = int(head)
            version = rest
    upstream, sep, revision = version.rpartition("-")
    if not sep:
        return epoch, version, ""
    return epoch, upstream, revision


def deb_compare(a: str, b: str) -> int:
    """Compare two Debian versions exactly as ``dpkg --compare-versions`` does."""
    ea, ua, ra = deb_split(a)
    eb, ub, rb = deb_split(b)
    if ea != eb:
        return _sign(ea - eb)
    return _deb_part_compare(_bytes(ua), _bytes(ub)) or _deb_part_compare(_bytes(ra), _bytes(rb))


def _bytes(text: str) -> bytes:
    # dpkg weighs bytes: a non-ASCII character counts as its UTF-8 bytes
    return text.encode("utf-8", "surrogateescape")


# -- Alpine -----------------------------------------------------------------------------------

# token kinds, in the order apk ranks them when two versions differ in shape
_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END, _INVALID = range(9)
# pre-release suffixes rank below "no suffix" (_NONE), post-release ones above it
_APK_SUFFIXES = {"alpha": 0, "beta": 1, "pre": 2, "rc": 3, "cvs": 5, "svn": 6, "git": 7, "hg": 8}
_APK_SUFFIXES["p"] = 9
_NONE = 4
_DIGITS = re.compile(r"[0-9]*")
_LOWER = re.compile(r"[a-z]*")
_HEX = re.compile(r"[0-9a-fA-F]*")


class _ApkTokens:
    """apk-tools' tokenizer: one token at a time, each checked against the one before it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.kind = _INITIAL
        self.value = ""
        self.number = 0
        self.suffix = 0
        self._digits()

    def _digits(self) -> None:
        m = _DIGITS.match(self.text, self.pos)
        assert m is not None
        self.value = m.group()
        self.pos = m.end()
        if not self.value:
            self.kind = _INVALID
        else:
            self.number = int(self.value)

    def advance(self) -> None:
        """Move to the next token (``_END`` at the end, ``_INVALID`` where the shape breaks)."""
        if self.pos >= len(self.text):
            self.kind = _END
            return
        c = self.text[self.pos]
        kind = self.kind
        if "a" <= c <= "z":
            if kind > _DIGIT:
                self.kind = _INVALID
                return
            self.value = c
            self.kind = _LETTER
            self.pos += 1
        elif c == "." or _isdigit(c):
            if c == ".":
                if kind > _DIGIT:
                    self.kind = _INVALID
                    return
                self.pos += 1
            if kind in (_INITIAL, _DIGIT):
                self.kind = _DIGIT
            elif kind == _SUFFIX:
                self.kind = _SUFFIX_NO
            else:
                self.kind = _INVALID
                return
            self._digits()
        elif c == "_":
            if kind > _SUFFIX_NO:
                self.kind = _INVALID
                return
            m = _LOWER.match(self.text, self.pos + 1)
            assert m is not None
            self.value = m.group()
            self.pos = m.end()
            if self.value not in _APK_SUFFIXES:
                self.kind = _INVALID
                return
            self.suffix = _APK_SUFFIXES[self.value]
            self.kind = _SUFFIX
        elif c == "~":
            if kind >= _HASH:
                self.kind = _INVALID
                return
            m = _HEX.match(self.text, self.pos + 1)
            assert m is not None
            self.value = m.group()
            self.pos = m.end()
            self.kind = _HASH if self.value else _INVALID
        elif c == "-":
            if kind >= _REVISION or not self.text.startswith("-r", self.pos):
                self.kind = _INVALID
                return
            self.pos += 2
            self.kind = _REVISION
            self._digits()
        else:
            self.kind = _INVALID


def _apk_token_compare(ta: _ApkTokens, tb: _ApkTokens) -> int:
    kind = ta.kind
    if kind == _DIGIT and (ta.value.startswith("0") or tb.value.startswith("0")):
        # a leading zero makes apk compare the digits as text (Gentoo's rule)
        return _sign((ta.value > tb.value) - (ta.value < tb.value))
    if kind in (_INITIAL, _DIGIT, _SUFFIX_NO, _REVISION):
        return _sign(ta.number - tb.number)
    if kind == _LETTER:
        return _sign(ord(ta.value) - ord(tb.value))
    if kind == _SUFFIX:
        return _sign(ta.suffix - tb.suffix)
    return _sign((ta.value > tb.value) - (ta.value < tb.value))


def apk_compare(a: str, b: str) -> int:
    """Compare two Alpine package versions as ``apk version -t`` does."""
    ta, tb = _ApkTokens(a.strip()), _ApkTokens(b.strip())
    while ta.kind == tb.kind and ta.kind < _END:
        r = _apk_token_compare(ta, tb)
        if r:
            return r
        ta.advance()
        tb.advance()
    if ta.kind == tb.kind:
        return 0
    # equal so far: the longer one is newer, unless what follows is a pre-release suffix
    if ta.kind == _SUFFIX and ta.suffix < _NONE:
        return -1
    if tb.kind == _SUFFIX and tb.suffix < _NONE:
        return 1
    return -1 if ta.kind > tb.kind else 1


# -- RPM --------------------------------------------------------------------------------------

_RPM_SEGMENT = re.compile(r"[0-9]+|[A-Za-z]+")


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment comparison of one version or release field (``~`` sorts before
    everything, ``^`` after the end but before anything else)."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        while i < len(a) and not (a[i].isascii() and a[i].isalnum()) and a[i] not in "~^":
            i += 1
        while j < len(b) and not (b[j].isascii() and b[j].isalnum()) and b[j] not in "~^":
            j += 1
        ca = a[i] if i < len(a) else ""
        cb = b[j] if j < len(b) else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not (ca and cb):
            break
        ma = _RPM_SEGMENT.match(a, i)
        assert ma is not None
        sa = ma.group()
        numeric = sa[0].isdigit()
        mb = _RPM_SEGMENT.match(b, j)
        sb = mb.group() if mb is not None else ""
        if sb and sb[0].isdigit() != numeric:
            sb = ""
        if not sb:
            # a numeric segment is newer than an alphabetic one
            return 1 if numeric else -1
        i, j = ma.end(), j + len(sb)
        if numeric:
            na, nb = sa.lstrip("0"), sb.lstrip("0")
            if len(na) != len(nb):
                return 1 if len(na) > len(nb) else -1
            sa, sb = na, nb
        if sa != sb:
            return 1 if sa > sb else -1
    if i >= len(a) and j >= len(b):
        return 0
    return 1 if i < len(a) else -1


def rpm_split(evr: str) -> tuple[int, str, str]:
    """``[epoch:]version[-release]`` as (epoch, version, release)."""
    evr = evr.strip()
    epoch = 0
    if ":" in evr:
        head, rest = evr.split(":", 1)
        if head.isdigit() and head.isascii():
            epoch = int(head)
            evr = rest
    version, _, release = evr.partition("-")
    return epoch, version, release


def rpm_compare(a: str, b: str) -> int:
    """Compare two ``[epoch:]version-release`` strings as rpm does (``rpmdev-vercmp``)."""
    ea, va, ra = rpm_split(a)
    eb, vb, rb = rpm_split(b)
    if ea != eb:
        return _sign(ea - eb)
    return rpmvercmp(va, vb) or rpmvercmp(ra, rb)


# -- Python -----------------------------------------------------------------------------------


def python_compare(a: str, b: str) -> int:
    """Compare two PEP 440 versions with ``packaging``; raises IncomparableVersion."""
    try:
        va, vb = Version(a), Version(b)
    except InvalidVersion as e:
        raise IncomparableVersion(f"not a PEP 440 version: {e}") from None
    return (va > vb) - (va < vb)


_COMPARE = {DEB: deb_compare, APK: apk_compare, RPM: rpm_compare, PYTHON: python_compare}


def compare_versions(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` in ``ecosystem``'s order."""
    try:
        compare = _COMPARE[ecosystem]
    except KeyError:
        raise IncomparableVersion(f"unknown package ecosystem {ecosystem!r}") from None
    return compare(a, b)


def version_matches(ecosystem: str, version: str, op: str, wanted: str) -> bool:
    """Whether ``version op wanted`` holds in ``ecosystem``'s order (``op`` one of
    ``< <= = >= >``); a version the order cannot place matches nothing."""
    if op not in OPERATORS:
        raise ValueError(f"unknown version operator {op!r}")
    try:
        r = compare_versions(ecosystem, version, wanted)
    except IncomparableVersion:
        return False
    return {"<": r < 0, "<=": r <= 0, "=": r == 0, ">=": r >= 0, ">": r > 0}[op]
