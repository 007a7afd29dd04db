"""The driver with the ``file`` target: every driver test, plus plain rbd.

The chains land as directories of diff files; a restore point must come
back byte-identical through the driver and through ``rbd import-diff`` alone.
"""

import glob
import os
import subprocess
import tempfile

from cinder import exception

from cinder_rbd_incremental import opts
from cinder_rbd_incremental.targets import file as file_target
from tests.functional import cinder_env, test_driver


class FileTargetDriverTestCase(test_driver.DriverTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="file-target-", dir=self.env.tmpdir)
        for name, value in (("target", "file"), ("file_target_dir", self.directory)):
            self.env.conf.set_override(name, value, group=opts.GROUP)
            self.addCleanup(self.env.conf.clear_override, name, group=opts.GROUP)
        super().setUp()

    sink_class = file_target.ChainDiffSink

    def chain_exists(self, name):
        return os.path.isdir(os.path.join(self.directory, name))

    def chain_snapshots(self, name):
        return os.listdir(os.path.join(self.directory, name))

    def dirty_chain(self, name):
        """An interrupted write leaves a temporary file, never a ``.diff``."""
        with open(os.path.join(self.directory, name, ".000009.junk.diff.x"), "wb") as junk:
            junk.write(b"rbd diff v1\n")

    def leave_unfinished_chain(self, name):
        os.mkdir(os.path.join(self.directory, name))

    def test_check_for_setup_error(self):
        self.driver.check_for_setup_error()
        with self.env.overridden(file_target_dir=os.path.join(self.directory, "missing")), \
                self.assertRaises(exception.BackupDriverException):
            self.env.driver().check_for_setup_error()

    def test_rbd_import_diff_alone_restores_every_point(self):
        volume = self.new_volume()
        backups, sums = [], []
        for i in range(3):
            self.write(volume, count=6 + i)
            backups.append(self.backup(volume, parent=backups[-1] if backups else None))
            sums.append(self.checksum(volume))
        chain = self.env.location(backups[0])[1]
        diffs = sorted(glob.glob(os.path.join(self.directory, chain, "*.diff")))
        self.assertEqual(3, len(diffs), "one diff file per backup, in one chain")
        target = self.new_volume()
        rbd = ["rbd", "-c", cinder_env.PRIMARY_CONF, "--id", "cinder"]
        spec = "volumes/" + target.name
        for path, expected in zip(diffs, sums, strict=True):
            subprocess.run(rbd + ["import-diff", "--no-progress", path, spec], check=True,
                           capture_output=True)
            self.assertEqual(expected, self.checksum(target), path)
        with self.env.volume_image(target) as img:  # what rbd created: remove for cleanup
            for snap in img.list_snaps():
                img.remove_snap(snap["name"])

    def test_a_diff_that_does_not_continue_the_chain_starts_a_new_one(self):
        # backups of Cinder snapshots: the parent's source snapshot stays
        volume = self.new_volume()
        snapshots = []
        for _ in range(3):
            self.write(volume)
            snapshots.append(self.env.create_snapshot(volume))
        first = self.backup(volume, snapshot=snapshots[0])
        self.backup(volume, parent=first, snapshot=snapshots[1])
        third = self.backup(volume, parent=first, snapshot=snapshots[2])  # a branch
        self.assertIsNone(third.parent_id, "a full backup in a new chain")
        self.assertNotEqual(self.env.location(first)[1], self.env.location(third)[1])
        self.assertIn("does not continue", self.driver.export_record(third)["lineage"]
                      ["full_reason"])
        target = self.new_volume()
        self.restore(third, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))

    def test_a_backup_with_later_ones_in_its_chain_is_not_deleted(self):
        volume = self.new_volume()
        self.write(volume)
        first = self.backup(volume)
        self.write(volume)
        second = self.backup(volume, parent=first)
        with self.assertRaises(exception.InvalidBackup):
            self.driver.delete_backup(first)  # Cinder refuses that too
        target = self.new_volume()
        self.restore(second, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))
