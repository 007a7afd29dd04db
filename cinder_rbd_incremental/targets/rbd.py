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
from cinder_rbd_incremental.targets import base

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


def delete_image(ctx, name):
    """Remove an image and its snapshots; rbd.ImageNotFound if there is none."""
    with rbd.Image(ctx, name) as img:
        for snap in img.list_snaps():
            if img.is_protected_snap(snap["name"]):
                img.unprotect_snap(snap["name"])
            img.remove_snap(snap["name"])
    rbd.RBD().remove(ctx, name)


class RBDTarget(base.BackupTarget):
    """The ``rbd`` backup target: one chain image per chain of backups.

    A chain image lives in a pool on the backup cluster and holds one
    snapshot per backup, so every backup is a restore point readable with
    plain ``rbd``. Next to the data, the image's metadata holds each backup's
    full lineage and the volume's Cinder metadata.
    """

    name = "rbd"
    delete_image = staticmethod(delete_image)

    def __init__(self, spec, pool):
        self.spec = spec
        self.pool = pool

    @classmethod
    def from_conf(cls, options):
        spec = cluster.ClusterSpec(conf=options.backup_ceph_conf, user=options.backup_ceph_user,
                                   keyring=options.backup_ceph_keyring,
                                   connect_timeout=options.connect_timeout,
                                   op_timeout=options.op_timeout)
        return cls(spec, options.backup_ceph_pool)

    @contextlib.contextmanager
    def session(self):
        with cluster.cluster(self.spec) as client, cluster.ioctx(client, self.pool) as ctx:
            session = RBDSession(client, ctx)
            try:
                yield session
            finally:
                session.close()

    def check_setup(self):
        """Connect and prove the user can write to the pool; ClusterError otherwise."""
        with self.session() as session:
            probe = META_PREFIX + "probe"
            try:
                session.ctx.write_full(probe, b"ok")
                session.ctx.remove_object(probe)
            except rados.PermissionError:
                raise cluster.ClusterError(
                    "client.%s cannot write to pool %s: give it 'profile rbd pool=%s'"
                    % (self.spec.user, self.pool, self.pool)) from None


