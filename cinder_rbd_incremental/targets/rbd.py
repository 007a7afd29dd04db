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

import contextlib
import json
import logging

import rados
import rbd
import tenacity

from cinder_rbd_incremental import cluster, engine, naming

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

    # whole_object uses the fast-diff object map where the image has one: one
    # request instead of one per object, and "changed at all" is all we ask.
    try:
        img.diff_iterate(0, img.size(), from_snap, stop_at_first, whole_object=True)
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


@tenacity.retry(retry=tenacity.retry_if_exception_type(rbd.ReadOnlyImage),
                wait=tenacity.wait_fixed(2), stop=tenacity.stop_after_delay(90), reraise=True)
def rollback(img, snap_name):
    """Roll HEAD back to ``snap_name``, waiting out a dead writer's lock.

    A writer killed mid-transfer keeps the image's exclusive lock until its
    watch times out (about 30 s); until then librbd refuses the rollback with
    EROFS instead of waiting as it does for writes.
    """
    img.rollback_to_snap(snap_name)


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
                 max_in_flight_ops=engine.TransferOptions.max_in_flight_ops,
                 max_in_flight_bytes=engine.TransferOptions.max_in_flight_bytes):
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
        if plan.dest_to:  # an end state to protect: mark HEAD as being written
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
        end = self.plan.dest_to
        if end and self.plan.identity_to:
            self.image.metadata_set(snap_meta_key(end),
                                    json.dumps(self.plan.identity_to, sort_keys=True))
        if end:
            self.image.create_snap(end)
            self.snap_id = self.image.snap_get_id(end)
            self.image.metadata_remove(PENDING_KEY)

    def abort(self):
        try:
            self._writer.drain()
        except Exception as exc:  # the original error is what matters
            LOG.debug("ignoring write error while aborting: %s", exc)

    @staticmethod
    def _pending_marker(plan):
        return {"from_snap": plan.dest_from, "to_snap": plan.dest_to, "size": plan.size}

    def _check_state(self, plan):
        names = snapshot_names(self.image)
        where = self.image.get_name()
        if plan.dest_to and plan.dest_to in names:
            raise engine.AlreadyApplied("%s already has snapshot %s: nothing to do"
                                        % (where, plan.dest_to))
        if self.force:
            return
        resuming = get_meta_json(self.image, PENDING_KEY) == self._pending_marker(plan)
        base = plan.dest_from
        if base is None:
            self._check_empty(where, names, resuming)
            return
        if base not in names:
            raise engine.StateError("%s has no snapshot %s to apply the diff onto"
                                    % (where, base))
        recorded = get_meta_json(self.image, snap_meta_key(base))
        if not same_identity(recorded, plan.identity_from):
            raise engine.StateError(
                "%s@%s is not the same point in time as the source's %s (recorded %s, "
                "source %s)" % (where, base, plan.from_snap, recorded, plan.identity_from))
        if head_changed_since(self.image, base) and not resuming:
            if not self.rollback:
                raise engine.StateError(
                    "%s has changed since snapshot %s; use --rollback to discard those "
                    "changes or --force to apply anyway" % (where, base))
            LOG.warning("rolling %s back to %s", where, base)
            rollback(self.image, base)

    def _check_empty(self, where, names, resuming):
        """A full transfer goes onto an image with no snapshot and no data."""
        if names and not resuming:
            raise engine.StateError("%s already has snapshots; a full diff needs an empty image"
                                    % where)
        if not self.fresh and not resuming and has_extents(self.image):
            raise engine.StateError("%s is not empty; a full diff needs an empty image "
                                    "(--force to apply anyway)" % where)


def backup_meta_key(backup_id):
    return META_PREFIX + "backup." + backup_id


def volume_meta_key(backup_id):
    return META_PREFIX + "volmeta." + backup_id


def digests_object(backup_id):
    return META_PREFIX + "digests." + backup_id


