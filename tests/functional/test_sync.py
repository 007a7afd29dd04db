"""``sync`` and ``verify`` between the two sandbox clusters."""

import json

import rbd

from cinder_rbd_incremental import engine
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import base
from tests.functional.base import KiB, MiB


class SyncTest(base.FunctionalTestCase):

    def least_privilege_args(self):
        """Source as client.cinder on primary, destination as client.cinder-backup."""
        return ["-c", self.primary.conf, "--id", self.primary.user,
                "--dest-conf", self.secondary.conf, "--dest-id", self.secondary.user]

    def sync(self, src, snap, dest, from_snap=None, *extra):
        args = ["sync", *self.least_privilege_args(), *extra]
        if from_snap:
            args += ["--from-snap", from_snap]
        return self.run_cli(*args, self.primary.image_spec(src, snap),
                            self.secondary.image_spec(dest))

    def verify(self, src, snap_a, dest, snap_b):
        return self.run_cli("verify", *self.least_privilege_args(),
                            self.primary.image_spec(src, snap_a),
                            self.secondary.image_spec(dest, snap_b))

    def test_full_then_two_incrementals_least_privilege(self):
        src = self.make_history(self.primary, steps=3)
        dest = self.cleanup_image(self.secondary, base.unique_name())

        previous = None
        for snap in ("s1", "s2", "s3"):
            rc, _out, err = self.sync(src, snap, dest, previous)
            self.assertEqual(0, rc, err)
            previous = snap

        self.assertEqual(["s1", "s2", "s3"], self.snapshots(self.secondary, dest))
        for snap in ("s1", "s2", "s3"):
            self.assertSameContent(self.primary, src, snap, self.secondary, dest, snap)
            rc, _out, err = self.verify(src, snap, dest, snap)
            self.assertEqual(0, rc, err)
            self.assertIn("identical", err)
        self.assertSameContent(self.primary, src, "s3", self.secondary, dest, None)

        meta = self.metadata(self.secondary, dest)
        self.assertNotIn(rbd_target.PENDING_KEY, meta)
        for snap in ("s1", "s2", "s3"):
            self.assertIn(rbd_target.snap_meta_key(snap), meta)

        # different snapshots differ: exit 5, one line naming the offset
        rc, _out, err = self.verify(src, "s1", dest, "s2")
        self.assertEqual(5, rc, err)
        self.assertOneLineError(err)
        self.assertIn("differ at offset", err)

    def test_verify_detects_a_single_changed_byte(self):
        src = self.make_history(self.primary, steps=1)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        rc, _out, err = self.sync(src, "s1", dest)
        self.assertEqual(0, rc, err)
        offset = 33 * MiB + 12345
        self.write(self.secondary, dest, offset, data=b"\x01")
        self.snap(self.secondary, dest, "tampered")
        rc, _out, err = self.verify(src, "s1", dest, "tampered")
        self.assertEqual(5, rc, err)
        self.assertIn("differ at offset %d" % offset, err)

    def test_full_sync_creates_missing_destination_like_the_source(self):
        src = self.make_image(self.primary, 24 * MiB, order=20)  # 1 MiB objects
        self.write(self.primary, src, 3 * MiB + 100, 2 * MiB)
        self.snap(self.primary, src, "first")
        dest = self.cleanup_image(self.secondary, base.unique_name())
        self.assertFalse(self.image_exists(self.secondary, dest))

        rc, _out, err = self.sync(src, "first", dest)
        self.assertEqual(0, rc, err)

        info = self.rbd_json("-c", self.secondary.conf, "info",
                             self.secondary.image_spec(dest))
        self.assertEqual(2, info["format"])
        self.assertEqual(24 * MiB, info["size"])
        self.assertEqual(20, info["order"])
        self.assertEqual(1 * MiB, info["object_size"])
        self.assertEqual(["first"], self.snapshots(self.secondary, dest))
        self.assertSameContent(self.primary, src, "first", self.secondary, dest, "first")

    def test_incremental_sync_to_missing_destination_fails(self):
        src = self.make_history(self.primary, steps=2)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        rc, _out, err = self.sync(src, "s2", dest, "s1")
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("does not exist", err)
        self.assertFalse(self.image_exists(self.secondary, dest))

    def test_rerun_of_a_completed_sync_is_already_applied(self):
        src = self.make_history(self.primary, steps=2)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        self.assertEqual(0, self.sync(src, "s1", dest)[0])
        self.assertEqual(0, self.sync(src, "s2", dest, "s1")[0])
        before = self.sha256_of(self.secondary, None, dest)
        rc, _out, err = self.sync(src, "s2", dest, "s1")
        self.assertEqual(3, rc, err)
        self.assertOneLineError(err)
        rc, _out, err = self.sync(src, "s1", dest)
        self.assertEqual(3, rc, err)
        self.assertEqual(before, self.sha256_of(self.secondary, None, dest))
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))

    def test_shrink_and_grow_between_snapshots(self):
        src = self.make_image(self.primary, 32 * MiB)
        self.write(self.primary, src, 0, 2 * MiB)
        self.write(self.primary, src, 20 * MiB, 4 * MiB)
        self.write(self.primary, src, 32 * MiB - 4 * KiB, 4 * KiB)
        self.snap(self.primary, src, "s1")
        # shrink, and write inside the new size
        self.resize(self.primary, src, 16 * MiB)
        self.write(self.primary, src, 10 * MiB, 64 * KiB)
        self.snap(self.primary, src, "s2")
        # grow, and write in the new space
        self.resize(self.primary, src, 48 * MiB)
        self.write(self.primary, src, 40 * MiB, 1 * MiB)
        self.snap(self.primary, src, "s3")
        # shrink below data, then grow past it, between two snapshots: the old
        # data at 10 MiB must read as zeros afterwards
        self.resize(self.primary, src, 8 * MiB)
        self.resize(self.primary, src, 40 * MiB)
        self.write(self.primary, src, 30 * MiB, 4 * KiB)
        self.snap(self.primary, src, "s4")

        dest = self.cleanup_image(self.secondary, base.unique_name())
        previous = None
        for snap, size in (("s1", 32 * MiB), ("s2", 16 * MiB), ("s3", 48 * MiB),
                           ("s4", 40 * MiB)):
            rc, _out, err = self.sync(src, snap, dest, previous)
            self.assertEqual(0, rc, "%s: %s" % (snap, err))
            self.assertEqual(size, self.size_of(self.secondary, dest))
            self.assertEqual(size, self.size_of(self.secondary, dest, snap))
            self.assertSameContent(self.primary, src, snap, self.secondary, dest, snap)
            previous = snap
        self.assertEqual(bytes(64 * KiB),
                         self.read_image(self.secondary, dest, "s4")[10 * MiB:10 * MiB + 64 * KiB])

    def test_sync_as_admin_with_whole_object_and_small_granularity(self):
        src = self.make_history(self.primary, steps=2)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        common = [*self.sync_args(least_privilege=False), "--whole-object",
                  "--zero-granularity", "512", "--max-in-flight", "2"]
        self.cli_ok("sync", *common, self.primary.image_spec(src, "s1"),
                    self.secondary.image_spec(dest))
        self.cli_ok("sync", *common, "--from-snap", "s1", self.primary.image_spec(src, "s2"),
                    self.secondary.image_spec(dest))
        for snap in ("s1", "s2"):
            self.assertSameContent(self.primary, src, snap, self.secondary, dest, snap)

    def test_verify_of_different_sizes(self):
        src = self.make_image(self.primary, 16 * MiB)
        self.snap(self.primary, src, "s1")
        self.resize(self.primary, src, 8 * MiB)
        self.snap(self.primary, src, "s2")
        rc, _out, err = self.run_cli("verify", "-c", self.primary.conf,
                                     self.primary.image_spec(src, "s1"),
                                     self.primary.image_spec(src, "s2"))
        self.assertEqual(5, rc, err)
        self.assertIn("differ at offset %d" % (8 * MiB), err)

    def test_clone_full_and_incremental(self):
        """A clone's full copy includes its parent's data; the copy is a flat image."""
        parent = self.make_image(self.primary, 32 * MiB)
        self.write(self.primary, parent, 0, 6 * MiB)
        self.write(self.primary, parent, 20 * MiB, 1 * MiB)
        self.snap(self.primary, parent, "base")
        with rbd.Image(self.primary.ioctx, parent) as img:
            img.protect_snap("base")
        child = self.make_clone(self.primary, parent, "base")
        self.write(self.primary, child, 5 * MiB, 2 * MiB)  # partly over parent data
        self.snap(self.primary, child, "s1")
        self.write(self.primary, child, 21 * MiB - 4 * KiB, 8 * KiB)  # copy-up
        self.discard(self.primary, child, 0, 4 * MiB)
        self.snap(self.primary, child, "s2")

        for snap, args in (("s1", []), ("s2", ["--from-snap", "s1"]), (None, [])):
            spec = self.primary.image_spec(child, snap)
            ours = self.cli_ok("diff", "-c", self.primary.conf, "--format", "json", *args, spec)
            theirs = self.rbd_ok("diff", "-c", self.primary.conf, "--format", "json", *args,
                                 spec)
            self.assertEqual(json.loads(theirs), json.loads(ours), spec)

        dest = self.cleanup_image(self.secondary, base.unique_name())
        self.assertEqual(0, self.sync(child, "s1", dest)[0])
        self.assertEqual(0, self.sync(child, "s2", dest, "s1")[0])
        for snap in ("s1", "s2"):
            self.assertSameContent(self.primary, child, snap, self.secondary, dest, snap)
        info = self.rbd_json("-c", self.secondary.conf, "info", self.secondary.image_spec(dest))
        self.assertNotIn("parent", info)


