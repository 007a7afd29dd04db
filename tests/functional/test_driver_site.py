"""The driver at the backup site: checksums scrubbed without the source, damage
forcing a full, chain images laid out on a data pool, striped, journaled."""

import subprocess
import unittest

import rbd
from cinder import exception

from cinder_rbd_incremental import checksums, cluster, scrub
from tests.functional import test_driver

DATA_POOL = "backups-data"  # tools/sandbox creates it on the secondary
MiB = 1 << 20


class SiteDriverTest(unittest.TestCase):
    setUpClass = classmethod(test_driver.DriverTestCase.setUpClass.__func__)
    setUp = test_driver.DriverTestCase.setUp
    new_volume = test_driver.DriverTestCase.new_volume
    backup = test_driver.DriverTestCase.backup
    restore = test_driver.DriverTestCase.restore
    checksum = test_driver.DriverTestCase.checksum

    def write_at(self, volume, offset, length=64 << 10):
        with self.env.volume_image(volume) as img:
            img.write(self.rng.randbytes(length), offset)

    def scrub_chain(self, image):
        """Scrub a chain as the driver's own user would from cron."""
        with self.env.secondary() as ctx:
            return {r.snapshot: r for r in scrub.scrub_pool(ctx, image)}

    def rot(self, image, offset):
        """Overwrite 4 KiB of the chain's object at ``offset`` with the rados tool."""
        with self.env.chain_image(image) as img:
            prefix, order = img.stat()["block_name_prefix"], img.stat()["order"]
        obj = "%s.%016x" % (prefix, offset >> order)
        subprocess.run(["rados", "-c", self.env.secondary_conf, "-p", "backups", "put", obj,
                        "/dev/stdin", "--offset", str(offset % (1 << order))],
                       input=b"\x5a" * 4096, check=True, timeout=120)

    def test_scrub_after_a_delete_and_damage_forcing_a_full(self):
        volume = self.new_volume()
        self.write_at(volume, 0, 8 * MiB)
        first = self.backup(volume)
        self.write_at(volume, 12 * MiB)
        second = self.backup(volume, parent=first)
        self.write_at(volume, 20 * MiB + 4096)
        self.write_at(volume, 100 * MiB, 4096)
        third = self.backup(volume, parent=second)
        image, third_snap = self.env.location(third)[1:]
        first_snap = self.env.location(first)[2]

        # removing the middle point folds its checksums into the newest one
        self.driver.delete_backup(second)
        results = self.scrub_chain(image)
        self.assertEqual({first_snap: "ok", third_snap: "ok"},
                         {snap: r.status for snap, r in results.items()})

        self.rot(image, 20 * MiB + 8192)  # written by the newest backup only
        results = self.scrub_chain(image)
        self.assertEqual("ok", results[first_snap].status)
        self.assertEqual("damaged", results[third_snap].status)
        self.assertEqual([20 * MiB], results[third_snap].offsets)

        fourth = self.backup(volume, parent=third)
        self.assertIsNone(fourth.parent_id, "a damaged parent is not built on")
        record = self.driver.export_record(fourth)["lineage"]
        self.assertEqual("rbd-full", record["method"])
        self.assertIn("scrub found the parent's restore point", record["full_reason"])
        self.assertIn("offset %d" % (20 * MiB), record["full_reason"])
        target = self.new_volume()
        self.restore(fourth, target, volume_is_new=True)
        self.assertEqual(self.checksum(volume), self.checksum(target))

    def test_chain_on_a_striped_journaled_data_pool_round_trip(self):
        layout = {"backup_ceph_data_pool": DATA_POOL, "backup_ceph_stripe_unit": MiB,
                  "backup_ceph_stripe_count": 2, "backup_ceph_image_journals": True}
        with self.env.overridden(**layout):
            self.driver = self.env.driver()
            self.driver.check_for_setup_error()
            volume = self.new_volume()
            self.write_at(volume, 0, 6 * MiB)
            first = self.backup(volume)
            self.write_at(volume, 5 * MiB + 4096, 4096)
            second = self.backup(volume, parent=first)
            expected = self.checksum(volume)
        self.assertEqual(first.id, second.parent_id)
        image = self.env.location(second)[1]
        spec = cluster.ClusterSpec(conf=self.env.secondary_conf, user="cinder-backup")
        with cluster.cluster(spec) as client, cluster.ioctx(client, "backups") as ctx, \
                cluster.image(ctx, image, read_only=True) as img:
            self.assertEqual(client.pool_lookup(DATA_POOL), img.data_pool_id())
            self.assertEqual((MiB, 2), (img.stripe_unit(), img.stripe_count()))
            self.assertTrue(img.features() & rbd.RBD_FEATURE_JOURNALING)
            # unset features: the backup cluster's rbd_default_features (Ceph's default)
            self.assertTrue(img.features() & rbd.RBD_FEATURE_FAST_DIFF)
            for backup in (first, second):  # in the metadata pool
                ctx.stat(checksums.object_name(img.id(), self.env.location(backup)[2]))
        target = self.new_volume()
        self.restore(second, target, volume_is_new=True)
        self.assertEqual(expected, self.checksum(target))
        self.assertEqual({"ok"}, {r.status for r in self.scrub_chain(image).values()})

    def test_layout_is_checked_at_setup(self):
        for bad, message in (({"backup_ceph_data_pool": "no-such-pool"}, "does not exist"),
                             ({"backup_ceph_stripe_unit": MiB}, "go together"),
                             ({"backup_ceph_stripe_unit": 3 * MiB,
                               "backup_ceph_stripe_count": 2}, "power of two"),
                             ({"backup_ceph_image_features": ["layering", "bogus"]}, "bogus"),
                             ({"backup_ceph_image_features": ["object-map"]},
                              "needs exclusive-lock")):
            with self.env.overridden(**bad), \
                    self.assertRaisesRegex(exception.BackupDriverException, message):
                self.env.driver().check_for_setup_error()

