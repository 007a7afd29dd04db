"""End to end: real Cinder services (``tools/cinder-stack``), real clusters.

Every step goes through Cinder's API (python-cinderclient); only the volume
data is written and checked directly in the volumes' RBD images. Every wait
polls with a deadline. Each test removes what it created, newest backup first.

BACKUP_DRIVER=stock runs the same journeys against Cinder's Ceph driver
(checks of this driver's lineage are skipped then).
"""

import base64
import json
import os
import unittest
import uuid

from cinderclient import exceptions as cinder_exc

from tests.e2e import stack
from tests.e2e.stack import MiB

DRIVER = ("cinder.backup.drivers.ceph.CephBackupDriver" if stack.STOCK
          else "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver")


def setUpModule():
    stack.ensure_up()


def lineage_of(cinder, backup_id):
    """The driver's full lineage record, as ``backup-export`` hands it out."""
    _record, decoded = cinder.export_record(backup_id)
    return decoded["driver_info"]["lineage"]


class E2ETestCase(unittest.TestCase):

    def setUp(self):
        self.cinder = stack.Cinder()
        self.addCleanup(self.cinder.cleanup)
        self.c = self.cinder.c

    def skip_unless_ours(self):
        if stack.STOCK:
            self.skipTest("checks this driver's lineage (BACKUP_DRIVER=stock)")

    def assert_restores_to(self, backup_id, expected_digest):
        vol = self.cinder.restore(backup_id)
        self.assertEqual(expected_digest, stack.volume_digest(vol.id),
                         "restore of backup %s to new volume %s differs from the source "
                         "at backup time" % (backup_id, vol.id))
        return vol


class TestJourney(E2ETestCase):

    def test_full_then_two_incrementals_restore_and_delete(self):
        vol = self.cinder.create_volume(1, name="e2e-journey")
        stack.write(vol.id, (0, os.urandom(4 * MiB)), (512 * MiB + 12345, os.urandom(MiB)))
        states = [stack.volume_digest(vol.id)]
        full = self.cinder.create_backup(vol.id)
        self.assertFalse(full.is_incremental)

        # Overwrite inside the first extent, add a new one far away.
        stack.write(vol.id, (MiB, os.urandom(64 * 1024)), (900 * MiB, os.urandom(2 * MiB)))
        states.append(stack.volume_digest(vol.id))
        inc1 = self.cinder.create_backup(vol.id, incremental=True)

        # Discard a whole extent (must read back as zeros), write elsewhere.
        stack.write(vol.id, (512 * MiB, 2 * MiB), (100 * MiB, os.urandom(3 * MiB)))
        states.append(stack.volume_digest(vol.id))
        inc2 = self.cinder.create_backup(vol.id, incremental=True)

        backups = [full, inc1, inc2]
        self.assertEqual(len(set(states)), 3, "every write changed the content")
        for backup in (inc1, inc2):
            self.assertTrue(backup.is_incremental, backup.id)
        self.assertEqual(self.c.backups.get(full.id).has_dependent_backups, True)
        self.assertEqual(self.c.backups.get(inc2.id).has_dependent_backups, False)
        if not stack.STOCK:
            self.assertEqual(inc1.id, lineage_of(self.cinder, inc2.id)["parent"]["backup_id"])
            self.assertEqual(full.id, lineage_of(self.cinder, inc1.id)["parent"]["backup_id"])

        for backup, digest in zip(backups, states, strict=True):
            self.assert_restores_to(backup.id, digest)

        # Cinder refuses to delete a backup that others depend on.
        for backup in (full, inc1):
            with self.assertRaises(cinder_exc.BadRequest) as caught:
                self.c.backups.delete(backup.id)
            self.assertIn("Incremental backups exist", str(caught.exception))
            self.assertEqual("available", self.c.backups.get(backup.id).status)

        for backup in reversed(backups):
            self.cinder.delete_backup(backup.id)
        if not stack.STOCK:
            leftovers = [name for name in stack.backup_images() if vol.id in name]
            self.assertEqual([], leftovers, "chain image left on the backup cluster")
            self.assertEqual([], [s for s in stack.volume_snapshots(vol.id)
                                  if s.startswith("backup.")],
                             "backup snapshot left on the volume")
        self.cinder.delete_volume(vol.id)


