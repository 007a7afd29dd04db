"""Crash injection: SIGKILL a sync, a backup or a restore at a random moment.

Each operation runs in a child of the crash worker (``crash_worker.py``) and
is killed a random (seeded) delay after it started, delays spread over the
operation's measured duration, so kills land while connecting, snapshotting,
writing with data still in the librbd cache, verifying, recording. After each
kill the operation is re-run to completion the way an operator or Cinder would
(the same ``sync`` again; for the driver a new backup, the killed one marked
``error`` and deleted with ``delete_backup``; the same restore again). Every
restore point that completed must restore byte-identical to the source
snapshot's content recorded when it was taken, and at the end, after deleting
everything, no image and no snapshot of ours is left on either cluster.

The killed process is fenced (its client addresses blocklisted, as an HA
manager or librbd breaking its lock would) so the re-run does not wait for the
OSD to time its watches out. The seed is printed; ``RELIABILITY_SEED=N``
replays a run's delays (``RELIABILITY_TRACE=1`` logs every operation).
"""

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid

import rbd

from cinder_rbd_incremental import locking, naming
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.reliability import base, sandbox

SEED = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1 << 32))
MiB = sandbox.MiB
# 25 kill points: 8 syncs, 8 backups and 4 restores at random moments,
# 5 backups at chosen moments (test_driver_killed_while_recording_and_pruning)
CLI_FULL_KILLS = 4
CLI_INCREMENTAL_KILLS = 4
DRIVER_FULL_KILLS = 4
DRIVER_INCREMENTAL_KILLS = 4
RESTORE_KILLS = 4          # 2 into a new volume, 2 in place
# (moment, delay): "locked" once the backup holds its chain's lock (it has
# recorded itself as the chain's writer, nothing written yet), "pruning" once
# the previous source snapshot starts going (it is removed while the chain
# marks the restore point), "recorded" once the lineage is stored on the chain
# image
END_KILLS = (("locked", 0.0), ("locked", 0.05), ("pruning", 0.0), ("pruning", 0.05),
             ("recorded", 0.0), ("recorded", 0.05))
INITIAL_DATA = 48 * MiB     # a backup takes ~1-1.5 s full, ~1.5-2 s incremental
CHANGE_DATA = 16 * MiB
SYNC_INITIAL_DATA = 128 * MiB   # sync does not verify: more data for ~1-2 s
SYNC_CHANGE_DATA = 128 * MiB
SYNC_SPAN = 256 * MiB
OP_TIMEOUT = 120           # a kill test operation that runs longer hangs
TRACE = os.environ.get("RELIABILITY_TRACE") == "1"


def trace(message):
    if TRACE:
        print("%.1f %s" % (time.monotonic(), message), file=sys.stderr)


