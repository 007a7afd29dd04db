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
import dataclasses
import json
import uuid

import rados
import rbd
import tenacity

from cinder_rbd_incremental import checksums, cluster, engine, layout, locking, naming, native
from cinder_rbd_incremental.targets import base

LOG = native.get_logger(__name__)
META_PREFIX = "rbd_incremental."
PENDING_KEY = META_PREFIX + "pending"
RBD_DIRECTORY = "rbd_directory"  # librbd's index of a pool's images


def snap_meta_key(snap_name):
    return META_PREFIX + "snap." + snap_name


def get_meta_json(img, key):
    """Image metadata ``key`` decoded as JSON, or None when missing or damaged."""
    try:
        return json.loads(img.metadata_get(key))
    except (KeyError, ValueError):
        return None


def snapshot_names(img):
    """Names of the image's user snapshots (in creation order).

    Snapshots in other namespaces are left out: a trash-namespace snapshot
    (one whose removal was interrupted, see :func:`trashed_snapshots`) has a
    UUID for a name; group and mirror snapshots are not ours.
    """
    return [snap["name"] for snap in img.list_snaps() if _is_user_snapshot(snap)]


def _is_user_snapshot(snap):
    return snap.get("namespace", rbd.RBD_SNAP_NAMESPACE_TYPE_USER) \
        == rbd.RBD_SNAP_NAMESPACE_TYPE_USER


def trashed_snapshots(img):
    """``[(snap_id, original_name)]`` of the image's trash-namespace snapshots.

    librbd removes a snapshot in steps: it first moves it to the trash
    namespace (renamed to a UUID, the original name kept), then removes its
    object map and finally the snapshot. A process killed in between leaves
    the snapshot there, invisible to ``rbd snap ls`` and to name matching,
    holding its data until it is removed by id (or with its image). (A
    snapshot that still has clones also waits in the trash, until its last
    clone goes.)
    """
    found = []
    for snap in img.list_snaps():
        if snap.get("namespace") == rbd.RBD_SNAP_NAMESPACE_TYPE_TRASH:
            found.append((snap["id"], (snap.get("trash") or {}).get("original_name")))
    return found


def purge_trashed_snapshots(img, match=None):
    """Finish interrupted removals: remove the trash-namespace snapshots whose
    original name satisfies ``match(name)`` (None: all of them).

    Returns the original names removed. A snapshot that cannot go (it still
    has clones) is logged and left.
    """
    removed = []
    for snap_id, original in trashed_snapshots(img):
        if match is not None and not match(original):
            continue
        try:
            img.remove_snap_by_id(snap_id)
        except rbd.ImageNotFound:
            pass  # removed meanwhile
        except rbd.ImageBusy as exc:
            LOG.warning("snapshot %s (%s) of %s is in the trash and still in use: %s",
                        snap_id, original, img.get_name(), exc)
            continue
        LOG.info("removed snapshot %s@%s, left in the trash by an interrupted removal",
                 img.get_name(), original)
        removed.append(original)
    return removed


def remove_snapshots(img, match):
    """Remove every snapshot whose name satisfies ``match(name)``: user
    snapshots (unprotected first) and those an interrupted removal left in the
    trash namespace under that original name. Returns the names removed."""
    removed = []
    for name in snapshot_names(img):
        if match(name):
            if img.is_protected_snap(name):
                img.unprotect_snap(name)
            try:
                img.remove_snap(name)
            except rbd.ImageNotFound:
                continue  # removed meanwhile
            removed.append(name)
    return removed + purge_trashed_snapshots(img, match)


def remove_image(ctx, name):
    """Remove an image with its snapshots, whatever an interrupted operation left.

    Handles protected snapshots, snapshots left in the trash namespace and an
    image whose creation was interrupted (listed, but with no header to
    open). Raises rbd.ImageNotFound when there is no such image.
    """
    try:
        img = rbd.Image(ctx, name)
    except rbd.ImageNotFound:
        if name not in rbd.RBD().list(ctx):
            raise
        # half created: librbd's remove cleans up what is there
        rbd.RBD().remove(ctx, name)
        LOG.info("removed %s/%s, an image whose creation was interrupted",
                 ctx.get_pool_name(), name)
        return
    with img:
        remove_snapshots(img, lambda _name: True)
    rbd.RBD().remove(ctx, name)


