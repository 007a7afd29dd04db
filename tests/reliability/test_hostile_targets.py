"""Hostile input, continued: tampered targets, tampered records, CLI edges.

* A backup record in Cinder's real import order: the driver's
  ``import_record`` sees the genuine lineage under a placeholder volume id,
  then the manager applies the exported record's outer fields, edited to
  name another volume's restore point. Restore, export and delete refuse it.
* Lineage read back from the backup cluster, planted by whoever can write
  there: it must not lead a delete to another volume's snapshot, an
  incremental into another volume's chain, or a restore anywhere; a restore
  point larger than its destination is refused.
* The file target under a hostile share: planted symbolic links are never
  followed, modes are 0700/0600, a failed write leaves no temporary file.
* ``rbd-incremental``: hostile ``L`` records (peak memory measured), merges
  without a size, FIFO output, snapshot names from the diff.
"""

import io
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import threading

import rbd
from cinder import exception

from cinder_rbd_incremental import diffstream, driver, naming
from cinder_rbd_incremental.targets import file as file_target
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.reliability import base, sandbox

CLI = os.path.join(sandbox.REPO, ".venv", "bin", "rbd-incremental")
RUSAGE_EXEC = os.path.join(sandbox.REPO, "bench", "rusage_exec.py")
MiB = sandbox.MiB
# a guard against the unbounded growth this tests (1.79 GB before the cap),
# far above the ~40 MB the command needs
PEAK_RSS_LIMIT = 256 * MiB


def refused(test, call, what, types=(exception.InvalidBackup,)):
    """Assert ``call()`` is refused with one of ``types``; count it."""
    base.count("hostile_records_tried")
    with test.assertRaises(types, msg=what):
        call()
    base.count("hostile_records_refused")


