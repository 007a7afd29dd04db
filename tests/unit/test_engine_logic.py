"""Pure logic of the engine (zero runs, chunking, options) and of diff merging.

No cluster here: only functions that work on bytes, tuples and streams.
"""

import io
import unittest

import hypothesis
from hypothesis import strategies as st

from cinder_rbd_incremental import diffstream as ds
from cinder_rbd_incremental import engine

SETTINGS = hypothesis.settings(max_examples=300, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])
GRANULARITIES = st.sampled_from([1, 2, 3, 7, 8, 16, 512, 4096])


@st.composite
def blocky_data(draw, max_blocks=24):
    """(data, granularity): whole/partial blocks, zero or not, sometimes one non-zero byte."""
    granularity = draw(GRANULARITIES)
    parts = []
    for kind in draw(st.lists(st.sampled_from(["zero", "data", "one"]), max_size=max_blocks)):
        if kind == "zero":
            parts.append(bytes(granularity))
        elif kind == "data":
            parts.append(draw(st.binary(min_size=granularity, max_size=granularity)))
        else:  # a zero block with a single non-zero byte somewhere
            block = bytearray(granularity)
            block[draw(st.integers(0, granularity - 1))] = draw(st.integers(1, 255))
            parts.append(bytes(block))
    tail = draw(st.sampled_from([b"", b"\0", b"\0\0\x01", b"\x05"]))
    return b"".join(parts) + tail[:max(0, granularity - 1)], granularity


class ZeroRunsTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(blocky_data())
    def test_runs_cover_data_and_classify_blocks(self, case):
        data, granularity = case
        runs = list(engine.zero_runs(data, granularity))
        # runs cover the data exactly, in order, without gaps or empty runs
        position = 0
        for start, length, _is_zero in runs:
            self.assertEqual(position, start)
            self.assertGreater(length, 0)
            position += length
        self.assertEqual(len(data), position)
        # adjacent runs alternate
        for (_, _, one), (_, _, two) in zip(runs, runs[1:], strict=False):
            self.assertIsNot(one, two)
        for start, length, is_zero in runs:
            # runs start on block boundaries and span whole blocks (but the last)
            self.assertEqual(0, start % granularity)
            if start + length != len(data):
                self.assertEqual(0, length % granularity)
            chunk = data[start:start + length]
            if is_zero:
                self.assertEqual(bytes(length), chunk)
            else:  # every block of a data run holds a non-zero byte
                for block in range(0, length, granularity):
                    self.assertTrue(any(chunk[block:block + granularity]),
                                    "zero block at %d in a data run" % (start + block))

    def test_examples(self):
        self.assertEqual([], list(engine.zero_runs(b"", 4)))
        self.assertEqual([(0, 10, True)], list(engine.zero_runs(bytes(10), 4)))
        self.assertEqual([(0, 10, False)], list(engine.zero_runs(b"x" * 10, 4)))
        data = bytes(4) + b"abcd" + bytes(8) + b"\0\0\0\1" + b"\0\0"
        self.assertEqual([(0, 4, True), (4, 4, False), (8, 8, True), (16, 4, False),
                          (20, 2, True)], list(engine.zero_runs(data, 4)))
        self.assertEqual([(0, 8192, True)],
                         list(engine.zero_runs(bytes(8192))))  # default granularity


@st.composite
def chunk_cases(draw):
    """(extents, chunk_size) with at most a few dozen chunks per extent."""
    chunk_size = draw(st.sampled_from([1, 7, 512, 3000, 4096, 1 << 20, 4 << 20]))
    extents = draw(st.lists(st.tuples(st.integers(0, 1 << 34),
                                      st.integers(1, 40 * chunk_size), st.booleans()),
                            max_size=10))
    return extents, chunk_size


class ChunkedTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(chunk_cases())
    def test_pieces_tile_each_extent_within_chunks(self, case):
        extents, chunk_size = case
        pieces = list(engine.chunked(extents, chunk_size))
        it = iter(pieces)
        for offset, length, exists in extents:
            position, end = offset, offset + length
            while position < end:
                p_offset, p_length, p_exists = next(it)
                self.assertEqual((position, exists), (p_offset, p_exists))
                self.assertGreater(p_length, 0)
                self.assertLessEqual(p_offset + p_length, end)
                # never crosses a multiple of chunk_size
                self.assertEqual(p_offset // chunk_size,
                                 (p_offset + p_length - 1) // chunk_size)
                # only the first and last piece of an extent may be partial chunks
                if position != offset and p_offset + p_length != end:
                    self.assertEqual(chunk_size, p_length)
                position += p_length
        self.assertIsNone(next(it, None))

    def test_examples(self):
        self.assertEqual([], list(engine.chunked([], 4)))
        self.assertEqual([(0, 4, True), (4, 4, True), (8, 2, True)],
                         list(engine.chunked([(0, 10, True)], 4)))
        self.assertEqual([(3, 1, False), (4, 4, False), (8, 1, False)],
                         list(engine.chunked([(3, 6, False)], 4)))
        self.assertEqual([(4, 4, True), (9, 1, True)],
                         list(engine.chunked([(4, 4, True), (9, 1, True)], 4)))
        self.assertEqual([(5, 3, True)], list(engine.chunked([(5, 3, True)], 4 << 20)))


class TransferOptionsTest(unittest.TestCase):

    def test_defaults_are_valid(self):
        options = engine.TransferOptions()
        self.assertEqual(4096, options.zero_granularity)
        self.assertEqual(4 << 20, options.chunk_size)
        self.assertFalse(options.whole_object)

    def test_valid_variants(self):
        engine.TransferOptions(zero_granularity=512, chunk_size=1 << 20,
                               max_in_flight_ops=1, max_in_flight_bytes=1 << 20)
        engine.TransferOptions(zero_granularity=4 << 20)
        engine.TransferOptions(zero_granularity=1, chunk_size=3, max_in_flight_bytes=3)

    def test_invalid(self):
        for kwargs in ({"zero_granularity": 0}, {"zero_granularity": -4096},
                       {"zero_granularity": 3000},  # does not divide the chunk size
                       {"zero_granularity": 8 << 20},  # larger than a chunk
                       {"max_in_flight_ops": 0}, {"max_in_flight_ops": -1},
                       {"max_in_flight_bytes": (4 << 20) - 1}):
            with self.subTest(**kwargs):
                self.assertRaises(ValueError, engine.TransferOptions, **kwargs)

    def test_chunk_size_must_be_positive(self):
        # chunked() divides by the chunk size (0) or never advances (negative)
        for chunk_size in (0, -4096):
            with self.subTest(chunk_size=chunk_size):
                self.assertRaises(ValueError, engine.TransferOptions, chunk_size=chunk_size,
                                  max_in_flight_bytes=4 << 20)


# --- merge ------------------------------------------------------------------

@st.composite
def diff_records(draw, size, max_records=6):
    """Ascending, disjoint data/zero records inside ``size``."""
    records, position = [], 0
    for _ in range(draw(st.integers(0, max_records))):
        if position >= size:
            break
        offset = draw(st.integers(position, size - 1))
        length = draw(st.integers(1, min(24, size - offset)))
        if draw(st.booleans()):
            records.append(ds.DataRecord(offset, draw(st.binary(min_size=length,
                                                                max_size=length))))
        else:
            records.append(ds.ZeroRecord(offset, length))
        position = offset + length
    return records


def encode(from_snap, to_snap, size, records, version=1):
    out = io.BytesIO()
    writer = ds.DiffWriter(out, version=version)
    writer.write_header(from_snap, to_snap, size)
    for record in records:
        if isinstance(record, ds.DataRecord):
            writer.write_data(record.offset, record.data)
        else:
            writer.write_zero(record.offset, record.length)
    writer.close()
    return out.getvalue()


def apply(image, raw):
    """Apply a diff to a bytearray model of an image, like import-diff: resize, then write."""
    reader = ds.DiffReader(io.BytesIO(raw))
    size = reader.header.size
    del image[size:]
    image.extend(bytes(size - len(image)))
    for record in reader:
        if isinstance(record, ds.DataRecord):
            image[record.offset:record.offset + record.length] = record.data
        else:
            image[record.offset:record.offset + record.length] = bytes(record.length)
    return image


def merged(first, second):
    out = io.BytesIO()
    ds.merge(ds.DiffReader(io.BytesIO(first)), ds.DiffReader(io.BytesIO(second)),
             ds.DiffWriter(out))
    return out.getvalue()


@st.composite
def two_consecutive_diffs(draw, same_size=False):
    """(start image, first diff, second diff): start is the state the first diff starts from."""
    start_size = draw(st.integers(0, 96))
    start = bytearray(draw(st.binary(min_size=start_size, max_size=start_size)))
    size_1 = start_size if same_size else draw(st.integers(0, 96))
    size_2 = size_1 if same_size else draw(st.integers(0, 96))
    first = encode("a", "b", size_1, draw(diff_records(size_1)))
    second = encode("b", "c", size_2, draw(diff_records(size_2)))
    return start, first, second


class MergeTest(unittest.TestCase):

    def check(self, start, first, second):
        expected = apply(apply(bytearray(start), first), second)
        raw = merged(first, second)
        header, records = ds.DiffReader(io.BytesIO(raw)).header, list(ds.DiffReader(
            io.BytesIO(raw)))
        self.assertEqual(("a", "c", len(expected)), (header.from_snap, header.to_snap,
                                                     header.size))
        self.assertIsNotNone(records)  # the merged diff reads back without error
        self.assertEqual(bytes(expected), bytes(apply(bytearray(start), raw)))

    @SETTINGS
    @hypothesis.given(two_consecutive_diffs(same_size=True))
    def test_merge_equals_applying_both_same_size(self, case):
        self.check(*case)

    @SETTINGS
    @hypothesis.given(two_consecutive_diffs())
    def test_merge_equals_applying_both(self, case):
        """Any sizes: the start image, the first and the second diff all may differ."""
        self.check(*case)

    def test_merge_after_shrink_then_grow_zeroes_the_gap(self):
        # the first diff shrinks 8 -> 4 bytes, the second grows 4 -> 8 with no record:
        # applied one after the other, bytes 4..8 read as zeros; rbd merge-diff adds a
        # zero record for [first size, second size) for this reason
        start = bytearray(b"ABCDEFGH")
        first = encode("a", "b", 4, [])
        second = encode("b", "c", 8, [])
        self.check(start, first, second)

    def test_second_wins_where_both_write(self):
        first = encode("a", "b", 16, [ds.DataRecord(0, b"x" * 10), ds.ZeroRecord(12, 4)])
        second = encode("b", "c", 16, [ds.DataRecord(4, b"yy"), ds.DataRecord(13, b"z")])
        self.check(bytearray(16), first, second)
        records = list(ds.DiffReader(io.BytesIO(merged(first, second))))
        self.assertEqual([ds.DataRecord(0, b"xxxx"), ds.DataRecord(4, b"yy"),
                          ds.DataRecord(6, b"xxxx"), ds.ZeroRecord(12, 1),
                          ds.DataRecord(13, b"z"), ds.ZeroRecord(14, 2)], records)

    def test_shrink_clips_the_first_diff(self):
        first = encode("a", "b", 16, [ds.DataRecord(2, b"x" * 12)])
        second = encode("b", "c", 6, [ds.ZeroRecord(0, 1)])
        self.check(bytearray(16), first, second)
        self.assertEqual([ds.ZeroRecord(0, 1), ds.DataRecord(2, b"xxxx")],
                         list(ds.DiffReader(io.BytesIO(merged(first, second)))))

    def test_rejects_diffs_that_do_not_follow_each_other(self):
        first = encode("a", "b", 8, [])
        second = encode("x", "c", 8, [])
        with self.assertRaisesRegex(ds.DiffFormatError, "cannot merge"):
            merged(first, second)