def repair_object_map(ctx, img):
    """Rebuild the object map of ``img`` (open for writing) if it is missing or
    flagged invalid; returns True if it did.

    ``rbd create`` makes the object map last: a creation interrupted just
    before (e.g. by a stopped OSD) leaves an image that opens, but whose
    snapshots could not be opened. librbd flags the map invalid once it
    notices, and an invalid map also makes fast-diff answers unusable.
    """
    if not img.features() & rbd.RBD_FEATURE_OBJECT_MAP:
        return False
    try:
        ctx.stat("rbd_object_map." + img.id())
        if not img.flags() & rbd.RBD_FLAG_OBJECT_MAP_INVALID:
            return False
    except rados.ObjectNotFound:
        pass
    LOG.warning("%s has no valid object map (its creation was interrupted?): rebuilding it",
                img.get_name())
    img.rebuild_object_map()
    return True


def surely_whole(ctx, name):
    """True when image ``name`` has its id, its header and its object map: it
    was created completely. Told by three object requests instead of opening
    the image (about a dozen round trips: 0.15 s across a 20 ms link). False
    means "look closer" with :func:`creation_interrupted` (also for an image
    without the object-map feature, no image at all or a refused request)."""
    try:
        _ret, encoded = ctx.execute("rbd_id." + name, "rbd", "get_id", b"")
        image_id = encoded[4:].decode()  # a length-prefixed string
        ctx.stat("rbd_header." + image_id)
        ctx.stat("rbd_object_map." + image_id)
    except rados.Error:  # missing, or not ours to read: the closer look tells
        return False
    return True


def creation_interrupted(ctx, name):
    """True when image ``name`` was left half created and holds nothing.

    ``rbd create`` adds the name to the pool's directory, writes the header,
    then the object map; a creation interrupted in between (a killed process,
    a stopped OSD) leaves a name with no header to open, or an image without
    its object map (whose snapshots could not be opened). Either is
    half created if it also has no snapshot, no data and no pending marker.
    """
    try:
        img = rbd.Image(ctx, name, read_only=True)
    except rbd.ImageNotFound:
        return name in rbd.RBD().list(ctx)
    with img:
        if not img.features() & rbd.RBD_FEATURE_OBJECT_MAP:
            return False
        try:
            ctx.stat("rbd_object_map." + img.id())
            return False
        except rados.ObjectNotFound:
            pass
        # (read only, librbd does without the map: no writes, exact answers)
        return (not list(img.list_snaps()) and get_meta_json(img, PENDING_KEY) is None
                and not has_extents(img))