class HostileRecordsTestCase(base.ReliabilityTestCase):
    """Tampered records and targets against real backups (rbd target)."""

    def setUp(self):
        super().setUp()
        self.drv = self.env.driver()

    def backed_up_volume(self, size_gb=1):
        volume = self.new_volume(size_gb)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
            sandbox.Writer(volume.id).scatter(img, 4 * MiB, 4)
        backup = self.env.run_backup(self.drv, self.env.create_backup(volume))
        self.addCleanup(self.env.delete_backup_quietly, self.drv, backup)
        return volume, backup

    def set_lineage(self, backup, record):
        _pool, image, _snap = self.env.location(backup)
        with self.env.chain_image(image) as img:
            img.metadata_set(rbd_target.backup_meta_key(backup.id), json.dumps(record))

    def stored_lineage(self, backup):
        _pool, image, _snap = self.env.location(backup)
        with self.env.chain_image(image) as img:
            return json.loads(img.metadata_get(rbd_target.backup_meta_key(backup.id)))

    def test_tampered_import_in_cinders_order(self):
        volume_a, backup_a = self.backed_up_volume()
        _volume_b, backup_b = self.backed_up_volume()
        genuine = {"volume_id": backup_b.volume_id, "service_metadata": backup_b.service_metadata}
        self.addCleanup(self.env.finish_backup, backup_b, genuine)
        record = self.drv.export_record(backup_b)
        target = self.new_volume()
        before = {name: sandbox.state(name) for name in (sandbox.PRIMARY, sandbox.SECONDARY)}
        # the manager: a row with the record's id and a placeholder volume...
        row = self.env.backup(backup_b.id)
        row.volume_id, row.service_metadata = driver.IMPORT_PLACEHOLDER_VOLUME_ID, None
        with self.env.db_lock:
            row.save()
        self.drv.import_record(row, record)  # B's own lineage: genuine
        # ...then the record's outer fields, edited to name A's restore point
        self.env.finish_backup(row, {"volume_id": volume_a.id,
                                     "service_metadata": backup_a.service_metadata})
        row = self.env.backup(backup_b.id)
        refused(self, lambda: self.env.run_restore(self.drv, row, target, True), "restore")
        refused(self, lambda: self.env.run_restore(self.drv, row, volume_a, False),
                "restore onto A")
        refused(self, lambda: self.drv.export_record(row), "export")
        refused(self, lambda: self.drv.delete_backup(row), "delete")
        self.assertEqual(before, {name: sandbox.state(name)
                                  for name in (sandbox.PRIMARY, sandbox.SECONDARY)})

    def test_planted_lineage_leads_nowhere(self):
        volume, backup = self.backed_up_volume()
        victim, victim_backup = self.backed_up_volume()
        victim_source = self.stored_lineage(victim_backup)["source"]
        victim_chain = self.env.location(victim_backup)[1]
        genuine = self.stored_lineage(backup)
        plants = {
            "source: the victim's snapshot": dict(genuine, source=victim_source),
            "source: the victim's as a Cinder snapshot": dict(genuine, source=dict(
                victim_source, cinder_snapshot=victim_source["snapshot"])),
            "the victim's own lineage": self.stored_lineage(victim_backup),
            "another backup id": dict(genuine, backup_id=victim_backup.id),
            "target: the victim's chain": dict(genuine, target=dict(
                genuine["target"], image=victim_chain)),
            "not a lineage": {"schema": "x"},
        }
        target = self.new_volume()
        for label, record in plants.items():
            self.set_lineage(backup, record)
            refused(self, lambda: self.env.run_restore(self.drv, backup, target, True),
                    "restore, " + label)
            refused(self, lambda: self.env.run_restore(self.drv, backup, volume, False),
                    "in-place restore, " + label)
            refused(self, lambda: self.drv.export_record(backup), "export, " + label)
        # a delete with the victim's source planted removes only its own restore point
        self.set_lineage(backup, plants["source: the victim's snapshot"])
        victim_state = sandbox.snapshots(sandbox.PRIMARY, victim.name)
        base.count("hostile_records_tried")
        self.drv.delete_backup(backup)
        self.assertEqual(victim_state, sandbox.snapshots(sandbox.PRIMARY, victim.name))
        self.assertIn(victim_source["snapshot"], victim_state)
        base.count("hostile_records_refused")

    def test_planted_parent_lineage_starts_a_new_chain(self):
        volume, parent = self.backed_up_volume()
        victim, victim_backup = self.backed_up_volume()
        victim_chain = self.env.location(victim_backup)[1]
        record = self.stored_lineage(parent)
        victim_record = self.stored_lineage(victim_backup)
        self.set_lineage(parent, dict(record, target=victim_record["target"]))
        before = sandbox.state(sandbox.SECONDARY)[victim_chain]
        child = self.env.run_backup(self.drv, self.env.create_backup(volume, parent))
        self.addCleanup(self.env.delete_backup_quietly, self.drv, child)
        base.count("hostile_records_tried")
        self.assertEqual(before, sandbox.state(sandbox.SECONDARY)[victim_chain])
        self.assertEqual(naming.chain_image(volume.id, child.id), self.env.location(child)[1],
                         "not a new chain of its own")
        self.assertIn("stored lineage is not valid", self.stored_lineage(child)["full_reason"])
        base.count("hostile_records_refused")
        self.set_lineage(parent, record)

    def test_planted_volume_metadata_sets_no_encryption_key(self):
        volume, backup = self.backed_up_volume()
        _pool, image, _snap = self.env.location(backup)
        planted = json.dumps({"version": 2, "volume-base-metadata": {
            "encryption_key_id": "5c6f6d65-6f6e-6573-2d6b-657900000000",
            "display_name": "planted"}})
        for text in (planted, "{not json"):
            with self.env.chain_image(image) as img:
                img.metadata_set(rbd_target.volume_meta_key(backup.id), text)
            target = self.new_volume()
            base.count("hostile_records_tried")
            self.env.run_restore(self.drv, backup, target, True)
            self.assertIsNone(self.env.volume(target.id).encryption_key_id)
            base.count("hostile_records_refused")
        self.assertEqual(sandbox.digest_of(sandbox.PRIMARY, volume.name),
                         sandbox.digest_of(sandbox.PRIMARY, target.name))

    def test_restore_point_larger_than_the_destination(self):
        _volume, backup = self.backed_up_volume(size_gb=2)
        small = self.new_volume(1)
        refused(self, lambda: self.env.run_restore(self.drv, backup, small, True),
                "a 2 GiB restore point into a 1 GiB volume")
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, small.name) as img:
            self.assertEqual(1 << 30, img.size(), "the destination was resized")


