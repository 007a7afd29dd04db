"""Tests for cinder_rbd_incremental.diffstream."""

import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import hypothesis
from hypothesis import strategies as st

from cinder_rbd_incremental import diffstream as ds

RBD = "/usr/bin/rbd"
SETTINGS = hypothesis.settings(
    max_examples=200, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def write_diff(version, header, records, lineage=None):
    """Serialize (from, to, size) and records with DiffWriter."""
    out = io.BytesIO()
    w = ds.DiffWriter(out, version=version)
    w.write_header(*header, lineage=lineage)
    for rec in records:
        if isinstance(rec, ds.DataRecord):
            w.write_data(rec.offset, rec.data)
        else:
            w.write_zero(rec.offset, rec.length)
    w.close()
    assert w.bytes_written == len(out.getvalue())
    return out.getvalue()


def read_all(raw, **kwargs):
    reader = ds.DiffReader(io.BytesIO(raw), **kwargs)
    return reader.header, list(reader), reader


def apply_diff(image, raw):
    """Apply a diff to a bytearray model of an image, as import-diff does."""
    reader = ds.DiffReader(io.BytesIO(raw))
    size = reader.header.size
    del image[size:]
    image.extend(bytes(size - len(image)))
    for rec in reader:
        if isinstance(rec, ds.DataRecord):
            image[rec.offset:rec.offset + rec.length] = rec.data
        else:
            image[rec.offset:rec.offset + rec.length] = bytes(rec.length)
    return image


names = st.none() | st.text(max_size=12)
lineages = st.none() | st.dictionaries(
    st.text(max_size=6), st.integers() | st.text(max_size=6) | st.booleans(),
    max_size=4)


@st.composite
def diffs(draw, max_gap=64):
    """Draw (header tuple, records) with ascending, disjoint extents."""
    pieces = draw(st.lists(st.tuples(
        st.integers(0, max_gap), st.booleans(),
        st.binary(min_size=1, max_size=48)), max_size=12))
    records, pos = [], 0
    for gap, is_zero, data in pieces:
        pos += gap
        if is_zero:
            records.append(ds.ZeroRecord(pos, len(data)))
        else:
            records.append(ds.DataRecord(pos, data))
        pos += len(data)
    size = pos + draw(st.integers(0, max_gap))
    return (draw(names), draw(names), size), records


def valid_streams():
    return st.builds(
        lambda v, d, lin: write_diff(v, d[0], d[1], lin),
        st.sampled_from([1, 2]), diffs(), lineages)


class RoundTripTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(st.sampled_from([1, 2]), diffs(), lineages)
    def test_round_trip(self, version, diff, lineage):
        (from_snap, to_snap, size), records = diff
        raw = write_diff(version, diff[0], records, lineage)
        header, got, reader = read_all(raw)
        expected_lineage = lineage if version == 2 else None
        self.assertEqual(ds.DiffHeader(version, from_snap, to_snap, size,
                                       expected_lineage), header)
        self.assertEqual(records, got)
        self.assertTrue(reader.stats.end_seen)
        data = [r for r in records if isinstance(r, ds.DataRecord)]
        self.assertEqual(len(data), reader.stats.data_records)
        self.assertEqual(sum(r.length for r in records),
                         reader.stats.data_bytes + reader.stats.zero_bytes)

    def test_memoryview_and_bytearray_data(self):
        buf = bytearray(b"0123456789")
        out = io.BytesIO()
        w = ds.DiffWriter(out)
        w.write_header(None, "s", 100)
        w.write_data(0, memoryview(buf)[2:6])
        w.write_data(10, buf)
        w.close()
        _, recs, _ = read_all(out.getvalue())
        self.assertEqual([ds.DataRecord(0, b"2345"),
                          ds.DataRecord(10, b"0123456789")], recs)


class GoldenBytesTest(unittest.TestCase):

    def test_v1_matches_rbd_export_diff(self):
        expected = (b"rbd diff v1\n"
                    + b"f" + u32(2) + b"s1"
                    + b"t" + u32(2) + b"s2"
                    + b"s" + u64(1 << 30)
                    + b"w" + u64(4096) + u64(3) + b"abc"
                    + b"z" + u64(8192) + u64(4096)
                    + b"e")
        raw = write_diff(1, ("s1", "s2", 1 << 30),
                         [ds.DataRecord(4096, b"abc"),
                          ds.ZeroRecord(8192, 4096)],
                         lineage={"ignored": "in v1"})
        self.assertEqual(expected, raw)

    def test_v2_matches_rbd_export_format_2(self):
        expected = (b"rbd diff v2\n"
                    + b"t" + u64(6) + u32(2) + b"s2"
                    + b"s" + u64(8) + u64(512)
                    + b"w" + u64(19) + u64(0) + u64(3) + b"abc"
                    + b"z" + u64(16) + u64(100) + u64(12)
                    + b"e")
        raw = write_diff(2, (None, "s2", 512),
                         [ds.DataRecord(0, b"abc"), ds.ZeroRecord(100, 12)])
        self.assertEqual(expected, raw)

    def test_v2_lineage_record(self):
        raw = write_diff(2, (None, None, 0), [], lineage={"b": 1, "a": [2]})
        payload = b'{"a":[2],"b":1}'
        self.assertEqual(b"rbd diff v2\ns" + u64(8) + u64(0)
                         + b"L" + u64(len(payload)) + payload + b"e", raw)
        self.assertEqual({"a": [2], "b": 1}, read_all(raw)[0].lineage)


class UnknownTagTest(unittest.TestCase):

    def test_v2_skips_unknown_tags(self):
        raw = (b"rbd diff v2\n"
               + b"X" + u64(5) + b"hello"
               + b"t" + u64(5) + u32(1) + b"b"
               + b"p" + u64(1) + b"\x01"
               + b"s" + u64(8) + u64(64)
               + b"w" + u64(17) + u64(0) + u64(1) + b"A"
               + b"?" + u64(0)
               + b"z" + u64(16) + u64(8) + u64(8)
               + b"e")
        header, recs, _ = read_all(raw)
        self.assertEqual("b", header.to_snap)
        self.assertEqual([ds.DataRecord(0, b"A"), ds.ZeroRecord(8, 8)], recs)

    def test_v1_rejects_unknown_tag(self):
        raw = b"rbd diff v1\ns" + u64(64) + b"X" + b"e"
        with self.assertRaisesRegex(ds.DiffFormatError,
                                    r"unknown record tag 0x58.*byte 21"):
            read_all(raw)

    def test_v1_lineage_tag_is_unknown(self):
        raw = b"rbd diff v1\nL" + u64(2) + b"{}e"
        with self.assertRaisesRegex(ds.DiffFormatError, "unknown record"):
            read_all(raw)


def consume(raw):
    """Parse fully; return None or the DiffFormatError raised."""
    try:
        ds.summarize(ds.DiffReader(io.BytesIO(raw), max_record_bytes=1 << 16))
    except ds.DiffFormatError as exc:
        return exc
    return None


class GarbageTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(st.sampled_from([b"", ds.BANNER_V1, ds.BANNER_V2]),
                      st.binary(max_size=200))
    def test_random_bytes(self, prefix, tail):
        consume(prefix + tail)

    @SETTINGS
    @hypothesis.given(valid_streams(), st.data())
    def test_truncation(self, raw, data):
        cut = data.draw(st.integers(0, len(raw) - 1))
        self.assertIn("truncated", str(consume(raw[:cut])))

    @SETTINGS
    @hypothesis.given(valid_streams(), st.data())
    def test_mutation(self, raw, data):
        pos = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.binary(min_size=0, max_size=9))
        drop = data.draw(st.integers(0, 9))
        consume(raw[:pos] + new + raw[pos + drop:])

    def test_huge_declared_lengths_do_not_allocate(self):
        base = b"rbd diff v2\ns" + u64(8) + u64(2**64 - 1)
        for tail in (b"w" + u64(16 + 2**40) + u64(0) + u64(2**40),
                     b"L",
                     b"Q" + u64(2**63) + b"x"):
            exc = consume(base + tail)
            self.assertIsInstance(exc, ds.DiffFormatError)
        exc = consume(base + b"w" + u64(16 + 2**40) + u64(0) + u64(2**40))
        self.assertIn("exceeds max_record_bytes", str(exc))