def snapshot_opens(ctx, name, snap_name):
    """True when ``name@snap_name`` can be opened (a snapshot whose creation
    was interrupted is listed, but its object map is missing)."""
    try:
        with rbd.Image(ctx, name, snapshot=snap_name, read_only=True):
            return True
    except rbd.ImageNotFound:
        return False


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
                wait=tenacity.wait_fixed(2), stop=tenacity.stop_after_delay(90), reraise=True,
                sleep=native.sleep)
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
    first (the safe recovery after an interrupted import). ``ioctx``: the
    image's pool, when the caller has it: an existing end snapshot is then
    also checked to open. ``who`` (``client.<id>``) names the user in a
    permission error.

    An end snapshot that exists while the pending marker of this very
    transfer is still set (the process died inside ``commit``, e.g. in
    ``create_snap``) or that cannot be opened is incomplete: it is removed
    and the transfer done again, instead of reporting "already applied".
    """

    def __init__(self, img, fresh=False, force=False, rollback=False,
                 max_in_flight_ops=engine.TransferOptions.max_in_flight_ops,
                 max_in_flight_bytes=engine.TransferOptions.max_in_flight_bytes,
                 ioctx=None, who=None):
        self.image = img
        self.fresh = fresh
        self.force = force
        self.rollback = rollback
        self.ioctx = ioctx
        self.who = who
        self.plan = None
        self.snap_id = None
        self.data_bytes = 0
        self._writer = engine.AioWriter(img, max_in_flight_ops, max_in_flight_bytes)

    def begin(self, plan):
        self.plan = plan
        with self._permission("write to image %s" % self.image.get_name()):
            if self.ioctx is not None:
                repair_object_map(self.ioctx, self.image)
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

    def flush(self):
        self._writer.drain()
        self.image.flush()

    def commit(self):
        with self._permission("snapshot image %s" % self.image.get_name()):
            self.flush()  # a no-op when flush() came first
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

    @contextlib.contextmanager
    def _permission(self, doing):
        """Turn librbd's bare EPERM into an error naming the capability."""
        try:
            yield
        except rbd.PermissionError as exc:
            pool = self.ioctx.get_pool_name() if self.ioctx is not None else None
            raise cluster.missing_capability(self.who, pool, doing, exc) from None

    @staticmethod
    def _pending_marker(plan):
        return {"from_snap": plan.dest_from, "to_snap": plan.dest_to, "size": plan.size}

    def _check_state(self, plan):
        names = snapshot_names(self.image)
        where = self.image.get_name()
        resuming = get_meta_json(self.image, PENDING_KEY) == self._pending_marker(plan)
        end = plan.dest_to
        if end and end in names:
            if not self._incomplete(end, names, resuming, where):
                raise engine.AlreadyApplied("%s already has snapshot %s: nothing to do"
                                            % (where, end))
            self._remove_end_snapshot(end, where)
            names.remove(end)
            resuming = True  # HEAD holds (part of) this very transfer
        if end:  # a removal of it that was interrupted (above, in an earlier run)
            purge_trashed_snapshots(self.image, lambda name: name == end)
        if self.force:
            return
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

    def _incomplete(self, end, names, resuming, where):
        """True when the existing end snapshot is not a finished transfer's."""
        if resuming:
            # commit() removes the marker right after create_snap returned:
            # the process that wrote this snapshot died before that
            LOG.warning("%s@%s exists but its transfer never finished (interrupted while "
                        "snapshotting): removing it and transferring again", where, end)
            return True
        if self.ioctx is None or snapshot_opens(self.ioctx, where, end):
            return False
        if names[-1] != end:
            raise engine.StateError("%s@%s cannot be opened and newer snapshots depend on "
                                    "it: the image is damaged" % (where, end))
        LOG.warning("%s@%s cannot be opened (its creation was interrupted): removing it and "
                    "transferring again", where, end)
        return True

    def _remove_end_snapshot(self, end, where):
        if self.image.is_protected_snap(end):
            self.image.unprotect_snap(end)
        self.image.remove_snap(end)
        with contextlib.suppress(KeyError):
            self.image.metadata_remove(snap_meta_key(end))
        LOG.info("removed the incomplete snapshot %s@%s", where, end)

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


def damage_meta_key(snap_name):
    """Set by ``rbd-incremental scrub`` on a restore point found damaged."""
    return META_PREFIX + "damaged." + snap_name


delete_image = remove_image  # also what interrupted removals and creations left


