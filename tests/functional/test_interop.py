"""Diff files exchanged with the real ``rbd`` command, both ways."""

import json
import os

import rbd

from cinder_rbd_incremental import diffstream
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional import base
from tests.functional.base import KiB, MiB

BANNER_V1 = b"rbd diff v1\n"
BANNER_V2 = b"rbd diff v2\n"


class InteropTest(base.FunctionalTestCase):

    def history(self):
        """A read-only source with snapshots s1, s2, s3, shared by the class's tests."""
        return self.shared("history", lambda: self.make_history(self.primary, steps=3,
                                                                for_class=True))

    def path(self, name):
        return os.path.join(self.tmp, name)

    # -- exporting -------------------------------------------------------

    def rbd_export(self, image, snap, from_snap=None):
        """``rbd export-diff`` of primary/image@snap; return the file's path."""
        path = self.path("rbd-%s-%s.diff" % (from_snap, snap))
        args = ["-c", self.primary.conf, "export-diff", "--no-progress"]
        if from_snap:
            args += ["--from-snap", from_snap]
        self.rbd_ok(*args, self.primary.image_spec(image, snap), path)
        return path

    def our_export(self, image, snap, from_snap=None, version=1, cl=None):
        cl = cl or self.primary
        path = self.path("ours-v%d-%s-%s-%s.diff" % (version, image, from_snap, snap))
        args = ["-c", cl.conf, "--id", cl.user, "export-diff", "--export-format", str(version)]
        if from_snap:
            args += ["--from-snap", from_snap]
        self.cli_ok(*args, cl.image_spec(image, snap), path)
        return path

    # -- importing -------------------------------------------------------

    def our_import(self, path, image, *extra):
        self.cli_ok("-c", self.secondary.conf, "--id", self.secondary.user, "import-diff",
                    *extra, path, self.secondary.image_spec(image))

    def rbd_import(self, path, image):
        self.rbd_ok("-c", self.secondary.conf, "--id", self.secondary.user, "import-diff",
                    "--no-progress", path, self.secondary.image_spec(image))

    def assertSameAsSource(self, src, dest, snaps):
        self.assertEqual(list(snaps), self.snapshots(self.secondary, dest))
        for snap in snaps:
            self.assertSameContent(self.primary, src, snap, self.secondary, dest, snap)

    # -- tests -------------------------------------------------------------

    def test_rbd_export_diff_imports_with_ours(self):
        src = self.history()
        full, inc = self.rbd_export(src, "s1"), self.rbd_export(src, "s2", "s1")
        dest = self.make_image(self.secondary, 4 * MiB)  # import-diff resizes it
        self.our_import(full, dest)
        self.our_import(inc, dest)
        self.assertSameAsSource(src, dest, ["s1", "s2"])
        self.assertEqual(self.HISTORY_SIZE, self.size_of(self.secondary, dest))
        # rbd's v1 diffs carry no lineage: no identity is recorded, nothing pending
        meta = self.metadata(self.secondary, dest)
        self.assertNotIn(rbd_target.PENDING_KEY, meta)
        self.assertNotIn(rbd_target.snap_meta_key("s1"), meta)

    def test_our_v1_export_imports_with_rbd(self):
        src = self.history()
        paths = [self.our_export(src, "s1"), self.our_export(src, "s2", "s1"),
                 self.our_export(src, "s3", "s2")]
        for path in paths:
            with open(path, "rb") as f:
                self.assertEqual(BANNER_V1, f.read(len(BANNER_V1)))
        dest = self.make_image(self.secondary, 4 * MiB)
        for path in paths:
            self.rbd_import(path, dest)
        self.assertSameAsSource(src, dest, ["s1", "s2", "s3"])

    def test_our_v2_export_imports_with_ours(self):
        src = self.history()
        full = self.our_export(src, "s1", version=2)
        inc = self.our_export(src, "s2", "s1", version=2)
        with open(inc, "rb") as f:
            reader = diffstream.DiffReader(f)
            self.assertEqual(2, reader.header.version)
            lineage = reader.header.lineage
        with rbd.Image(self.primary.ioctx, src, read_only=True) as img:
            fsid = self.primary.client.get_fsid()
            self.assertEqual({"fsid": fsid, "image_id": img.id(),
                              "snap_id": img.snap_get_id("s1")}, lineage["from"])
            self.assertEqual({"fsid": fsid, "image_id": img.id(),
                              "snap_id": img.snap_get_id("s2")}, lineage["to"])

        ours = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.our_import(full, ours)
        self.our_import(inc, ours)
        self.assertSameAsSource(src, ours, ["s1", "s2"])
        meta = self.metadata(self.secondary, ours)
        self.assertEqual(lineage["to"], json.loads(meta[rbd_target.snap_meta_key("s2")]))


    def test_export_to_stdout_and_import_from_stdin(self):
        src = self.history()
        rc, raw, err = self.run_cli("-c", self.primary.conf, "export-diff", "--from-snap", "s1",
                                    self.primary.image_spec(src, "s2"), "-", binary=True)
        self.assertEqual(0, rc, err)
        with open(self.our_export(src, "s2", "s1"), "rb") as f:
            self.assertEqual(f.read(), raw)  # v1 has no lineage: same bytes as the file

        dest = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.our_import(self.our_export(src, "s1"), dest)
        rc, _out, err = self.run_cli("-c", self.secondary.conf, "import-diff", "-",
                                     self.secondary.image_spec(dest), input=raw)
        self.assertEqual(0, rc, err)
        self.assertSameAsSource(src, dest, ["s1", "s2"])

    def test_merge_diff_equals_applying_both(self):
        src = self.make_history(self.primary, steps=3)
        # shrink then grow between s3 and s4, so the merge must clip the first diff
        self.resize(self.primary, src, 36 * MiB)
        self.resize(self.primary, src, 48 * MiB)
        self.write(self.primary, src, 44 * MiB, 8 * KiB)
        self.snap(self.primary, src, "s4")
        full = self.our_export(src, "s1")
        inc2, inc3, inc4 = (self.our_export(src, "s2", "s1"), self.our_export(src, "s3", "s2"),
                            self.our_export(src, "s4", "s3"))

        merged_full = self.path("merged-full.diff")
        self.cli_ok("merge-diff", full, inc2, merged_full)
        merged_inc = self.path("merged-inc.diff")
        self.cli_ok("merge-diff", inc3, inc4, merged_inc)
        summary = json.loads(self.cli_ok("inspect", "--format", "json", merged_inc))
        self.assertEqual(("s2", "s4", 48 * MiB),
                         (summary["from_snap"], summary["to_snap"], summary["size"]))

        # one image gets every diff, the other the two merged ones
        both = self.make_image(self.secondary, self.HISTORY_SIZE)
        for path in (full, inc2, inc3, inc4):
            self.our_import(path, both)
        merged = self.make_image(self.secondary, self.HISTORY_SIZE)
        self.our_import(merged_full, merged)
        self.our_import(merged_inc, merged)
        self.assertEqual(["s2", "s4"], self.snapshots(self.secondary, merged))
        for snap in ("s2", "s4"):
            self.assertSameContent(self.secondary, both, snap, self.secondary, merged, snap)
            self.assertSameContent(self.primary, src, snap, self.secondary, merged, snap)

    def test_merge_of_rbd_diffs_imports_with_rbd(self):
        src = self.history()
        inc2, inc3 = self.rbd_export(src, "s2", "s1"), self.rbd_export(src, "s3", "s2")
        merged = self.path("merged.diff")
        self.cli_ok("merge-diff", inc2, inc3, merged)
        dest = self.make_image(self.secondary, 4 * MiB)
        self.rbd_import(self.rbd_export(src, "s1"), dest)
        self.rbd_import(merged, dest)
        self.assertSameAsSource(src, dest, ["s1", "s3"])

    def test_inspect_json_of_rbd_diff(self):
        src = self.history()
        full, inc = self.rbd_export(src, "s1"), self.rbd_export(src, "s2", "s1")
        summary = json.loads(self.cli_ok("inspect", "--format", "json", full))
        self.assertEqual(1, summary["version"])
        self.assertIsNone(summary["from_snap"])
        self.assertEqual("s1", summary["to_snap"])
        self.assertEqual(self.HISTORY_SIZE, summary["size"])
        self.assertTrue(summary["end_seen"])
        self.assertIsNone(summary["lineage"])

        summary = json.loads(self.cli_ok("inspect", "--format", "json", inc))
        self.assertEqual(("s1", "s2", self.HISTORY_SIZE),
                         (summary["from_snap"], summary["to_snap"], summary["size"]))
        self.assertGreater(summary["zero_records"], 0)  # the discarded object
        # the record sizes account for the whole file
        records = summary["data_records"] + summary["zero_records"]
        header = len(BANNER_V1) + 2 * (1 + 4 + 2) + (1 + 8) + 1  # f, t, s, e
        self.assertEqual(os.path.getsize(inc),
                         header + records * 17 + summary["data_bytes"])

        plain = self.cli_ok("inspect", inc)
        self.assertRegex(plain, r"(?m)^from_snap:\s+s1$")
        self.assertRegex(plain, r"(?m)^to_snap:\s+s2$")

    def test_small_writes_make_a_small_diff(self):
        """4 KiB writes into new objects: rbd sends whole objects, we send the 4 KiB."""
        src = self.make_image(self.primary, 64 * MiB)
        self.write(self.primary, src, 0, 32 * MiB)  # half filled
        self.snap(self.primary, src, "s1")
        written = 0
        for index in range(8, 16):  # the last 4 KiB of each object of the other half
            self.write(self.primary, src, (index + 1) * 4 * MiB - 4 * KiB, 4 * KiB)
            written += 4 * KiB
        self.snap(self.primary, src, "s2")

        ours = os.path.getsize(self.our_export(src, "s2", "s1"))
        rbds = os.path.getsize(self.rbd_export(src, "s2", "s1"))
        overhead = 4 * KiB
        self.assertLessEqual(ours, 1.5 * written + overhead)
        self.assertGreater(rbds, ours)
        self.assertGreater(rbds, 8 * written)  # rbd sends (nearly) whole 4 MiB objects

        # and it still produces the same image
        dest = self.make_image(self.secondary, 64 * MiB)
        self.our_import(self.our_export(src, "s1"), dest)
        self.our_import(self.our_export(src, "s2", "s1"), dest)
        self.assertSameAsSource(src, dest, ["s1", "s2"])

    def test_merge_of_shrink_then_grow(self):
        """First diff shrinks, second grows back: the gap must read as zeros, as with rbd."""
        src = self.make_image(self.primary, 48 * MiB)
        self.write(self.primary, src, 0, 1 * MiB)
        self.write(self.primary, src, 40 * MiB, 1 * MiB)
        self.snap(self.primary, src, "s1")
        self.resize(self.primary, src, 32 * MiB)
        self.snap(self.primary, src, "s2")
        self.resize(self.primary, src, 48 * MiB)
        self.write(self.primary, src, 2 * MiB, 4 * KiB)
        self.snap(self.primary, src, "s3")
        full = self.our_export(src, "s1")
        inc2, inc3 = self.our_export(src, "s2", "s1"), self.our_export(src, "s3", "s2")

        ours = self.path("ours-merged.diff")
        self.cli_ok("merge-diff", inc2, inc3, ours)
        theirs = self.path("rbd-merged.diff")
        self.rbd_ok("merge-diff", "--no-progress", inc2, inc3, theirs)

        expected = self.read_image(self.primary, src, "s3")
        for merged in (theirs, ours):
            dest = self.make_image(self.secondary, 4 * MiB)
            self.our_import(full, dest)
            self.our_import(merged, dest)
            self.assertEqual(["s1", "s3"], self.snapshots(self.secondary, dest))
            actual = self.read_image(self.secondary, dest, "s3")
            self.assertEqual(len(expected), len(actual))
            differ = [off for off in range(0, len(expected), MiB)
                      if expected[off:off + MiB] != actual[off:off + MiB]]
            self.assertEqual([], differ, "%s: MiBs that differ from the source"
                             % os.path.basename(merged))

    def test_odd_sized_image_both_ways(self):
        size = 10 * MiB + 1234  # not a multiple of 512 or 4096
        src = self.make_image(self.primary, size)
        self.write(self.primary, src, size - 5000, 5000)
        self.write(self.primary, src, 4 * MiB - 100, 200)
        self.snap(self.primary, src, "s1")
        self.write(self.primary, src, size - 10, data=bytes(10))
        self.write(self.primary, src, 1 * MiB, 3)
        self.snap(self.primary, src, "s2")

        ours = self.make_image(self.secondary, 1 * MiB)
        self.our_import(self.rbd_export(src, "s1"), ours)
        self.our_import(self.rbd_export(src, "s2", "s1"), ours)
        self.assertSameAsSource(src, ours, ["s1", "s2"])

        theirs = self.make_image(self.secondary, 1 * MiB)
        self.rbd_import(self.our_export(src, "s1"), theirs)
        self.rbd_import(self.our_export(src, "s2", "s1"), theirs)
        self.assertSameAsSource(src, theirs, ["s1", "s2"])
