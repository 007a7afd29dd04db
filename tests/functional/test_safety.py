"""Cinder's semantics around the driver (issue #14), on real objects and clusters.

Snapshot backups beside volume backups of one chain, at once in two
threads; the chain lock held by another client (the wait is bounded and the
message names the holder; nothing is written meanwhile); the parent/end
snapshot order; a delete whose recorded place is not reachable.
"""

import concurrent.futures
import json
import random
import unittest
from unittest import mock

import rbd
from cinder import exception

from cinder_rbd_incremental import cluster, driver, locking, naming
from tests.functional import cinder_env, test_driver


class CancelledWatch(driver.StatusWatch):
    """The status watch as it is once the backup left its status (its timer
    needs a running eventlet hub, which these tests do not have)."""

    def __enter__(self):
        self.cancelled = True
        self.status = "deleting"
        return self


class SafetyTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = cinder_env.CinderEnv.get()

    def setUp(self):
        self.driver = self.env.driver()
        self.rng = random.Random(self.id())

    # the driver tests' helpers, not their tests (binding that TestCase class
    # to a name here would make the loader run all of them again)
    new_volume = test_driver.DriverTestCase.new_volume
    write = test_driver.DriverTestCase.write
    backup = test_driver.DriverTestCase.backup
    restore = test_driver.DriverTestCase.restore
    checksum = test_driver.DriverTestCase.checksum

    def test_snapshot_backup_keeps_the_volume_chain_incremental(self):
        volume = self.new_volume()
        self.write(volume, count=16)
        full = self.backup(volume)
        self.write(volume)
        snapshot = self.env.create_snapshot(volume)
        self.addCleanup(self.remove_snapshot, volume, snapshot.name)
        snap_backup = self.backup(volume, parent=full, snapshot=snapshot)
        self.assertTrue(snap_backup.parent_id)
        with self.env.volume_image(volume, read_only=True) as img:
            names = [s["name"] for s in img.list_snaps()]
        self.assertIn(self.env.location(full)[2], names,
                      "the snapshot backup removed the volume's backup snapshot")
        self.write(volume)
        after = self.backup(volume, parent=full)
        self.assertTrue(after.parent_id, "the volume backup after it became a full one")
        target = self.new_volume()
        self.restore(after, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))

    def test_volume_and_snapshot_backups_of_one_chain_at_once(self):
        """Both continue the chain from the same parent, one after the other
        (the chain lock); both restore points are exact."""
        volume = self.new_volume()
        self.write(volume, count=32, size=1 << 20)
        full = self.backup(volume)
        self.write(volume, count=16, size=1 << 20)
        snapshot = self.env.create_snapshot(volume)
        self.addCleanup(self.remove_snapshot, volume, snapshot.name)
        with self.env.volume_image(volume, read_only=True) as img:
            img.set_snap(snapshot.name)
            snap_sum = test_driver.image_sha256(img)
        self.write(volume, count=16, size=1 << 20)
        volume_sum = self.checksum(volume)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {"volume": pool.submit(self.backup, volume, full),
                       "snapshot": pool.submit(self.backup, volume, full, snapshot)}
            done = {kind: future.result() for kind, future in futures.items()}
        for kind, expected in (("volume", volume_sum), ("snapshot", snap_sum)):
            self.assertTrue(done[kind].parent_id, "%s backup became a full one" % kind)
            target = self.new_volume()
            self.restore(done[kind], target, volume_is_new=True)
            self.assertEqual(expected, self.checksum(target), "%s backup" % kind)

    def test_a_busy_chain_makes_the_backup_wait_then_fail_naming_the_holder(self):
        volume = self.new_volume()
        self.write(volume)
        full = self.backup(volume)
        chain = self.env.location(full)[1]
        self.write(volume)
        holder = {"backup_id": "another-backup", "host": "elsewhere", "pid": 1, "since": "x"}
        with self.env.chain_image(chain) as img, \
                self.env.overridden(chain_lock_timeout=3):
            img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
            img.metadata_set(locking.WRITER_KEY, json.dumps(holder))
            with self.assertRaises(exception.BackupDriverException) as caught:
                self.backup(volume, parent=full)
            # the operator's message (the log) names the holder and the option; the
            # tenant's (fail_reason) only that the chain was busy
            operator_message = str(caught.exception.__cause__)
            self.assertIn("another-backup (host elsewhere", operator_message)
            self.assertIn("chain_lock_timeout", operator_message)
            self.assertIn("still writing to its chain", str(caught.exception))
            self.assertNotIn("elsewhere", str(caught.exception))
            self.assertEqual([self.env.location(full)[2]], self.chain_snapshots(chain))
        # the holder is gone: the next backup continues the chain
        later = self.backup(volume, parent=full)
        self.assertTrue(later.parent_id)

    def test_parent_newer_than_the_snapshot_backed_up_makes_a_full_backup(self):
        volume = self.new_volume()
        self.write(volume)
        snapshot = self.env.create_snapshot(volume)   # older than the parent's
        self.addCleanup(self.remove_snapshot, volume, snapshot.name)
        self.write(volume)
        parent = self.backup(volume)
        backup = self.backup(volume, parent=parent, snapshot=snapshot)
        self.assertFalse(backup.parent_id, "an incremental from a newer snapshot")
        reason = self.driver.export_record(backup)["lineage"]["full_reason"]
        self.assertIn("is newer than", reason)

    def test_a_cancelled_backup_leaves_nothing(self):
        """What a force delete does (the status watch says so at once here):
        the backup returns no updates and removes what it wrote."""
        volume = self.new_volume()
        self.write(volume, count=16)
        backup = self.env.create_backup(volume)
        self.addCleanup(self.env.delete_backup_quietly, self.driver, backup)
        with mock.patch.object(driver, "StatusWatch", CancelledWatch), \
                self.env.volume_file(volume) as volume_file:
            self.assertEqual({}, self.driver.backup(backup, volume_file))
        self.assertFalse(self.env.chain_exists(naming.chain_image(volume.id, backup.id)))
        with self.env.volume_image(volume, read_only=True) as img:
            self.assertEqual([], [s["name"] for s in img.list_snaps()])

    def test_a_restore_whose_status_changes_stops(self):
        volume = self.new_volume()
        self.write(volume, count=16)
        backup = self.backup(volume)
        target = self.new_volume()
        with mock.patch.object(driver, "StatusWatch", CancelledWatch), \
                self.assertRaises(exception.BackupRestoreCancel):
            self.restore(self.env.backup(backup.id), target, volume_is_new=True)

    # -- helpers -------------------------------------------------------------------

    def chain_snapshots(self, chain):
        with self.env.chain_image(chain) as img:
            return [s["name"] for s in img.list_snaps()]

    def remove_snapshot(self, volume, name):
        try:
            with self.env.volume_image(volume) as img:
                img.remove_snap(name)
        except (cluster.ClusterError, rbd.ImageNotFound):  # the volume went first
            pass