class OnDurableTest(base.FunctionalTestCase):
    """``engine.transfer(on_durable=...)``: called once the data is on the
    destination and before its end snapshot exists; its error aborts."""

    def setUp(self):
        super().setUp()
        self.src = self.make_history(self.primary, steps=1)
        self.dest = self.make_image(self.secondary, self.size_of(self.primary, self.src))

    def transfer(self, on_durable):
        source = self.open_image(self.primary, self.src, "s1", read_only=True)
        target = self.open_image(self.secondary, self.dest)
        sink = rbd_target.ImageSink(target, fresh=True, ioctx=self.secondary.ioctx)
        plan = engine.Plan(to_snap="s1", size=source.size())
        engine.transfer(source, sink, plan, on_durable=on_durable)

    def test_called_when_the_data_is_there_and_the_snapshot_is_not(self):
        seen = []

        def durable():
            seen.append(self.snapshots(self.secondary, self.dest))
            self.assertSameContent(self.primary, self.src, "s1", self.secondary, self.dest, None)

        self.transfer(durable)
        self.assertEqual([[]], seen)
        self.assertEqual(["s1"], self.snapshots(self.secondary, self.dest))

    def test_an_error_in_it_leaves_no_end_snapshot(self):
        def durable():
            raise RuntimeError("injected")

        with self.assertRaisesRegex(RuntimeError, "injected"):
            self.transfer(durable)
        self.assertEqual([], self.snapshots(self.secondary, self.dest))
