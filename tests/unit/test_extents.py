"""Logic of changed-extent discovery (cinder_rbd_incremental.extents).

No cluster here: a small stand-in for ``rbd.Image`` answers ``diff_iterate``
the way librbd does (precise extents within objects, or whole objects), and
counts what it was asked. The functional tier checks the same on real images.
"""

import unittest

import hypothesis
import rbd
from hypothesis import strategies as st

from cinder_rbd_incremental import engine
from cinder_rbd_incremental import extents as discovery

ORDER = 12  # 4 KiB objects keep the examples small
OBJECT = 1 << ORDER
SETTINGS = hypothesis.settings(max_examples=25, deadline=None)


class FakeImage:
    """What changed since the one snapshot it knows: ``changes`` is a list of
    ``(offset, length, exists)`` within objects, as librbd reports them."""

    def __init__(self, size, changes, features=rbd.RBD_FEATURE_FAST_DIFF, flags=0,
                 from_snap_flags=0):
        self._size = size
        self.changes = sorted(changes)
        self._features = features
        self._flags = {None: flags, "at": flags, "from": from_snap_flags}
        self.snap = "at"
        self.queries = []  # (offset, length, whole_object)

    def size(self):
        return self._size

    def stat(self):
        return {"order": ORDER}

    def stripe_count(self):
        return 1

    def features(self):
        return self._features

    def flags(self):
        return self._flags[self.snap]

    def set_snap(self, name):
        self.snap = name

    def id(self):
        return "fake"

    def get_name(self):
        return "fake-image"

    def diff_iterate(self, offset, length, from_snap, callback, include_parent=True,
                     whole_object=False):
        self.queries.append((offset, length, whole_object))
        end = offset + length
        if whole_object:
            objects = {}
            for start, _length, exists in self.changes:
                if offset <= start < end:
                    index = start // OBJECT
                    objects[index] = objects.get(index, False) or exists
            for index in sorted(objects):
                start = index * OBJECT
                callback(start, min(OBJECT, self._size - start), objects[index])
            return
        for start, size, exists in self.changes:
            if offset <= start < end:
                callback(start, size, exists)


