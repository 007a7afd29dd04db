"""Streaming reader and writer for the RBD diff formats v1 and v2.

The encoding is byte-compatible with the ``rbd`` CLI (Ceph
``src/tools/rbd/action/Export.cc``, ``Import.cc``, ``MergeDiff.cc`` and
``doc/dev/rbd-diff.rst``):

* banner ``b"rbd diff v1\\n"`` or ``b"rbd diff v2\\n"``; integers are
  little-endian;
* every record is a one-byte tag; in v2 every tag except ``e`` is followed
  by a u64 giving the length of the payload that follows (the length does
  not include the tag or the length field itself);
* ``f``/``t``: u32 name length + name; ``s``: u64 image size;
  ``w``: u64 offset + u64 length + data; ``z``: u64 offset + u64 length;
  ``e``: end of diff.

``rbd export --export-format 2`` concatenates several v2 diffs and adds a
``p`` (snapshot protection) record; this reader never reads past ``e`` and
skips ``p`` like any unknown v2 record.  ``DiffWriter`` adds an ``L``
record (lineage JSON) to v2 headers only; ``rbd`` skips it as unknown.
"""

from __future__ import annotations

import dataclasses
import json
import struct

BANNER_V1 = b"rbd diff v1\n"
BANNER_V2 = b"rbd diff v2\n"
MAX_NAME_BYTES = 4096  # rbd's utils::read_string() limit
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
# Ours holds two snapshot identities (~200 bytes); JSON of a few MiB already
# costs hundreds of MiB parsed, so a crafted diff must not get near that.
MAX_LINEAGE_BYTES = 64 * 1024
_CHUNK = 1024 * 1024
_U64_MAX = 2**64 - 1

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EXTENT = struct.Struct("<QQ")
_TAG_U64 = struct.Struct("<cQ")
_TAG_U64_U64 = struct.Struct("<cQQ")
_TAG_U64_U64_U64 = struct.Struct("<cQQQ")
_TAG_U32 = struct.Struct("<cI")
_TAG_U64_U32 = struct.Struct("<cQI")

_META_TAGS = frozenset(b"ftsL")


class DiffFormatError(ValueError):
    """The diff stream is malformed; the message names what and where."""


@dataclasses.dataclass
class DiffHeader:
    """Metadata records that precede the data records of a diff."""

    version: int
    from_snap: str | None = None
    to_snap: str | None = None
    size: int | None = None
    lineage: dict | None = None


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """A ``w`` record: ``data`` is the new content at ``offset``."""

    offset: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True)
class ZeroRecord:
    """A ``z`` record: ``length`` bytes at ``offset`` are zero."""

    offset: int
    length: int


@dataclasses.dataclass
class DiffStats:
    """Counters a DiffReader updates as records are yielded."""

    data_records: int = 0
    data_bytes: int = 0
    zero_records: int = 0
    zero_bytes: int = 0
    end_seen: bool = False


