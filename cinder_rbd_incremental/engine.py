"""The transfer engine: changed extents of a source image into a sink.

Data flows one way::

    diff_iterate -> chunks -> parallel aio reads -> zero-run detection -> sink

``transfer`` enumerates the extents that changed between two snapshots of an
image (or every allocated extent, for a full copy), reads them with many
``aio_read`` requests in flight, splits what it read into data and zero runs
at ``zero_granularity`` and hands both to a :class:`Sink`: an image on another
cluster, a diff stream, anything with the same five methods. Memory is bounded
by ``max_in_flight_bytes`` on the read side (and the sink's own bound), never
by the size of the volume.
"""

import collections
import contextlib
import dataclasses
import heapq
import os
import random
import sys
import time

from cinder_rbd_incremental import extents as discovery


def _native_threading():
    """The OS's threading module, even when eventlet has monkey-patched it.

    librbd completes aio requests on its own threads; they must be able to
    wake the waiting thread, which green locks cannot do from a native thread
    (cinder-backup runs under eventlet and calls us through its tpool).
    """
    if "eventlet" in sys.modules:
        from eventlet import patcher
        if patcher.is_monkey_patched("thread"):
            return patcher.original("threading")
    import threading
    return threading


threading = _native_threading()
DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_GRANULARITY = 4096


class TransferError(Exception):
    """An I/O request failed; the message names the operation and offset."""


class StateError(Exception):
    """The target is not in the state the transfer starts from; nothing was written."""


class AlreadyApplied(StateError):
    """The target already holds the end state (the end snapshot exists)."""


class Cancelled(Exception):
    """The caller asked the transfer to stop; the sink was aborted."""


@dataclasses.dataclass
class TransferOptions:
    """Knobs of the engine (the defaults suit a 4 MiB-object image)."""

    zero_granularity: int = DEFAULT_GRANULARITY
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_in_flight_ops: int = 256
    max_in_flight_bytes: int = 32 << 20
    whole_object: bool = False

    def __post_init__(self):
        if self.chunk_size <= 0:
            raise ValueError("chunk size must be positive")
        if self.zero_granularity <= 0 or self.chunk_size % self.zero_granularity:
            raise ValueError("chunk size must be a multiple of the zero granularity")
        if self.max_in_flight_ops < 1 or self.max_in_flight_bytes < self.chunk_size:
            raise ValueError("in-flight limits must allow at least one chunk")


@dataclasses.dataclass
class Plan:
    """What a transfer produces: the state named ``to_snap`` of an image.

    ``from_snap`` is None for a full copy. ``identity_from``/``identity_to``
    identify the source snapshots (cluster fsid, image id, snapshot id) so a
    sink can check that it applies onto the same point in time. The target's
    snapshots may carry other names (``dest_from_snap``/``dest_to_snap``).
    """

    to_snap: str
    size: int
    from_snap: str | None = None
    identity_from: dict | None = None
    identity_to: dict | None = None
    dest_from_snap: str | None = None
    dest_to_snap: str | None = None

    @property
    def dest_from(self):
        """The from-snapshot's name on the target (default: the source's name)."""
        return self.dest_from_snap or self.from_snap

    @property
    def dest_to(self):
        """The end snapshot's name on the target (default: the source's name)."""
        return self.dest_to_snap or self.to_snap


@dataclasses.dataclass
class Stats:
    """What a transfer did, in bytes of image address space."""

    changed_bytes: int = 0
    extents: int = 0
    data_bytes: int = 0
    zero_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self):
        return dataclasses.asdict(self)


class Sink:
    """Where a transfer writes. Subclasses implement all five methods.

    Contract: ``begin`` once (check the target's state, resize), then
    ``write``/``zero`` for disjoint extents in any order, then exactly one of
    ``commit`` (flush everything, then mark the end state, e.g. create the
    end snapshot) or ``abort`` (leave nothing that looks complete).
    ``flush`` may come before ``commit``: everything handed over is durable
    after it returns, and ``commit`` is left with marking the end state.
    """

    def flush(self):
        """Make what was handed over durable (default: ``commit`` does it)."""

    def begin(self, plan):
        raise NotImplementedError

    def write(self, offset, data):
        raise NotImplementedError

    def zero(self, offset, length):
        raise NotImplementedError

    def commit(self):
        raise NotImplementedError

    def abort(self):
        raise NotImplementedError


