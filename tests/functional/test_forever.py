"""``incremental_forever``: incrementals recorded without a Cinder parent.

The driver against real Cinder objects and the sandbox clusters, as in
``test_driver``: the oldest backup goes again and again while new
incrementals are taken, and every backup left restores byte-identical.
"""

import os
import random
import tempfile
import unittest

from cinder import exception

from tests.e2e import stack
from tests.functional import cinder_env, test_driver

Helpers = test_driver.DriverTestCase


class IncrementalForeverTestCase(unittest.TestCase):
    """Only the ``rbd`` target: the file target refuses the option."""

    new_volume = Helpers.new_volume
    write = Helpers.write
    backup = Helpers.backup
    restore = Helpers.restore
    chain_exists = Helpers.chain_exists

    @classmethod
    def setUpClass(cls):
        cls.env = cinder_env.CinderEnv.get()

    def setUp(self):
        self.rng = random.Random(self.id())
        overridden = self.env.overridden(incremental_forever=True)
        overridden.__enter__()
        self.addCleanup(overridden.__exit__, None, None, None)
        self.driver = self.env.driver()

    def checksum(self, volume):
        """Of the allocated chunks only: a 1 GiB image hashes in a fraction of a second."""
        with self.env.volume_image(volume, read_only=True) as img:
            return stack.content_digest(img)

    def incremental(self, volume, parent):
        backup = self.backup(volume, parent=parent)
        self.assertIsNone(backup.parent_id, "recorded in Cinder without a parent")
        return backup

    def lineage(self, backup):
        return self.driver.export_record(backup)["lineage"]

    def assert_restores(self, backup, expected):
        target = self.new_volume()
        self.restore(backup, target, volume_is_new=True)
        self.assertEqual(expected, self.checksum(target), "restore of %s" % backup.id)

    def test_delete_oldest_again_and_again(self):
        volume = self.new_volume()
        self.write(volume, count=32)
        backups, sums = [self.backup(volume)], [self.checksum(volume)]
        chain = self.env.location(backups[0])[1]
        self.write(volume, count=2)
        backups.append(self.incremental(volume, backups[-1]))
        sums.append(self.checksum(volume))
        for _ in range(2):
            # the oldest goes (the full first): the chain and the rest stay
            self.driver.delete_backup(backups.pop(0))
            sums.pop(0)
            self.assertTrue(self.chain_exists(chain), "the chain outlives its first backup")
            self.write(volume, count=2)
            backups.append(self.incremental(volume, backups[-1]))
            sums.append(self.checksum(volume))
            record = self.lineage(backups[-1])
            self.assertEqual(("rbd-diff", backups[-2].id),
                             (record["method"], record["parent"]["backup_id"]))
            self.assertLessEqual(record["stats"]["data_bytes"], 2 * (64 << 10),
                                 "an incremental of two 64 KiB writes")
            self.assertEqual(chain, record["target"]["image"])
        for backup, expected in zip(backups, sums, strict=True):
            self.assert_restores(backup, expected)
        # in place, onto the volume that holds the newest backup's snapshot
        self.write(volume, count=3)
        self.restore(backups[-1], volume, volume_is_new=False)
        self.assertEqual(sums[-1], self.checksum(volume))
        for backup in backups[:-1]:  # any order: not the newest first
            self.driver.delete_backup(backup)
        self.assertTrue(self.chain_exists(chain))
        self.driver.delete_backup(backups[-1])
        self.assertFalse(self.chain_exists(chain), "the last restore point took the chain")

    def test_export_import_record_of_an_incremental(self):
        volume = self.new_volume()
        self.write(volume)
        full = self.backup(volume)
        self.write(volume, count=2)
        inc = self.incremental(volume, full)
        expected = self.checksum(volume)
        self.driver.delete_backup(full)
        record = self.driver.export_record(inc)
        self.assertEqual(full.id, record["lineage"]["parent"]["backup_id"])
        self.driver.import_record(inc, record)
        self.assert_restores(inc, expected)

    def test_file_target_refuses_the_option(self):
        directory = tempfile.mkdtemp(prefix="file-target-", dir=self.env.tmpdir)
        self.addCleanup(os.rmdir, directory)
        with self.env.overridden(target="file", file_target_dir=directory,
                                 incremental_forever=True):
            with self.assertRaises(exception.BackupDriverException) as caught:
                self.env.driver().check_for_setup_error()
        self.assertIn("incremental_forever", str(caught.exception))
        self.assertIn("target = file", str(caught.exception))