class FileTargetTestCase(base.ReliabilityTestCase):
    """The file target on a share someone else can write to."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="hostile-share-", dir=self.tmp)
        self.victim = os.path.join(self.tmp, "victim-%s" % os.path.basename(self.directory))
        with open(self.victim, "wb") as f:
            f.write(b"precious")
        self.options = self.env.overridden(target="file", file_target_dir=self.directory)
        self.options.__enter__()
        self.addCleanup(self.options.__exit__, None, None, None)
        self.drv = self.env.driver()

    def assertVictimIntact(self):
        with open(self.victim, "rb") as f:
            self.assertEqual(b"precious", f.read(), "a planted symbolic link was followed")

    def plant(self, path):
        os.symlink(self.victim, path)
        base.count("hostile_links_planted")

    def backup(self, volume, parent=None, plant=()):
        backup = self.env.create_backup(volume, parent)
        for name in plant:
            directory = os.path.join(self.directory, self.env.location(parent)[1])
            self.plant(os.path.join(directory, name % backup.id))
        self.addCleanup(self.env.delete_backup_quietly, self.drv, backup)
        return self.env.run_backup(self.drv, backup)

    def test_planted_links_modes_and_leftovers(self):
        self.plant(os.path.join(self.directory, ".probe"))
        self.drv.check_for_setup_error()
        volume = self.new_volume()
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
            sandbox.Writer(volume.id).scatter(img, 2 * MiB, 2)
        full = self.backup(volume)
        # the fixed temporary names of earlier versions, planted in the chain
        inc = self.backup(volume, full, plant=(".backup.%s.json.tmp", ".backup.%s.volmeta.tmp"))
        self.assertVictimIntact()
        chain = os.path.join(self.directory, self.env.location(full)[1])
        self.assertEqual(0o700, stat.S_IMODE(os.lstat(chain).st_mode))
        for name in os.listdir(chain):
            mode = os.lstat(os.path.join(chain, name)).st_mode
            if not stat.S_ISLNK(mode):
                self.assertEqual(0o600, stat.S_IMODE(mode), name)

        # a symbolic link where the newest diff was, then where the chain was
        newest = sorted(n for n in os.listdir(chain) if n.endswith(".diff"))[-1]
        diff = os.path.join(chain, newest)
        os.rename(diff, diff + ".real")
        os.symlink(diff + ".real", diff)
        target = self.new_volume()
        refused(self, lambda: self.env.run_restore(self.drv, inc, target, True),
                "restore through a symlinked diff", (exception.CinderException,))
        os.replace(diff + ".real", diff)
        moved = chain + ".real"
        os.rename(chain, moved)
        os.symlink(moved, chain)
        before = sorted(os.listdir(moved))
        for what, call in (("restore", lambda: self.env.run_restore(self.drv, inc, target, True)),
                           ("delete", lambda: self.drv.delete_backup(inc))):
            refused(self, call, what + " through a symlinked chain",
                    (exception.CinderException,))
        self.assertEqual(before, sorted(os.listdir(moved)))
        os.unlink(chain)
        os.rename(moved, chain)
        for backup in (inc, full):
            self.drv.delete_backup(backup)
        self.assertFalse(os.path.exists(chain), "chain left (with the planted links?)")
        self.assertVictimIntact()

    def test_a_failed_write_leaves_no_temporary_file(self):
        occupied = os.path.join(self.directory, "occupied")
        os.mkdir(occupied)
        with open(os.path.join(occupied, "x"), "wb"):
            pass
        with self.assertRaises(OSError):
            file_target._write_atomically(occupied, b"data")  # cannot replace a directory
        self.assertEqual(["occupied"], os.listdir(self.directory))


class CommandLineTestCase(base.ReliabilityTestCase):
    """``rbd-incremental`` on hostile files and outputs."""

    def run_cli(self, *args):
        proc = subprocess.Popen([CLI, "--no-progress", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err.decode(errors="replace")

    def peak_rss(self, *args):
        """``(rc, stderr, peak RSS in bytes)`` of one run of the command,
        started through the benchmarks' small launcher (a child of this big
        process would start from its memory high-water mark)."""
        usage_file = os.path.join(self.tmp, "rusage.json")
        proc = subprocess.run([sys.executable, RUSAGE_EXEC, usage_file, "--", CLI,
                               "--no-progress", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=120)
        with open(usage_file) as f:
            peak = json.load(f)["maxrss_kib"] * 1024
        return proc.returncode, proc.stderr.decode(errors="replace"), peak

    def assertOneLineError(self, rc, err):
        self.assertEqual(1, rc, err)
        self.assertTrue(err.startswith("rbd-incremental: ") and len(err.splitlines()) == 1,
                        err[-500:])

    def write(self, name, raw):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(raw)
        return path

    def test_hostile_lineage_records_stay_small(self):
        cap = diffstream.MAX_LINEAGE_BYTES
        head = diffstream.BANNER_V2 + b"s" + struct.pack("<QQ", 8, 1 << 30)
        cases = {  # name: (L payload, declared length)
            "64 MiB of '[' (1.79 GB before the cap)": (b"[" * (64 * MiB), 64 * MiB),
            "declared 2^63, nothing behind": (b"", 1 << 63),
            "just over the cap": (b" " * (cap + 1), cap + 1),
            "nested to the cap": (b"[" * cap, cap),
            "an object at the cap": (None, cap),
        }
        peak = 0
        for name, (payload, declared) in cases.items():
            if payload is None:
                payload = json.dumps({"k": "v" * (cap - 10)}).encode()
                declared = len(payload)
            path = self.write("lineage.diff", head + b"L" + struct.pack("<Q", declared)
                              + payload + b"e")
            rc, err, rss = self.peak_rss("inspect", path)
            base.count("hostile_diff_inputs")
            peak = max(peak, rss)
            if name == "an object at the cap":
                self.assertEqual(0, rc, err)
            else:
                self.assertOneLineError(rc, err)
            self.assertLess(rss, PEAK_RSS_LIMIT, name)
            os.unlink(path)
        base.set_figure("hostile_inspect_peak_rss_mib", round(peak / MiB, 1))

    def diff(self, name, from_snap, to_snap, size, records=()):
        out = io.BytesIO()
        writer = diffstream.DiffWriter(out, version=1)
        writer.write_header(from_snap, to_snap, size)
        for offset, data in records:
            writer.write_data(offset, data)
        writer.close()
        return self.write(name, out.getvalue())

    def test_merge_without_size_is_one_line(self):
        sizeless = diffstream.BANNER_V1 + b"t" + struct.pack("<I", 1) + b"a" + b"e"
        first = self.write("first.diff", sizeless)
        second = self.write("second.diff", diffstream.BANNER_V1 + b"f" + struct.pack("<I", 1)
                            + b"a" + b"e")
        out = os.path.join(self.tmp, "merged.diff")
        rc, _out, err = self.run_cli("merge-diff", first, second, out)
        base.count("hostile_diff_inputs")
        self.assertOneLineError(rc, err)
        self.assertIn("size", err)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([], [n for n in os.listdir(self.tmp) if n.startswith(".merged")])

    def test_fifo_output_is_written_in_place(self):
        first = self.diff("a.diff", None, "s1", 1 << 20, [(0, b"x" * 4096)])
        second = self.diff("b.diff", "s1", "s2", 1 << 20, [(8192, b"y" * 4096)])
        regular = os.path.join(self.tmp, "merged-regular.diff")
        self.assertEqual(0, self.run_cli("merge-diff", first, second, regular)[0])
        fifo = os.path.join(self.tmp, "merged.fifo")
        os.mkfifo(fifo)
        self.addCleanup(os.unlink, fifo)
        received = []
        reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()),
                                  daemon=True)
        reader.start()
        rc, _out, err = self.run_cli("merge-diff", first, second, fifo)
        reader.join(60)
        self.assertEqual(0, rc, err)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced")
        with open(regular, "rb") as f:
            self.assertEqual([f.read()], received)

    def test_import_checks_the_diffs_snapshot_names(self):
        image = "hostile-names-%d" % os.getpid()
        sandbox.create_image(sandbox.SECONDARY, image, 4 * MiB)
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, image)
        for snap in ("a/b", "x@y", "line\nbreak", "..", "\x00"):
            path = self.diff("names.diff", None, snap, 4 * MiB, [(0, b"z" * 512)])
            rc, _out, err = self.run_cli(
                "-c", sandbox.conf(sandbox.SECONDARY), "--id", "cinder-backup", "import-diff",
                path, "backups/%s" % image)
            base.count("hostile_diff_inputs")
            self.assertOneLineError(rc, err)
            self.assertEqual([], sandbox.snapshots(sandbox.SECONDARY, image), repr(snap))
        with sandbox.ioctx(sandbox.SECONDARY) as ctx, \
                rbd.Image(ctx, image, read_only=True) as img:
            self.assertFalse(rbd_target.has_extents(img), "the refused diffs wrote data")
