"""Pure logic of checksums (recording, laying records over, folding) and the rate limit."""

import itertools
import random
import unittest

import hypothesis
from hypothesis import strategies as st

from cinder_rbd_incremental import checksums, engine, layout, ratelimit

BLOCK = 16  # small blocks keep the images of these tests small
SIZE = 8 * BLOCK * 4
CHUNK = 4 * BLOCK
SETTINGS = hypothesis.settings(max_examples=150, deadline=None)


class FakeImage:
    """An image as bytes: what the engine's reads and the sink see."""

    def __init__(self, data):
        self.data = bytearray(data)

    def read(self, offset, length):
        return bytes(self.data[offset:offset + length]).ljust(length, b"\0")


def record_of(image, extents, parent=None):
    """Run the recorder the way engine.transfer does, over ``extents``;
    returns (record, pieces handed to the sink)."""
    recorder = checksums.Recorder(len(image.data), parent=parent, block=BLOCK)
    fed = []
    for offset, length, exists in recorder.widen(engine.chunked(extents, CHUNK)):
        data = image.read(offset, length) if exists else None
        fed += recorder.take(offset, length, data)
    return recorder.record, fed


def expected_blocks(data):
    return {i // BLOCK: checksums.digest(data[i:i + BLOCK], BLOCK)
            for i in range(0, len(data), BLOCK) if any(data[i:i + BLOCK])}


@st.composite
def extents(draw):
    """Disjoint ascending (offset, length, exists) inside SIZE."""
    cuts = sorted(set(draw(st.lists(st.integers(0, SIZE), min_size=2, max_size=12))))
    result = []
    for start, end in itertools.pairwise(cuts):
        if draw(st.booleans()):
            result.append((start, end - start, draw(st.booleans())))
    return result


def apply(base, image, extents_):
    """What the target holds after ``extents_`` of ``image`` land on ``base``."""
    out = bytearray(base)
    for offset, length, exists in extents_:
        out[offset:offset + length] = image.read(offset, length) if exists else bytes(length)
    return bytes(out)


class RecorderTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(extents(), st.randoms(use_true_random=False))
    def test_sink_gets_exactly_what_changed_and_record_describes_the_result(self, wanted, rng):
        base = rng.randbytes(SIZE)
        source = bytearray(rng.randbytes(SIZE))
        source[BLOCK:3 * BLOCK] = bytes(2 * BLOCK)  # some zero blocks
        image = FakeImage(source)
        # the source equals the parent outside the changed extents
        for offset, length, exists in wanted:
            if not exists:
                image.data[offset:offset + length] = bytes(length)
        truth = apply(base, image, wanted)
        image.data[:] = truth

        parent = checksums.Record(size=SIZE, block=BLOCK, data=expected_blocks(base))
        record, fed = record_of(image, wanted, parent="p")

        self.assertEqual([(o, n) for o, n, _e in engine.chunked(wanted, CHUNK)],
                         [(o, n) for o, n, _d in fed])
        for (offset, length, exists), (_o, _n, data) in zip(engine.chunked(wanted, CHUNK), fed,
                                                             strict=True):
            self.assertEqual(None if not exists else bytes(truth[offset:offset + length]),
                             None if data is None else bytes(data))
        _size, _block, blocks = checksums.effective({"p": parent, "c": record}, "c")
        self.assertEqual(expected_blocks(truth), blocks)

    def test_fold_keeps_the_child_checkable(self):
        rng = random.Random(5)
        images = [rng.randbytes(SIZE)]
        records = {"a": checksums.Record(size=SIZE, block=BLOCK, data=expected_blocks(images[0]))}
        for name, parent, change in (("b", "a", [(3, 40, True), (100, 64, False)]),
                                     ("c", "b", [(70, 5, True), (200, 56, False)])):
            image = FakeImage(rng.randbytes(SIZE))
            images.append(apply(images[-1], image, change))
            image.data[:] = images[-1]
            records[name], _fed = record_of(image, change, parent=parent)
        self.assertEqual(expected_blocks(images[2]), checksums.effective(records, "c")[2])
        merged = checksums.merge(records["b"], records["c"])
        self.assertEqual("a", merged.parent)
        folded = {"a": records["a"], "c": merged}
        self.assertEqual(expected_blocks(images[2]), checksums.effective(folded, "c")[2])
        round_trip = checksums.Record.decode(merged.encode())
        self.assertEqual(merged, round_trip)

    def test_missing_or_looping_records_are_no_checksums(self):
        with self.assertRaisesRegex(checksums.NoChecksums, "x has no checksum record"):
            checksums.effective({"y": checksums.Record(size=BLOCK, parent="x")}, "y")
        loop = {"y": checksums.Record(size=BLOCK, parent="z"),
                "z": checksums.Record(size=BLOCK, parent="y")}
        with self.assertRaisesRegex(checksums.NoChecksums, "loop"):
            checksums.effective(loop, "y")
        with self.assertRaisesRegex(checksums.NoChecksums, "truncated"):
            checksums.Record.decode(checksums.Record(size=1, data={0: b"x" * 4}).encode()[:-1])

    def test_a_shrink_to_a_partial_block_leaves_that_block_unknown(self):
        full = checksums.Record(size=4 * BLOCK, block=BLOCK,
                                data={i: b"%04d" % i for i in range(4)})
        shrunk = checksums.Record(size=2 * BLOCK + 3, parent="full", block=BLOCK)
        _size, _block, blocks = checksums.effective({"full": full, "s": shrunk}, "s")
        self.assertEqual({0: b"%04d" % 0, 1: b"%04d" % 1, 2: None}, blocks)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class TokenBucketTest(unittest.TestCase):

    def test_average_rate_holds_for_writes_larger_than_the_bucket(self):
        clock = FakeClock()
        bucket = ratelimit.TokenBucket(10 << 20, clock=clock, sleep=clock.sleep)
        for _ in range(64):
            bucket.take(4 << 20)
        self.assertAlmostEqual(256 / 10, clock.now, delta=0.01)

    def test_idle_time_buys_at_most_a_second(self):
        clock = FakeClock()
        bucket = ratelimit.TokenBucket(1000, clock=clock, sleep=clock.sleep)
        clock.now = 100.0
        bucket.take(3000)
        self.assertAlmostEqual(102.0, clock.now)

    def test_parse_rate(self):
        self.assertEqual(50 << 20, ratelimit.parse_rate("50M"))
        self.assertEqual(512 << 10, ratelimit.parse_rate("512k"))
        self.assertEqual(1 << 30, ratelimit.parse_rate("1GiB/s"))
        self.assertEqual(1000, ratelimit.parse_rate("1000"))
        for bad in ("", "0", "fast", "-5M", "5T"):
            with self.assertRaises(ValueError):
                ratelimit.parse_rate(bad)

    def test_shared_is_one_bucket_per_rate(self):
        self.assertIs(ratelimit.shared(12345), ratelimit.shared(12345))
        self.assertIsNone(ratelimit.shared(0))


class LayoutTest(unittest.TestCase):

    def test_features_by_name(self):
        self.assertIsNone(layout.parse_features(None))
        self.assertEqual(layout.FEATURES["layering"] | layout.FEATURES["journaling"],
                         layout.parse_features(["layering", "journaling"]))
        with self.assertRaisesRegex(ValueError, "unknown feature.*bogus"):
            layout.parse_features(["layering", "bogus"])

    def test_erasure_coded_pools_need_overwrites(self):
        replicated = {"type": 1, "erasure_code_profile": "", "flags_names": "hashpspool"}
        erasure = {"type": 3, "erasure_code_profile": "k2m1", "flags_names": "hashpspool"}
        self.assertFalse(layout.lacks_overwrites(replicated))
        self.assertTrue(layout.lacks_overwrites(erasure))
        self.assertFalse(layout.lacks_overwrites(dict(erasure,
                                                      flags_names="hashpspool,ec_overwrites")))