class ValidationTest(unittest.TestCase):

    V1 = b"rbd diff v1\n"

    def assertError(self, raw, pattern, **kwargs):
        with self.assertRaisesRegex(ds.DiffFormatError, pattern):
            read_all(raw, **kwargs)

    def w(self, offset, data):
        return b"w" + u64(offset) + u64(len(data)) + data

    def test_bad_banner(self):
        self.assertError(b"rbd diff v3\ne", "invalid diff banner.*byte 0")

    def test_overlapping_extents(self):
        raw = self.V1 + b"s" + u64(100) + self.w(0, b"abcd") + self.w(2, b"x")
        self.assertError(raw, r"offset 2 overlaps or precedes.*ending at 4")

    def test_out_of_order_extents(self):
        raw = (self.V1 + b"s" + u64(100) + self.w(50, b"a")
               + b"z" + u64(10) + u64(5) + b"e")
        self.assertError(raw, r"'z' extent at offset 10 overlaps or precedes")

    def test_extent_beyond_size(self):
        raw = self.V1 + b"s" + u64(10) + self.w(8, b"abc") + b"e"
        self.assertError(raw, r"'w' extent 8\+3 exceeds image size 10")

    def test_truncated_data(self):
        raw = self.V1 + b"s" + u64(10) + b"w" + u64(0) + u64(5) + b"ab"
        self.assertError(raw, r"truncated stream: write data needs 5 bytes")

    def test_missing_end(self):
        self.assertError(self.V1 + b"s" + u64(10) + self.w(0, b"a"),
                         r"truncated stream: missing end record 'e'.*byte 39")

    def test_missing_size(self):
        self.assertError(self.V1 + self.w(0, b"a") + b"e",
                         r"missing image size record 's'")

    def test_no_size_and_no_data_is_fine(self):
        header, recs, _ = read_all(self.V1 + b"e")
        self.assertEqual((None, []), (header.size, recs))

    def test_zero_length_records(self):
        base = self.V1 + b"s" + u64(10)
        self.assertError(base + self.w(0, b"") + b"e", "zero-length 'w'")
        self.assertError(base + b"z" + u64(0) + u64(0) + b"e",
                         "zero-length 'z'")

    def test_name_limits(self):
        ok = "n" * ds.MAX_NAME_BYTES
        raw = self.V1 + b"t" + u32(len(ok)) + ok.encode() + b"e"
        self.assertEqual(ok, read_all(raw)[0].to_snap)
        raw = self.V1 + b"f" + u32(4097) + b"n" * 4097 + b"e"
        self.assertError(raw, r"'f' record is 4097 bytes, limit 4096")
        self.assertError(self.V1 + b"t" + u32(2) + b"\xff\xfee",
                         r"name in 't' record is not UTF-8")

    def test_duplicate_metadata(self):
        for rec in (b"s" + u64(1), b"t" + u32(1) + b"x"):
            self.assertError(self.V1 + rec + rec + b"e", "duplicate")

    def test_metadata_after_data(self):
        raw = self.V1 + b"s" + u64(9) + self.w(0, b"a") + b"s" + u64(9) + b"e"
        self.assertError(raw, "metadata record 's' after data")

    def test_v2_length_mismatch(self):
        raw = (b"rbd diff v2\ns" + u64(8) + u64(9)
               + b"w" + u64(99) + u64(0) + u64(1) + b"ae")
        self.assertError(raw, r"'w' declares length 99, expected 17")

    def test_image_size_limit(self):
        self.assertError(self.V1 + b"s" + u64(2048) + b"e",
                         "image size 2048 exceeds limit 1024",
                         image_size_limit=1024)

    def test_max_record_bytes(self):
        raw = self.V1 + b"s" + u64(99) + self.w(0, b"abcd") + b"e"
        self.assertError(raw, "length 4 exceeds max_record_bytes 3",
                         max_record_bytes=3)

    def test_bad_lineage(self):
        for payload in (b"[1]", b"{", b"\xff"):
            raw = b"rbd diff v2\nL" + u64(len(payload)) + payload + b"e"
            self.assertError(raw, "lineage record 'L' is not a JSON object")

    def test_lineage_record_is_capped(self):
        """A crafted ``L`` record is refused by its declared length, before
        anything is read or parsed (it once drove ``inspect`` to 1.79 GB)."""
        payload = b"[" * (ds.MAX_LINEAGE_BYTES + 1)
        raw = b"rbd diff v2\nL" + u64(len(payload)) + payload + b"e"
        self.assertError(raw, "lineage record length %d exceeds %d bytes"
                         % (len(payload), ds.MAX_LINEAGE_BYTES))
        fits = json.dumps({"k": "v" * (ds.MAX_LINEAGE_BYTES - 20)}).encode()
        header = ds.DiffReader(io.BytesIO(b"rbd diff v2\nL" + u64(len(fits)) + fits + b"e"))
        self.assertEqual(json.loads(fits), header.header.lineage)

    def test_error_is_sticky(self):
        reader = ds.DiffReader(io.BytesIO(self.V1 + b"s" + u64(9)))
        self.assertRaises(ds.DiffFormatError, list, reader)
        self.assertRaises(ds.DiffFormatError, next, reader)

    def test_stops_at_end_record(self):
        first = write_diff(2, (None, "a", 10), [ds.DataRecord(0, b"x")])
        second = write_diff(2, ("a", None, 20), [ds.ZeroRecord(5, 5)])
        stream = io.BytesIO(first + second + b"trailing")
        self.assertEqual([ds.DataRecord(0, b"x")],
                         list(ds.DiffReader(stream)))
        self.assertEqual(len(first), stream.tell())
        reader = ds.DiffReader(stream)
        self.assertEqual(("a", [ds.ZeroRecord(5, 5)]),
                         (reader.header.from_snap, list(reader)))
        self.assertEqual(b"trailing", stream.read())