class TestInUse(E2ETestCase):

    def test_in_use_volume_backup_stays_incremental(self):
        """Cinder hands backup drivers a temporary clone of an in-use volume;
        this driver snapshots the volume's own image, so the chain goes on."""
        vol = self.cinder.create_volume(1, name="e2e-in-use")
        stack.write(vol.id, (0, os.urandom(8 * MiB)), (300 * MiB, os.urandom(8 * MiB)))
        full = self.cinder.create_backup(vol.id)

        stack.write(vol.id, (4 * MiB + 4096, os.urandom(64 * 1024)))
        expected = stack.volume_digest(vol.id)
        # In use without a VM (Cinder 29 refuses `reset-state --state in-use`
        # for a volume without attachments).
        attachment = self.cinder.attach_without_vm(vol.id)
        self.cinder.wait_volume(vol.id, "in-use")
        with self.assertRaises(cinder_exc.BadRequest):  # in use needs --force
            self.c.backups.create(vol.id, incremental=True)
        inc = self.cinder.create_backup(vol.id, incremental=True, force=True)

        self.assertTrue(inc.is_incremental)
        self.assertEqual("in-use", self.c.volumes.get(vol.id).status)
        if not stack.STOCK:
            lineage = lineage_of(self.cinder, inc.id)
            self.assertEqual("rbd-diff", lineage["method"], lineage)
            self.assertIsNone(lineage["full_reason"], lineage)
            self.assertEqual(full.id, lineage["parent"]["backup_id"])
            self.assertEqual("volume-%s" % vol.id, lineage["source"]["image"],
                             "the backup read another image than the volume's own")
            full_sent = lineage_of(self.cinder, full.id)["stats"]["data_bytes"]
            sent = lineage["stats"]["data_bytes"]
            self.assertGreaterEqual(full_sent, 16 * MiB)
            self.assertLessEqual(sent, 4 * MiB, "an incremental of a 64 KiB change sent "
                                 "%d bytes" % sent)

        self.cinder.detach(attachment, vol.id)
        self.assert_restores_to(inc.id, expected)


class TestExportImport(E2ETestCase):

    def test_export_forget_import_restore(self):
        vol = self.cinder.create_volume(1, name="e2e-export")
        stack.write(vol.id, (0, os.urandom(2 * MiB)), (700 * MiB, os.urandom(MiB)))
        expected = stack.volume_digest(vol.id)
        backup = self.cinder.create_backup(vol.id)
        record, decoded = self.cinder.export_record(backup.id)
        self.assertEqual(DRIVER, record["backup_service"])
        self.assertEqual(backup.id, decoded["id"])
        if not stack.STOCK:
            self.assertEqual(backup.id, decoded["driver_info"]["lineage"]["backup_id"])

        # Importing an id Cinder still knows is refused...
        with self.assertRaises(cinder_exc.BadRequest):
            self.c.backups.import_record(record["backup_service"], record["backup_url"])
        # ...so make Cinder forget it (the data stays), then import it back.
        stack.forget_backup_record(backup.id)
        self.assertRaises(cinder_exc.NotFound, self.c.backups.get, backup.id)
        imported = self.c.backups.import_record(record["backup_service"], record["backup_url"])
        self.assertEqual(backup.id, imported["id"])
        self.cinder.wait_backup(backup.id, "available")

        self.assert_restores_to(backup.id, expected)
        # The volume may be gone by now: the backup alone restores.
        self.cinder.delete_volume(vol.id)
        self.assert_restores_to(backup.id, expected)

    def test_import_under_another_id_is_refused(self):
        """A record edited to carry a new backup id names the same chain snapshot
        as the original: importing it must fail, else deleting the copy deletes
        the original's data."""
        self.skip_unless_ours()
        vol = self.cinder.create_volume(1, name="e2e-import-copy")
        stack.write(vol.id, (0, os.urandom(2 * MiB)))
        expected = stack.volume_digest(vol.id)
        original = self.cinder.create_backup(vol.id)
        record, decoded = self.cinder.export_record(original.id)
        decoded["id"] = str(uuid.uuid4())
        url = base64.b64encode(json.dumps(decoded).encode()).decode()

        copy = self.c.backups.import_record(record["backup_service"], url)
        self.cinder.backups.append(copy["id"])
        status = stack.wait_for("the import to end", lambda: {
            "available", "error"} & {self.c.backups.get(copy["id"]).status})
        self.assertEqual({"error"}, status, "backup %s imported under id %s: two backups "
                         "now share one chain snapshot" % (original.id, copy["id"]))
        self.cinder.delete_backup(copy["id"])
        self.assert_restores_to(original.id, expected)