class DiffReader:
    """Parse an RBD diff (v1 or v2) from a binary stream, record by record.

    ``stream`` needs only ``read(n)``; it is read with bounded reads and
    never past the ``e`` record, so several diffs can follow each other.
    ``header`` is parsed lazily.  Iterating yields DataRecord/ZeroRecord in
    stream order and raises DiffFormatError (only) if the stream is
    malformed: bad banner, truncation before ``e``, unknown v1 tag, v2
    length mismatch, duplicate/late metadata, missing ``s`` before data,
    zero-length, overlapping, descending or out-of-size extents, names over
    4096 bytes or not UTF-8, a size over ``image_size_limit``, a record
    over ``max_record_bytes`` or a lineage record over ``MAX_LINEAGE_BYTES``.
    After the first error the same error is raised again on every further
    use.  ``stats`` holds running counters.
    """

    def __init__(self, stream, *, image_size_limit=None,
                 max_record_bytes=DEFAULT_MAX_RECORD_BYTES):
        self._stream = stream
        self._size_limit = image_size_limit
        self._max_record = max_record_bytes
        self._pos = 0
        self._header = None
        self._pending = None  # (tag, position) of the first data/end tag
        self._next_offset = 0
        self._error = None
        self.stats = DiffStats()

    @property
    def header(self) -> DiffHeader:
        """The DiffHeader, reading the stream up to the first data record."""
        if self._header is None:
            self._guarded(self._parse_header)
        return self._header

    def __iter__(self):
        return self

    def __next__(self):
        if self._header is None:
            self._guarded(self._parse_header)
        return self._guarded(self._next_record)

    def _guarded(self, func):
        if self._error is not None:
            raise self._error
        try:
            return func()
        except DiffFormatError as exc:
            self._error = exc
            raise

    # -- low level -----------------------------------------------------

    def _fail(self, msg, pos=None):
        where = self._pos if pos is None else pos
        raise DiffFormatError(f"{msg} (stream byte {where})")

    def _read(self, n, what):
        """Read exactly ``n`` bytes in pieces of at most _CHUNK bytes."""
        parts = []
        remaining = n
        while remaining:
            piece = self._stream.read(min(remaining, _CHUNK))
            if not piece:
                self._fail(f"truncated stream: {what} needs {n} bytes, "
                           f"got {n - remaining}")
            parts.append(piece)
            remaining -= len(piece)
        self._pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _skip(self, n, what):
        while n:
            step = min(n, _CHUNK)
            self._read(step, what)
            n -= step

    def _read_tag(self):
        pos = self._pos
        tag = self._stream.read(1)
        if not tag:
            self._fail("truncated stream: missing end record 'e'")
        self._pos += 1
        return tag[0], pos

    def _record_len(self, tag):
        """Return the v2 payload length (None for v1 or ``e``)."""
        if self._header.version == 1 or tag == ord("e"):
            return None
        return _U64.unpack(self._read(8, f"{chr(tag)!r} length"))[0]

    def _check_len(self, tag, pos, declared, expected):
        if declared is not None and declared != expected:
            self._fail(f"record {chr(tag)!r} declares length {declared}, "
                       f"expected {expected}", pos)

    # -- header --------------------------------------------------------

    def _parse_header(self):
        banner = self._read(len(BANNER_V1), "banner")
        versions = {BANNER_V1: 1, BANNER_V2: 2}
        if banner not in versions:
            self._fail(f"invalid diff banner {banner!r}", 0)
        self._header = DiffHeader(version=versions[banner])
        while True:
            tag, pos = self._read_tag()
            if tag in b"wze":
                break
            self._parse_meta(tag, pos, self._record_len(tag))
        if tag != ord("e") and self._header.size is None:
            self._fail("missing image size record 's' before first data "
                       "record", pos)
        self._pending = (tag, pos)

    def _parse_meta(self, tag, pos, reclen):
        h = self._header
        if tag in b"ft":
            attr = "from_snap" if tag == ord("f") else "to_snap"
            self._set_once(attr, self._read_name(tag, pos, reclen), tag, pos)
        elif tag == ord("s"):
            self._check_len(tag, pos, reclen, 8)
            size = _U64.unpack(self._read(8, "image size"))[0]
            if self._size_limit is not None and size > self._size_limit:
                self._fail(f"image size {size} exceeds limit "
                           f"{self._size_limit}", pos)
            self._set_once("size", size, tag, pos)
        elif tag == ord("L") and h.version == 2:
            self._set_once("lineage", self._read_lineage(pos, reclen),
                           tag, pos)
        else:
            self._skip_unknown(tag, pos, reclen)

    def _set_once(self, attr, value, tag, pos):
        if getattr(self._header, attr) is not None:
            self._fail(f"duplicate {chr(tag)!r} record", pos)
        setattr(self._header, attr, value)

    def _read_name(self, tag, pos, reclen):
        n = _U32.unpack(self._read(4, "snapshot name length"))[0]
        if n > MAX_NAME_BYTES:
            self._fail(f"snapshot name in {chr(tag)!r} record is {n} bytes, "
                       f"limit {MAX_NAME_BYTES}", pos)
        self._check_len(tag, pos, reclen, 4 + n)
        raw = self._read(n, "snapshot name")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"snapshot name in {chr(tag)!r} record is not UTF-8",
                       pos)

    def _read_lineage(self, pos, reclen):
        if reclen > MAX_LINEAGE_BYTES:
            self._fail(f"lineage record length {reclen} exceeds "
                       f"{MAX_LINEAGE_BYTES} bytes", pos)
        raw = self._read(reclen, "lineage record")
        try:
            lineage = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            lineage = None
        if not isinstance(lineage, dict):
            self._fail("lineage record 'L' is not a JSON object", pos)
        return lineage

    def _skip_unknown(self, tag, pos, reclen):
        if reclen is None:
            self._fail(f"unknown record tag 0x{tag:02x} in v1 diff", pos)
        self._skip(reclen, f"record 0x{tag:02x} payload")

    # -- data ----------------------------------------------------------

    def _next_record(self):
        if self.stats.end_seen:
            raise StopIteration
        if self._pending is not None:
            (tag, pos), self._pending = self._pending, None
        else:
            tag, pos = self._read_tag()
        while True:
            reclen = self._record_len(tag)
            if tag == ord("e"):
                self.stats.end_seen = True
                raise StopIteration
            if tag in b"wz":
                return self._read_extent(tag, pos, reclen)
            if tag in _META_TAGS:
                self._fail(f"metadata record {chr(tag)!r} after data", pos)
            self._skip_unknown(tag, pos, reclen)
            tag, pos = self._read_tag()

    def _read_extent(self, tag, pos, reclen):
        offset, length = _EXTENT.unpack(self._read(16, "extent"))
        is_write = tag == ord("w")
        self._check_len(tag, pos, reclen, 16 + length if is_write else 16)
        self._check_extent(tag, pos, offset, length)
        st = self.stats
        if not is_write:
            st.zero_records += 1
            st.zero_bytes += length
            return ZeroRecord(offset, length)
        if length > self._max_record:
            self._fail(f"write record length {length} exceeds "
                       f"max_record_bytes {self._max_record}", pos)
        data = self._read(length, "write data")
        st.data_records += 1
        st.data_bytes += length
        return DataRecord(offset, data)

    def _check_extent(self, tag, pos, offset, length):
        kind = chr(tag)
        if length == 0:
            self._fail(f"zero-length {kind!r} record at offset {offset}", pos)
        if offset < self._next_offset:
            self._fail(f"{kind!r} extent at offset {offset} overlaps or "
                       f"precedes previous extent ending at "
                       f"{self._next_offset}", pos)
        end = offset + length
        if end > self._header.size:
            self._fail(f"{kind!r} extent {offset}+{length} exceeds image "
                       f"size {self._header.size}", pos)
        self._next_offset = end


