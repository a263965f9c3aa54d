"""A forward-only tar reader for layer streams: ustar, GNU and PAX headers.

Python's ``tarfile`` spends most of a layer unpack parsing headers field by field and copying
its stream buffer; this reader parses each 512-byte header with one ``struct`` call and hands
file contents straight from the stream. It is strict where a layer must be: a bad header
checksum or a stream that ends inside an entry or header is an error, never a quietly shorter
layer. A stream that ends exactly between two entries without the end-of-archive blocks (what
``umoci insert`` writes) is read as Go's archive/tar reads it: complete, since the blob's digest
already proves it whole.

Where readers disagree, this one follows Go's archive/tar (Docker's and containerd's reader):
the old type flag ``\0`` means a directory only when the *final* name (after PAX and GNU long
names) ends in ``/``, and only a regular file's contents follow its header (a directory's or
link's size field is ignored), so no file's contents are ever read as more entries; global
PAX headers are ignored, as Docker ignores them. Where the two readers would pick different
answers, the layer is refused: a PAX name and a GNU long name that differ.

Sparse entries are refused: no image builder writes them, and Go's tar writer (Docker's,
containerd's, the registries') cannot produce them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from .errors import CorruptArchive, LayerError, UnsafeEntry

BLOCK = 512
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_ZERO_BLOCK = bytes(BLOCK)

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_OLD_REGULAR = b"\0"  # pre-POSIX: a directory if the full name ends in "/", else a file
_REGULAR_TYPES = {b"0", b"7"}  # contiguous files count as regular, as in GNU tar
_DEVICES = {CHAR, BLOCKDEV}
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_SPARSE = b"S"
_MAX_META = 1 << 20  # a long name or PAX header larger than this is not a real layer's
CONTENT_SKIP_LIMIT = 1 << 16  # unread contents up to this size are skipped with the next header
MAX_ID = (1 << 32) - 2  # uid_t/gid_t; 2**32-1 is chown's "leave unchanged"
MAX_SIZE = (1 << 63) - 1  # Go's int64; the apply limits cut far lower
# utime takes nanoseconds in a signed 64-bit count: about 1677 to 2262
MAX_MTIME_S = ((1 << 63) - 1) // 1_000_000_000
MAX_DEV_MAJOR = (1 << 12) - 1  # Linux's dev_t: 12-bit major, 20-bit minor (mknod truncates more)
MAX_DEV_MINOR = (1 << 20) - 1


class _Source(Protocol):
    def read(self, size: int = -1) -> bytes: ...


@dataclass(slots=True)
class Header:
    """One tar entry's header, with PAX and GNU extensions already applied."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int  # nanoseconds: PAX times carry more precision than a float holds
    linkname: str
    devmajor: int
    devminor: int
    offset: int  # byte offset of the header in the uncompressed tar
    pax: dict[str, str] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        """A regular file (contiguous files count as regular, as everywhere)."""
        return self.type == REGULAR


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _str(field_: bytes) -> str:
    end = field_.find(b"\0")
    return _decode(field_ if end < 0 else field_[:end])


def _num(field_: bytes, what: str, offset: int) -> int:
    if field_[:1] < b"\x80":
        try:  # the common case: octal digits, NUL-terminated
            return int(field_.rstrip(b"\0") or b"0", 8)
        except ValueError:
            pass
    if field_ and field_[0] & 0x80:  # GNU base-256 for values octal cannot hold
        value = int.from_bytes(field_[1:], "big")
        if field_[0] == 0xFF:
            value -= 1 << (8 * (len(field_) - 1))
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise CorruptArchive(f"tar header at byte {offset}: bad {what} field {text!r}") from None


