"""What an interrupted operation leaves behind is recovered, and a user without
write capabilities is told which one it lacks.

The states are built deterministically here (the reliability tier reaches
them by killing processes at random points):

* an end snapshot whose ``create_snap`` was interrupted: listed, without its
  object map (so it cannot be opened), the pending marker still set;
* a snapshot whose removal was interrupted: left in the trash namespace
  under a UUID, its name kept as ``original_name`` (librbd moves a snapshot
  there first, with the ``rbd.snapshot_trash_add`` class method);
* a destination whose creation was interrupted: listed in the pool's
  directory, no header object.
"""

import json
import os
import struct
import subprocess
import unittest

import rbd

from cinder_rbd_incremental import naming
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import base, cinder_env
from tests.functional.base import MiB

READ_ONLY_USER = "rbd-incremental-ro"


def trash_snapshot(ioctx, image, snap):
    """Put ``image@snap`` in the trash namespace, as an interrupted removal does."""
    with rbd.Image(ioctx, image) as img:
        snap_id, image_id = img.snap_get_id(snap), img.id()
    ioctx.execute("rbd_header." + image_id, "rbd", "snapshot_trash_add",
                     struct.pack("<Q", snap_id))


class InterruptedOperationsTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.src = self.shared("src", lambda: self.make_history(self.primary, steps=2,
                                                                for_class=True))

    def sync(self, snap, dest, from_snap=None):
        args = ["sync", *self.sync_args()]
        if from_snap:
            args += ["--from-snap", from_snap]
        return self.run_cli(*args, self.primary.image_spec(self.src, snap),
                            self.secondary.image_spec(dest))

    def synced(self, snap, from_snap=None, dest=None):
        dest = dest or self.cleanup_image(self.secondary, base.unique_name("dst"))
        rc, _out, err = self.sync(snap, dest, from_snap)
        self.assertEqual(0, rc, err)
        return dest

    def break_snapshot(self, dest, snap, pending=True):
        """The state a kill inside ``create_snap`` leaves."""
        with rbd.Image(self.secondary.ioctx, dest) as img:
            snap_id, image_id, size = img.snap_get_id(snap), img.id(), img.size()
            if pending:
                previous = None if snap == "s1" else "s%d" % (int(snap[1:]) - 1)
                img.metadata_set(rbd_target.PENDING_KEY, json.dumps(
                    {"from_snap": previous, "to_snap": snap, "size": size}))
        self.secondary.ioctx.remove_object("rbd_object_map.%s.%016x" % (image_id, snap_id))
        self.assertRaises(rbd.ImageNotFound, rbd.Image, self.secondary.ioctx, dest,
                          snapshot=snap, read_only=True)

    def assertRestorePoint(self, dest, snap):
        self.assertSameContent(self.primary, self.src, snap, self.secondary, dest, snap)
        self.assertNotIn(rbd_target.PENDING_KEY, self.metadata(self.secondary, dest))

    # -- an end snapshot left incomplete -------------------------------------------

    def test_rerun_redoes_a_full_sync_killed_inside_create_snap(self):
        dest = self.synced("s1")
        self.break_snapshot(dest, "s1")
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(0, rc, err)
        self.assertIn("transferring again", err)
        self.assertEqual(["s1"], self.snapshots(self.secondary, dest))
        self.assertRestorePoint(dest, "s1")

    def test_rerun_redoes_an_incremental_sync_killed_inside_create_snap(self):
        dest = self.synced("s1")
        self.synced("s2", "s1", dest)
        self.break_snapshot(dest, "s2")
        rc, _out, err = self.sync("s2", dest, "s1")
        self.assertEqual(0, rc, err)
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))
        self.assertRestorePoint(dest, "s1")
        self.assertRestorePoint(dest, "s2")

    def test_an_end_snapshot_that_cannot_be_opened_is_redone(self):
        dest = self.synced("s1")
        self.break_snapshot(dest, "s1", pending=False)
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(0, rc, err)
        self.assertRestorePoint(dest, "s1")

    def test_a_damaged_snapshot_under_newer_ones_is_refused(self):
        dest = self.synced("s1")
        self.synced("s2", "s1", dest)
        self.break_snapshot(dest, "s1", pending=False)
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(4, rc, err)
        self.assertOneLineError(err)
        self.assertIn("cannot be opened", err)
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))

    def test_a_complete_end_snapshot_is_already_applied(self):
        dest = self.synced("s1")
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(3, rc, err)

    # -- snapshots left in the trash namespace ----------------------------------------

    def test_removals_finish_what_an_interrupted_removal_left_in_the_trash(self):
        name = self.make_image(self.secondary, 8 * MiB)
        for snap in ("backup.a", "backup.b", "keep"):
            self.snap(self.secondary, name, snap)
        trash_snapshot(self.secondary.ioctx, name, "backup.a")
        trash_snapshot(self.secondary.ioctx, name, "keep")
        with rbd.Image(self.secondary.ioctx, name) as img:
            self.assertEqual(["backup.b"], rbd_target.snapshot_names(img))
            self.assertEqual(["backup.a", "keep"],
                             sorted(n for _id, n in rbd_target.trashed_snapshots(img)))
            removed = rbd_target.remove_snapshots(img, lambda n: n.startswith("backup."))
            self.assertEqual(["backup.a", "backup.b"], sorted(removed))
            self.assertEqual(["keep"], [n for _id, n in rbd_target.trashed_snapshots(img)])
        rbd_target.remove_image(self.secondary.ioctx, name)
        self.assertFalse(self.image_exists(self.secondary, name))
        self.assertRaises(rbd.ImageNotFound, rbd_target.remove_image,
                          self.secondary.ioctx, name)

    def test_rerun_after_a_kill_while_removing_the_incomplete_end_snapshot(self):
        dest = self.synced("s1")
        trash_snapshot(self.secondary.ioctx, dest, "s1")
        with rbd.Image(self.secondary.ioctx, dest) as img:
            img.metadata_set(rbd_target.PENDING_KEY, json.dumps(
                {"from_snap": None, "to_snap": "s1", "size": img.size()}))
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(0, rc, err)
        with rbd.Image(self.secondary.ioctx, dest, read_only=True) as img:
            self.assertEqual([], rbd_target.trashed_snapshots(img))
        self.assertEqual(["s1"], self.snapshots(self.secondary, dest))
        self.assertRestorePoint(dest, "s1")

    # -- a destination whose creation was interrupted ---------------------------------

    def test_sync_recreates_a_half_created_destination(self):
        dest = self.cleanup_image(self.secondary, base.unique_name("dst"))
        rbd.RBD().create(self.secondary.ioctx, dest, 8 * MiB, old_format=False)
        with rbd.Image(self.secondary.ioctx, dest) as img:
            image_id = img.id()
        self.secondary.ioctx.remove_object("rbd_header." + image_id)
        self.assertIn(dest, rbd.RBD().list(self.secondary.ioctx))
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(0, rc, err)
        self.assertRestorePoint(dest, "s1")

    def test_sync_repairs_a_destination_created_without_its_object_map(self):
        # the creation timed out (a stopped OSD) after the header, before the object map
        dest = self.cleanup_image(self.secondary, base.unique_name("dst"))
        rbd.RBD().create(self.secondary.ioctx, dest, self.HISTORY_SIZE, old_format=False,
                         features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                         | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)
        with rbd.Image(self.secondary.ioctx, dest) as img:
            image_id = img.id()
        self.secondary.ioctx.remove_object("rbd_object_map." + image_id)
        rc, _out, err = self.sync("s1", dest)
        self.assertEqual(0, rc, err)
        self.assertIn("creating it again", err)
        self.assertRestorePoint(dest, "s1")

    def test_a_missing_object_map_under_data_is_rebuilt(self):
        dest = self.synced("s1")
        with rbd.Image(self.secondary.ioctx, dest) as img:
            image_id = img.id()
            img.metadata_set(rbd_target.PENDING_KEY, json.dumps(
                {"from_snap": "s1", "to_snap": "s2", "size": img.size()}))
        self.secondary.ioctx.remove_object("rbd_object_map." + image_id)
        rc, _out, err = self.sync("s2", dest, "s1")
        self.assertEqual(0, rc, err)
        self.assertIn("rebuilding it", err)
        self.assertRestorePoint(dest, "s2")

    def test_an_empty_existing_destination_takes_a_full_sync(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)  # killed right after create
        self.synced("s1", dest=dest)
        self.assertRestorePoint(dest, "s1")


