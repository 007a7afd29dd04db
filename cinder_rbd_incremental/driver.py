"""Cinder backup driver: incremental RBD backups to a second Ceph cluster.

Orchestration only: which snapshot to take, which parent to diff against,
what to record. Moving bytes is the engine's job (``engine.py``), keeping
them the target's (``targets/``).

A chain of backups is one image on the backup cluster with one snapshot per
backup. A full backup starts a new chain; an incremental applies the diff
between the parent's source snapshot and a new one to the parent's chain.
Only the newest backup snapshot is kept on the volume. When an incremental
is impossible (the parent's source snapshot is gone, the volume image was
replaced, the chain was damaged), the backup becomes a full one in a new
chain instead of failing: the reason is logged and recorded in the lineage,
and the user gets a Cinder message, as with the stock Ceph driver.

In-use volumes: Cinder's RBD volume driver hands the live image only to
backup drivers whose class path contains ``backup.drivers.ceph``; every other
driver gets a temporary clone of an in-use volume. Cloning is cheap (copy on
write), but a chain cannot live on a clone deleted after each backup, so this
driver always opens the volume's own image (``volume.name``, in the pool and
cluster os-brick connected to) and snapshots that: crash-consistent, exactly
like the stock Ceph driver, and incremental whether the volume is attached
or not.

Long librbd work runs in native threads (Cinder's tpool under eventlet);
database access, notifications and logging stay in the calling green thread
(see ``native``): what the native work logs is queued and logged after it,
and by the timer that watches the backup's status while it runs.

Cinder's semantics this driver follows (see doc/source/architecture.rst):
one writer per chain (``locking``), backups of Cinder snapshots leave the
volume's backup snapshots alone, a force-deleted backup stops within a few
seconds and leaves nothing, a restore whose status changes stops with
``BackupRestoreCancel``, and every backup is read and deleted where it was
recorded (its pool: the configured one, or the container a user asked for).
"""

import contextlib
import dataclasses
import hashlib
import json
import time

import rados
import rbd
from cinder import exception, objects
from cinder import utils as cinder_utils
from cinder.backup import driver as backup_driver
from cinder.message import api as message_api
from cinder.message import message_field
from cinder.objects import fields
from cinder.volume import volume_utils
from oslo_config import cfg
from oslo_service import loopingcall
from stevedore import driver as stevedore_driver

from cinder_rbd_incremental import (
    checksums,
    cluster,
    diffstream,
    disclosure,
    engine,
    extents,
    lineage,
    locking,
    naming,
    native,
    opts,
    ratelimit,
)
from cinder_rbd_incremental.targets import base as target_base
from cinder_rbd_incremental.targets import rbd as rbd_target

LOG = native.get_logger(__name__)
CONF = cfg.CONF
opts.register_opts(CONF)
TARGET_NAMESPACE = "cinder_rbd_incremental.targets"
STATUS_POLL_SECONDS = 2  # how soon a force delete or a cancelled restore is noticed
STOP_WAIT_SECONDS = 120  # how long a force delete waits for its backup to stop
# Backups this process runs now (touched by green threads only): a force delete
# of one waits until it stopped and removed what it wrote, instead of racing it.
_RUNNING_BACKUPS: set[str] = set()
IMPORT_PLACEHOLDER_VOLUME_ID = "00000000-0000-0000-0000-000000000000"  # cinder/backup/api.py


@dataclasses.dataclass
class BackupJob:
    """Everything the I/O part of a backup needs, gathered in the green thread."""

    backup_id: str
    volume_id: str
    source_spec: cluster.ClusterSpec
    source_pool: str
    source_image: str
    size: int
    target: target_base.BackupTarget | None = None  # the configured one, or at the container
    snapshot_name: str | None = None          # backing up a Cinder snapshot
    parent_id: str | None = None
    parent_location: tuple | None = None      # (pool, image, snap) from the parent's metadata
    volume_metadata: str | None = None
    progress: dict = dataclasses.field(default_factory=lambda: {"done": 0, "total": 0})
    watch: "StatusWatch | None" = None        # set by the green thread, read by the native one

    def should_cancel(self):
        return self.watch is not None and self.watch.cancelled


def run_native(func, *args):
    """Run blocking librbd work off the eventlet hub (in the caller in thread
    mode); either way what it logs is queued until ``native.flush_logs``."""
    return native.run_native(func, *args,
                             threaded=not cinder_utils.concurrency_mode_threading())


class StatusWatch:
    """Polls a backup's status from the green thread while native work runs
    (the database is not to be touched from a native thread): ``cancelled``
    turns True once the status leaves ``expected`` (a force delete of a
    creating backup, a restore reset or deleted). It also logs what the
    native work queued meanwhile."""

    def __init__(self, context, backup_id, expected):
        self.context = context.elevated(read_deleted="yes")
        self.backup_id = backup_id
        self.expected = expected
        self.cancelled = False
        self.status = expected
        self._timer = loopingcall.FixedIntervalLoopingCall(self.poll)

    def poll(self):
        native.flush_logs()
        try:
            self.status = objects.Backup.get_by_id(self.context, self.backup_id).status
        except exception.BackupNotFound:
            self.status = fields.BackupStatus.DELETED
        if self.status != self.expected:
            self.cancelled = True

    def __enter__(self):
        self._timer.start(interval=STATUS_POLL_SECONDS, initial_delay=STATUS_POLL_SECONDS)
        return self

    def __exit__(self, *exc):
        self._timer.stop()
        native.flush_logs()