class TestRestoreToOriginal(E2ETestCase):

    def test_restore_onto_the_backed_up_volume(self):
        vol = self.cinder.create_volume(1, name="e2e-in-place")
        stack.write(vol.id, (0, os.urandom(4 * MiB)), (200 * MiB, os.urandom(4 * MiB)))
        state_a = stack.volume_digest(vol.id)
        full = self.cinder.create_backup(vol.id)

        stack.write(vol.id, (MiB, os.urandom(MiB)), (600 * MiB, os.urandom(2 * MiB)))
        state_b = stack.volume_digest(vol.id)
        inc = self.cinder.create_backup(vol.id, incremental=True)

        # Change it again, then restore in place: the newest backup (its source
        # snapshot is still on the volume), then the older full one (it is not).
        stack.write(vol.id, (0, 8 * MiB), (600 * MiB + 4096, os.urandom(MiB)),
                    (1000 * MiB, os.urandom(MiB)))
        self.assertNotIn(stack.volume_digest(vol.id), (state_a, state_b))

        restored = self.cinder.restore(inc.id, vol.id)
        self.assertEqual(vol.id, restored.id)
        self.assertEqual(state_b, stack.volume_digest(vol.id), "in-place restore of %s"
                         % inc.id)

        self.cinder.restore(full.id, vol.id)
        self.assertEqual(state_a, stack.volume_digest(vol.id), "in-place restore of %s"
                         % full.id)

        # The chain goes on after in-place restores: the next incremental holds
        # what the volume holds now.
        inc2 = self.cinder.create_backup(vol.id, incremental=True)
        self.assertTrue(inc2.is_incremental)
        self.assert_restores_to(inc2.id, state_a)


class TestFallbackToFull(E2ETestCase):

    def test_incremental_without_parent_snapshot_becomes_full(self):
        """The parent's snapshot on the volume is gone: the backup becomes a
        full one, says why, and the user gets a Cinder message."""
        self.skip_unless_ours()
        vol = self.cinder.create_volume(1, name="e2e-fallback")
        stack.write(vol.id, (0, os.urandom(4 * MiB)))
        full = self.cinder.create_backup(vol.id)
        snaps = [s for s in stack.volume_snapshots(vol.id) if s.startswith("backup.")]
        self.assertEqual(1, len(snaps), snaps)
        with stack.volume_image(vol.id) as img:
            img.remove_snap(snaps[0])
        stack.write(vol.id, (8 * MiB, os.urandom(MiB)))
        expected = stack.volume_digest(vol.id)

        backup = self.cinder.create_backup(vol.id, incremental=True)
        self.assertFalse(backup.is_incremental)
        self.assertFalse(self.c.backups.get(full.id).has_dependent_backups)
        lineage = lineage_of(self.cinder, backup.id)
        self.assertEqual("rbd-full", lineage["method"])
        self.assertIn("is gone from the volume", lineage["full_reason"])
        messages = [m for m in self.c.messages.list() if m.resource_uuid == vol.id]
        self.assertTrue(any("forcing full backup" in m.user_message for m in messages),
                        [m.user_message for m in messages])
        for m in messages:
            self.c.messages.delete(m.id)
        self.assert_restores_to(backup.id, expected)
        # Not a dependent of the old full one: that can go first.
        self.cinder.delete_backup(full.id)