class RBDTarget:
    """The ``rbd`` backup target: one chain image per chain of backups.

    A chain image lives in a pool on the backup cluster and holds one
    snapshot per backup, so every backup is a restore point readable with
    plain ``rbd``. Next to the data, the image's metadata holds each backup's
    full lineage and the volume's Cinder metadata.
    """

    name = "rbd"

    def __init__(self, spec, pool):
        self.spec = spec
        self.pool = pool

    @classmethod
    def from_conf(cls, options):
        """Build from the driver's ``[backup_rbd_incremental]`` options."""
        spec = cluster.ClusterSpec(conf=options.backup_ceph_conf, user=options.backup_ceph_user,
                                   keyring=options.backup_ceph_keyring,
                                   connect_timeout=options.connect_timeout,
                                   op_timeout=options.op_timeout)
        return cls(spec, options.backup_ceph_pool)

    def connect(self):
        """Context manager: ``(client, ioctx)`` on the backup pool."""
        return _connected_pool(self.spec, self.pool)

    def check_setup(self):
        """Connect and prove the user can write to the pool; ClusterError otherwise."""
        with self.connect() as (_client, ctx):
            probe = META_PREFIX + "probe"
            try:
                ctx.write_full(probe, b"ok")
                ctx.remove_object(probe)
            except rados.PermissionError:
                raise cluster.ClusterError(
                    "client.%s cannot write to pool %s: give it 'profile rbd pool=%s'"
                    % (self.spec.user, self.pool, self.pool)) from None

    @staticmethod
    def create_chain(ctx, name, size, order):
        cluster.create_image_like(ctx, name, size, order=order)

    @staticmethod
    def delete_image(ctx, name):
        """Remove an image and its snapshots; rbd.ImageNotFound if there is none."""
        with rbd.Image(ctx, name) as img:
            for snap in img.list_snaps():
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
        rbd.RBD().remove(ctx, name)

    @staticmethod
    def sink(img, fresh, options):
        """A sink that rolls back what an interrupted earlier attempt left on HEAD."""
        return ImageSink(img, fresh=fresh, rollback=True,
                         max_in_flight_ops=options.max_in_flight_ops,
                         max_in_flight_bytes=options.max_in_flight_bytes)

    @staticmethod
    def save_lineage(img, record, volume_metadata=None):
        img.metadata_set(backup_meta_key(record["backup_id"]), json.dumps(record, sort_keys=True))
        if volume_metadata:
            img.metadata_set(volume_meta_key(record["backup_id"]), volume_metadata)

    @staticmethod
    def load_lineage(img, backup_id):
        return get_meta_json(img, backup_meta_key(backup_id))

    @staticmethod
    def load_volume_metadata(img, backup_id):
        try:
            return img.metadata_get(volume_meta_key(backup_id))
        except KeyError:
            return None

    def delete_attempt(self, ctx, image_name, backup_id):
        """Remove what an unfinished backup may have left in ``image_name``:
        its snapshots, its records, and the image itself if the attempt
        created it (the chain carries the backup's id) and nothing else is in it."""
        try:
            with rbd.Image(ctx, image_name, read_only=True) as img:
                mine = [name for name in snapshot_names(img)
                        if naming.parse_backup_snapshot(name) == backup_id]
        except rbd.ImageNotFound:
            return
        for snap in mine:
            self.delete_backup(ctx, image_name, snap, backup_id)
        self._undo_pending(ctx, image_name, backup_id)
        own_chain = (naming.parse_chain_image(image_name) or (None, None))[1] == backup_id
        if own_chain and not mine:
            LOG.info("removing chain image %s left by an unfinished backup", image_name)
            with contextlib.suppress(rbd.ImageNotFound):
                self.delete_image(ctx, image_name)

    @staticmethod
    def _undo_pending(ctx, image_name, backup_id):
        """Roll back what an interrupted transfer of ``backup_id`` wrote to HEAD.

        Best effort: the writes only take space (no snapshot marks them as a
        restore point) and the next backup of the chain rolls HEAD back too.
        A killed writer may still hold the image's lock for a while, which
        makes librbd refuse the rollback: that is logged, not an error.
        """
        try:
            with rbd.Image(ctx, image_name) as img:
                pending = get_meta_json(img, PENDING_KEY) or {}
                if naming.parse_backup_snapshot(pending.get("to_snap")) != backup_id:
                    return
                base = pending.get("from_snap")
                if base in snapshot_names(img):
                    LOG.info("rolling %s back to %s: undoing an interrupted backup",
                             image_name, base)
                    rollback(img, base)
                img.metadata_remove(PENDING_KEY)
        except rbd.ImageNotFound:
            pass
        except rbd.Error as exc:
            LOG.warning("could not undo the interrupted writes of backup %s on %s (the next "
                        "backup of this chain will): %s", backup_id, image_name, exc)

    @staticmethod
    def save_digests(ctx, backup_id, digests):
        """Chunk checksums of a non-RBD volume's backup (a RADOS object in the pool)."""
        ctx.write_full(digests_object(backup_id), digests)

    @staticmethod
    def load_digests(ctx, backup_id):
        name = digests_object(backup_id)
        try:
            size, _mtime = ctx.stat(name)
            return ctx.read(name, size) if size else b""
        except rados.ObjectNotFound:
            return None

    def delete_backup(self, ctx, image_name, snap_name, backup_id):
        """Remove a backup's snapshot and records; the image once no snapshot is left.

        Idempotent: pieces already gone are logged, not errors.
        """
        with contextlib.suppress(rados.ObjectNotFound):
            ctx.remove_object(digests_object(backup_id))
        try:
            img = rbd.Image(ctx, image_name)
        except rbd.ImageNotFound:
            LOG.info("chain image %s/%s is already gone", self.pool, image_name)
            return
        with img:
            if snap_name in snapshot_names(img):
                img.remove_snap(snap_name)
            else:
                LOG.info("snapshot %s@%s is already gone", image_name, snap_name)
            for key in (backup_meta_key(backup_id), volume_meta_key(backup_id),
                        snap_meta_key(snap_name)):
                try:
                    img.metadata_remove(key)
                except KeyError:
                    pass
            left = snapshot_names(img)
        if not left:
            LOG.info("removing chain image %s/%s: no backup left in it", self.pool, image_name)
            rbd.RBD().remove(ctx, image_name)


@contextlib.contextmanager
def _connected_pool(spec, pool):
    with cluster.cluster(spec) as client, cluster.ioctx(client, pool) as ctx:
        yield client, ctx
