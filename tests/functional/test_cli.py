"""``rbd-incremental`` on bad input, and ``diff`` against ``rbd diff``."""

import json
import os
import xml.etree.ElementTree as ET

from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import base
from tests.functional.base import KiB, MiB


class BadInputTest(base.FunctionalTestCase):

    def export(self, image, snap, from_snap=None, version=1):
        path = os.path.join(self.tmp, "%s-%s.diff" % (from_snap, snap))
        args = ["-c", self.primary.conf, "export-diff", "--export-format", str(version)]
        if from_snap:
            args += ["--from-snap", from_snap]
        self.cli_ok(*args, self.primary.image_spec(image, snap), path)
        return path

    def import_diff(self, path, image, *extra):
        return self.run_cli("-c", self.secondary.conf, "--id", self.secondary.user,
                            "import-diff", *extra, path, self.secondary.image_spec(image))

    def test_truncated_diff_fails_then_complete_diff_resumes(self):
        src = self.make_image(self.primary, 64 * MiB)
        self.write(self.primary, src, 0, 4 * MiB)
        self.snap(self.primary, src, "s1")
        self.write(self.primary, src, 1 * MiB, 8 * KiB)
        last = self.write(self.primary, src, 30 * MiB, 256 * KiB)
        self.snap(self.primary, src, "s2")
        dest = self.make_image(self.secondary, 64 * MiB)
        full, inc = self.export(src, "s1"), self.export(src, "s2", "s1", version=2)
        rc, _out, err = self.import_diff(full, dest)
        self.assertEqual(0, rc, err)

        with open(inc, "rb") as f:
            raw = f.read()
        cut = raw.index(last) + len(last) // 2  # in the middle of the last data record
        truncated = os.path.join(self.tmp, "truncated.diff")
        with open(truncated, "wb") as f:
            f.write(raw[:cut])

        rc, _out, err = self.import_diff(truncated, dest)
        self.assertNotEqual(0, rc)
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("truncated", err)
        self.assertEqual(["s1"], self.snapshots(self.secondary, dest))
        self.assertIn(rbd_target.PENDING_KEY, self.metadata(self.secondary, dest))
        # the records before the cut were written: HEAD moved away from s1
        self.assertNotEqual(self.sha256_of(self.secondary, None, dest, "s1"),
                            self.sha256_of(self.secondary, None, dest))

        rc, _out, err = self.import_diff(inc, dest)
        self.assertEqual(0, rc, err)
        self.assertEqual(["s1", "s2"], self.snapshots(self.secondary, dest))
        self.assertSameContent(self.primary, src, "s2", self.secondary, dest, "s2")
        self.assertNotIn(rbd_target.PENDING_KEY, self.metadata(self.secondary, dest))

    def test_truncated_diff_from_stdin(self):
        src = self.make_image(self.primary, 16 * MiB)
        data = self.write(self.primary, src, 2 * MiB, 64 * KiB)
        self.snap(self.primary, src, "s1")
        with open(self.export(src, "s1"), "rb") as f:
            raw = f.read()
        dest = self.make_image(self.secondary, 16 * MiB)
        cut = raw.index(data) + 1000
        rc, _out, err = self.run_cli("-c", self.secondary.conf, "import-diff", "-",
                                     self.secondary.image_spec(dest), input=raw[:cut])
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertEqual([], self.snapshots(self.secondary, dest))

    def test_garbage_file(self):
        dest = self.make_image(self.secondary, 16 * MiB)
        garbage = os.path.join(self.tmp, "garbage.diff")
        with open(garbage, "wb") as f:
            f.write(base.random_bytes(64 * KiB, "garbage"))
        before = (self.metadata(self.secondary, dest), self.sha256_of(self.secondary, None, dest))
        rc, _out, err = self.import_diff(garbage, dest)
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("banner", err)
        self.assertEqual([], self.snapshots(self.secondary, dest))
        self.assertEqual(before, (self.metadata(self.secondary, dest),
                                  self.sha256_of(self.secondary, None, dest)))

        rc, _out, err = self.run_cli("inspect", garbage)
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)

    def test_missing_file_and_image(self):
        dest = self.make_image(self.secondary, 16 * MiB)
        rc, _out, err = self.import_diff(os.path.join(self.tmp, "nope.diff"), dest)
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("cannot open", err)

        src = self.make_image(self.primary, 16 * MiB)
        self.snap(self.primary, src, "s1")
        path = self.export(src, "s1")
        rc, _out, err = self.import_diff(path, base.unique_name("missing"))
        self.assertEqual(1, rc, err)
        self.assertOneLineError(err)
        self.assertIn("not found", err)

    def test_usage_errors(self):
        for args in (["export-diff", "volumes/no-snapshot", "x.diff"],  # needs @SNAP
                     ["import-diff", "x.diff", "volumes/img@snap"]):  # no @SNAP allowed
            rc, _out, err = self.run_cli("-c", self.primary.conf, *args)
            self.assertUsageOrOneLineError(rc, err)
        rc, _out, err = self.run_cli("frobnicate")
        self.assertEqual(2, rc, err)