class DiffWriter:
    """Write an RBD diff (v1 or v2) to a binary stream (``write(b)``).

    Call write_header() once, then write_data()/write_zero() with
    ascending, non-overlapping extents inside the header size, then
    close(), which writes ``e`` (the stream itself is not closed).
    Misuse raises ValueError.  Zero-length records are silently dropped
    (``rbd merge-diff`` rejects them).  ``data`` may be any bytes-like
    object and is written without copying.  ``bytes_written`` counts
    every byte written so far.
    """

    def __init__(self, stream, version=1):
        if version not in (1, 2):
            raise ValueError(f"unsupported diff version {version!r}")
        self._stream = stream
        self._v2 = version == 2
        self.version = version
        self._size = None
        self._next_offset = 0
        self._closed = False
        self.bytes_written = 0

    def _write(self, buf):
        self._stream.write(buf)
        self.bytes_written += len(buf)

    def write_header(self, from_snap, to_snap, size, lineage=None):
        """Write banner, ``f``/``t`` (if not None), ``s`` and, v2 only, ``L``.

        ``lineage`` (a JSON-serializable dict) is ignored for v1 so the
        output stays importable by ``rbd import-diff``.
        """
        if self._size is not None or self._closed:
            raise ValueError("header already written")
        if not isinstance(size, int) or not 0 <= size <= _U64_MAX:
            raise ValueError(f"invalid image size {size!r}")
        parts = [BANNER_V2 if self._v2 else BANNER_V1]
        for tag, name in ((b"f", from_snap), (b"t", to_snap)):
            if name is not None:
                parts.append(self._name_record(tag, name))
        parts.append(_TAG_U64_U64.pack(b"s", 8, size) if self._v2
                     else _TAG_U64.pack(b"s", size))
        if self._v2 and lineage is not None:
            if not isinstance(lineage, dict):
                raise ValueError("lineage must be a dict")
            raw = json.dumps(lineage, sort_keys=True,
                             separators=(",", ":")).encode("utf-8")
            parts += [_TAG_U64.pack(b"L", len(raw)), raw]
        self._write(b"".join(parts))
        self._size = size

    def _name_record(self, tag, name):
        raw = name.encode("utf-8")
        if len(raw) > MAX_NAME_BYTES:
            raise ValueError(f"snapshot name is {len(raw)} bytes, limit "
                             f"{MAX_NAME_BYTES}")
        if self._v2:
            return _TAG_U64_U32.pack(tag, 4 + len(raw), len(raw)) + raw
        return _TAG_U32.pack(tag, len(raw)) + raw

    def _claim(self, offset, length):
        if self._size is None or self._closed:
            raise ValueError("write_header() must precede data and close()"
                             " must not")
        if not isinstance(offset, int) or offset < self._next_offset:
            raise ValueError(f"extent offset {offset!r} precedes previous "
                             f"extent end {self._next_offset}")
        if offset + length > self._size:
            raise ValueError(f"extent {offset}+{length} exceeds image size "
                             f"{self._size}")
        self._next_offset = offset + length

    def write_data(self, offset, data):
        """Write a ``w`` record for bytes-like ``data`` at ``offset``."""
        length = memoryview(data).nbytes
        if length == 0:
            return
        self._claim(offset, length)
        if self._v2:
            head = _TAG_U64_U64_U64.pack(b"w", 16 + length, offset, length)
        else:
            head = _TAG_U64_U64.pack(b"w", offset, length)
        self._stream.write(head)
        self._stream.write(data)
        self.bytes_written += len(head) + length

    def write_zero(self, offset, length):
        """Write a ``z`` record: ``length`` bytes at ``offset`` are zero."""
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"invalid zero length {length!r}")
        if length == 0:
            return
        self._claim(offset, length)
        if self._v2:
            self._write(_TAG_U64_U64_U64.pack(b"z", 16, offset, length))
        else:
            self._write(_TAG_U64_U64.pack(b"z", offset, length))

    def close(self):
        """Write the ``e`` record; idempotent.  Requires write_header()."""
        if self._closed:
            return
        if self._size is None:
            raise ValueError("write_header() was never called")
        self._write(b"e")
        self._closed = True