class RBDSession(base.TargetSession):
    """Chains as images in one pool of the backup cluster.

    A chain's HEAD is opened once per session and kept open until the
    session closes: opening an image costs several round trips, which count
    when the backup cluster is at another site. A read-write handle, once
    opened, serves the reads too (a read-only one would not see the
    snapshots it creates).
    """

    def __init__(self, client, ctx):
        self.client = client
        self.ctx = ctx
        self.fsid = client.get_fsid()
        self._heads = {}  # chain -> (rbd.Image, read_only)

    def close(self):
        for chain in list(self._heads):
            self._forget(chain)

    def _forget(self, chain):
        """Close the kept handle of ``chain`` (before removing the image)."""
        held = self._heads.pop(chain, None)
        if held:
            held[0].close()

    def _open(self, chain, snapshot=None, read_only=False):
        try:
            return rbd.Image(self.ctx, chain, snapshot=snapshot, read_only=read_only)
        except rbd.ImageNotFound:
            raise base.ChainNotFound("%s/%s%s not found" % (
                self.ctx.get_pool_name(), chain, "@" + snapshot if snapshot else "")) from None

    @contextlib.contextmanager
    def _chain(self, chain, snapshot=None, read_only=False):
        """The chain's HEAD (kept open), or a snapshot of it (closed after)."""
        if snapshot is not None:
            with self._open(chain, snapshot, read_only=True) as img:
                yield img
            return
        held = self._heads.get(chain)
        if held is None or (held[1] and not read_only):
            self._forget(chain)
            held = self._heads[chain] = (self._open(chain, read_only=read_only), read_only)
        yield held[0]

    def snapshots(self, chain):
        with self._chain(chain, read_only=True) as img:
            return snapshot_names(img)

    def new_chain(self, chain, size, order):
        self._forget(chain)
        with contextlib.suppress(rbd.ImageNotFound):
            delete_image(self.ctx, chain)
        cluster.create_image_like(self.ctx, chain, size, order=order)

    @contextlib.contextmanager
    def writing(self, chain, fresh, options):
        """An :class:`ImageSink` that rolls back what an interrupted earlier
        attempt left on the chain's HEAD."""
        with self._chain(chain) as img:
            yield ImageSink(img, fresh=fresh, rollback=True,
                            max_in_flight_ops=options.max_in_flight_ops,
                            max_in_flight_bytes=options.max_in_flight_bytes)

    def verify(self, source_image, chain, snap, options, sample=None, since=None):
        with self._chain(chain, snapshot=snap, read_only=True) as written:
            return engine.first_difference(source_image, written, options, sample=sample,
                                           since=since)

    @contextlib.contextmanager
    def restore_point(self, chain, snap):
        with self._chain(chain, snapshot=snap, read_only=True) as img:
            yield ImageRestorePoint(img)

    def save_lineage(self, chain, record, volume_metadata=None):
        with self._chain(chain) as img:
            img.metadata_set(backup_meta_key(record["backup_id"]),
                             json.dumps(record, sort_keys=True))
            if volume_metadata:
                img.metadata_set(volume_meta_key(record["backup_id"]), volume_metadata)

    def load_lineage(self, chain, backup_id):
        with self._chain(chain, read_only=True) as img:
            return get_meta_json(img, backup_meta_key(backup_id))

    def load_volume_metadata(self, chain, backup_id):
        with self._chain(chain, read_only=True) as img:
            try:
                return img.metadata_get(volume_meta_key(backup_id))
            except KeyError:
                return None

    def save_digests(self, chain, backup_id, digests):
        """Kept in a RADOS object of the pool, named after the backup."""
        self.ctx.write_full(digests_object(backup_id), digests)

    def load_digests(self, chain, backup_id):
        name = digests_object(backup_id)
        try:
            size, _mtime = self.ctx.stat(name)
            return self.ctx.read(name, size) if size else b""
        except rados.ObjectNotFound:
            return None

    def delete_backup(self, chain, snap, backup_id):
        with contextlib.suppress(rados.ObjectNotFound):
            self.ctx.remove_object(digests_object(backup_id))
        self._forget(chain)
        try:
            img = rbd.Image(self.ctx, chain)
        except rbd.ImageNotFound:
            LOG.info("chain image %s is already gone", chain)
            return
        with img:
            if snap in snapshot_names(img):
                img.remove_snap(snap)
            else:
                LOG.info("snapshot %s@%s is already gone", chain, snap)
            for key in (backup_meta_key(backup_id), volume_meta_key(backup_id),
                        snap_meta_key(snap)):
                with contextlib.suppress(KeyError):
                    img.metadata_remove(key)
            left = snapshot_names(img)
        if not left:
            LOG.info("removing chain image %s: no backup left in it", chain)
            rbd.RBD().remove(self.ctx, chain)

    def delete_attempt(self, chain, backup_id):
        try:
            mine = [name for name in self.snapshots(chain)
                    if naming.parse_backup_snapshot(name) == backup_id]
        except base.ChainNotFound:
            return
        for snap in mine:
            self.delete_backup(chain, snap, backup_id)
        self._forget(chain)
        self._undo_pending(chain, backup_id)
        own_chain = (naming.parse_chain_image(chain) or (None, None))[1] == backup_id
        if own_chain and not mine:
            LOG.info("removing chain image %s left by an unfinished backup", chain)
            with contextlib.suppress(rbd.ImageNotFound):
                delete_image(self.ctx, chain)

    def _undo_pending(self, chain, backup_id):
        """Roll back what an interrupted transfer of ``backup_id`` wrote to HEAD.

        Best effort: the writes only take space (no snapshot marks them as a
        restore point) and the next backup of the chain rolls HEAD back too.
        A killed writer may still hold the image's lock for a while, which
        makes librbd refuse the rollback: that is logged, not an error.
        """
        try:
            with rbd.Image(self.ctx, chain) as img:
                pending = get_meta_json(img, PENDING_KEY) or {}
                if naming.parse_backup_snapshot(pending.get("to_snap")) != backup_id:
                    return
                base_snap = pending.get("from_snap")
                if base_snap in snapshot_names(img):
                    LOG.info("rolling %s back to %s: undoing an interrupted backup",
                             chain, base_snap)
                    rollback(img, base_snap)
                img.metadata_remove(PENDING_KEY)
        except rbd.ImageNotFound:
            pass
        except rbd.Error as exc:
            LOG.warning("could not undo the interrupted writes of backup %s on %s (the next "
                        "backup of this chain will): %s", backup_id, chain, exc)


class ImageRestorePoint(base.RestorePoint):
    """A chain image open at a backup's snapshot: read in parallel, at random."""

    def __init__(self, img):
        self.image = img
        self.size = img.size()

    def restore(self, make_sink, options, dest_size, fresh, changed=None, dest_image=None):
        plan = engine.Plan(to_snap=None, size=max(dest_size, self.size))
        extents = changed
        if extents is None and not fresh:
            extents = (engine.allocated_chunks([self.image, dest_image], options.chunk_size)
                       if dest_image is not None else [(0, plan.size, True)])
        if extents is not None:
            extents = beyond_size_as_zero(extents, self.size)
        return engine.transfer(self.image, make_sink(fresh and changed is None), plan,
                               options, extents=extents)


def beyond_size_as_zero(extents, size):
    """Clip extents at ``size``; what lies beyond reads as zero (exists=False)."""
    clipped = []
    for offset, length, exists in extents:
        end = offset + length
        if offset < size:
            clipped.append((offset, min(end, size) - offset, exists))
        if end > size:
            start = max(offset, size)
            clipped.append((start, end - start, False))
    return clipped