class InvalidOptionsTest(base.FunctionalTestCase):
    """Bad --zero-granularity/--max-in-flight: a usage error, no traceback, nothing changed."""

    def setUp(self):
        super().setUp()
        self.src = self.shared("src", self.make_source)
        self.full = os.path.join(self.tmp, "full.diff")
        self.cli_ok("-c", self.primary.conf, "export-diff", self.primary.image_spec(
            self.src, "s1"), self.full)
        self.dest = self.make_image(self.secondary, 16 * MiB)
        self.outdir = os.path.join(self.tmp, "out")
        os.mkdir(self.outdir)

    def make_source(self):
        src = self.make_image(self.primary, 16 * MiB, for_class=True)
        self.write(self.primary, src, 0, 64 * KiB)
        self.snap(self.primary, src, "s1")
        return src

    def assertRejected(self, *args):
        rc, _out, err = self.run_cli(*args)
        self.assertUsageOrOneLineError(rc, err)
        self.assertEqual([], os.listdir(self.outdir))  # no diff, no temporary file
        self.assertEqual([], self.snapshots(self.secondary, self.dest))
        self.assertEqual({}, self.metadata(self.secondary, self.dest))  # nothing pending

    def export(self, *option):
        self.assertRejected("-c", self.primary.conf, "export-diff", *option,
                            self.primary.image_spec(self.src, "s1"),
                            os.path.join(self.outdir, "out.diff"))

    def import_diff(self, *option):
        self.assertRejected("-c", self.secondary.conf, "import-diff", *option, self.full,
                            self.secondary.image_spec(self.dest))

    def test_export_granularity_not_dividing_the_chunk(self):
        self.export("--zero-granularity", "3000")

    def test_export_zero_granularity(self):
        self.export("--zero-granularity", "0")

    def test_export_no_request_in_flight(self):
        self.export("--max-in-flight", "0")

    def test_import_zero_granularity(self):
        self.import_diff("--zero-granularity", "0")

    def test_import_negative_granularity(self):
        self.import_diff("--zero-granularity", "-4096")

    def test_sync_zero_granularity(self):
        self.assertRejected("sync", *self.sync_args(), "--zero-granularity", "0",
                            self.primary.image_spec(self.src, "s1"),
                            self.secondary.image_spec(self.dest))


class DiffCommandTest(base.FunctionalTestCase):

    def setUp(self):
        super().setUp()
        self.image = self.shared("image", self.make_source)

    def make_source(self):
        """Snapshots s1, s2 and a HEAD changed since s2 (read only, shared by the class)."""
        image = self.make_history(self.primary, steps=2, for_class=True)
        self.write(self.primary, image, 12 * MiB, 4 * KiB)
        self.discard(self.primary, image, 40 * MiB, 4 * MiB)
        return image

    def both(self, image_spec, *args, fmt):
        common = ["-c", self.primary.conf, "--id", self.primary.user, "diff", *args,
                  "--format", fmt, image_spec]
        ours = self.cli_ok(*common)
        theirs = self.rbd_ok(*common)
        return ours, theirs

    CASES = (
        ("s1", []),  # everything allocated at s1
        ("s2", ["--from-snap", "s1"]),
        (None, ["--from-snap", "s2"]),  # HEAD
        (None, []),
        ("s2", ["--from-snap", "s1", "--whole-object"]),
    )

    def test_json_equals_rbd_diff(self):
        for snap, args in self.CASES:
            spec = self.primary.image_spec(self.image, snap)
            ours, theirs = self.both(spec, *args, fmt="json")
            self.assertEqual(json.loads(theirs), json.loads(ours), "%s %s" % (spec, args))
            self.assertTrue(json.loads(ours), "%s %s: no extents" % (spec, args))
        ours, _theirs = self.both(self.primary.image_spec(self.image, "s2"),
                                  "--from-snap", "s1", fmt="json")
        self.assertIn("false", [e["exists"] for e in json.loads(ours)])  # discarded object

    def test_plain_output(self):
        for snap, args in self.CASES:
            spec = self.primary.image_spec(self.image, snap)
            ours, theirs = self.both(spec, *args, fmt="plain")
            lines = ours.splitlines()
            self.assertEqual(["Offset", "Length", "Type"], lines[0].split())
            self.assertEqual([line.split() for line in theirs.splitlines()],
                             [line.split() for line in lines])

    def test_plain_output_of_empty_diff(self):
        out = self.cli_ok("-c", self.primary.conf, "diff", "--from-snap", "s2",
                          self.primary.image_spec(self.image, "s2"))
        self.assertEqual([["Offset", "Length", "Type"]], [line.split() for line in
                                                          out.splitlines()])

    def test_xml_is_well_formed(self):
        spec = self.primary.image_spec(self.image, "s2")
        ours, theirs = self.both(spec, "--from-snap", "s1", fmt="xml")
        ours_tree, theirs_tree = ET.fromstring(ours), ET.fromstring(theirs)
        self.assertEqual([[(c.tag, c.text) for c in e] for e in theirs_tree],
                         [[(c.tag, c.text) for c in e] for e in ours_tree])