def summarize(reader: DiffReader) -> dict:
    """Consume ``reader`` and return a JSON-serializable summary.

    Keys: version, from_snap, to_snap, size, lineage, data_records,
    data_bytes, zero_records, zero_bytes, extents, covered_bytes,
    first_offset (start of the first extent), last_offset (start of the
    last extent), end_offset (end of the last extent), end_seen.  Offsets
    are None when there are no extents.  Raises DiffFormatError.
    """
    header = reader.header
    first = last = end = None
    for rec in reader:
        if first is None:
            first = rec.offset
        last, end = rec.offset, rec.offset + rec.length
    st = reader.stats
    return {
        "version": header.version,
        "from_snap": header.from_snap,
        "to_snap": header.to_snap,
        "size": header.size,
        "lineage": header.lineage,
        "data_records": st.data_records,
        "data_bytes": st.data_bytes,
        "zero_records": st.zero_records,
        "zero_bytes": st.zero_bytes,
        "extents": st.data_records + st.zero_records,
        "covered_bytes": st.data_bytes + st.zero_bytes,
        "first_offset": first,
        "last_offset": last,
        "end_offset": end,
        "end_seen": st.end_seen,
    }


def _clip(record, start, end):
    """The part of ``record`` inside [start, end), or None."""
    start, end = max(start, record.offset), min(end, record.offset + record.length)
    if start >= end:
        return None
    if isinstance(record, ZeroRecord):
        return ZeroRecord(start, end - start)
    skip = start - record.offset
    return DataRecord(start, record.data[skip:skip + end - start])


def _write_record(writer, record):
    if isinstance(record, ZeroRecord):
        writer.write_zero(record.offset, record.length)
    else:
        writer.write_data(record.offset, record.data)


def _with_growth_zeroed(records, first_size, final_size):
    """The first diff's records, then a zero record for what the first diff
    cut off and the second grew back: it reads as zeros after both, whatever
    the target held there before (like ``rbd merge-diff``)."""
    yield from records
    if first_size is not None and final_size is not None and final_size > first_size:
        yield ZeroRecord(first_size, final_size - first_size)


def merge(first: DiffReader, second: DiffReader, writer: DiffWriter):
    """Merge two consecutive diffs into one, streaming (like ``rbd merge-diff``).

    ``first``'s end snapshot must be ``second``'s start snapshot. The result
    goes from ``first``'s start to ``second``'s end at ``second``'s size;
    where both diffs cover an extent, ``second`` wins. Raises DiffFormatError.
    """
    one, two = first.header, second.header
    if one.to_snap != two.from_snap:
        raise DiffFormatError("cannot merge: first diff ends at %r but second starts at %r"
                              % (one.to_snap, two.from_snap))
    size = two.size if two.size is not None else one.size
    if size is None:
        raise DiffFormatError("cannot merge: neither diff has an image size record 's'")
    writer.write_header(one.from_snap, two.to_snap, size)
    a_records, b_records = _with_growth_zeroed(first, one.size, size), iter(second)
    a, b = next(a_records, None), next(b_records, None)
    while a is not None or b is not None:
        if a is not None and (b is None or a.offset < b.offset):
            # emit the part of a before b starts (and inside the new size)
            limit = size if b is None else min(size, b.offset)
            head = _clip(a, a.offset, limit)
            if head is not None:
                _write_record(writer, head)
            a = _clip(a, limit, a.offset + a.length) if b is not None else None
            if a is None or a.offset >= size:
                a = next(a_records, None)
            continue
        assert b is not None  # with b exhausted, a took the branch above
        _write_record(writer, b)
        end = b.offset + b.length
        while a is not None and a.offset + a.length <= end:
            a = next(a_records, None)
        if a is not None:
            a = _clip(a, end, a.offset + a.length)
        b = next(b_records, None)
    writer.close()