class Overlapped:
    """``func(*args)`` on a native thread from ``start()`` on; ``wait()`` joins
    it and returns its exception (None when it succeeded or never started);
    ``value`` is then what it returned.

    A backup snapshots the volume this way while it reads the parent's
    lineage from the backup cluster, and removes the previous source snapshot
    while the backup cluster creates the new restore point: a snapshot waits
    for its cluster's monitors (up to ``paxos_propose_interval``, 1 s by
    default), so the waits overlap instead of adding up.
    """

    def __init__(self, func, *args):
        self._call = (func, args)
        self._thread = None
        self._error = None
        self.value = None

    @property
    def started(self):
        return self._thread is not None

    def start(self):
        if self._thread is None:
            self._thread = engine.threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self):
        func, args = self._call
        try:
            with native.section():  # a native thread: no logging from here
                self.value = func(*args)
        except Exception as exc:  # handed to wait()
            self._error = exc

    def wait(self):
        if self._thread is not None:
            self._thread.join()
        return self._error


def load_target(options):
    """The backup target plugin named by ``[backup_rbd_incremental] target``."""
    manager = stevedore_driver.DriverManager(TARGET_NAMESPACE, options.target)
    return manager.driver.from_conf(options)


class RBDIncrementalBackupDriver(backup_driver.BackupDriver):
    """Backs up RBD volumes incrementally into chain images on a second cluster."""

    def __init__(self, context):
        super().__init__(context)
        # a force delete of a creating backup stops it (see StatusWatch)
        self.support_force_delete = True
        self.options = CONF[opts.GROUP]
        self.target = load_target(self.options)
        self.message_api = message_api.API()

    def _native(self, func, *args):
        """:func:`run_native`, a permission error turned into one line that
        names the capabilities this driver needs."""
        try:
            return run_native(func, *args)
        except locking.ChainBusy as exc:
            raise exception.BackupDriverException(reason=str(exc)) from None
        except cluster.PermissionDenied as exc:
            raise exception.BackupDriverException(reason=str(exc)) from None
        except (rados.PermissionError, rbd.PermissionError) as exc:
            raise exception.BackupDriverException(reason=(
                "permission denied (%s): the volume cluster's user needs 'profile rbd "
                "pool=<volume pool>', client.%s on the backup cluster 'profile rbd pool=%s'"
                % (exc, self.options.backup_ceph_user, self.options.backup_ceph_pool))) \
                from None
        finally:
            native.flush_logs()

    # -- set-up ----------------------------------------------------------------

    def check_for_setup_error(self):
        try:
            self.engine_options()
            self._check_incremental_forever()
            lineage.check_pool_fits(self.target.pool, self.target.name)
            # connecting blocks for up to connect_timeout: not on the hub
            self._native(self.target.check_setup)
        except (cluster.ClusterError, lineage.InvalidLineage, ValueError) as exc:
            raise exception.BackupDriverException(reason=str(exc)) from None

    def _check_incremental_forever(self):
        if self.options.incremental_forever and not self.target.independent_restore_points:
            raise ValueError(
                "incremental_forever = true needs restore points that do not depend on each "
                "other, but target = %s keeps each backup as a diff of the one before: set "
                "incremental_forever = false, or use target = rbd" % self.target.name)

    def engine_options(self):
        return engine.TransferOptions(
            zero_granularity=self.options.zero_granularity,
            max_in_flight_ops=self.options.max_in_flight_ops,
            max_in_flight_bytes=self.options.max_in_flight_mib << 20,
            whole_object=self.options.whole_object)

    def _throttled(self, sink):
        """``sink`` under the process's ``max_bandwidth_mib`` bucket, if set."""
        return ratelimit.throttled(sink, ratelimit.shared(self.options.max_bandwidth_mib << 20))

    def source_spec(self, volume_file=None):
        """How to reach the volume cluster: os-brick's connection when there is one."""
        timeouts = {"connect_timeout": self.options.connect_timeout,
                    "op_timeout": self.options.op_timeout}
        if volume_file is not None and getattr(volume_file, "rbd_conf", None):
            return cluster.ClusterSpec(conf=volume_file.rbd_conf, user=volume_file.rbd_user,
                                       **timeouts)
        return cluster.ClusterSpec(conf=self.options.source_ceph_conf,
                                   user=self.options.source_ceph_user,
                                   keyring=self.options.source_ceph_keyring, **timeouts)

    # -- backup ------------------------------------------------------------------

    @disclosure.tenant_facing("backup")
    def backup(self, backup, volume_file, backup_metadata=False):
        volume = objects.Volume.get_by_id(self.context, backup.volume_id)
        job = self._backup_job(backup, volume, volume_file)
        _RUNNING_BACKUPS.add(backup.id)
        try:
            return self._run_backup(backup, volume, volume_file, job)
        finally:
            _RUNNING_BACKUPS.discard(backup.id)

    def _run_backup(self, backup, volume, volume_file, job):
        record = None
        with self._progress_notifications(backup, job.progress), \
                StatusWatch(self.context, backup.id, fields.BackupStatus.CREATING) as watch:
            job.watch = watch
            try:
                if hasattr(volume_file, "rbd_image"):
                    record = self._native(self._backup_rbd, job)
                else:
                    record = self._native(self._backup_stream, job, volume_file)
            except engine.Cancelled as exc:
                LOG.info("backup %s: %s", backup.id, exc)
            watch.poll()  # deleted just as it finished?
            if watch.cancelled:
                job.progress["total"] = 0  # no "100 %" for it
        if watch.cancelled:
            # Cinder then treats the backup as aborted: what it wrote must go
            LOG.info("backup %s is %s: removing what it wrote", backup.id, watch.status)
            self._remove_backup(backup, job.target, record)
            return {}
        return self._finish_backup(backup, volume, record)

    def _target_for_backup(self, backup):
        """The configured target, or at the container the user asked for (a
        pool of the backup cluster the backup user can write to, as with
        Cinder's Ceph driver); BackupDriverException naming what to fix."""
        pool = backup.container or self.target.pool
        if pool == self.target.pool:
            return self.target
        try:
            target = self.target.at(pool)
            self._native(target.check_setup)
        except (cluster.ClusterError, naming.InvalidName) as exc:
            raise disclosure.ContainerRefused(
                pool, reason="container %s cannot hold backups: %s" % (pool, exc)) from None
        return target

    def _backup_job(self, backup, volume, volume_file):
        snapshot_name = None
        if backup.snapshot_id:
            snapshot_name = objects.Snapshot.get_by_id(self.context, backup.snapshot_id).name
        parent_location = None
        if backup.parent_id:
            parent_location = self._parent_location(backup.parent)
        return BackupJob(
            backup_id=backup.id, volume_id=volume.id, source_spec=self.source_spec(volume_file),
            source_pool=getattr(volume_file, "rbd_pool", None), source_image=volume.name,
            size=volume.size << 30, target=self._target_for_backup(backup),
            snapshot_name=snapshot_name, parent_id=backup.parent_id,
            parent_location=parent_location, volume_metadata=self.get_metadata(volume.id))

    @staticmethod
    def _parent_location(parent):
        try:
            return lineage.parse_compact(parent.service_metadata)
        except lineage.InvalidLineage as exc:
            LOG.warning("parent backup %s: %s", parent.id, exc)
            return None

    def _finish_backup(self, backup, volume, record):
        updates = {"service_metadata": lineage.compact(record),
                   "container": record["target"]["pool"],
                   "object_count": record["stats"].get("extents", 0)}
        if record["full_reason"] and backup.parent_id:
            LOG.warning("backup %s of volume %s is a full backup: %s", backup.id, volume.id,
                        record["full_reason"])
            updates["parent_id"] = None
            self.message_api.create(
                self.context, message_field.Action.BACKUP_CREATE, resource_uuid=volume.id,
                detail=message_field.Detail.INCREMENTAL_BACKUP_FORCES_FULL_BACKUP,
                level="WARNING")
        elif (backup.parent_id and self.options.incremental_forever
              and self.target.independent_restore_points):
            # Cinder's parent only says "deleting the parent breaks this one",
            # untrue of a snapshot of the chain image: without it any backup
            # can be deleted. The transfer parent stays in the lineage.
            updates["parent_id"] = None
        return updates

    def _backup_rbd(self, job):
        """The I/O of a backup (native thread): snapshot, transfer, verify, record."""
        options = self.engine_options()
        with cluster.cluster(job.source_spec) as src_client, \
                cluster.ioctx(src_client, job.source_pool) as src_ctx, \
                job.target.session(writing=True) as session:
            src_snap, parent_lineage = self._snapshot_and_parent_lineage(job, src_ctx, session)
            # started once the data is durable on the target (see _write_chain)
            prune = Overlapped(self._prune_source_snapshots, src_ctx, job, src_snap)
            try:
                with cluster.image(src_ctx, job.source_image, snapshot=src_snap,
                                   read_only=True) as src_img:
                    parent = self._usable_parent(src_client, src_img, src_snap,
                                                 parent_lineage)
                    record = self._transfer(job, options, src_client, src_img, src_snap,
                                            session, parent, prune)
            finally:
                error = prune.wait()
            if not prune.started:
                self._prune_source_snapshots(src_ctx, job, src_snap)
            elif error is not None:
                # the backup is complete; the next one removes what is left
                LOG.warning("backup %s: could not remove the previous backup snapshot of "
                            "%s: %s", job.backup_id, job.source_image, error)
        return record

    def _snapshot_and_parent_lineage(self, job, src_ctx, session):
        """Snapshot the volume (unless a Cinder snapshot is backed up) and read
        the parent's lineage at the same time: the volume cluster's monitors
        commit the snapshot (up to 1 s) while the backup cluster answers.
        Returns the source snapshot's name and :meth:`_parent_lineage`."""
        snapshot = Overlapped(self._take_source_snapshot, src_ctx, job)
        if not job.snapshot_name:
            snapshot.start()
        try:
            parent_lineage = self._parent_lineage(job, session)
        finally:
            error = snapshot.wait()
        if error is not None:
            raise error
        return job.snapshot_name or snapshot.value, parent_lineage

    @staticmethod
    def _take_source_snapshot(src_ctx, job):
        name = naming.backup_snapshot(job.backup_id)
        with cluster.image(src_ctx, job.source_image) as img:
            img.create_snap(name)
        return name

    @staticmethod
    def _parent_lineage(job, session):
        """The parent's lineage if its restore point is there, else the reason why not."""
        if not job.parent_id:
            return None, None
        if job.parent_location is None:
            return None, "the parent backup has no lineage of this driver"
        pool, image, snap = job.parent_location
        if pool != job.target.pool:
            return None, "the parent is in %s, this backup goes to %s" % (pool, job.target.pool)
        try:
            record = session.load_lineage(image, job.parent_id)
            chain_snaps = session.snapshots(image)
        except cluster.ClusterError:
            return None, "the parent's chain image %s is gone" % image
        if record is None or snap not in chain_snaps:
            return None, "the parent's snapshot %s is gone from %s" % (snap, image)
        damage = session.damage(image, snap)
        if damage:
            return None, ("scrub found the parent's restore point %s@%s damaged at offset %s "
                          "(%s)" % (image, snap, damage.get("offset"), damage.get("scrubbed")))
        return _parent_record(record, job)

    @staticmethod
    def _usable_parent(src_client, src_img, src_snap, parent_lineage):
        """The parent's lineage if an incremental is possible from the volume's
        snapshot ``src_snap`` (``src_img`` is open at it), else the reason why not."""
        record, reason = parent_lineage
        if record is None:
            return None, reason
        source_snap = record["source"].get("snapshot")
        snap_ids = {snap["name"]: snap["id"] for snap in src_img.list_snaps()}
        if source_snap not in snap_ids:
            return None, "the parent's source snapshot %s is gone from the volume" % source_snap
        if snap_ids[source_snap] >= snap_ids.get(src_snap, 0):
            # e.g. a Cinder snapshot taken after a volume backup's row, before its
            # RBD snapshot: librbd cannot diff backwards (EINVAL)
            return None, ("the parent's source snapshot %s is newer than %s, the one backed "
                          "up" % (source_snap, src_snap))
        identity = cluster.snapshot_identity(src_client, src_img, source_snap)
        if not rbd_target.same_identity(record["source"].get("identity"), identity):
            return None, "the volume image is not the one the parent backed up"
        return record, None

    def _transfer(self, job, options, src_client, src_img, src_snap, session,
                  parent_and_reason, prune):
        parent, full_reason = parent_and_reason
        dest_snap = (src_snap if job.snapshot_name is None
                     else naming.backup_snapshot(job.backup_id))
        identity_to = cluster.snapshot_identity(src_client, src_img, src_snap)
        plan = engine.Plan(to_snap=src_snap, size=src_img.size(), identity_to=identity_to,
                           dest_to_snap=dest_snap)
        if parent is not None:
            plan.from_snap = parent["source"]["snapshot"]
            plan.dest_from_snap = parent["target"]["snapshot"]
            plan.identity_from = parent["source"]["identity"]
            image = parent["target"]["image"]
        else:
            image = naming.chain_image(job.volume_id, job.backup_id)
            session.new_chain(image, src_img.size(), src_img.stat()["order"])
        try:
            with self._chain_locked(session, image, job):
                return self._write_and_record(job, options, src_img, session, image, plan,
                                              parent, full_reason, prune)
        except engine.StateError as exc:
            if parent is None:
                raise
            # The chain is not in the state its lineage says: start a new one.
            return self._transfer(job, options, src_client, src_img, src_snap, session,
                                  (None, "the parent's chain is damaged: %s" % exc), prune)

    def _chain_locked(self, session, image, job):
        """The chain's writer lock, held from before the first write until the
        lineage is stored (see ``locking``)."""
        return session.locked(image, locking.owner(job.backup_id),
                              self.options.chain_lock_timeout, job.should_cancel)

    def _write_and_record(self, job, options, src_img, session, image, plan, parent,
                          full_reason, prune):
        stats, snap_id, verification = self._write_chain(
            job, options, src_img, session, image, plan, parent is None, prune)
        src_snap, dest_snap, identity_to = plan.to_snap, plan.dest_to, plan.identity_to
        record = lineage.build(
            backup_id=job.backup_id, volume_id=job.volume_id, pool=job.target.pool,
            image=image, snapshot=dest_snap, snap_id=snap_id,
            method="rbd-diff" if parent else "rbd-full", target=job.target.name,
            target_fsid=session.fsid,
            source={"pool": job.source_pool, "image": job.source_image, "snapshot": src_snap,
                    "identity": identity_to, "cinder_snapshot": job.snapshot_name},
            parent=({"backup_id": job.parent_id, "snapshot": parent["target"]["snapshot"]}
                    if parent else None),
            full_reason=full_reason, size=plan.size, stats=stats.as_dict(),
            verification=verification)
        session.save_lineage(image, record, job.volume_metadata)
        return record

    def _backup_stream(self, job, volume_file):
        """Back up a non-RBD volume (a plain file object), in a native thread.

        Full: every chunk streamed into a new chain image, zero runs skipped.
        Incremental: every chunk is read and hashed, only chunks whose sha256
        differs from the parent's are sent.
        """
        options = self.engine_options()
        chunk = self.options.file_chunk_mib << 20
        with job.target.session(writing=True) as session:
            parent, full_reason, parent_digests = self._usable_stream_parent(job, session)
            snap = naming.backup_snapshot(job.backup_id)
            plan = engine.Plan(to_snap=snap, size=job.size)
            if parent:
                image = parent["target"]["image"]
                plan.dest_from_snap = parent["target"]["snapshot"]
            else:
                image = naming.chain_image(job.volume_id, job.backup_id)
                session.new_chain(image, job.size, 22)
            digests = []
            records = _changed_chunks(engine.file_chunks(volume_file, job.size, chunk),
                                      chunk, digests, parent_digests)
            with self._chain_locked(session, image, job), \
                    session.writing(image, parent is None, options) as sink:
                stats = engine.apply_records(engine.cancellable(records, job.should_cancel),
                                             self._throttled(sink), plan,
                                             options.zero_granularity,
                                             lambda done, total: job.progress.update(
                                                 done=done, total=total))
            session.save_digests(image, job.backup_id, b"".join(digests))
            record = lineage.build(
                backup_id=job.backup_id, volume_id=job.volume_id, pool=job.target.pool,
                image=image, snapshot=snap, snap_id=sink.snap_id,
                method="stream-checksum" if parent else "stream-full", target=job.target.name,
                target_fsid=session.fsid, source={"kind": "file", "chunk": chunk},
                parent=({"backup_id": job.parent_id, "snapshot": parent["target"]["snapshot"]}
                        if parent else None),
                full_reason=full_reason, size=job.size, stats=stats.as_dict())
            session.save_lineage(image, record, job.volume_metadata)
        return record

    def _usable_stream_parent(self, job, session):
        """(parent lineage, reason for a full, parent's chunk digests)."""
        if not job.parent_id:
            return None, None, None
        if job.parent_location is None:
            return None, "the parent backup has no lineage of this driver", None
        pool, image, _snap = job.parent_location
        if pool != job.target.pool:
            return None, "the parent is in %s, this backup goes to %s" % (
                pool, job.target.pool), None
        try:
            record = session.load_lineage(image, job.parent_id)
        except cluster.ClusterError:
            return None, "the parent's chain image %s is gone" % image, None
        if record is not None:
            record, reason = _parent_record(record, job)
            if reason:
                return None, reason, None
        digests = session.load_digests(image, job.parent_id)
        if (record is None or not record["method"].startswith("stream-") or digests is None
                or record["source"].get("chunk") != self.options.file_chunk_mib << 20):
            return None, "the parent has no chunk checksums to compare with", None
        return record, None, digests

    def _write_chain(self, job, options, src_img, session, image, plan, fresh, prune):
        """Transfer, then verify. Once the data is durable on the target, the
        previous source snapshot is removed (``prune``) while the target marks
        the restore point; what verification needs of that snapshot (the
        source's changes since it) is read before. Should the end snapshot or
        the verification then fail, the next backup is a full one."""
        source_changes = []
        # which objects changed, from the object map: the transfer's first
        # step, and what verification compares
        changes = engine.changed_extents(src_img, plan.from_snap, options.whole_object,
                                         at_snap=plan.to_snap)

        def progress(done, total):
            job.progress.update(done=done, total=total)

        def durable():
            if plan.from_snap and self.options.verify != "none":
                source_changes.append(changes.objects
                                      or extents.ChangedObjects(src_img, plan.from_snap))
            prune.start()

        recorder = checksums.Recorder(plan.size, parent=plan.dest_from)
        with session.writing(image, fresh, options) as sink:
            stats = engine.transfer(src_img, self._throttled(sink), plan, options, progress,
                                    should_cancel=job.should_cancel, extents=changes,
                                    on_durable=durable, digests=recorder)
        session.save_checksums(image, plan.dest_to, recorder.record)
        try:
            verification = self._verify(src_img, session, image, plan, options,
                                        source_changes)
        except exception.BackupDriverException:
            # never leave a restore point that does not match its source
            session.delete_backup(image, plan.dest_to, job.backup_id)
            raise
        LOG.info("backup %s: %s changed, %s sent in %.1f s; verification: %s", job.backup_id,
                 stats.changed_bytes, stats.data_bytes, stats.seconds, verification)
        return stats, sink.snap_id, verification

    def _verify(self, src_img, session, image, plan, options, source_changes):
        """Compare the new restore point with the source snapshot: what this
        backup changed (an incremental: ``source_changes``, the source's
        extents changed since the parent, and the chain's since the parent's
        snapshot) or everything (a full)."""
        mode = self.options.verify
        if mode == "none":
            return {"mode": "none"}
        sample = self.options.verify_sample_objects if mode == "sample" else None
        since = (source_changes[0], plan.dest_from) if plan.from_snap else None
        snap = plan.dest_to
        offset = session.verify(src_img, image, snap, options, sample=sample, since=since)
        if offset is not None:
            raise disclosure.VerificationFailed(
                reason="verification failed: %s@%s differs from the source at offset %d"
                       % (image, snap, offset))
        return {"mode": mode, "result": "identical"}

    def _prune_source_snapshots(self, src_ctx, job, keep):
        """Keep the newest ``max_source_snapshots`` backup snapshots on the
        volume (``keep``, this backup's, among them): each is the base of an
        incremental should the backups after it be deleted. A backup of a
        Cinder snapshot removes none: the volume's own backups go on from theirs."""
        if job.snapshot_name:
            return
        with cluster.image(src_ctx, job.source_image) as img:
            kept = set(newest_backup_snapshots(img, self.options.max_source_snapshots))
            kept.add(keep)
            # also those an interrupted removal left in the trash namespace
            for name in rbd_target.remove_snapshots(
                    img, lambda name: name not in kept and naming.parse_backup_snapshot(name)):
                LOG.info("removed old backup snapshot %s@%s", job.source_image, name)

    @contextlib.contextmanager
    def _progress_notifications(self, backup, progress):
        """Send backup.createprogress notifications while the transfer runs."""
        def notify():
            total = progress["total"]
            if total:
                percent = round(100.0 * progress["done"] / total, 1)
                volume_utils.notify_about_backup_usage(
                    self.context, backup, "createprogress",
                    extra_usage_info={"backup_percent": percent})
                LOG.info("backup %s: %.1f%% of %d bytes", backup.id, percent, total)

        timer = loopingcall.FixedIntervalLoopingCall(notify)
        interval = CONF.backup_timer_interval  # Cinder's, as its chunked drivers use
        timer.start(interval=interval, initial_delay=interval)
        try:
            yield
        finally:
            timer.stop()
        if progress["total"]:
            progress["done"] = progress["total"]
            notify()

    # -- restore ---------------------------------------------------------------

    @disclosure.tenant_facing("restore")
    def restore(self, backup, volume_id, volume_file, volume_is_new):
        location = self._location(backup)
        volume = objects.Volume.get_by_id(self.context, volume_id)
        original = objects.Volume.get_by_id(self.context, backup.volume_id) \
            if volume_id == backup.volume_id else None
        # Cinder's chunked driver stops a restore whose backup leaves 'restoring'
        with StatusWatch(self.context, backup.id, fields.BackupStatus.RESTORING) as watch:
            try:
                if hasattr(volume_file, "rbd_image"):
                    metadata = self._native(self._restore_rbd, location, backup.id, volume,
                                            volume_file, volume_is_new, original is not None,
                                            backup.volume_id, watch)
                else:
                    metadata = self._native(self._restore_stream, location, backup.id,
                                            volume_file, volume.size << 30, volume_is_new,
                                            backup.volume_id, watch)
            except engine.Cancelled as exc:
                LOG.info("restore of backup %s to volume %s: %s (backup status %s)",
                         backup.id, volume_id, exc, watch.status)
                raise exception.BackupRestoreCancel(back_id=backup.id,
                                                    vol_id=volume_id) from None
        metadata = _checked_volume_metadata(metadata, backup)
        if metadata:
            self.put_metadata(volume_id, metadata)

    def _location(self, backup):
        try:
            pool, image, snap = lineage.parse_compact(backup.service_metadata)
        except lineage.InvalidLineage as exc:
            raise exception.InvalidBackup(reason=str(exc)) from None
        self._check_configured(backup.id, lineage.compact_target(backup.service_metadata), pool)
        try:
            lineage.check_restore_point(image, snap, backup.id, backup.volume_id)
        except lineage.InvalidLineage as exc:
            raise exception.InvalidBackup(reason="backup %s: %s" % (backup.id, exc)) from None
        return pool, image, snap

    def _check_configured(self, backup_id, target_name, pool):
        """The target (at the recorded ``pool``) that holds a backup;
        InvalidBackup naming what to fix unless this driver can reach it."""
        if target_name != self.target.name:
            raise exception.InvalidBackup(
                reason="backup %s lives in %s target %s, not in the configured %s target %s: "
                       "configure [%s] target = %s to reach it"
                       % (backup_id, target_name, pool, self.target.name, self.target.pool,
                          opts.GROUP, target_name))
        try:
            return self.target.at(pool)
        except cluster.ClusterError as exc:
            raise exception.InvalidBackup(reason="backup %s: %s" % (backup_id, exc)) from None

    def _restore_rbd(self, location, backup_id, volume, volume_file, volume_is_new,
                     to_original, backup_volume_id, watch=None):
        """Restore; returns the backup's volume metadata (read in the same
        session: every image open is round trips to the backup site)."""
        pool, image, snap = location
        options = self.engine_options()
        spec = self.source_spec(volume_file)
        with self.target.at(pool).session() as session, \
                session.restore_point(image, snap) as point, \
                cluster.cluster(spec) as vol_client, \
                cluster.ioctx(vol_client, volume_file.rbd_pool) as vol_ctx, \
                cluster.image(vol_ctx, volume.name) as dest, \
                contextlib.ExitStack() as in_place:
            record = _stored_lineage(session, location, backup_id, backup_volume_id)
            _check_fits(point, volume.size << 30, backup_id)
            changed = None
            if to_original:
                # What changed is found through a read-only handle: librbd
                # flushes an image before each diff, and through ``dest`` that
                # would wait for the restore's own writes.
                view = in_place.enter_context(cluster.image(vol_ctx, volume.name,
                                                            read_only=True))
                changed = self._changed_since_backup(vol_client, dest, record, view)

            def make_sink(fresh):
                return self._throttled(rbd_target.ImageSink(
                    dest, fresh=fresh, force=True, max_in_flight_ops=options.max_in_flight_ops,
                    max_in_flight_bytes=options.max_in_flight_bytes))
            stats = point.restore(make_sink, options, dest.size(), volume_is_new, changed,
                                  dest_image=dest, should_cancel=_cancel_test(watch))
            metadata = session.load_volume_metadata(image, backup_id)
        LOG.info("restore of backup %s to volume %s: %d bytes read, %d written in %.1f s",
                 backup_id, volume.id, stats.changed_bytes, stats.data_bytes, stats.seconds)
        return metadata

    @staticmethod
    def _changed_since_backup(vol_client, dest, record, view):
        """Extents to rewrite for an in-place restore, or None if not possible.

        Possible when the volume still holds the source snapshot of the backup
        (same identity): then only what changed since needs rewriting, found
        through ``view`` (the volume's HEAD, read-only) as the restore goes.
        """
        source = record.get("source") or {}
        snap = source.get("snapshot")
        if not snap or snap not in rbd_target.snapshot_names(dest):
            return None
        identity = cluster.snapshot_identity(vol_client, dest, snap)
        if identity != source.get("identity"):
            return None
        LOG.info("in-place restore: rewriting only what changed since %s", snap)
        # Discarded extents too must be read back from the backup: exists=True.
        return ((offset, length, True) for offset, length, _exists
                in engine.changed_extents(view, snap, at_snap=None))

    def _restore_stream(self, location, backup_id, volume_file, volume_size, volume_is_new,
                        backup_volume_id, watch=None):
        pool, image, snap = location
        with self.target.at(pool).session() as session, \
                session.restore_point(image, snap) as point:
            _stored_lineage(session, location, backup_id, backup_volume_id)
            _check_fits(point, volume_size, backup_id)
            point.restore(lambda fresh: self._throttled(FileObjectSink(volume_file, fresh=fresh)),
                          self.engine_options(), volume_size, volume_is_new,
                          should_cancel=_cancel_test(watch))
            return session.load_volume_metadata(image, backup_id)

    # -- delete --------------------------------------------------------------------

    @disclosure.tenant_facing("delete")
    def delete_backup(self, backup):
        """Delete where the backup was recorded (its pool or directory). A
        target this driver cannot reach there is an error that removes
        nothing: Cinder keeps the backup (status error, the reason in
        fail_reason) instead of forgetting data it never removed."""
        self._wait_until_stopped(backup.id)
        try:
            location = lineage.parse_compact(backup.service_metadata)
        except lineage.InvalidLineage as exc:
            LOG.info("backup %s: %s; removing what an attempt may have left", backup.id, exc)
            self._remove_attempt(backup)
            return
        try:
            lineage.check_restore_point(location[1], location[2], backup.id, backup.volume_id)
        except lineage.InvalidLineage as exc:
            LOG.error("backup %s: %s: not touching it (a tampered or misimported record?)",
                      backup.id, exc)
            raise exception.InvalidBackup(reason=str(exc)) from None
        target = self._check_configured(
            backup.id, lineage.compact_target(backup.service_metadata), location[0])
        self._remove_backup(backup, target, location=location)

    @staticmethod
    def _wait_until_stopped(backup_id):
        """A force delete of a backup this process is running: it notices
        within STATUS_POLL_SECONDS, stops and removes what it wrote; wait for
        that (the image it writes cannot be removed while it is open)."""
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while backup_id in _RUNNING_BACKUPS and time.monotonic() < deadline:
            time.sleep(0.5)  # a green thread: eventlet's sleep lets the backup finish

    def _remove_backup(self, backup, target, record=None, location=None):
        """Remove a backup's restore point and source snapshot (``record``: its
        lineage, or ``location``: (pool, image, snap)); with neither, what an
        unfinished attempt at it may have left."""
        if record is None and location is None:
            self._remove_attempt(backup, target)
            return
        if location is None:
            location = (record["target"]["pool"], record["target"]["image"],
                        record["target"]["snapshot"])
        try:
            stored = self._native(self._delete_chain_snapshot, location, backup.id,
                                  backup.volume_id, target)
        except target_base.ChainInUse as exc:
            raise exception.InvalidBackup(reason=str(exc)) from None
        except cluster.ClusterError as exc:
            raise exception.BackupDriverException(reason=(
                "backup %s is recorded in %s of the %s target, which cannot be reached (%s): "
                "nothing was removed; make it reachable and delete again"
                % (backup.id, location[0], target.name, exc))) from None
        if stored or record:
            self._native(self._delete_source_snapshot, stored or record)

    def _remove_attempt(self, backup, target=None):
        """What an unfinished attempt at ``backup`` may have left: its restore
        point in its own or its parent's chain, its snapshot of the volume."""
        if target is None:
            try:
                target = self.target.at(backup.container or self.target.pool)
            except cluster.ClusterError as exc:  # refused at the start: wrote nothing
                LOG.info("backup %s: %s; nothing to remove there", backup.id, exc)
                target = None
        chains = [naming.chain_image(backup.volume_id, backup.id)]
        parent = self._parent_location(backup.parent) if backup.parent_id else None
        if parent:
            chains.append(parent[1])
        try:
            if target is not None:
                self._native(self._delete_attempt, chains, backup.id, target)
        except cluster.ClusterError as exc:
            if target.pool == self.target.pool:
                raise exception.BackupDriverException(reason=(
                    "cannot look for what backup %s left in %s: %s; nothing was removed"
                    % (backup.id, target.pool, exc))) from None
            # a container refused at the start (e.g. no such pool): nothing there
            LOG.info("backup %s: %s; nothing to remove there", backup.id, exc)
        self._delete_attempt_source_snapshot(backup)

    def _delete_chain_snapshot(self, location, backup_id, volume_id, target):
        """Remove the restore point; returns its lineage if it is this
        backup's (it names the volume's snapshot to remove), else None."""
        _pool, image, snap = location
        with target.session() as session:
            record = None
            with contextlib.suppress(cluster.ClusterError, exception.InvalidBackup):
                record = _stored_lineage(session, location, backup_id, volume_id)
            session.delete_backup(image, snap, backup_id)
        return record

    def _delete_attempt(self, chains, backup_id, target):
        with target.session() as session:
            for image in chains:
                session.delete_attempt(image, backup_id)

    def _delete_attempt_source_snapshot(self, backup):
        """Remove the snapshot an unfinished backup may have taken of its volume."""
        try:
            volume = objects.Volume.get_by_id(self.context, backup.volume_id)
        except exception.VolumeNotFound:
            return  # deleting the volume removed its backup snapshots
        self._native(self._remove_backup_snapshots, volume.name, backup.id)

    def _remove_backup_snapshots(self, image_name, backup_id):
        try:
            with cluster.open_image(self.source_spec(), self.options.source_ceph_pool,
                                    image_name) as img:
                for snap in rbd_target.remove_snapshots(
                        img, lambda name: naming.parse_backup_snapshot(name) == backup_id):
                    LOG.info("removed %s@%s left by an unfinished backup", image_name, snap)
        except (cluster.ClusterError, rbd.Error) as exc:
            LOG.warning("could not look for snapshots of backup %s on %s: %s", backup_id,
                        image_name, exc)

    def _delete_source_snapshot(self, record):
        """Remove the backup's snapshot on the volume, if it is still there."""
        source = record["source"]
        snap = source.get("snapshot")
        if not naming.parse_backup_snapshot(snap):
            return  # a Cinder snapshot that was backed up: the user's, not ours
        try:
            with cluster.open_image(self.source_spec(), source["pool"], source["image"]) as img:
                rbd_target.remove_snapshots(img, lambda name: name == snap)
        except (cluster.ClusterError, rbd.Error) as exc:
            LOG.warning("could not remove source snapshot %s of %s: %s", snap,
                        source.get("image"), exc)

    # -- export / import -----------------------------------------------------------

    @disclosure.tenant_facing("export")
    def export_record(self, backup):
        location = self._location(backup)
        record = self._native(self._read_lineage, location, backup.id, backup.volume_id)
        return {"lineage": record}

    @disclosure.tenant_facing("import")
    def import_record(self, backup, driver_info):
        try:
            record = lineage.parse(driver_info.get("lineage"))
        except (lineage.InvalidLineage, AttributeError) as exc:
            raise exception.InvalidBackup(reason="backup record: %s" % exc) from None
        # Cinder calls this with a placeholder volume id, then applies the record's
        if backup.volume_id not in (record["volume_id"], IMPORT_PLACEHOLDER_VOLUME_ID):
            raise exception.InvalidBackup(
                reason="backup record belongs to volume %s, not %s"
                       % (record["volume_id"], backup.volume_id))
        if record["backup_id"] != backup.id:
            raise exception.InvalidBackup(
                reason="backup record describes backup %s, not %s"
                       % (record["backup_id"], backup.id))
        target = record["target"]
        self._check_configured(backup.id, target.get("name", "rbd"), target["pool"])
        try:
            lineage.check_restore_point(target["image"], target["snapshot"], backup.id,
                                        record["volume_id"])
        except lineage.InvalidLineage as exc:
            raise exception.InvalidBackup(reason="backup record: %s" % exc) from None
        stored = self._native(self._read_lineage, (target["pool"], target["image"],
                                                 target["snapshot"]), backup.id,
                              record["volume_id"])
        if stored != record:
            raise exception.InvalidBackup(
                reason="backup record does not match the lineage stored with %s@%s"
                       % (target["image"], target["snapshot"]))
        backup.service_metadata = lineage.compact(record)
        backup.container = target["pool"]
        backup.save()

    def _read_lineage(self, location, backup_id, volume_id):
        pool, image, snap = location
        try:
            with self.target.at(pool).session() as session:
                if snap not in session.snapshots(image):
                    raise exception.InvalidBackup(reason="snapshot %s@%s does not exist"
                                                  % (image, snap))
                return _stored_lineage(session, location, backup_id, volume_id)
        except cluster.ClusterError as exc:
            raise exception.InvalidBackup(reason=str(exc)) from None


