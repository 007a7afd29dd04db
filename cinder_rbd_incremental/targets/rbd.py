"""RBD images as targets: the engine's image sink and the ``rbd`` backup target.

:class:`ImageSink` applies a transfer to an image and guarantees the right
state: an incremental lands only on an image whose HEAD is exactly the
from-snapshot (and, where known, the same point in time as the source's), and
the end snapshot is created only after every write completed and was flushed.

Per-snapshot identities and an in-progress marker live in the image's
metadata (``rbd image-meta``), so the checks work across processes:

* ``rbd_incremental.snap.<name>``: identity of the source snapshot that
  ``<name>`` reproduces;
* ``rbd_incremental.pending``: the transfer that is writing to HEAD now. If it
  was interrupted, re-running the same transfer completes it.
"""

import json
import logging

import rbd

from cinder_rbd_incremental import engine

LOG = logging.getLogger(__name__)
META_PREFIX = "rbd_incremental."
PENDING_KEY = META_PREFIX + "pending"


def snap_meta_key(snap_name):
    return META_PREFIX + "snap." + snap_name


def get_meta_json(img, key):
    """Image metadata ``key`` decoded as JSON, or None when missing or damaged."""
    try:
        return json.loads(img.metadata_get(key))
    except (KeyError, ValueError):
        return None


def snapshot_names(img):
    return [snap["name"] for snap in img.list_snaps()]


def has_extents(img, from_snap=None):
    """True when HEAD has any extent changed since ``from_snap`` (None: any data)."""
    found = []

    def stop_at_first(offset, length, exists):
        found.append(offset)
        return -1  # a negative return ends diff_iterate early (with an error)

    try:
        img.diff_iterate(0, img.size(), from_snap, stop_at_first)
    except rbd.Error:
        if not found:
            raise
    return bool(found)


def head_changed_since(img, snap_name):
    """True when HEAD differs from ``snap_name`` (data or size)."""
    return img.size() != _snap_size(img, snap_name) or has_extents(img, snap_name)


def _snap_size(img, snap_name):
    for snap in img.list_snaps():
        if snap["name"] == snap_name:
            return snap["size"]
    raise engine.StateError("snapshot %s not found" % snap_name)


def same_identity(recorded, expected):
    """False only when both identities are known and differ."""
    if not recorded or not expected:
        return True
    keys = ("fsid", "image_id", "snap_id")
    return all(recorded.get(k) == expected.get(k) for k in keys)


class ImageSink(engine.Sink):
    """Apply a transfer to an open, writable ``rbd.Image``.

    ``fresh``: the image was just created for this transfer and reads as
    zeros, so zero runs are skipped. ``force`` skips the state checks;
    ``rollback`` rolls a HEAD that changed since the from-snapshot back to it
    first (the safe recovery after an interrupted import).
    """

    def __init__(self, img, fresh=False, force=False, rollback=False,
                 max_in_flight_ops=32, max_in_flight_bytes=64 << 20):
        self.image = img
        self.fresh = fresh
        self.force = force
        self.rollback = rollback
        self.plan = None
        self.snap_id = None
        self.data_bytes = 0
        self._writer = engine.AioWriter(img, max_in_flight_ops, max_in_flight_bytes)

    def begin(self, plan):
        self.plan = plan
        self._check_state(plan)
        self.image.metadata_set(PENDING_KEY, json.dumps(self._pending_marker(plan)))
        if self.image.size() != plan.size:
            self.image.resize(plan.size)

    def write(self, offset, data):
        self.data_bytes += len(data)
        self._writer.write(offset, data)

    def zero(self, offset, length):
        if not self.fresh:
            self._writer.zero(offset, length)

    def commit(self):
        self._writer.drain()
        self.image.flush()
        if self.plan.identity_to:
            self.image.metadata_set(snap_meta_key(self.plan.to_snap),
                                    json.dumps(self.plan.identity_to, sort_keys=True))
        if self.plan.to_snap:
            self.image.create_snap(self.plan.to_snap)
            self.snap_id = self.image.snap_get_id(self.plan.to_snap)
        self.image.metadata_remove(PENDING_KEY)

    def abort(self):
        try:
            self._writer.drain()
        except Exception as exc:  # the original error is what matters
            LOG.debug("ignoring write error while aborting: %s", exc)

    @staticmethod
    def _pending_marker(plan):
        return {"from_snap": plan.from_snap, "to_snap": plan.to_snap, "size": plan.size}

    def _check_state(self, plan):
        names = snapshot_names(self.image)
        where = self.image.get_name()
        if plan.to_snap and plan.to_snap in names:
            raise engine.AlreadyApplied("%s already has snapshot %s: nothing to do"
                                        % (where, plan.to_snap))
        if self.force:
            return
        resuming = get_meta_json(self.image, PENDING_KEY) == self._pending_marker(plan)
        if plan.from_snap is None:
            self._check_empty(where, names, resuming)
            return
        if plan.from_snap not in names:
            raise engine.StateError("%s has no snapshot %s to apply the diff onto"
                                    % (where, plan.from_snap))
        recorded = get_meta_json(self.image, snap_meta_key(plan.from_snap))
        if not same_identity(recorded, plan.identity_from):
            raise engine.StateError(
                "%s@%s is not the same point in time as the source's %s (recorded %s, "
                "source %s)" % (where, plan.from_snap, plan.from_snap, recorded,
                                plan.identity_from))
        if head_changed_since(self.image, plan.from_snap) and not resuming:
            if not self.rollback:
                raise engine.StateError(
                    "%s has changed since snapshot %s; use --rollback to discard those "
                    "changes or --force to apply anyway" % (where, plan.from_snap))
            LOG.warning("rolling %s back to %s", where, plan.from_snap)
            self.image.rollback_to_snap(plan.from_snap)

    def _check_empty(self, where, names, resuming):
        """A full transfer goes onto an image with no snapshot and no data."""
        if names and not resuming:
            raise engine.StateError("%s already has snapshots; a full diff needs an empty image"
                                    % where)
        if not self.fresh and not resuming and has_extents(self.image):
            raise engine.StateError("%s is not empty; a full diff needs an empty image "
                                    "(--force to apply anyway)" % where)
