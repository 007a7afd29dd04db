"""Changed-extent discovery whose cost follows the change, in bounded memory.

librbd (Ceph 16) finds the precise extents changed between two snapshots by
asking every object of the image (``list_snaps``): about 12 s per TiB on an
idle sandbox, however little changed. Asked for whole objects
(``whole_object``) on an image with the fast-diff feature, it answers from
the object maps instead, one read per snapshot. So discovery takes two steps:

1. which objects changed: one ``whole_object`` diff, kept as one byte per
   object (:class:`ChangedObjects`, 256 KiB per TiB of 4 MiB objects);
2. which bytes of them: precise ``diff_iterate`` calls over runs of changed
   objects only, ``RUN_OBJECTS`` objects at most each, handed on as they
   come (:class:`ChangedExtents`).

Nothing keeps more than one run's extents, so memory stays bounded whatever
the volume's size and the guest's write pattern; the precise extents are the
ones a single ``diff_iterate`` over the whole image reports, in the same
order.

When librbd cannot use the object map (no fast-diff feature, or a map
flagged invalid: librbd would then quietly ask every object in step 1 too),
the precise extents come from one scan of the image, a window at a time, and
a warning says how to repair the image. Rebuilding an object map is the
operator's call (it takes the image's exclusive lock and reads every object):
discovery never does it.
"""

import collections
import logging
import re

import rbd

LOG = logging.getLogger(__name__)

UNCHANGED, WRITTEN, GONE = 0, 1, 2
# Objects per precise query: bounds the extents held at once (a 4 MiB object
# holds at most 512 extents of 4 KiB written every 8 KiB) while each query
# still keeps librbd's rbd_concurrent_management_ops requests in flight.
RUN_OBJECTS = 16
SCAN_OBJECTS = 64  # objects per query of the fall-back scan
UNKNOWN = object()  # the snapshot an image is open at, when the caller cannot say
_CHANGED_RUNS = re.compile(rb"\x01+|\x02+")
_ANY_CHANGE = re.compile(rb"[\x01\x02]+")
_recent_warnings: collections.deque = collections.deque(maxlen=64)


