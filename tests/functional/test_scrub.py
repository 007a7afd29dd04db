"""``scrub`` at the backup site: checksums recorded by ``sync``, damage made
with the real ``rados`` tool, found without the source cluster."""

import json
import os
import subprocess

from tests.functional import base
from tests.functional.base import KiB, MiB

ROT_OFFSET = 30 * MiB + 8 * KiB  # change set 3 writes [30 MiB, 31 MiB) into a new object


class ScrubTest(base.FunctionalTestCase):

    def synced_history(self, *extra, steps=3):
        """A source with s1..s<steps> and its copy on the secondary (least privilege)."""
        src = self.make_history(self.primary, steps=steps)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        previous = None
        for snap in ["s%d" % step for step in range(1, steps + 1)]:
            args = ["sync", *self.sync_args(), *extra]
            if previous:
                args += ["--from-snap", previous]
            self.cli_ok(*args, self.primary.image_spec(src, snap),
                        self.secondary.image_spec(dest))
            previous = snap
        return src, dest

    def scrub(self, target, *extra):
        """Scrub as the backup cluster's least-privilege user; no source given."""
        return self.run_cli("scrub", "-c", self.secondary.conf, "--id", self.secondary.user,
                            *extra, "%s/%s" % (self.secondary.pool, target))

    def rot(self, image, offset, length=4 * KiB):
        """Overwrite part of the object holding ``offset`` with the rados tool:
        a write without snapshot context changes what the newest snapshot holds."""
        with self.open_image(self.secondary, image, read_only=True) as img:
            prefix = img.stat()["block_name_prefix"]
            object_size = 1 << img.stat()["order"]
        obj = "%s.%016x" % (prefix, offset // object_size)
        junk = os.path.join(self.tmp, "junk")
        with open(junk, "wb") as out:
            out.write(b"\xa5" * length)
        subprocess.run(["rados", "-c", self.secondary.conf, "-p", self.secondary.pool, "put",
                        obj, junk, "--offset", str(offset % object_size)], check=True,
                       timeout=base.COMMAND_TIMEOUT)

    def test_scrub_names_the_rotten_restore_point_and_passes_the_others(self):
        _src, dest = self.synced_history()
        rc, out, err = self.scrub(dest)
        self.assertEqual(0, rc, err)
        self.assertEqual(3, out.count("ok "), out)

        self.rot(dest, ROT_OFFSET)
        rc, out, err = self.scrub(dest)
        self.assertEqual(5, rc, out + err)
        self.assertOneLineError(err)
        lines = dict(line.split(None, 1) for line in out.splitlines())
        self.assertEqual(3, len(out.splitlines()), out)
        damaged = [line for line in out.splitlines() if line.startswith("damaged")]
        self.assertEqual(1, len(damaged), out)
        block = ROT_OFFSET - ROT_OFFSET % (64 * KiB)
        self.assertIn("%s/%s@s3 at offset %d " % (self.secondary.pool, dest, block), damaged[0])
        self.assertEqual(2, out.count("ok "), lines)
        # the driver is told: a mark next to the chain
        meta = self.metadata(self.secondary, dest)
        self.assertEqual(block, json.loads(meta["rbd_incremental.damaged.s3"])["offset"])
        self.assertNotIn("rbd_incremental.damaged.s2", meta)

        rc, out, err = self.scrub(dest + "@s2", "--format", "json")
        self.assertEqual(0, rc, err)
        [result] = json.loads(out)
        self.assertEqual(("s2", "ok", []), (result["snapshot"], result["status"],
                                            result["offsets"]))
        rc, out, err = self.scrub(dest + "@s3", "--format", "json", "--sample", "100")
        self.assertEqual(5, rc, err)
        self.assertEqual([block], json.loads(out)[0]["offsets"])

        # a sample reads a part of the restore point
        rc, out, err = self.scrub(dest + "@s1", "--format", "json", "--sample", "10")
        self.assertEqual(0, rc, err)
        [result] = json.loads(out)
        self.assertLess(result["checked_bytes"], self.HISTORY_SIZE)

    def test_image_without_checksums_is_reported_not_damaged(self):
        _src, dest = self.synced_history("--no-checksums", steps=2)
        rc, out, err = self.scrub(dest)
        self.assertEqual(1, rc, out + err)
        self.assertOneLineError(err)
        self.assertIn("no checksums", err)
        self.assertIn("unchecked  %s/%s@s1: no checksums" % (self.secondary.pool, dest), out)
        self.assertNotIn("rbd_incremental.damaged.s1", self.metadata(self.secondary, dest))

    def test_bad_arguments(self):
        for args in (["--sample", "0"], ["--sample", "101"], ["--limit-rate", "x"]):
            rc, _out, err = self.run_cli("scrub", *args, "backups/x")
            self.assertUsageOrOneLineError(rc, err)
        rc, _out, err = self.scrub(base.unique_name())
        self.assertUsageOrOneLineError(rc, err)
        self.assertIn("not found", err)
        rc, _out, err = self.run_cli("sync", "--limit-rate", "fast", "a/b@c", "d/e")
        self.assertEqual(2, rc, err)
        self.assertIn("not a rate", err)

    def test_limited_sync_copies_the_same(self):
        src = self.make_history(self.primary, steps=1)
        dest = self.cleanup_image(self.secondary, base.unique_name())
        self.cli_ok("sync", *self.sync_args(), "--limit-rate", "200M",
                    self.primary.image_spec(src, "s1"), self.secondary.image_spec(dest))
        self.assertSameContent(self.primary, src, "s1", self.secondary, dest, "s1")