class WriterTest(unittest.TestCase):

    def writer(self, size=100):
        w = ds.DiffWriter(io.BytesIO())
        w.write_header("a", "b", size)
        return w

    def test_rejects_overlap_and_disorder(self):
        w = self.writer()
        w.write_data(10, b"abcd")
        self.assertRaises(ValueError, w.write_data, 12, b"x")
        self.assertRaises(ValueError, w.write_zero, 0, 1)
        w.write_zero(14, 1)

    def test_rejects_beyond_size(self):
        self.assertRaises(ValueError, self.writer(10).write_zero, 5, 6)

    def test_misuse(self):
        w = ds.DiffWriter(io.BytesIO())
        self.assertRaises(ValueError, w.write_data, 0, b"x")
        self.assertRaises(ValueError, w.close)
        self.assertRaises(ValueError, w.write_header, None, "x" * 4097, 1)
        self.assertRaises(ValueError, ds.DiffWriter, io.BytesIO(), 3)
        w = self.writer()
        self.assertRaises(ValueError, w.write_header, None, None, 1)
        w.close()
        self.assertRaises(ValueError, w.write_zero, 0, 1)

    def test_zero_length_records_are_dropped(self):
        w = self.writer()
        before = w.bytes_written
        w.write_data(0, b"")
        w.write_zero(0, 0)
        self.assertEqual(before, w.bytes_written)