class ChangedObjects:
    """Which objects of ``image`` (at the snapshot it is open at) changed since
    ``from_snap`` (None: which hold data, a clone's parent included).

    ``states`` has one byte per object: UNCHANGED, WRITTEN (exists and
    changed) or GONE (removed, reads as zeros). With the fast-diff feature
    librbd answers from the object maps; without it, by asking every object.
    On a striped image an object's data is spread over the image, so a byte
    stands for an object-sized range of the image, and a range with any
    change counts as WRITTEN (asked precisely, read, never assumed zero).
    """

    def __init__(self, image, from_snap=None):
        self.size = image.size()
        self.object_size = 1 << image.stat()["order"]
        self.states = bytearray(-(-self.size // self.object_size))
        self._striped = image.stripe_count() != 1
        image.diff_iterate(0, self.size, from_snap, self._mark, include_parent=True,
                           whole_object=True)

    def _mark(self, offset, length, exists):
        first = offset // self.object_size
        last = min((offset + length - 1) // self.object_size, len(self.states) - 1)
        for index in range(first, last + 1):
            if exists or self._striped:
                self.states[index] = WRITTEN
            elif self.states[index] == UNCHANGED:
                self.states[index] = GONE

    def extent(self, first, count=1):
        """``(offset, length)`` of ``count`` objects from index ``first``."""
        offset = first * self.object_size
        return offset, min(count * self.object_size, self.size - offset)

    def span(self):
        """``(offset, length)`` from the first changed object to the end of the
        last one; ``(0, 0)`` when nothing changed."""
        first = len(self.states) - len(self.states.lstrip(b"\0"))
        end = len(self.states.rstrip(b"\0"))
        return self.extent(first, end - first) if end > first else (0, 0)

    def runs(self):
        """``(first, count, state)`` for each run of changed objects in one state."""
        for match in _CHANGED_RUNS.finditer(self.states):
            yield match.start(), match.end() - match.start(), self.states[match.start()]

    def changed_runs(self):
        """``(first, count)`` for each run of changed objects, whatever their state."""
        for match in _ANY_CHANGE.finditer(self.states):
            yield match.start(), match.end() - match.start()

    def changed_bytes(self):
        """Bytes of the image in changed objects: what the precise extents cover at most."""
        return sum(self.extent(first, count)[1] for first, count in self.changed_runs())

    def whole_extents(self):
        """``(offset, length, exists)`` per changed object, as ``whole_object`` gives them."""
        for first, count, state in self.runs():
            for index in range(first, first + count):
                yield (*self.extent(index), state == WRITTEN)

    def chunk_starts(self, chunk_size):
        """Ascending offsets of the ``chunk_size`` chunks that hold a changed object."""
        last = -1  # chunks may be larger than objects: each chunk once
        for first, count in self.changed_runs():
            offset, length = self.extent(first, count)
            first_chunk = max(offset // chunk_size, last + 1)
            last = (offset + length - 1) // chunk_size
            for chunk in range(first_chunk, last + 1):
                yield chunk * chunk_size


class ChangedExtents:
    """``(offset, length, exists)`` changed in ``image`` since ``from_snap``:
    an iterable, ascending, discovering the precise extents one run of
    changed objects at a time. ``exists`` False: discarded, reads as zeros.

    Which objects changed is known when this is made: ``upper_bound`` is the
    number of bytes the extents cover at most (the image's size when the
    image has to be scanned), ``object_map_used`` whether librbd could answer
    from the object map. ``whole_object``: whole changed objects, as
    ``diff_iterate(whole_object=True)`` gives them. ``at_snap``: the snapshot
    ``image`` is open at (None: HEAD), if known; then the object map of
    ``from_snap`` is checked too (``image`` switches to it and back).
    """

    def __init__(self, image, from_snap=None, whole_object=False, at_snap=UNKNOWN):
        self.image = image
        self.from_snap = from_snap
        self.whole_object = whole_object
        problem = fast_diff_problem(image, from_snap, at_snap)
        self.object_map_used = problem is None
        self.objects = None
        if problem is not None:
            _warn_scan(image, problem)
            self.upper_bound = image.size()
        else:
            self.objects = ChangedObjects(image, from_snap)
            self.upper_bound = self.objects.changed_bytes()

    def __iter__(self):
        if self.objects is None:
            return scan(self.image, self.from_snap, self.whole_object)
        if self.whole_object:
            return self.objects.whole_extents()
        return self._precise()

    def _precise(self):
        # Removed objects are asked too: librbd reports what they held then.
        for first, count in self.objects.changed_runs():
            for start in range(first, first + count, RUN_OBJECTS):
                yield from query(self.image, *self.objects.extent(
                    start, min(RUN_OBJECTS, first + count - start)), self.from_snap)


def query(image, offset, length, from_snap, whole_object=False):
    """The extents ``diff_iterate`` reports in one range, sorted."""
    found = []
    image.diff_iterate(offset, length, from_snap,
                       lambda offset, length, exists: found.append((offset, length, exists)),
                       include_parent=True, whole_object=whole_object)
    found.sort()
    return found


def scan(image, from_snap=None, whole_object=False):
    """Every object asked, ``SCAN_OBJECTS`` at a time (when the object map cannot help)."""
    size = image.size()
    window = SCAN_OBJECTS << image.stat()["order"]
    for offset in range(0, size, window):
        yield from query(image, offset, min(window, size - offset), from_snap, whole_object)


def fast_diff_problem(image, from_snap=None, at_snap=UNKNOWN):
    """Why librbd cannot tell changed objects from the object map, or None.

    Checks the feature, the flags of the snapshot ``image`` is open at and,
    when ``at_snap`` names that snapshot (None: HEAD), those of ``from_snap``
    (librbd also checks the snapshots in between; an invalid one among them
    makes it ask every object in step 1 by itself: slower, still exact).
    """
    invalid = rbd.RBD_FLAG_OBJECT_MAP_INVALID | rbd.RBD_FLAG_FAST_DIFF_INVALID
    if not image.features() & rbd.RBD_FEATURE_FAST_DIFF:
        return "it has no fast-diff feature"
    if image.flags() & invalid:
        return "its object map is flagged invalid"
    if from_snap is not None and at_snap is not UNKNOWN:
        image.set_snap(from_snap)
        try:
            flags = image.flags()
        finally:
            image.set_snap(at_snap)
        if flags & invalid:
            return "the object map of its snapshot %s is flagged invalid" % from_snap
    return None


def _warn_scan(image, problem):
    """Warn once per image and problem (a backup asks several times)."""
    key = (image.id(), problem)
    if key in _recent_warnings:
        return
    _recent_warnings.append(key)
    LOG.warning("image %s: %s, so librbd cannot tell which objects changed from its object "
                "map: asking every object instead (about 12 s per TiB, whatever changed). "
                "Enable it with 'rbd feature enable POOL/IMAGE object-map fast-diff' or "
                "repair it with 'rbd object-map rebuild POOL/IMAGE[@SNAPSHOT]'",
                image.get_name(), problem)
