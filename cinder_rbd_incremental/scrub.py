"""Scrub restore points at the backup site, against their checksums, without the source.

For each restore point (a snapshot of a chain image or of a ``sync``
destination) :func:`scrub_point` reads what the snapshot holds and compares
each checksum block with what its checksum records say it holds
(``checksums.effective``): a block with a digest must hash to it, any other
block must read as zeros. Only the objects the snapshot has allocated, or
that should hold data, are read. A restore point found damaged gets a mark
in its image's metadata (``rbd_incremental.damaged.<snapshot>``) that the
driver reads before building an incremental on it; a later complete scrub
that finds it intact removes the mark.

Every restore point is read in full (or a sample of it): restore points of
a chain share unchanged objects on the OSDs, but which ones share is not
known from outside (a rolled-back attempt rewrites objects without leaving
a restore point), so skipping any would let damage go unseen.
"""

import dataclasses
import datetime
import json
import logging
import math
import random

import rados
import rbd

from cinder_rbd_incremental import checksums, cluster, engine
from cinder_rbd_incremental.targets import rbd as rbd_target

LOG = logging.getLogger(__name__)
MAX_OFFSETS = 100  # offsets listed per damaged restore point


@dataclasses.dataclass
class Result:
    """What scrub found in one restore point: ``status`` is ``ok``,
    ``damaged`` (``offsets``: the first damaged blocks' offsets) or
    ``unchecked`` (``reason``)."""

    pool: str
    image: str
    snapshot: str
    status: str = "ok"
    offsets: list = dataclasses.field(default_factory=list)
    damaged_blocks: int = 0
    checked_bytes: int = 0
    sample_percent: float | None = None
    reason: str | None = None

    @property
    def where(self):
        return "%s/%s@%s" % (self.pool, self.image, self.snapshot)

    def as_dict(self):
        return dataclasses.asdict(self)


def scrub_pool(ctx, image=None, snapshot=None, sample=None, progress=None, mark=True):
    """Scrub the restore points of ``image`` (None: of every image of the
    pool) or only ``snapshot``; returns a list of :class:`Result`."""
    names = [image] if image else sorted(rbd.RBD().list(ctx))
    counter = _Progress(progress)
    results = []
    for name in names:
        try:
            results += scrub_image(ctx, name, snapshot, sample, counter, mark)
        except cluster.ClusterError as exc:
            if image:
                raise
            LOG.warning("skipping %s: %s", name, exc)
    return results


def scrub_image(ctx, name, snapshot=None, sample=None, counter=None, mark=True):
    """Scrub the restore points of one image (or only ``snapshot``)."""
    counter = counter or _Progress(None)
    pool = ctx.get_pool_name()
    with cluster.image(ctx, name, read_only=True) as head:
        image_id = head.id()
        snaps = rbd_target.snapshot_names(head)
    if snapshot is not None and snapshot not in snaps:
        raise cluster.ClusterError("image or snapshot %s/%s@%s not found" % (pool, name, snapshot))
    records = _load_records(ctx, image_id, snaps)
    results = []
    for snap in [snapshot] if snapshot else snaps:
        result = Result(pool, name, snap, sample_percent=sample)
        try:
            expected = checksums.effective(records, snap)
        except checksums.NoChecksums as exc:
            result.status, result.reason = "unchecked", _no_checksums_reason(records, exc)
        else:
            with cluster.image(ctx, name, snapshot=snap, read_only=True) as img:
                scrub_point(img, expected, result, sample, counter)
        results.append(result)
    if mark:
        _mark(ctx, name, results)
    return results


def _load_records(ctx, image_id, snaps):
    records = {}
    for snap in snaps:
        try:
            record = checksums.load(ctx, image_id, snap)
        except checksums.NoChecksums as exc:
            record = exc
        if record is not None:
            records[snap] = record
    return records


def _no_checksums_reason(records, exc):
    if not records:
        return ("no checksums: made before rbd-incremental recorded them, by rbd, or by "
                "sync --force")
    return "no checksums: %s" % exc


def scrub_point(img, expected, result, sample=None, counter=None,
                options=None):
    """Compare snapshot ``img`` with ``expected`` (``checksums.effective``)
    and fill ``result``. ``sample``: read only that percentage of the pieces."""
    options = options or engine.TransferOptions()
    _size, block, blocks = expected
    chunk = options.chunk_size
    pieces = _pieces(img, blocks, block, chunk)
    if sample is not None and sample < 100:
        count = min(len(pieces), max(1, math.ceil(len(pieces) * sample / 100.0)))
        pieces = sorted(random.sample(pieces, count))
    zero = bytes(block)
    counter = counter or _Progress(None)
    counter.plan(sum(length for _o, length, _e in pieces))
    reader = engine.AioReader(img, options.max_in_flight_ops, options.max_in_flight_bytes)
    for offset, length, _exists, data in reader.read(pieces):
        for start in range(0, length, block):
            index = (offset + start) // block
            want = blocks.get(index, b"")
            if want is None:
                continue  # not known (cut by a shrink)
            piece = memoryview(data)[start:start + block]
            if (data.startswith(zero[:len(piece)], start) if not want
                    else checksums.digest(piece, block) == want):
                continue
            result.damaged_blocks += 1
            if len(result.offsets) < MAX_OFFSETS:
                result.offsets.append(offset + start)
        result.checked_bytes += length
        counter.advance(length)
    if result.damaged_blocks:
        result.status = "damaged"
    return result


def _pieces(img, blocks, block, chunk):
    """Chunks ``(offset, length, True)`` to read: allocated at this snapshot, or
    expected to hold data (an object that went missing reads as zeros)."""
    size = img.size()
    starts = {index * block // chunk * chunk for index, want in blocks.items() if want}
    for offset, _length, _exists in engine.allocated_chunks([img], chunk):
        starts.add(offset)
    return [(start, min(chunk, size - start), True) for start in sorted(starts) if start < size]


def _mark(ctx, name, results):
    """Record damage where the driver looks (image metadata), and remove the
    marks of restore points a complete scrub found intact."""
    changes = {}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for result in results:
        key = rbd_target.damage_meta_key(result.snapshot)
        if result.status == "damaged":
            changes[key] = json.dumps({"offset": result.offsets[0], "blocks":
                                       result.damaged_blocks, "scrubbed": now})
        elif result.status == "ok" and result.sample_percent in (None, 100):
            changes[key] = None
    if not changes:
        return
    try:
        with cluster.image(ctx, name) as img:
            for key, value in changes.items():
                if value is not None:
                    img.metadata_set(key, value)
                else:
                    try:
                        img.metadata_remove(key)
                    except KeyError:
                        pass
    except (cluster.ClusterError, rbd.Error, rados.Error) as exc:
        LOG.warning("could not record the scrub's findings on %s/%s (the driver will not "
                    "know of them): %s", ctx.get_pool_name(), name, exc)


class _Progress:
    """Bytes to read (growing as restore points are planned) and read so far."""

    def __init__(self, callback):
        self.callback = callback
        self.total = 0
        self.done = 0

    def plan(self, length):
        self.total += length
        self._report()

    def advance(self, length):
        self.done += length
        self._report()

    def _report(self):
        if self.callback:
            self.callback(self.done, self.total)
