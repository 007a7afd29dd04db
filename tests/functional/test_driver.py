"""The Cinder backup driver against real Cinder objects and the sandbox clusters.

Real parts only: Cinder 29's objects on an sqlite database, os-brick's
RBDVolumeIOWrapper as the volume file (as cinder-backup hands it over), the
two sandbox clusters with their least-privilege users.
"""

import hashlib
import os
import random
import unittest
import uuid
from unittest import mock

import rbd
from cinder import exception

from cinder_rbd_incremental import cluster, naming
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import cinder_env

GiB = 1 << 30


class DriverTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = cinder_env.CinderEnv.get()

    def setUp(self):
        self.driver = self.env.driver()
        self.rng = random.Random(self.id())

    # -- helpers ---------------------------------------------------------------

    def new_volume(self, size_gb=1):
        volume = self.env.create_volume(size_gb)
        self.addCleanup(self.env.delete_volume, volume)
        return volume

    def write(self, volume, count=8, size=64 << 10):
        with self.env.volume_image(volume) as img:
            for _ in range(count):
                offset = self.rng.randrange(0, img.size() - size) & ~4095
                img.write(self.rng.randbytes(size), offset)

    def backup(self, volume, parent=None, snapshot=None):
        backup = self.env.create_backup(volume, parent, snapshot)
        self.addCleanup(self.env.delete_backup_quietly, self.driver, backup)
        with self.env.volume_file(volume) as volume_file:
            updates = self.driver.backup(backup, volume_file)
        self.env.finish_backup(backup, updates)
        return backup

    def restore(self, backup, volume, volume_is_new):
        with self.env.volume_file(volume) as volume_file:
            self.driver.restore(backup, volume.id, volume_file, volume_is_new)

    def checksum(self, volume):
        with self.env.volume_image(volume, read_only=True) as img:
            return image_sha256(img)

    # -- what depends on the target (overridden by the file target's tests) ------

    def chain_exists(self, name):
        return self.env.chain_exists(name)

    def dirty_chain(self, name):
        """Leave what an interrupted import leaves: writes on the chain's HEAD."""
        with self.env.chain_image(name) as chain:
            chain.write(b"junk" * 1024, 0)

    sink_class = rbd_target.ImageSink

    def leave_unfinished_chain(self, name):
        with self.env.secondary() as ctx:
            cluster.create_image_like(ctx, name, 1 << 30)

    # -- tests -------------------------------------------------------------------

    def test_chain_backup_restore_delete(self):
        volume = self.new_volume()
        self.write(volume, count=16)
        sums, backups = [], []
        for i in range(4):
            backups.append(self.backup(volume, parent=backups[-1] if backups else None))
            sums.append(self.checksum(volume))
            self.write(volume, count=4 + i)
        self.assertFalse(backups[0].parent_id)
        for backup in backups[1:]:
            self.assertTrue(backup.parent_id)
        self.assertEqual(1, len({self.env.location(b)[1] for b in backups}), "one chain image")
        # the newest max_source_snapshots (3) backup snapshots stay on the volume
        with self.env.volume_image(volume, read_only=True) as img:
            snaps = [s["name"] for s in img.list_snaps()]
        self.assertEqual([self.env.location(b)[2] for b in backups[-3:]], snaps)

        for backup, expected in zip(backups, sums, strict=True):
            target = self.new_volume()
            self.restore(backup, target, volume_is_new=True)
            self.assertEqual(expected, self.checksum(target), "restore of %s" % backup.id)

        # in place, after changes and a discard: the volume holds the newest
        # backup's snapshot, so only what changed since is rewritten
        self.write(volume, count=3)
        with self.env.volume_image(volume) as img:
            img.discard(0, 64 << 20)
        self.restore(backups[-1], volume, volume_is_new=False)
        self.assertEqual(sums[-1], self.checksum(volume))
        # in place to an older point: full rewrite path
        self.restore(backups[1], volume, volume_is_new=False)
        self.assertEqual(sums[1], self.checksum(volume))

        image = self.env.location(backups[0])[1]
        for backup in reversed(backups):
            self.driver.delete_backup(backup)
            self.driver.delete_backup(backup)  # idempotent
        self.assertFalse(self.chain_exists(image))
        with self.env.volume_image(volume, read_only=True) as img:
            self.assertEqual([], [s["name"] for s in img.list_snaps()])

    def test_restore_to_larger_existing_volume_zeroes_the_rest(self):
        volume = self.new_volume()
        self.write(volume)
        backup = self.backup(volume)
        expected = self.checksum(volume)
        target = self.new_volume(size_gb=2)
        with self.env.volume_image(target) as img:
            img.write(b"\xff" * 65536, GiB + 4096)   # beyond the backup's size
            img.write(b"\xee" * 65536, 8192)         # inside it
        self.restore(backup, target, volume_is_new=False)
        with self.env.volume_image(target, read_only=True) as img:
            self.assertEqual(2 * GiB, img.size())
            self.assertEqual(bytes(65536), img.read(GiB + 4096, 65536))
            head = hashlib.sha256()
            for offset in range(0, GiB, 4 << 20):
                head.update(img.read(offset, 4 << 20))
        self.assertEqual(expected, head.hexdigest())

    def test_broken_chain_falls_back_to_full(self):
        volume = self.new_volume()
        self.write(volume)
        first = self.backup(volume)
        # the parent's source snapshot disappears (e.g. removed by an operator)
        with self.env.volume_image(volume) as img:
            img.remove_snap(self.env.location(first)[2])
        self.write(volume)
        second = self.backup(volume, parent=first)
        self.assertIsNone(second.parent_id, "fell back to a full backup")
        record = self.driver.export_record(second)["lineage"]
        self.assertIn("source snapshot", record["full_reason"])
        self.assertEqual("rbd-full", record["method"])
        self.assertNotEqual(self.env.location(first)[1], self.env.location(second)[1])
        self.assertTrue(self.env.user_messages(volume))
        # an interrupted attempt left junk in the chain: the next one still works
        self.dirty_chain(self.env.location(second)[1])
        self.write(volume)
        third = self.backup(volume, parent=second)
        self.assertEqual(second.id, third.parent_id)
        target = self.new_volume()
        self.restore(third, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))

    def test_backup_of_a_snapshot(self):
        volume = self.new_volume()
        self.write(volume)
        snapshot = self.env.create_snapshot(volume)
        expected = self.checksum(volume)
        self.write(volume)
        backup = self.backup(volume, snapshot=snapshot)
        target = self.new_volume()
        self.restore(backup, target, volume_is_new=True)
        self.assertEqual(expected, self.checksum(target))

    def test_export_import_record(self):
        volume = self.new_volume()
        self.write(volume)
        backup = self.backup(volume)
        info = self.driver.export_record(backup)
        expected = backup.service_metadata
        # Cinder imports a record under the id it was exported with: here the
        # same row, its metadata lost
        backup.service_metadata = None
        backup.save()
        self.driver.import_record(backup, info)
        self.assertEqual(expected, backup.service_metadata)

        imported = self.env.create_backup(volume, None, None)
        with self.assertRaises(exception.InvalidBackup):  # another backup's record
            self.driver.import_record(imported, info)

        forged = dict(info["lineage"], volume_id=str(uuid.uuid4()))
        with self.assertRaises(exception.InvalidBackup):
            self.driver.import_record(backup, {"lineage": forged})
        forged = dict(info["lineage"])
        forged["target"] = dict(forged["target"], image="../" + forged["target"]["image"])
        with self.assertRaises(exception.InvalidBackup):
            self.driver.import_record(backup, {"lineage": forged})
        forged["target"] = dict(info["lineage"]["target"], pool="volumes")
        with self.assertRaises(exception.InvalidBackup):
            self.driver.import_record(backup, {"lineage": forged})
        with self.assertRaises(exception.InvalidBackup):
            self.driver.import_record(backup, {"lineage": "{not json"})

    def test_restore_refuses_a_record_pointing_at_another_volume(self):
        volume, other = self.new_volume(), self.new_volume()
        self.write(volume)
        backup = self.backup(volume)
        forged = self.env.create_backup(other, None, None)
        forged.service_metadata = backup.service_metadata
        forged.save()
        with self.assertRaises(exception.InvalidBackup):
            self.restore(forged, other, volume_is_new=False)

    def test_non_rbd_restore_into_a_file(self):
        volume = self.new_volume()
        self.write(volume)
        backup = self.backup(volume)
        path = os.path.join(self.env.tmpdir, "restore-%s.img" % backup.id)
        self.addCleanup(os.unlink, path)
        with open(path, "wb") as volume_file:
            volume_file.truncate(GiB)
            self.driver.restore(backup, volume.id, volume_file, True)
        digest = hashlib.sha256()
        with open(path, "rb") as restored:
            for block in iter(lambda: restored.read(4 << 20), b""):
                digest.update(block)
        self.assertEqual(self.checksum(volume), digest.hexdigest())

    def test_non_rbd_source_full_then_checksum_incremental(self):
        volume = self.new_volume()
        path = os.path.join(self.env.tmpdir, "volume-%s.img" % volume.id)
        self.addCleanup(os.unlink, path)
        backups, sums = [], []
        with open(path, "w+b") as volume_file:
            volume_file.truncate(GiB)
            for _round in range(2):
                for _ in range(6):
                    volume_file.seek(self.rng.randrange(0, GiB - 65536) & ~4095)
                    volume_file.write(self.rng.randbytes(65536))
                volume_file.flush()
                backup = self.env.create_backup(volume, backups[-1] if backups else None, None)
                self.addCleanup(self.env.delete_backup_quietly, self.driver, backup)
                updates = self.driver.backup(backup, volume_file)
                self.env.finish_backup(backup, updates)
                backups.append(backup)
                volume_file.seek(0)
                digest = hashlib.sha256()
                for block in iter(lambda: volume_file.read(4 << 20), b""):
                    digest.update(block)
                sums.append(digest.hexdigest())
        second = self.driver.export_record(backups[1])["lineage"]
        self.assertEqual("stream-checksum", second["method"])
        self.assertLess(second["stats"]["data_bytes"], 32 << 20, "only changed chunks sent")
        for backup, expected in zip(backups, sums, strict=True):
            target = self.new_volume()
            self.restore(backup, target, volume_is_new=True)
            self.assertEqual(expected, self.checksum(target))

    def test_check_for_setup_error(self):
        self.driver.check_for_setup_error()
        for bad in ({"backup_ceph_pool": "no-such-pool"}, {"backup_ceph_pool": "p" * 60},
                    {"zero_granularity": 3000}, {"backup_ceph_conf": "/nonexistent.conf"}):
            with self.env.overridden(**bad), \
                    self.assertRaises(exception.BackupDriverException, msg=bad):
                self.env.driver().check_for_setup_error()

    def test_verification_catches_a_corrupted_write(self):
        """A backup whose data did not land as read never becomes a restore point."""
        volume = self.new_volume()
        self.write(volume)
        full = self.backup(volume)
        self.write(volume)
        write = self.sink_class.write

        def corrupting(sink, offset, data):
            data = bytearray(data)
            data[0] ^= 0xFF
            return write(sink, offset, bytes(data))

        for mode in ("sample", "full"):
            backup = self.env.create_backup(volume, full, None)
            self.addCleanup(self.env.delete_backup_quietly, self.driver, backup)
            with self.env.overridden(verify=mode), \
                    mock.patch.object(self.sink_class, "write", corrupting), \
                    self.env.volume_file(volume) as volume_file, \
                    self.assertRaisesRegex(exception.BackupDriverException,
                                           "verification failed"):
                self.env.driver().backup(backup, volume_file)
            image = self.env.location(full)[1]
            self.assertNotIn(naming.backup_snapshot(backup.id, now=0).rsplit(".snap.")[0],
                             " ".join(self.chain_snapshots(image)))
        # the next backup works (a full: the parent's source snapshot was
        # removed once the failed backup's data was durable)
        later = self.backup(volume, parent=full)
        target = self.new_volume()
        self.restore(later, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))

    def test_a_failed_prune_leaves_the_backup_complete(self):
        """The previous source snapshot goes while the restore point is marked;
        if removing it fails (here: a clone of it exists), the backup still
        succeeds and the next one removes it."""
        volume = self.new_volume()
        self.write(volume)
        full = self.backup(volume)
        self.write(volume)
        clone = self.clone_of(volume, self.env.location(full)[2])
        with self.assertLogs("cinder_rbd_incremental.driver", "WARNING") as logs, \
                self.env.overridden(max_source_snapshots=1):
            second = self.backup(volume, parent=full)
        self.assertIn("could not remove the previous backup snapshot", logs.output[0])
        self.assertTrue(second.parent_id)
        self.env.remove_volume_image(clone)
        self.write(volume)
        with self.env.overridden(max_source_snapshots=1):
            third = self.backup(volume, parent=second)
        with self.env.volume_image(volume, read_only=True) as img:
            snaps = [s["name"] for s in img.list_snaps()]
        self.assertEqual([self.env.location(third)[2]], snaps)

    def clone_of(self, volume, snap):
        """A clone of ``volume@snap`` (protected first), removed at clean-up."""
        name = "%s.clone" % volume.name
        with self.env.primary() as ctx:
            with cluster.image(ctx, volume.name) as img:
                img.protect_snap(snap)
            rbd.RBD().clone(ctx, volume.name, snap, ctx, name,
                            features=rbd.RBD_FEATURE_LAYERING)
        self.addCleanup(self.env.remove_volume_image, name)
        return name

    def chain_snapshots(self, name):
        with self.env.chain_image(name) as img:
            return [s["name"] for s in img.list_snaps()]

    def test_delete_of_an_unfinished_backup_removes_its_leftovers(self):
        volume = self.new_volume()
        self.write(volume)
        backup = self.env.create_backup(volume, None, None)
        image = naming.chain_image(volume.id, backup.id)
        self.leave_unfinished_chain(image)
        backup.status = "error"
        backup.save()
        self.driver.delete_backup(backup)
        self.assertFalse(self.chain_exists(image))


def image_sha256(img, chunk=4 << 20):
    digest = hashlib.sha256()
    for offset in range(0, img.size(), chunk):
        digest.update(img.read(offset, min(chunk, img.size() - offset)))
    return digest.hexdigest()