def _byte_sum(block: bytes) -> int:
    """The sum of a header's 512 bytes, as the checksum counts them. Adler-32's low half is
    one plus the sum of the bytes, modulo 65521: exact for 256 bytes (at most 65,280), and
    zlib's C loop instead of 512 Python integers."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _ascii_digits(value: str) -> bool:
    # str.isdigit() accepts "²" and int() accepts Arabic-Indic digits: neither is a tar number
    return value.isascii() and value.isdigit()


def _pax_int(records: dict[str, str], key: str, offset: int) -> int:
    value = records[key]
    if not _ascii_digits(value) or len(value) > 20:
        raise CorruptArchive(f"tar at byte {offset}: bad PAX {key} {value!r}")
    return int(value)


def _pax_time_ns(value: str, offset: int) -> int:
    """A PAX time ("1700000000.123456789", maybe negative) in exact nanoseconds."""
    sign = -1 if value.startswith("-") else 1
    whole, _, frac = value.removeprefix("-").partition(".")
    if not _ascii_digits(whole) or len(whole) > 20 or (frac and not _ascii_digits(frac)):
        raise CorruptArchive(f"tar at byte {offset}: bad PAX time {value!r}")
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def _parse_pax(data: bytes, offset: int) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit() or len(digits) > 8:  # bytes.isdigit(): ASCII only
            raise CorruptArchive(f"tar at byte {offset}: malformed PAX header")
        length = int(digits)
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise CorruptArchive(f"tar at byte {offset}: malformed PAX header")
        key, value = record[:-1].split(b"=", 1)
        records[_decode(key)] = _decode(value)
        pos += length
    return records


def _one_name(pax: str | None, gnu: str | None, ustar: str, what: str, offset: int) -> str:
    """The entry's name (or link): a GNU long one or a PAX one over the ustar field.

    Go's reader prefers the GNU long name, GNU tar the PAX one: a layer giving two different
    ones is read differently by the two, so it is refused.
    """
    if gnu is None:
        return ustar if pax is None else pax
    if pax is not None and pax != gnu:
        raise CorruptArchive(
            f"tar entry at byte {offset} has two different {what}s: {pax!r} (PAX) and {gnu!r} (GNU)"
        )
    return gnu


class TarReader:
    """Iterates a tar stream's headers; after each, ``read_data`` gives that entry's contents."""

    def __init__(self, source: _Source) -> None:
        self._source = source
        self.offset = 0  # bytes consumed from the source
        self._left = 0  # content bytes of the current entry not yet read
        self._pad = 0  # padding after the current entry's content
        self.ended = False

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._source.read(size)
        if len(data) < size:
            parts = [data]
            got = len(data)
            while got < size:
                more = self._source.read(size - got)
                if not more:
                    raise CorruptArchive(f"tar ends inside {what}: the layer is truncated")
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += size
        return data

    def read_data(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current entry's contents (b"" once all are read)."""
        size = min(size, self._left)
        if size <= 0:
            return b""
        data = self._source.read(size)
        if not data:
            raise CorruptArchive("tar ends inside a file: the layer is truncated")
        self._left -= len(data)
        self.offset += len(data)
        return data

    def _skip(self, size: int) -> None:
        while size:
            chunk = self._read_exact(min(size, 1 << 20), "a file")
            size -= len(chunk)

    def _meta(self, size: int, offset: int) -> bytes:
        if size > _MAX_META:
            raise LayerError(f"tar at byte {offset}: extended header of {size} bytes")
        data = self._read_exact(size, "an extended header")
        self._read_exact(-size % BLOCK, "an extended header")
        return data

    def _read_upto(self, first: bytes, size: int) -> bytes:
        """``first`` topped up to ``size`` bytes, or fewer at the end of the stream."""
        parts = [first]
        got = len(first)
        while got < size:
            more = self._source.read(size - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def next(self) -> Header | None:
        """The next entry's header, or None at the end of the archive."""
        if self.ended:
            return None
        skip = self._left + self._pad
        self._left = self._pad = 0
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        extended = False  # an extended header was read: its entry must follow
        typeflag = b""
        while True:
            if skip > CONTENT_SKIP_LIMIT:
                self._skip(skip)
                skip = 0
            # the rest of the previous entry and this header in one read
            want = skip + BLOCK
            block = self._source.read(want)
            if len(block) < want:
                block = self._read_upto(block, want)
                if len(block) < want:
                    self._end_without_marker(len(block), skip, extended)
                    return None
            self.offset += want
            if skip:
                block = block[skip:]
                skip = 0
            offset = self.offset - BLOCK
            if block == _ZERO_BLOCK:
                self.ended = True
                return None
            fields = _HEADER.unpack(block)
            chksum = _num(fields[6], "checksum", offset)
            if chksum != _byte_sum(block) - sum(fields[6]) + 256:
                raise CorruptArchive(f"tar header at byte {offset} is corrupt (bad checksum)")
            typeflag = fields[7]
            size = _num(fields[4], "size", offset)
            if size < 0:
                raise CorruptArchive(f"tar header at byte {offset} has a negative size")
            if typeflag == _PAX_LOCAL:
                pax.update(_parse_pax(self._meta(size, offset), offset))
            elif typeflag == _PAX_GLOBAL:
                # checked, then ignored as Docker ignores them (GNU tar would apply a global
                # path or size to every later entry: no answer both agree on)
                _parse_pax(self._meta(size, offset), offset)
            elif typeflag == _GNU_LONGNAME:
                long_name = _str(self._meta(size, offset))
            elif typeflag == _GNU_LONGLINK:
                long_link = _str(self._meta(size, offset))
            else:
                break
            extended = True
        name = _str(fields[0])
        if fields[9] == b"ustar\x00" and fields[15][:1] != b"\0":  # POSIX prefix field
            name = f"{_str(fields[15])}/{name}"
        records = pax
        path = _one_name(records.get("path"), long_name, name, "name", offset)
        # Only file types carry contents (Go's reader: every type but the header-only ones);
        # decided from the raw flag, before "\0" may become a directory below.
        has_content = typeflag in _REGULAR_TYPES or typeflag == _OLD_REGULAR
        if typeflag == _OLD_REGULAR:
            # from the final name, as Go does: the ustar field may be a truncated or decoy name
            typeflag = DIRECTORY if path.endswith("/") else REGULAR
        elif typeflag in _REGULAR_TYPES:
            typeflag = REGULAR
        if typeflag == _SPARSE or any(k.startswith("GNU.sparse.") for k in records):
            raise UnsafeEntry(path, "sparse files are not supported")
        if "\x00" in path:
            raise CorruptArchive(f"tar entry at byte {offset} has a NUL byte in its name")
        if typeflag not in (REGULAR, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO):
            raise LayerError(f"tar entry {path!r} has an unsupported type {typeflag!r}")
        header = Header(
            name=path,
            type=typeflag,
            mode=_num(fields[1], "mode", offset),
            uid=_pax_int(records, "uid", offset)
            if "uid" in records
            else _num(fields[2], "uid", offset),
            gid=_pax_int(records, "gid", offset)
            if "gid" in records
            else _num(fields[3], "gid", offset),
            size=_pax_int(records, "size", offset) if "size" in records else size,
            mtime_ns=_pax_time_ns(records["mtime"], offset)
            if "mtime" in records
            else _num(fields[5], "mtime", offset) * 1_000_000_000,
            linkname=_one_name(records.get("linkpath"), long_link, _str(fields[8]), "link", offset),
            devmajor=_num(fields[13], "devmajor", offset) if typeflag in _DEVICES else 0,
            devminor=_num(fields[14], "devminor", offset) if typeflag in _DEVICES else 0,
            offset=offset,
            pax=records,
        )
        if header.size < 0 or header.uid < 0 or header.gid < 0 or header.mode < 0:
            raise CorruptArchive(f"tar header at byte {offset} has a negative size, id or mode")
        if (
            header.uid > MAX_ID
            or header.gid > MAX_ID
            or header.size > MAX_SIZE
            or header.mode > 0o7777777
            or abs(header.mtime_ns) > MAX_MTIME_S * 1_000_000_000
        ):
            raise CorruptArchive(
                f"tar entry {path!r} at byte {offset}: size, owner, mode or time out of range"
            )
        if header.devmajor > MAX_DEV_MAJOR or header.devminor > MAX_DEV_MINOR:
            raise UnsafeEntry(
                path, f"device number {header.devmajor},{header.devminor} is out of range"
            )
        if "\x00" in header.linkname:
            raise CorruptArchive(f"tar entry at byte {offset} has a NUL byte in its link")
        content = header.size if has_content else 0
        self._left, self._pad = content, -content % BLOCK
        return header

    def _end_without_marker(self, got: int, skip: int, extended: bool) -> None:
        """The stream ended before a whole header: fine between entries, else truncated."""
        self.offset += got
        if got < skip:
            raise CorruptArchive("tar ends inside a file: the layer is truncated")
        if got > skip:
            raise CorruptArchive("tar ends inside a header: the layer is truncated")
        if extended:
            raise CorruptArchive("tar ends after an extended header: the layer is truncated")
        if self.offset == 0:
            raise CorruptArchive("the layer is empty: not a tar archive")
        # Between two entries with no end-of-archive blocks (umoci insert writes these): Go's
        # reader takes it as the end, and the blob's digest proves nothing was cut off.
        self.ended = True