class CrashTestCase(base.ReliabilityTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.worker = base.worker()
        print("reliability crash seed: %d (replay with RELIABILITY_SEED=%d)" % (SEED, SEED),
              file=sys.stderr)
        base.set_figure("crash_seed", SEED)

    def setUp(self):
        super().setUp()
        self.rng = random.Random("%d-%s" % (SEED, self.id()))
        self.writer = sandbox.Writer(self.rng.random())
        self.estimates = {}
        self.kills = 0
        self.unreadable = []

    # -- killing ----------------------------------------------------------------

    def run_killed(self, kind, request, default_seconds):
        """Run ``request`` and SIGKILL it after a random delay; return the outcome.

        Delays are uniform over the operation's expected duration: the first
        uninterrupted run of that kind, shortened whenever a run ends before
        its kill.
        """
        estimate = self.estimates.get(kind, default_seconds)
        delay = self.rng.uniform(0.02, estimate * 0.95)
        outcome = self.worker.run(request, kill_after=delay, timeout=OP_TIMEOUT)
        trace("%s: kill after %.2f s (expected %.2f s): %s"
              % (kind, delay, estimate, outcome.describe()))
        self.assertFalse(outcome.hung, "%s hung: %s" % (kind, outcome.describe()))
        if outcome.killed and not outcome.done:
            self.kills += 1
            base.count("kills_" + kind)
            base.count("faults_injected")
            # The dead process's watches would hold its exclusive locks until the
            # OSD times them out; fence it like an HA manager would.
            sandbox.fence_dead_clients()
        else:
            self.assertTrue(outcome.done, "%s failed (seed %d): %s\n%s" % (
                kind, SEED, outcome.describe(), outcome.traceback))
            self.estimates[kind] = min(estimate, outcome.seconds)
        return outcome

    def run_to_completion(self, kind, request, calibrate=False):
        outcome = self.worker.run(request, timeout=OP_TIMEOUT)
        trace("%s: %s" % (kind, outcome.describe()))
        self.assertTrue(outcome.done and not outcome.hung, "%s failed (seed %d): "
                        "%s\n%s" % (kind, SEED, outcome.describe(), outcome.traceback))
        if calibrate or kind not in self.estimates:
            self.estimates[kind] = outcome.seconds
        return outcome

    # -- the CLI -------------------------------------------------------------------

    def sync_request(self, src, snap, dest, from_snap=None):
        argv = ["sync", *self.cli_cluster_args()]
        if from_snap:
            argv += ["--from-snap", from_snap]
        return {"op": "cli", "argv": argv + ["volumes/%s@%s" % (src, snap), "backups/" + dest]}

    def sync_until_done(self, kind, request):
        """Re-run a killed sync: 0, or 3 if the kill came after the end snapshot."""
        outcome = self.worker.run(request, timeout=OP_TIMEOUT)
        self.assertIn(outcome.rc, (0, 3), "re-run of a killed %s (seed %d): %s\n%s" % (
            kind, SEED, outcome.describe(), outcome.traceback))
        trace("%s re-run: %s" % (kind, outcome.describe()))
        if outcome.rc == 3:
            base.count("reruns_already_applied")

    def restore_point(self, dest, snap):
        """Digest of ``dest@snap`` on the backup cluster, or None (recorded in
        ``self.unreadable``) if the snapshot is listed but cannot be opened."""
        try:
            return sandbox.digest_of(sandbox.SECONDARY, dest, snap)
        except rbd.ImageNotFound:
            if snap not in sandbox.snapshots(sandbox.SECONDARY, dest):
                raise
            self.unreadable.append("%s@%s" % (dest, snap))
            base.count("restore_points_unreadable")
            return None

    def assertReadable(self):
        self.assertEqual([], self.unreadable, (
            "restore points listed but impossible to open (seed %d): the kill hit "
            "create_snap, the re-run said 'already applied'; see "
            "test_sync_rerun_after_kill_inside_create_snap" % SEED))

    def test_sync_rerun_after_kill_inside_create_snap(self):
        """A SIGKILL inside librbd's ``create_snap`` (seen in the kill loop above and
        with plain librbd) leaves the end snapshot listed in the image header but
        without its object map object, so the snapshot cannot be opened; the
        sink's pending marker is still there, as ``commit`` never returned. That
        state is built here deterministically. Re-running the sync must leave a
        readable restore point, not report "already applied" over a broken one."""
        src = "crash-snap-src-%s" % uuid.uuid4()
        dest = "crash-snap-dst-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.PRIMARY, src)
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, dest)
        sandbox.create_image(sandbox.PRIMARY, src, sandbox.GiB)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, src) as img:
            self.writer.scatter(img, 16 * MiB, 8)
            img.create_snap("s0")
        expected = sandbox.digest_of(sandbox.PRIMARY, src, "s0")
        request = self.sync_request(src, "s0", dest)
        self.run_to_completion("sync_full", request)
        with sandbox.ioctx(sandbox.SECONDARY) as ctx:
            with rbd.Image(ctx, dest) as img:
                snap_id, image_id = img.snap_get_id("s0"), img.id()
                img.metadata_set("rbd_incremental.pending", json.dumps(
                    {"from_snap": None, "to_snap": "s0", "size": sandbox.GiB}))
            ctx.remove_object("rbd_object_map.%s.%016x" % (image_id, snap_id))
        base.count("faults_injected")
        outcome = self.worker.run(request, timeout=OP_TIMEOUT)
        self.assertIn(outcome.rc, (0, 1, 3), outcome.describe())
        if outcome.rc == 1 and "s0" in (outcome.stderr or ""):
            return  # a clear refusal naming the damaged snapshot is acceptable too
        digest = self.restore_point(dest, "s0")
        self.assertReadable()
        self.assertEqual(expected, digest, outcome.describe())

    def test_cli_sync_survives_sigkill(self):
        src = "crash-src-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.PRIMARY, src)
        sandbox.create_image(sandbox.PRIMARY, src, sandbox.GiB)
        digests = {}

        def change_and_snap(snap, total, pieces):
            with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, src) as img:
                # changes overwrite the first SYNC_SPAN bytes: big diffs, bounded reads
                self.writer.scatter(img, total, pieces, span=SYNC_SPAN)
                if digests:
                    self.writer.discard_some(img, 2, span=SYNC_SPAN)
                img.create_snap(snap)
            digests[snap] = sandbox.digest_of(sandbox.PRIMARY, src, snap)

        change_and_snap("s0", SYNC_INITIAL_DATA, 32)
        first = "crash-dst-first-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, first)
        self.run_to_completion("sync_full", self.sync_request(src, "s0", first))
        dests = [first]
        for attempt in range(2 * CLI_FULL_KILLS + 2):
            if self.kills >= CLI_FULL_KILLS:
                break
            dest = "crash-dst-%d-%s" % (attempt, uuid.uuid4())
            dests.append(dest)
            self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, dest)
            request = self.sync_request(src, "s0", dest)
            outcome = self.run_killed("sync_full", request, 2.0)
            if outcome.killed and not outcome.done:
                self.sync_until_done("sync_full", request)
            digest = self.restore_point(dest, "s0")
            if digest is not None:
                self.assertEqual(digests["s0"], digest)
        self.assertGreaterEqual(self.kills, CLI_FULL_KILLS, "full syncs always ended first")

        dest, previous = first, "s0"
        change_and_snap("s1", SYNC_CHANGE_DATA, 32)
        self.run_to_completion("sync_incremental",
                               self.sync_request(src, "s1", dest, from_snap="s0"))
        previous, previous_step = "s1", 1
        for step in range(2, 2 * CLI_INCREMENTAL_KILLS + 3):
            if self.kills >= CLI_FULL_KILLS + CLI_INCREMENTAL_KILLS:
                break
            snap = "s%d" % step
            change_and_snap(snap, SYNC_CHANGE_DATA, 32)
            request = self.sync_request(src, snap, dest, from_snap=previous)
            outcome = self.run_killed("sync_incremental", request, 1.0)
            if outcome.killed and not outcome.done:
                self.sync_until_done("sync_incremental", request)
            digest = self.restore_point(dest, snap)
            if digest is None:
                break  # an incremental cannot go on from a broken snapshot
            self.assertEqual(digests[snap], digest)
            previous, previous_step = snap, step
        if not self.unreadable:
            self.assertGreaterEqual(self.kills, CLI_FULL_KILLS + CLI_INCREMENTAL_KILLS)

        # every restore point was read back right after its sync; all still there?
        for dest in dests if not self.unreadable else ():
            expected = ["s0"] if dest != first else ["s%d" % i for i in range(previous_step + 1)]
            self.assertEqual(expected, sandbox.snapshots(sandbox.SECONDARY, dest))
        for dest in dests:
            sandbox.remove_image(sandbox.SECONDARY, dest)
        sandbox.remove_image(sandbox.PRIMARY, src)
        left = set(sandbox.images(sandbox.SECONDARY)) | set(sandbox.images(sandbox.PRIMARY))
        self.assertFalse(left & (set(dests) | {src}))
        self.assertReadable()

    # -- the driver -------------------------------------------------------------

    def test_driver_survives_sigkill(self):
        env, drv = self.env, self.env.driver()
        volume = self.new_volume()
        completed = []      # [(backup, digest of its source snapshot)]
        attempts = []       # every backup object, for the final leftover check

        def write(total, pieces, discards=0):
            with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
                self.writer.scatter(img, total, pieces)
                self.writer.discard_some(img, discards)

        def new_backup(parent):
            backup = env.create_backup(volume, parent)
            attempts.append(backup)
            self.addCleanup(self.remove_chain_leftovers, volume, backup)
            return backup

        def record_completed(backup):
            backup = env.backup(backup.id)
            self.assertEqual("available", backup.status)
            snap = env.location(backup)[2]
            completed.append((backup, sandbox.digest_of(sandbox.PRIMARY, volume.name, snap)))
            return backup

        def backup_to_completion(kind, parent):
            backup = new_backup(parent)
            self.run_to_completion(kind, {"op": "backup", "backup_id": backup.id})
            return record_completed(backup)

        def killed_backup(kind, parent, default_seconds):
            """Back up with a kill; after a kill do what Cinder does. True if killed."""
            backup = new_backup(parent)
            outcome = self.run_killed(kind, {"op": "backup", "backup_id": backup.id},
                                      default_seconds)
            if outcome.done:
                record_completed(backup)
                return False
            env.mark_error(backup)
            drv.delete_backup(env.backup(backup.id))
            chains = sandbox.images(sandbox.SECONDARY)
            self.assertNotIn(naming.chain_image(volume.id, backup.id), chains)
            for _backup, _digest in completed:
                image = env.location(_backup)[1]
                if image in chains:
                    mine = [s for s in sandbox.snapshots(sandbox.SECONDARY, image)
                            if naming.parse_backup_snapshot(s) == backup.id]
                    self.assertEqual([], mine, "killed backup's snapshot left in %s" % image)
            return True

        write(INITIAL_DATA, 32)
        last = backup_to_completion("backup_full", None)
        for _ in range(2 * DRIVER_FULL_KILLS + 2):
            if self.kills >= DRIVER_FULL_KILLS:
                break
            write(4 * MiB, 2)
            if killed_backup("backup_full", None, 1.5):
                last = backup_to_completion("backup_full", None)
            else:
                last = completed[-1][0]
        self.assertGreaterEqual(self.kills, DRIVER_FULL_KILLS)

        write(CHANGE_DATA, 12, discards=2)
        last = backup_to_completion("backup_incremental", last)
        for _ in range(2 * DRIVER_INCREMENTAL_KILLS + 2):
            if self.kills >= DRIVER_FULL_KILLS + DRIVER_INCREMENTAL_KILLS:
                break
            write(CHANGE_DATA, 12, discards=2)
            if killed_backup("backup_incremental", last, 1.5):
                last = backup_to_completion("backup_incremental", last)
            else:
                last = completed[-1][0]
            if not last.parent_id:
                trace("fell back to full: %s"
                      % drv.export_record(last)["lineage"]["full_reason"])
                # legitimate when the kill came after the parent's source snapshot
                # was pruned from the volume: the re-run is a full backup
                base.count("incremental_reruns_fallen_back_to_full")
        self.assertGreaterEqual(self.kills, DRIVER_FULL_KILLS + DRIVER_INCREMENTAL_KILLS)

        backup, digest = completed[-1]
        target = self.new_volume()
        self.run_to_completion("restore", {"op": "restore", "backup_id": backup.id,
                                           "volume_id": target.id, "volume_is_new": True})
        self.assertEqual(digest, sandbox.digest_of(sandbox.PRIMARY, target.name))
        base.count("restores_verified")
        sandbox.remove_image(sandbox.PRIMARY, target.name)
        restore_kills = 0
        for attempt in range(2 * RESTORE_KILLS + 2):
            if restore_kills >= RESTORE_KILLS:
                break
            in_place = restore_kills >= RESTORE_KILLS - 2
            if in_place:
                backup, digest = completed[-1] if restore_kills % 2 == 0 else completed[1]
                target = volume
            else:
                backup, digest = self.rng.choice(completed)
                target = self.new_volume()
            request = {"op": "restore", "backup_id": backup.id, "volume_id": target.id,
                       "volume_is_new": not in_place}
            outcome = self.run_killed("restore", request, 1.0)
            if outcome.killed and not outcome.done:
                restore_kills += 1
                self.run_to_completion("restore", dict(request, volume_is_new=False))
            self.assertEqual(digest, sandbox.digest_of(sandbox.PRIMARY, target.name),
                             "restore of %s after a kill (attempt %d, seed %d)"
                             % (backup.id, attempt, SEED))
            base.count("restores_verified")
            if target is not volume:
                sandbox.remove_image(sandbox.PRIMARY, target.name)
        self.assertGreaterEqual(restore_kills, RESTORE_KILLS)

        # every completed restore point restores byte-identical (three at a time)
        def restores_identical(item):
            backup, digest = item
            target = env.create_volume(1)
            try:
                env.run_restore(drv, backup, target, True)
                return sandbox.digest_of(sandbox.PRIMARY, target.name) == digest
            finally:
                sandbox.remove_image(sandbox.PRIMARY, target.name)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(restores_identical, completed))
        lost = sum(backup.size << 30
                   for (backup, _d), ok in zip(completed, results, strict=True) if not ok)
        base.count("restores_verified", len(results))
        base.count("bytes_lost", lost)
        self.assertEqual(0, lost, "restore points differ from their source (seed %d)" % SEED)
        base.count("restore_points_completed", len(completed))

        # delete everything, newest first as Cinder requires
        chains = {naming.chain_image(volume.id, b.id) for b in attempts}
        chains |= {env.location(b)[1] for b, _d in completed}
        self.delete_by_chain(drv, [b for b, _d in completed])
        self.assertNothingLeft(volumes=[volume], chains=chains)
        sandbox.remove_image(sandbox.PRIMARY, volume.name)
        self.assertNotIn(volume.name, sandbox.images(sandbox.PRIMARY))

    def test_driver_killed_while_recording_and_pruning(self):
        """Chosen kill points of an incremental backup: just after it took its
        chain's lock (the next backup of the chain must get it: the killed
        holder is fenced, as librbd does once its watch expired), while the
        driver removes the previous backup's snapshot from the volume (librbd
        first moves a snapshot to the trash namespace, then removes it; the
        chain's restore point is being marked meanwhile), and as soon as its
        lineage is stored on the chain image."""
        env, drv = self.env, self.env.driver()
        volume = self.new_volume()
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
            self.writer.scatter(img, 16 * MiB, 8)
        first = env.create_backup(volume)
        self.addCleanup(self.remove_chain_leftovers, volume, first)
        self.run_to_completion("backup_full", {"op": "backup", "backup_id": first.id})
        completed = [env.backup(first.id)]
        attempts = [first]
        for moment, delay in END_KILLS:
            with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
                self.writer.scatter(img, 4 * MiB, 2)
            parent = completed[-1]
            _pool, chain, parent_snap = env.location(parent)
            backup = env.create_backup(volume, parent)
            attempts.append(backup)
            if moment == "pruning":
                happened = self.snapshot_going(volume.name, parent_snap)
            elif moment == "locked":
                happened = self.writing_chain(chain, backup.id)
            else:
                happened = self.lineage_stored(chain, backup.id)

            def kill(pid, happened=happened, delay=delay):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not happened():
                    time.sleep(0.005)
                time.sleep(delay)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

            outcome = self.worker.run({"op": "backup", "backup_id": backup.id},
                                      fault=(0.0, kill), timeout=OP_TIMEOUT)
            trace("backup killed %.2f s after %s: %s" % (delay, moment, outcome.describe()))
            if outcome.done:
                completed.append(env.backup(backup.id))
                continue
            self.assertTrue(outcome.killed, outcome.describe())
            self.kills += 1
            base.count("kills_backup_end")
            base.count("faults_injected")
            sandbox.fence_dead_clients()
            env.mark_error(backup)
            drv.delete_backup(env.backup(backup.id))
            rerun = env.create_backup(volume, parent)
            attempts.append(rerun)
            self.run_to_completion("backup_incremental", {"op": "backup", "backup_id": rerun.id})
            completed.append(env.backup(rerun.id))
        self.assertGreater(self.kills, 0, "every backup ended before its kill")
        target = self.new_volume()
        digest = sandbox.digest_of(sandbox.PRIMARY, volume.name,
                                   env.location(completed[-1])[2])
        env.run_restore(drv, completed[-1], target, True)
        self.assertEqual(digest, sandbox.digest_of(sandbox.PRIMARY, target.name))
        base.count("restores_verified")
        chains = {env.location(b)[1] for b in completed}
        chains |= {naming.chain_image(volume.id, b.id) for b in attempts}
        self.delete_by_chain(drv, completed)
        self.assertNothingLeft(volumes=[volume], chains=chains)

    @staticmethod
    def snapshot_going(volume_name, snap):
        """True once ``snap`` is no longer a user snapshot of the volume."""
        def going():
            with sandbox.ioctx(sandbox.PRIMARY) as ctx, \
                    rbd.Image(ctx, volume_name, read_only=True) as img:
                return snap not in rbd_target.snapshot_names(img)
        return going

    @staticmethod
    def writing_chain(chain, backup_id):
        """True once ``backup_id`` holds the chain's lock (``locking``: the
        holder records itself as the chain's writer right after taking it)."""
        def locked():
            with sandbox.ioctx(sandbox.SECONDARY) as ctx, \
                    rbd.Image(ctx, chain, read_only=True) as img:
                return backup_id in dict(img.metadata_list()).get(locking.WRITER_KEY, "")
        return locked

    @staticmethod
    def lineage_stored(chain, backup_id):
        """True once the lineage of ``backup_id`` is in the chain's metadata."""
        def stored():
            with sandbox.ioctx(sandbox.SECONDARY) as ctx, \
                    rbd.Image(ctx, chain, read_only=True) as img:
                return rbd_target.backup_meta_key(backup_id) in dict(img.metadata_list())
        return stored

    def delete_by_chain(self, drv, backups):
        """Delete backups newest first in each chain, the chains side by side."""
        chains = {}
        for backup in backups:
            chains.setdefault(self.env.location(backup)[1], []).append(backup)

        def delete_chain(items):
            for backup in reversed(items):
                drv.delete_backup(self.env.backup(backup.id))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(delete_chain, items) for items in chains.values()]:
                future.result()

    @staticmethod
    def remove_chain_leftovers(volume, backup):
        """Cleanup after a failure: the chain a backup may have started."""
        sandbox.remove_image(sandbox.SECONDARY, naming.chain_image(volume.id, backup.id))