class TestBackupServiceKilled(E2ETestCase):

    def test_backup_killed_mid_transfer_then_next_backup_is_correct(self):
        """cinder-backup dies (SIGKILL) while an incremental backup transfers,
        holding its chain's lock: on restart Cinder resets that backup to
        error; the next incremental of the chain, asked for at once, gets the
        dead holder's lock (librbd breaks it once its watch expired), rolls its
        partial writes back, and restores byte-identical; deleting the killed
        backup then removes what it left."""
        # If a step fails while the service is down, it must be back for the cleanup
        # (cleanups run last-registered first: this one before the Cinder one).
        self.addCleanup(stack.ensure_service_running, "cinder-backup")
        vol = self.cinder.create_volume(2, name="e2e-killed")
        # 512 MiB of random data, 32 MiB every 128 MiB: a full backup takes seconds.
        stack.write_random(vol.id, range(0, 2048 * MiB, 128 * MiB), 32 * MiB)
        state_full = stack.volume_digest(vol.id)
        full = self.cinder.create_backup(vol.id)

        # 512 MiB more, half of each piece over the old data: an incremental that
        # transfers long enough to be killed in the middle.
        stack.write_random(vol.id, range(16 * MiB, 2048 * MiB, 128 * MiB), 32 * MiB)
        state_inc = stack.volume_digest(vol.id)
        log_offset = stack.log_size("cinder-backup")
        killed = self.c.backups.create(vol.id, name="e2e-killed", incremental=True)
        self.cinder.backups.append(killed.id)

        def transferring():
            status = self.c.backups.get(killed.id).status
            if status != "creating":
                raise stack.OperationFailed(
                    "backup %s went %s before it could be killed: give it more data"
                    % (killed.id, status))
            return (stack.logged_since(log_offset, "Create backup started, backup: %s"
                                       % killed.id)
                    and stack.chain_heads_written(vol.id))
        stack.wait_for("backup %s to be transferring" % killed.id, transferring, 60)
        stack.kill_service("cinder-backup")
        self.assertEqual("creating", self.c.backups.get(killed.id).status)
        stack.restart_service("cinder-backup")

        # The manager's start-up clean-up: creating -> error, the volume back.
        reset = stack.wait_for("backup %s to be reset to error" % killed.id, lambda: [
            b for b in [self.c.backups.get(killed.id)] if b.status == "error"], 60)[0]
        self.assertIn("incomplete backup reset on manager restart", reset.fail_reason or "")
        self.cinder.wait_volume(vol.id, "available", timeout=30)
        self.assertEqual(state_inc, stack.volume_digest(vol.id))

        # The next backup of the chain, before the dead holder's lock expired
        # (our driver; the stock one has no such lock).
        inc = self.cinder.create_backup(vol.id, incremental=True)
        # Deleting it (the driver's delete_backup) removes what the attempt left.
        self.cinder.delete_backup(killed.id)
        killed_snap = "backup.%s.snap." % killed.id
        left_after_delete = {  # checked at the end, after the rest of the journey
            "its snapshots on chain images": [
                "%s@%s" % (image, snap) for image, snaps in stack.chain_snapshots(vol.id).items()
                for snap in snaps if snap.startswith(killed_snap)],
            "chain images with its partial data on HEAD": stack.chain_heads_written(vol.id),
            "its snapshots on the volume": [
                s for s in stack.volume_snapshots(vol.id) if s.startswith(killed_snap)],
        }
        self.assertTrue(inc.is_incremental, "the backup after the killed one is a full one")
        if not stack.STOCK:
            lineage = lineage_of(self.cinder, inc.id)
            self.assertEqual("rbd-diff", lineage["method"], lineage)
            self.assertIsNone(lineage["full_reason"], lineage)
            self.assertEqual(full.id, lineage["parent"]["backup_id"])
        self.assert_restores_to(inc.id, state_inc)
        self.assert_restores_to(full.id, state_full)

        chains = stack.chain_snapshots(vol.id)
        self.assertEqual([], [(image, snap) for image, snaps in chains.items()
                              for snap in snaps if snap.startswith(killed_snap)],
                         "snapshot of the killed backup left on the backup cluster")
        if not stack.STOCK:
            self.assertEqual(1, len(chains), "one chain: %s" % chains)
            self.assertEqual(2, len(next(iter(chains.values()))), chains)
        on_volume = [s for s in stack.volume_snapshots(vol.id) if s.startswith("backup.")]
        # max_source_snapshots (3): the full's and the incremental's are kept
        self.assertEqual(1 if stack.STOCK else 2, len(on_volume),
                         "backup snapshots on the volume: %s" % on_volume)
        self.assertTrue(on_volume[-1].startswith("backup.%s.snap." % inc.id),
                        "the volume's newest is %s, not the newest backup's snapshot"
                        % on_volume)
        self.assertEqual({what: [] for what in left_after_delete}, left_after_delete,
                         "deleting the killed backup %s left this behind" % killed.id)