class ReadOnlyUserTest(base.FunctionalTestCase):
    """A destination user with ``profile rbd-read-only``: one line naming the cap."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.keyring = None

    def setUp(self):
        super().setUp()
        if ReadOnlyUserTest.keyring is None:
            keyring = base.SANDBOX_DIR + "/secondary/ceph.client.%s.keyring" % READ_ONLY_USER
            subprocess.run(["ceph", "-c", self.secondary.conf, "auth", "get-or-create",
                            "client." + READ_ONLY_USER, "mon", "profile rbd", "osd",
                            "profile rbd-read-only pool=%s" % self.secondary.pool,
                            "-o", keyring], check=True, capture_output=True,
                           timeout=base.COMMAND_TIMEOUT)
            ReadOnlyUserTest.keyring = keyring
        self.src = self.shared("src", lambda: self.make_history(self.primary, steps=1,
                                                                for_class=True))

    def sync_as_read_only(self, dest):
        return self.run_cli("sync", *self.conf_args(self.primary, self.primary.user, "src-"),
                            *self.conf_args(self.secondary, READ_ONLY_USER, "dest-"),
                            "--dest-keyring", self.keyring,
                            self.primary.image_spec(self.src, "s1"),
                            self.secondary.image_spec(dest))

    def assertNamesTheCapability(self, rc, err):
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("client.%s" % READ_ONLY_USER, err)
        self.assertIn("profile rbd pool=%s" % self.secondary.pool, err)

    def test_creating_the_destination(self):
        dest = self.cleanup_image(self.secondary, base.unique_name("dst"))
        rc, _out, err = self.sync_as_read_only(dest)
        self.assertNamesTheCapability(rc, err)
        self.assertFalse(self.image_exists(self.secondary, dest))

    def test_writing_an_existing_destination(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        rc, _out, err = self.sync_as_read_only(dest)
        self.assertNamesTheCapability(rc, err)
        self.assertEqual([], self.snapshots(self.secondary, dest))


class DriverLeftoversTest(unittest.TestCase):
    """What a killed backup left is cleaned up by the driver (Cinder's error +
    delete, the next backup): a snapshot in the trash namespace on the volume
    or on the chain, a chain image whose creation was interrupted."""

    @classmethod
    def setUpClass(cls):
        cls.env = cinder_env.CinderEnv.get()

    def setUp(self):
        self.driver = self.env.driver()

    def new_volume(self):
        volume = self.env.create_volume(1)
        self.addCleanup(self.env.delete_volume, volume)
        with self.env.volume_image(volume) as img:
            img.write(os.urandom(1 << 20), 0)
        return volume

    def backup(self, volume, parent=None):
        backup = self.env.create_backup(volume, parent)
        self.addCleanup(self.env.delete_backup_quietly, self.driver, backup)
        return self.env.run_backup(self.driver, backup)

    def volume_snapshots(self, volume):
        with self.env.volume_image(volume, read_only=True) as img:
            return (rbd_target.snapshot_names(img),
                    [n for _id, n in rbd_target.trashed_snapshots(img)])

    def test_a_backup_snapshot_left_in_the_volume_trash_is_removed(self):
        volume = self.new_volume()
        first = self.backup(volume)
        source_snap = self.env.location(first)[2]
        with self.env.primary() as ctx:
            trash_snapshot(ctx, volume.name, source_snap)  # a killed prune
        self.assertEqual(([], [source_snap]), self.volume_snapshots(volume))
        second = self.backup(volume, first)  # a full one: the parent's snapshot is gone
        self.assertEqual(([self.env.location(second)[2]], []), self.volume_snapshots(volume))
        for backup in (second, first):
            self.driver.delete_backup(self.env.backup(backup.id))
        self.assertEqual(([], []), self.volume_snapshots(volume))
        self.assertFalse(self.env.chain_exists(self.env.location(first)[1]))

    def test_a_chain_snapshot_left_in_the_trash_does_not_keep_the_chain(self):
        volume = self.new_volume()
        first = self.backup(volume)
        second = self.backup(volume, first)
        _pool, chain, snap = self.env.location(second)
        with self.env.secondary() as ctx:
            trash_snapshot(ctx, chain, snap)  # a killed delete of the newest backup
        for backup in (second, first):  # Cinder retries the delete, then the older one
            self.driver.delete_backup(self.env.backup(backup.id))
        self.assertFalse(self.env.chain_exists(chain))

    def test_delete_of_a_backup_killed_while_creating_its_chain(self):
        volume = self.new_volume()
        backup = self.env.create_backup(volume)
        chain = naming.chain_image(volume.id, backup.id)
        with self.env.secondary() as ctx:
            rbd.RBD().create(ctx, chain, 1 << 30, old_format=False)
            with rbd.Image(ctx, chain) as img:
                image_id = img.id()
            ctx.remove_object("rbd_header." + image_id)  # listed, no header
        self.env.mark_error(backup)
        self.driver.delete_backup(self.env.backup(backup.id))
        self.assertFalse(self.env.chain_exists(chain))