class SummarizeTest(unittest.TestCase):

    def test_summary(self):
        raw = write_diff(2, ("a", "b", 100),
                         [ds.DataRecord(3, b"xyz"), ds.ZeroRecord(10, 20),
                          ds.DataRecord(40, b"q")], lineage={"chain": 1})
        summary = ds.summarize(ds.DiffReader(io.BytesIO(raw)))
        self.assertEqual({
            "version": 2, "from_snap": "a", "to_snap": "b", "size": 100,
            "lineage": {"chain": 1}, "data_records": 2, "data_bytes": 4,
            "zero_records": 1, "zero_bytes": 20, "extents": 3,
            "covered_bytes": 24, "first_offset": 3, "last_offset": 40,
            "end_offset": 41, "end_seen": True}, summary)
        json.dumps(summary)

    def test_empty_summary(self):
        raw = write_diff(1, (None, None, 0), [])
        summary = ds.summarize(ds.DiffReader(io.BytesIO(raw)))
        self.assertIsNone(summary["first_offset"])
        self.assertEqual(0, summary["extents"])


@unittest.skipUnless(os.path.exists(RBD), "rbd CLI not installed")
class RbdMergeDiffInteropTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.count = 0

    def merge(self, first, second):
        self.count += 1
        paths = [os.path.join(self.tmp, f"{self.count}.{n}")
                 for n in ("a", "b", "out")]
        for i, raw in enumerate((first, second)):
            with open(paths[i], "wb") as f:
                f.write(raw)
        subprocess.run([RBD, "merge-diff", "--no-progress", *paths],
                       check=True, capture_output=True, timeout=60)
        with open(paths[2], "rb") as f:
            return f.read()

    def check(self, base, diff1, diff2):
        first = write_diff(1, (None, "s1") + diff1[0][2:], diff1[1])
        second = write_diff(1, ("s1", "s2") + diff2[0][2:], diff2[1])
        merged = self.merge(first, second)
        header = ds.DiffReader(io.BytesIO(merged)).header
        self.assertEqual((None, "s2"), (header.from_snap, header.to_snap))
        expected = apply_diff(apply_diff(bytearray(base), first), second)
        self.assertEqual(expected, apply_diff(bytearray(base), merged))

    def test_merge_fixed(self):
        d1 = ((None, None, 64), [ds.DataRecord(0, b"a" * 10),
                                 ds.ZeroRecord(20, 10),
                                 ds.DataRecord(40, b"b" * 20)])
        d2 = ((None, None, 48), [ds.DataRecord(5, b"c" * 20),
                                 ds.ZeroRecord(45, 3)])
        self.check(os.urandom(80), d1, d2)

    @hypothesis.settings(max_examples=25, deadline=None)
    @hypothesis.given(diffs(max_gap=16), diffs(max_gap=16),
                      st.binary(max_size=300))
    def test_merge_random(self, diff1, diff2, base):
        self.check(base, diff1, diff2)


if __name__ == "__main__":
    unittest.main()