@st.composite
def images(draw):
    """A fake image of up to 80 objects with changes in some of them."""
    objects = draw(st.integers(1, 80))
    size = objects * OBJECT - draw(st.sampled_from([0, 0, 1, OBJECT // 2]))
    changes = []
    for index in sorted(draw(st.sets(st.integers(0, objects - 1), max_size=objects))):
        base = index * OBJECT
        room = min(OBJECT, size - base)
        cuts = sorted(draw(st.sets(st.integers(0, room), min_size=2, max_size=6)))
        for start, stop in zip(cuts[::2], cuts[1::2], strict=False):
            if stop > start:
                changes.append((base + start, stop - start, draw(st.booleans())))
    return FakeImage(size, changes)


def single_query(image, whole_object=False):
    """What one diff_iterate over the whole image says: the reference."""
    found = []
    image.diff_iterate(0, image.size(), "from", lambda *e: found.append(e),
                       whole_object=whole_object)
    image.queries.clear()
    return found


class ChangedExtentsTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(images())
    def test_precise_extents_equal_one_query_over_the_image(self, image):
        expected = single_query(image)
        changes = discovery.ChangedExtents(image, "from")
        self.assertTrue(changes.object_map_used)
        self.assertEqual(expected, list(changes))
        self.assertGreaterEqual(changes.upper_bound, sum(e[1] for e in expected))

    @SETTINGS
    @hypothesis.given(images())
    def test_precise_queries_ask_only_runs_of_changed_objects(self, image):
        changed = {start // OBJECT for start, _length, _exists in image.changes}
        list(discovery.ChangedExtents(image, "from"))
        whole, *precise = image.queries
        self.assertEqual((0, image.size(), True), whole)
        for offset, length, whole_object in precise:
            self.assertFalse(whole_object)
            self.assertEqual(0, offset % OBJECT)
            self.assertLessEqual(length, discovery.RUN_OBJECTS * OBJECT)
            objects = set(range(offset // OBJECT, (offset + length - 1) // OBJECT + 1))
            self.assertLessEqual(objects, changed)
        asked = sum(length for _offset, length, _whole in precise)
        self.assertEqual(sum(min(OBJECT, image.size() - o * OBJECT) for o in changed), asked)

    @SETTINGS
    @hypothesis.given(images())
    def test_whole_objects_equal_librbd_whole_object(self, image):
        expected = single_query(image, whole_object=True)
        self.assertEqual(expected, list(discovery.ChangedExtents(image, "from", True)))

    @SETTINGS
    @hypothesis.given(images(), st.sampled_from([OBJECT // 4, OBJECT, 3 * OBJECT, 8 * OBJECT]))
    def test_chunk_starts_cover_changed_objects_once(self, image, chunk):
        objects = discovery.ChangedObjects(image, "from")
        expected = sorted({start // chunk * chunk + step
                           for start, length, _ in single_query(image, True)
                           for step in range(0, length, chunk)} if chunk < OBJECT else
                          {start // chunk * chunk for start, _, _ in single_query(image, True)})
        self.assertEqual(expected, list(objects.chunk_starts(chunk)))

    def test_a_long_run_is_asked_in_bounded_pieces(self):
        count = 3 * discovery.RUN_OBJECTS + 5
        image = FakeImage(count * OBJECT, [(o * OBJECT + 8, 16, True) for o in range(count)])
        self.assertEqual(count, len(list(discovery.ChangedExtents(image, "from"))))
        lengths = [length // OBJECT for _offset, length, _whole in image.queries[1:]]
        self.assertEqual([discovery.RUN_OBJECTS] * 3 + [5], lengths)

    def test_a_removed_object_is_asked_too(self):
        # librbd reports what a removed object held then, not the whole object
        image = FakeImage(4 * OBJECT, [(OBJECT, 100, False)])
        self.assertEqual([(OBJECT, 100, False)], list(discovery.ChangedExtents(image, "from")))
        self.assertEqual([(OBJECT, OBJECT, False)],
                         list(discovery.ChangedExtents(image, "from", whole_object=True)))

    def test_nothing_changed_asks_nothing_precise(self):
        image = FakeImage(1 << 30, [])
        changes = discovery.ChangedExtents(image, "from")
        self.assertEqual([], list(changes))
        self.assertEqual(0, changes.upper_bound)
        self.assertEqual(1, len(image.queries))


class FallBackTest(unittest.TestCase):
    """Without a usable object map: one precise scan, window by window."""

    CHANGES = [(5, 10, True), (3 * OBJECT, 7, False), (200 * OBJECT + 1, 2, True)]

    def assertScans(self, image, at_snap=discovery.UNKNOWN):
        with self.assertLogs(discovery.LOG, "WARNING") as logs:
            changes = discovery.ChangedExtents(image, "from", at_snap=at_snap)
        self.assertFalse(changes.object_map_used)
        self.assertEqual(image.size(), changes.upper_bound)
        self.assertEqual(single_query(image), list(changes))
        self.assertTrue(all(not whole and length <= discovery.SCAN_OBJECTS * OBJECT
                            for _offset, length, whole in image.queries))
        self.assertEqual(image.size(), sum(length for _o, length, _w in image.queries))
        return logs.output[0]

    def setUp(self):
        super().setUp()
        discovery._recent_warnings.clear()

    def test_without_fast_diff(self):
        message = self.assertScans(FakeImage(300 * OBJECT, self.CHANGES, features=0))
        self.assertIn("no fast-diff feature", message)
        self.assertIn("rbd feature enable", message)

    def test_object_map_flagged_invalid(self):
        message = self.assertScans(FakeImage(300 * OBJECT, self.CHANGES,
                                             flags=rbd.RBD_FLAG_OBJECT_MAP_INVALID))
        self.assertIn("flagged invalid", message)
        self.assertIn("rbd object-map rebuild", message)

    def test_from_snapshot_flagged_invalid_when_the_end_is_known(self):
        image = FakeImage(300 * OBJECT, self.CHANGES,
                          from_snap_flags=rbd.RBD_FLAG_FAST_DIFF_INVALID)
        self.assertTrue(discovery.ChangedExtents(image, "from").object_map_used)
        self.assertIn("snapshot from", self.assertScans(image, at_snap="at"))
        self.assertEqual("at", image.snap)  # switched back

    def test_warned_once_per_image_and_problem(self):
        image = FakeImage(8 * OBJECT, [], features=0)
        with self.assertLogs(discovery.LOG, "WARNING") as logs:
            for _ in range(3):
                list(discovery.ChangedExtents(image, "from"))
            discovery.LOG.warning("end")
        self.assertEqual(2, len(logs.output))


class UnionOfChunksTest(unittest.TestCase):

    @SETTINGS
    @hypothesis.given(images(), images())
    def test_chunks_of_either_image_ascending_once(self, one, two):
        maps = [discovery.ChangedObjects(image, "from") for image in (one, two)]
        chunks = list(engine._union_of_chunks(maps, [one, two], OBJECT))
        size = max(one.size(), two.size())
        expected = sorted({start for image in (one, two)
                           for start, _, _ in single_query(image, True)})
        self.assertEqual([(start, min(OBJECT, size - start), True) for start in expected],
                         chunks)