def _cancel_test(watch):
    """``should_cancel`` for the engine: the watch's verdict (None: never)."""
    return (lambda: watch.cancelled) if watch is not None else None


def newest_backup_snapshots(img, count):
    """Names of the ``count`` newest backup snapshots of ``img`` (by snapshot id)."""
    snaps = sorted((snap["id"], snap["name"]) for snap in img.list_snaps()
                   if naming.parse_backup_snapshot(snap["name"]))
    return [name for _id, name in snaps[-count:]]


class FileObjectSink(engine.Sink):
    """Write a transfer into a seekable file object (a non-RBD volume)."""

    ZERO_PIECE = 1 << 20

    def __init__(self, volume_file, fresh):
        self.file = volume_file
        self.fresh = fresh

    def begin(self, plan):
        pass

    def write(self, offset, data):
        self.file.seek(offset)
        self.file.write(bytes(data))

    def zero(self, offset, length):
        if self.fresh:
            return
        self.file.seek(offset)
        zeros = bytes(min(length, self.ZERO_PIECE))
        while length > 0:
            self.file.write(zeros[:length])
            length -= len(zeros)

    def commit(self):
        self.file.flush()

    def abort(self):
        pass


def _stored_lineage(session, location, backup_id, volume_id):
    """The lineage stored with restore point ``location``, checked to be
    backup ``backup_id``'s of volume ``volume_id`` (InvalidBackup if not)."""
    try:
        return lineage.check_belongs(session.load_lineage(location[1], backup_id), backup_id,
                                     volume_id, location)
    except lineage.InvalidLineage as exc:
        raise exception.InvalidBackup(reason="backup %s: %s" % (backup_id, exc)) from None


