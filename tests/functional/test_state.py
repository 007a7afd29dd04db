"""``import-diff``/``sync`` land only on an image in the state the diff starts from."""

import os

from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import base
from tests.functional.base import KiB, MiB


class RightStateTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        # source history s1, s2 on primary (read only, shared by the class's tests);
        # our v2 diffs (with lineage) of it
        self.src = self.shared("src", lambda: self.make_history(self.primary, steps=2,
                                                                for_class=True))
        self.full = self.export(self.src, "s1")
        self.inc = self.export(self.src, "s2", "s1")

    def export(self, image, snap, from_snap=None, version=2):
        path = os.path.join(self.tmp, "%s-%s-%s.diff" % (image, from_snap, snap))
        args = ["-c", self.primary.conf, "--id", self.primary.user, "export-diff",
                "--export-format", str(version)]
        if from_snap:
            args += ["--from-snap", from_snap]
        self.cli_ok(*args, self.primary.image_spec(image, snap), path)
        return path

    def import_diff(self, path, image, *extra):
        return self.run_cli("-c", self.secondary.conf, "--id", self.secondary.user,
                            "import-diff", *extra, path, self.secondary.image_spec(image))

    def state(self, image):
        """What a refused import must leave alone: snapshots, HEAD content, metadata."""
        return (self.snapshots(self.secondary, image),
                self.sha256_of(self.secondary, None, image),
                self.metadata(self.secondary, image))

    def assertRefused(self, image, rc, err, code=4):
        self.assertEqual(code, rc, err)
        self.assertOneLineError(err)

    def test_incremental_onto_image_without_from_snapshot_is_refused(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.write(self.secondary, dest, 1 * MiB, 64 * KiB)
        before = self.state(dest)
        rc, _out, err = self.import_diff(self.inc, dest)
        self.assertRefused(dest, rc, err)
        self.assertIn("has no snapshot s1", err)
        self.assertEqual(before, self.state(dest))

        # an image with other snapshots but not s1 is refused the same way
        self.snap(self.secondary, dest, "other")
        before = self.state(dest)
        rc, _out, err = self.import_diff(self.inc, dest)
        self.assertRefused(dest, rc, err)
        self.assertEqual(before, self.state(dest))

    def test_full_diff_onto_non_empty_image_is_refused(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.write(self.secondary, dest, 10 * MiB, 4 * KiB)
        before = self.state(dest)
        rc, _out, err = self.import_diff(self.full, dest)
        self.assertRefused(dest, rc, err)
        self.assertEqual(before, self.state(dest))

    def test_dirty_head_is_refused_then_rolled_back(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.assertEqual(0, self.import_diff(self.full, dest)[0])
        self.write(self.secondary, dest, 3 * MiB, 8 * KiB)  # HEAD changed after s1
        before = self.state(dest)
        rc, _out, err = self.import_diff(self.inc, dest)
        self.assertRefused(dest, rc, err)
        self.assertIn("--rollback", err)
        self.assertEqual(before, self.state(dest))

        rc, _out, err = self.import_diff(self.inc, dest, "--rollback")
        self.assertEqual(0, rc, err)
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))
        for snap in ("s1", "s2"):
            self.assertSameContent(self.primary, self.src, snap, self.secondary, dest, snap)
        self.assertSameContent(self.primary, self.src, "s2", self.secondary, dest, None)

    def test_resized_head_is_dirty(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.assertEqual(0, self.import_diff(self.full, dest)[0])
        self.resize(self.secondary, dest, self.HISTORY_SIZE + 4 * MiB)
        rc, _out, err = self.import_diff(self.inc, dest)
        self.assertRefused(dest, rc, err)
        self.assertEqual(["s1"], self.snapshots(self.secondary, dest))

    def test_rerun_after_success_is_already_applied(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.assertEqual(0, self.import_diff(self.full, dest)[0])
        self.assertEqual(0, self.import_diff(self.inc, dest)[0])
        before = self.state(dest)
        for path in (self.inc, self.full):
            rc, _out, err = self.import_diff(path, dest)
            self.assertRefused(dest, rc, err, code=3)
            self.assertIn("already has snapshot", err)
        self.assertEqual(before, self.state(dest))

    def test_diff_of_another_image_with_the_same_snapshot_names_is_refused(self):
        dest = self.cleanup_image(self.secondary, base.unique_name())
        rc, _out, err = self.run_cli("sync", *self.sync_args(), self.primary.image_spec(
            self.src, "s1"), self.secondary.image_spec(dest))
        self.assertEqual(0, rc, err)
        self.assertIn(rbd_target.snap_meta_key("s1"), self.metadata(self.secondary, dest))

        # image B: same snapshot names, different point in time
        other = self.make_history(self.primary, steps=2)
        before = self.state(dest)
        rc, _out, err = self.import_diff(self.export(other, "s2", "s1"), dest)
        self.assertRefused(dest, rc, err)
        self.assertIn("not the same point in time", err)
        self.assertEqual(before, self.state(dest))

        # sync checks the same identity
        rc, _out, err = self.run_cli("sync", *self.sync_args(), "--from-snap", "s1",
                                     self.primary.image_spec(other, "s2"),
                                     self.secondary.image_spec(dest))
        self.assertRefused(dest, rc, err)
        self.assertEqual(before, self.state(dest))

        # the right image's diff still applies
        rc, _out, err = self.import_diff(self.inc, dest)
        self.assertEqual(0, rc, err)
        self.assertSameContent(self.primary, self.src, "s2", self.secondary, dest, "s2")

    def test_force_skips_the_checks(self):
        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.assertEqual(0, self.import_diff(self.full, dest)[0])
        self.write(self.secondary, dest, 3 * MiB, 8 * KiB)
        rc, _out, err = self.import_diff(self.inc, dest, "--force")
        self.assertEqual(0, rc, err)
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))