class RBDTarget(base.BackupTarget):
    """The ``rbd`` backup target: one chain image per chain of backups.

    A chain image lives in a pool on the backup cluster and holds one
    snapshot per backup, so every backup is a restore point readable with
    plain ``rbd``. Next to the data, the image's metadata holds each backup's
    full lineage and the volume's Cinder metadata.
    """

    name = "rbd"
    independent_restore_points = True  # each snapshot holds the whole volume
    delete_image = staticmethod(delete_image)

    def __init__(self, spec, pool, image_layout=None):
        self.spec = spec
        self.pool = pool
        self.layout = image_layout or layout.Layout()

    @classmethod
    def from_conf(cls, options):
        spec = cluster.ClusterSpec(conf=options.backup_ceph_conf, user=options.backup_ceph_user,
                                   keyring=options.backup_ceph_keyring,
                                   connect_timeout=options.connect_timeout,
                                   op_timeout=options.op_timeout)
        return cls(spec, options.backup_ceph_pool, layout.Layout.from_conf(options))

    def at(self, pool):
        """The same backup cluster, pool ``pool``."""
        return self if pool == self.pool else type(self)(self.spec, pool, self.layout)

    @contextlib.contextmanager
    def session(self, writing=False):
        with cluster.cluster(self.spec) as client, cluster.ioctx(client, self.pool) as ctx:
            session = RBDSession(client, ctx, cluster.user_name(self.spec), writing,
                                 self.layout)
            try:
                yield session
            finally:
                session.close()

    def check_setup(self):
        """Connect and prove the user can write to the pool; ClusterError otherwise."""
        with self.session() as session:
            # unique: several backup workers (backup_workers) probe at once
            probe = "%sprobe.%s" % (META_PREFIX, uuid.uuid4().hex)
            try:
                session.ctx.write_full(probe, b"ok")
                with contextlib.suppress(rados.ObjectNotFound):
                    session.ctx.remove_object(probe)
            except rados.PermissionError:
                raise cluster.ClusterError(
                    "client.%s cannot write to pool %s: give it 'profile rbd pool=%s'"
                    % (self.spec.user, self.pool, self.pool)) from None
            self.layout.check(session.client, session.who)


    def check_reachable(self, timeout):
        """Connect and read one object of the pool (a monitor and an OSD
        answer), each step bounded by ``timeout``. Read-only: a full cluster
        still answers, and must, since deleting backups is how it is freed."""
        spec = dataclasses.replace(self.spec, connect_timeout=timeout, op_timeout=timeout)
        with cluster.cluster(spec) as client, cluster.ioctx(client, self.pool) as ctx:
            try:
                ctx.stat(RBD_DIRECTORY)
            except rados.ObjectNotFound:
                pass  # an OSD answered; the pool has no image yet
            except rados.Error as exc:
                raise cluster.ClusterError("pool %s on %s does not answer: %s"
                                           % (self.pool, spec.describe(), exc)) from None