def _check_fits(point, dest_size, backup_id):
    """Refuse a restore point larger than the destination: restoring it would
    grow the volume past the size Cinder knows."""
    if point.size > dest_size:
        raise exception.InvalidBackup(
            reason="backup %s holds %d bytes, more than the %d of the destination volume"
                   % (backup_id, point.size, dest_size))


def _checked_volume_metadata(text, backup):
    """The volume metadata stored with a backup, as far as it is safe to apply.

    It comes back from the backup target, where anyone who can write could
    have planted it; Cinder applies its ``encryption_key_id``, and the
    manager then deletes the destination's own key when the two differ. A
    backup Cinder knows as unencrypted (no ``encryption_key_id`` of its own)
    never sets one; metadata that is not a JSON object is not applied.
    """
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        LOG.warning("backup %s: its stored volume metadata is not a JSON object: not "
                    "applied", backup.id)
        return None
    base = data.get(backup_driver.BackupMetadataAPI.TYPE_TAG_VOL_BASE_META)
    if isinstance(base, dict) and base.get("encryption_key_id") and \
            backup.encryption_key_id is None:
        LOG.warning("backup %s is not encrypted but its stored volume metadata names an "
                    "encryption key: ignoring it", backup.id)
        base["encryption_key_id"] = None
        return json.dumps(data)
    return text


def _parent_record(record, job):
    """``(record, None)`` if the parent's stored lineage is the parent's,
    else ``(None, why not)``: an incremental then becomes a full backup
    rather than writing into a chain a planted record names."""
    try:
        return lineage.check_belongs(record, job.parent_id, job.volume_id,
                                     job.parent_location), None
    except lineage.InvalidLineage as exc:
        LOG.warning("backup %s: parent %s: %s", job.backup_id, job.parent_id, exc)
        return None, "the parent's stored lineage is not valid"


def _changed_chunks(chunks, chunk_size, digests, parent_digests):
    """Diff records for the chunks whose sha256 differs from the parent's.

    Appends every chunk's digest to ``digests`` (the next backup's parent).
    """
    for offset, data in chunks:
        digest = hashlib.sha256(data).digest()
        digests.append(digest)
        index = offset // chunk_size * len(digest)
        if parent_digests and parent_digests[index:index + len(digest)] == digest:
            continue
        yield diffstream.DataRecord(offset, data)