def changed_extents(image, from_snap=None, whole_object=False, at_snap=discovery.UNKNOWN):
    """``(offset, length, exists)`` changed since ``from_snap``, ascending.

    With no ``from_snap``: every allocated extent (including a clone parent's).
    ``exists`` False means the extent was discarded and now reads as zeros.
    An iterable that finds the changed objects from the object map first and
    the precise extents in them as it goes (see :mod:`.extents`): the cost
    follows the change, and memory is bounded whatever the volume's size.
    ``at_snap``: the snapshot ``image`` is open at (None: HEAD), if known.
    """
    return discovery.ChangedExtents(image, from_snap, whole_object, at_snap)


def chunked(extents, chunk_size):
    """Split extents at multiples of ``chunk_size`` (object boundaries)."""
    for offset, length, exists in extents:
        end = offset + length
        while offset < end:
            step = min(end, (offset // chunk_size + 1) * chunk_size) - offset
            yield offset, step, exists
            offset += step


_ZERO_BLOCKS: dict[int, bytes] = {}


def _zero_block(size):
    block = _ZERO_BLOCKS.get(size)
    if block is None:
        block = _ZERO_BLOCKS[size] = bytes(size)
    return block


def zero_runs(data, granularity=DEFAULT_GRANULARITY, group=16):
    """Return ``[(start, length, is_zero)]`` runs covering ``data``.

    Blocks of ``granularity`` bytes that are all zero merge into zero runs,
    everything else into data runs. ``group`` blocks at a time are tested
    first with one comparison, so a sparse chunk costs a few comparisons
    rather than one per block; ``bytes.startswith`` compares in place, so no
    block is copied.
    """
    size = len(data)
    step = granularity * group
    zero_block, zero_group = _zero_block(granularity), _zero_block(step)
    flags = []  # (start, is_zero) where the kind may change
    for group_start in range(0, size, step):
        if data.startswith(zero_group, group_start):
            flags.append((group_start, True))
            continue
        for start in range(group_start, min(group_start + step, size), granularity):
            block = zero_block if start + granularity <= size else _zero_block(size - start)
            flags.append((start, data.startswith(block, start)))
    runs = []
    for start, is_zero in flags:
        if not runs or runs[-1][1] is not is_zero:
            runs.append((start, is_zero))
    ends = [start for start, _ in runs[1:]] + [size]
    return [(start, end - start, is_zero)
            for (start, is_zero), end in zip(runs, ends[:len(runs)], strict=True)]


class _BoundedAio:
    """Shared state of a bounded set of aio requests on one image."""

    def __init__(self, image, max_ops, max_bytes):
        self._image = image
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._cond = threading.Condition()


class AioReader(_BoundedAio):
    """Read chunks of an image with bounded parallelism, in order.

    ``read(chunks)`` takes ``(offset, length, exists)`` tuples and yields
    ``(offset, length, exists, data)``; ``data`` is None where ``exists`` is
    False (nothing to read). Up to ``max_ops`` requests and ``max_bytes`` bytes
    are in flight; results come back in submission order so a stream sink
    sees ascending offsets.
    """

    def read(self, chunks):
        pending = collections.deque()
        in_flight = 0
        for offset, length, exists in chunks:
            while pending and (len(pending) >= self._max_ops
                               or in_flight + length > self._max_bytes):
                item = self._wait(pending.popleft())
                in_flight -= item[1]
                yield item
            pending.append(self._submit(offset, length, exists))
            in_flight += length
        while pending:
            yield self._wait(pending.popleft())

    def _submit(self, offset, length, exists):
        slot = [offset, length, exists, None, None]  # ..., data, error
        if not exists:
            slot[4] = False
            return slot

        def done(completion, data):
            with self._cond:
                result = completion.get_return_value()
                if result < 0:
                    slot[4] = TransferError("read of %d bytes at offset %d failed: %s"
                                            % (length, offset, os.strerror(-result)))
                else:
                    slot[3] = data if len(data) == length else data.ljust(length, b"\0")
                    slot[4] = False
                self._cond.notify_all()

        self._image.aio_read(offset, length, done)
        return slot

    def _wait(self, slot):
        with self._cond:
            self._cond.wait_for(lambda: slot[4] is not None)
        if slot[4]:
            raise slot[4]
        return tuple(slot[:4])


class AioWriter(_BoundedAio):
    """Bounded parallel ``aio_write`` / ``aio_write_zeroes`` to an image.

    ``write`` and ``zero`` block only while the in-flight limits are reached.
    ``drain`` waits for everything and raises the first error; a write error
    is also raised by the next ``write``/``zero`` so a failing target stops
    the transfer early.
    """

    def __init__(self, image, max_ops, max_bytes):
        super().__init__(image, max_ops, max_bytes)
        self._ops = 0
        self._bytes = 0
        self._error = None

    def write(self, offset, data):
        length = len(data)
        self._reserve(length)
        try:
            payload = data if isinstance(data, bytes) else bytes(data)  # librbd wants bytes
            self._image.aio_write(payload, offset, self._on_done("write", offset, length))
        except Exception:
            self._release(length)
            raise

    def zero(self, offset, length):
        self._reserve(0)
        try:
            self._image.aio_write_zeroes(offset, length, self._on_done("zero", offset, 0))
        except Exception:
            self._release(0)
            raise

    def drain(self):
        with self._cond:
            self._cond.wait_for(lambda: self._ops == 0)
            self._raise_error()

    def _reserve(self, length):
        with self._cond:
            self._raise_error()
            self._cond.wait_for(lambda: self._ops == 0 or self._error is not None or (
                self._ops < self._max_ops and self._bytes + length <= self._max_bytes))
            self._raise_error()
            self._ops += 1
            self._bytes += length

    def _release(self, length):
        with self._cond:
            self._ops -= 1
            self._bytes -= length
            self._cond.notify_all()

    def _on_done(self, what, offset, length):
        def done(completion):
            result = completion.get_return_value()
            if result < 0 and self._error is None:
                self._error = TransferError("%s at offset %d failed: %s"
                                            % (what, offset, os.strerror(-result)))
            self._release(length)
        return done

    def _raise_error(self):
        if self._error is not None:
            raise self._error


def transfer(image, sink, plan, options=None, progress=None, should_cancel=None,
             extents=None, on_durable=None, digests=None):
    """Copy what changed in ``image`` from ``plan.from_snap`` into ``sink``.

    ``image`` must be open at ``plan.to_snap``. ``extents`` (``(offset,
    length, exists)``) replaces the diff when the caller knows better what to
    copy (an in-place restore copies what changed on the destination).
    ``progress(done, total)`` is called after each chunk; ``should_cancel()``
    returning True stops the transfer with :class:`Cancelled`. The sink is
    committed only after every chunk was handed over; on any error, from the
    first step on, it is aborted and the error raised. ``on_durable()`` is
    called once the data is durable on the sink, before the end state is
    marked (work that waits on something else, e.g. a source cluster's
    monitors, can then overlap the sink's own snapshot); an exception from it
    aborts the sink. ``digests``: a ``checksums.Recorder`` that hashes what
    is read (its reads grow to whole checksum blocks; the sink still gets
    only what changed). Returns :class:`Stats`.
    """
    options = options or TransferOptions()
    started = time.monotonic()
    with _committed(sink, on_durable):
        zero_before = None
        if extents is None:
            extents = changed_extents(image, plan.from_snap, options.whole_object,
                                      at_snap=plan.to_snap)
        if _discovered_here(extents, image, plan):  # else it would scan the image again
            zero_before = zero_at_snapshot(image, plan.from_snap, plan.to_snap,
                                           extents.objects.span())
        stats = Stats()
        total = _expected_bytes(extents, plan.size)
        reader = AioReader(image, options.max_in_flight_ops, options.max_in_flight_bytes)
        sink.begin(plan)
        done = 0
        chunks = chunked(_counted(extents, stats), options.chunk_size)
        if digests is not None:
            chunks = digests.widen(chunks)
        for offset, length, _exists, data in reader.read(chunks):
            if should_cancel and should_cancel():
                raise Cancelled("transfer cancelled at offset %d" % offset)
            pieces = (digests.take(offset, length, data) if digests is not None
                      else ((offset, length, data),))
            for piece_offset, piece_length, piece in pieces:
                _feed(sink, piece_offset, piece_length, piece, options.zero_granularity,
                      stats, zero_before)
                done += piece_length
            if progress:
                progress(done, max(done, total))
    stats.seconds = time.monotonic() - started
    return stats


def _discovered_here(extents, image, plan):
    """True when ``extents`` are what changed in ``image`` since ``plan.from_snap``,
    found with the object map."""
    return (isinstance(extents, discovery.ChangedExtents) and extents.image is image
            and extents.from_snap == plan.from_snap and extents.object_map_used)


def _counted(extents, stats):
    """Pass ``extents`` on, counting them into ``stats`` (they stream: no list to count)."""
    for extent in extents:
        stats.extents += 1
        stats.changed_bytes += extent[1]
        yield extent


def _expected_bytes(extents, size):
    """What a transfer's progress counts up to: a list's bytes, a discovery's
    upper bound, else the image's size."""
    if isinstance(extents, list):
        return sum(extent[1] for extent in extents)
    return getattr(extents, "upper_bound", size)


@contextlib.contextmanager
def _committed(sink, on_durable=None):
    """Commit ``sink`` when the block ends normally; abort it on any error
    (the commit's own included). With ``on_durable``: flush the sink, call it,
    then commit."""
    try:
        yield
        if on_durable is not None:
            sink.flush()
            on_durable()
        sink.commit()
    except BaseException:
        sink.abort()
        raise


def _feed(sink, offset, length, data, granularity, stats, zero_before=None):
    """Hand one extent to ``sink``: ``data`` None means it reads as zeros."""
    if data is None:
        sink.zero(offset, length)
        stats.zero_bytes += length
        return
    view = memoryview(data)
    for start, length, is_zero in zero_runs(data, granularity):
        if is_zero:
            if not (zero_before and zero_before(offset + start, length)):
                sink.zero(offset + start, length)
            stats.zero_bytes += length
        else:
            # the whole chunk is data: hand over the bytes object itself, no copy
            sink.write(offset + start, data if length == len(data)
                       else view[start:start + length])
            stats.data_bytes += length


def apply_records(records, sink, plan, granularity=DEFAULT_GRANULARITY, progress=None):
    """Apply diff records (``offset``/``length``/``data`` or zero) to ``sink``.

    The stream-side twin of :func:`transfer`, used to import diff files. Data
    records are split into data and zero runs again, because ``rbd
    export-diff`` sends a whole object when any byte of it changed. A record
    stream that fails half-way (truncated, corrupt) aborts the sink, so the
    end state is never marked.
    """
    started = time.monotonic()
    stats = Stats()
    with _committed(sink):
        if granularity <= 0:
            raise ValueError("zero granularity must be positive")
        sink.begin(plan)
        for record in records:
            _feed(sink, record.offset, record.length, getattr(record, "data", None),
                  granularity, stats)
            stats.extents += 1
            stats.changed_bytes += record.length
            if progress:
                progress(record.offset + record.length, plan.size)
    stats.seconds = time.monotonic() - started
    return stats


def cancellable(items, should_cancel):
    """Yield ``items``; :class:`Cancelled` once ``should_cancel()`` is True
    (checked before each item; None: never)."""
    for item in items:
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled before the record at offset %d"
                            % getattr(item, "offset", -1))
        yield item


def zero_at_snapshot(image, from_snap, to_snap, span=None):
    """A test ``zero_before(offset, length)``: True when that range read as
    zeros at ``from_snap`` because no object behind it existed then.
    ``span`` (``(offset, length)``): the only range that will be asked
    (librbd's answer costs time in proportion to the range, even from the
    object map).

    A diff describes how ``to_snap`` differs from ``from_snap``; a zero run
    where ``from_snap`` held no object is no difference, so it is neither
    written nor streamed. (librbd reports the whole of an object created
    since ``from_snap`` as changed, so this skips most of the zero runs of an
    incremental.) None when not applicable: a full copy, or a striped image.
    """
    if from_snap is None or image.stripe_count() != 1:
        return None
    object_size = 1 << image.stat()["order"]
    present = bytearray(image.size() // object_size + 1)

    def mark(offset, length, exists):
        if exists:
            for index in range(offset // object_size, (offset + length - 1) // object_size + 1):
                if index < len(present):  # beyond to_snap's size: not our concern
                    present[index] = 1

    offset, length = span or (0, image.size())
    image.set_snap(from_snap)
    try:
        length = min(length, image.size() - offset)  # librbd refuses to start past the end
        if length > 0:
            image.diff_iterate(offset, length, None, mark, include_parent=True,
                               whole_object=True)
    finally:
        image.set_snap(to_snap)

    def zero_before(offset, length):
        first, last = offset // object_size, (offset + length - 1) // object_size
        return not any(present[first:last + 1])
    return zero_before


def file_chunks(volume_file, size, chunk_size):
    """Yield ``(offset, data)`` reading a file object sequentially up to ``size``."""
    offset = 0
    volume_file.seek(0)
    while offset < size:
        data = volume_file.read(min(chunk_size, size - offset))
        if not data:
            raise TransferError("volume file ended at offset %d of %d" % (offset, size))
        yield offset, data
        offset += len(data)


def allocated_chunks(images, chunk_size, since=None):
    """Chunks ``(offset, length, True)`` where any of ``images`` holds data,
    ascending (a generator).

    ``since``: for each image, a snapshot to count only changes since, or its
    :class:`.extents.ChangedObjects` when already known, or None. Objects
    are asked for whole: chunks are compared whole anyway, and with fast-diff
    librbd answers from the object map instead of asking every object, which
    counts when the image is at another site. One byte per object is kept
    per image, never a list of chunks.
    """
    return _union_of_chunks(_changed_objects(images, since), images, chunk_size)


def _changed_objects(images, since):
    return [base if isinstance(base, discovery.ChangedObjects)
            else discovery.ChangedObjects(img, base)
            for img, base in zip(images, since or [None] * len(images), strict=True)]


def _union_of_chunks(maps, images, chunk_size):
    size = max(img.size() for img in images)
    previous = None
    for start in heapq.merge(*(changed.chunk_starts(chunk_size) for changed in maps)):
        if start != previous and start < size:
            yield start, min(chunk_size, size - start), True
        previous = start


def _sampled(chunks, picked):
    """The items of ``chunks`` whose index is in ``picked``."""
    return (chunk for index, chunk in enumerate(chunks) if index in picked)


def first_difference(image_a, image_b, options=None, sample=None, since=None):
    """Compare two images (open at their snapshots); return the first differing
    byte offset, or None when they are identical (size included).

    Only chunks that either image has allocated are read, both sides in
    parallel with bounded memory; unallocated chunks read as zeros on both.
    ``sample``: compare only that many chunks, chosen at random. ``since``:
    ``(snap_a, snap_b)``, two snapshots known to be equal: only chunks that
    changed since them are compared (checking an incremental costs what it
    changed, not what the volume holds); either may instead be the
    :class:`.extents.ChangedObjects` since (see :func:`allocated_chunks`).
    """
    options = options or TransferOptions()
    if image_a.size() != image_b.size():
        return min(image_a.size(), image_b.size())
    images = [image_a, image_b]
    maps = _changed_objects(images, since)

    def chunks():  # once per side: each reader walks them on its own
        return _union_of_chunks(maps, images, options.chunk_size)
    picked = None
    if sample is not None:
        count = sum(1 for _ in chunks())
        if sample < count:
            picked = set(random.sample(range(count), sample))
    sides = [chunks() if picked is None else _sampled(chunks(), picked) for _ in images]
    half_bytes = max(options.chunk_size, options.max_in_flight_bytes // 2)
    read_a = AioReader(image_a, options.max_in_flight_ops, half_bytes).read(sides[0])
    read_b = AioReader(image_b, options.max_in_flight_ops, half_bytes).read(sides[1])
    for (offset, _, _, data_a), (_, _, _, data_b) in zip(read_a, read_b, strict=True):
        if data_a != data_b:
            return offset + next(i for i, (x, y) in enumerate(zip(data_a, data_b, strict=True))
                                 if x != y)
    return None