class RBDSession(base.TargetSession):
    """Chains as images in one pool of the backup cluster.

    A chain's HEAD is opened once per session and kept open until the
    session closes: opening an image costs several round trips, which count
    when the backup cluster is at another site. A read-write handle, once
    opened, serves the reads too (a read-only one would not see the
    snapshots it creates); a ``writing`` session opens HEAD for writing from
    the start, so a backup reading its parent's lineage first does not open
    it twice (at 20 ms a round trip, an open costs 0.15 s). Metadata (lineage,
    volume metadata) is image-wide, so while a snapshot of the chain is open
    (a restore point) it is read through that handle instead of opening HEAD.
    """

    def __init__(self, client, ctx, who=None, writing=False, image_layout=None):
        self.client = client
        self.ctx = ctx
        self.who = who
        self.layout = image_layout or layout.Layout()
        self.writing_session = writing
        self.fsid = client.get_fsid()
        self._heads = {}  # chain -> (rbd.Image, read_only)
        self._points = {}  # chain -> rbd.Image open at a snapshot, while it is open

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
                outer = self._points.setdefault(chain, img)
                try:
                    yield img
                finally:
                    if outer is img:
                        del self._points[chain]
            return
        read_only = read_only and not self.writing_session
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
        cluster.create_image_like(self.ctx, chain, size, order=order, who=self.who,
                                  layout=self.layout.create_args(self.client))

    @contextlib.contextmanager
    def locked(self, chain, me, timeout, should_cancel=None):
        """librbd's exclusive lock on the chain's HEAD, the handle the
        writes go through."""
        with self._chain(chain) as img, \
                locking.image_lock(img, chain, me, timeout, should_cancel):
            yield

    @contextlib.contextmanager
    def writing(self, chain, fresh, options):
        """An :class:`ImageSink` that rolls back what an interrupted earlier
        attempt left on the chain's HEAD."""
        with self._chain(chain) as img:
            yield ImageSink(img, fresh=fresh, rollback=True,
                            max_in_flight_ops=options.max_in_flight_ops,
                            max_in_flight_bytes=options.max_in_flight_bytes,
                            ioctx=self.ctx, who=self.who)

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

    @contextlib.contextmanager
    def _metadata(self, chain):
        """A handle to read ``chain``'s metadata through: one already open if any."""
        img = self._points.get(chain)
        if img is not None and chain not in self._heads:
            yield img
            return
        with self._chain(chain, read_only=True) as img:
            yield img

    def load_lineage(self, chain, backup_id):
        with self._metadata(chain) as img:
            return get_meta_json(img, backup_meta_key(backup_id))

    def load_volume_metadata(self, chain, backup_id):
        with self._metadata(chain) as img:
            try:
                return img.metadata_get(volume_meta_key(backup_id))
            except KeyError:
                return None

    def save_digests(self, chain, backup_id, digests):
        """Kept in a RADOS object of the pool, named after the backup."""
        self.ctx.write_full(digests_object(backup_id), digests)

    def save_checksums(self, chain, snap, record):
        """Kept in RADOS objects of the pool, named after the image id."""
        with self._chain(chain) as img:
            checksums.save(self.ctx, img.id(), snap, record)

    def damage(self, chain, snap):
        with self._metadata(chain) as img:
            return get_meta_json(img, damage_meta_key(snap))

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
            # the points built on it keep their checksums
            checksums.fold(self.ctx, img.id(), snap, snapshot_names(img))
            # a removal interrupted earlier left it in the trash namespace: finish it
            if not remove_snapshots(img, lambda name: name == snap):
                LOG.info("snapshot %s@%s is already gone", chain, snap)
            checksums.remove(self.ctx, img.id(), snap)
            for key in (backup_meta_key(backup_id), volume_meta_key(backup_id),
                        snap_meta_key(snap), damage_meta_key(snap)):
                with contextlib.suppress(KeyError):
                    img.metadata_remove(key)
            left = snapshot_names(img)
        if not left:
            LOG.info("removing chain image %s: no backup left in it", chain)
            with contextlib.suppress(rbd.ImageNotFound):
                remove_image(self.ctx, chain)  # with what interrupted removals left

    def delete_attempt(self, chain, backup_id):
        own_chain = (naming.parse_chain_image(chain) or (None, None))[1] == backup_id
        try:
            with self._chain(chain, read_only=True) as img:
                names = snapshot_names(img) + [name for _id, name in trashed_snapshots(img)]
        except base.ChainNotFound:
            if own_chain:  # its creation may have been interrupted: listed, no header
                with contextlib.suppress(rbd.ImageNotFound):
                    remove_image(self.ctx, chain)
            return
        mine = [name for name in names if naming.parse_backup_snapshot(name) == backup_id]
        for snap in mine:
            self.delete_backup(chain, snap, backup_id)
        self._forget(chain)
        self._undo_pending(chain, backup_id)
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

    def restore(self, make_sink, options, dest_size, fresh, changed=None, dest_image=None,
                should_cancel=None):
        plan = engine.Plan(to_snap=None, size=max(dest_size, self.size))
        extents = changed
        if extents is None and fresh:
            # Whole objects: with fast-diff librbd lists them from the object
            # map in one request instead of asking each object (0.67 s of a
            # 3.8 s restore across a 20 ms link); it reads only the allocated
            # parts of an object, and zero runs are not written.
            extents = engine.changed_extents(self.image, whole_object=True)
        elif extents is None:
            extents = (engine.allocated_chunks([self.image, dest_image], options.chunk_size)
                       if dest_image is not None else [(0, plan.size, True)])
        if extents is not None:
            extents = beyond_size_as_zero(extents, self.size)
        return engine.transfer(self.image, make_sink(fresh and changed is None), plan,
                               options, extents=extents, should_cancel=should_cancel)


def beyond_size_as_zero(extents, size):
    """Clip extents at ``size``; what lies beyond reads as zero (exists=False).
    A generator: the extents stream through."""
    for offset, length, exists in extents:
        end = offset + length
        if offset < size:
            yield offset, min(end, size) - offset, exists
        if end > size:
            start = max(offset, size)
            yield start, end - start, False
