"""Hostile input: fuzzed diff streams, forged backup metadata and records.

* ``DiffReader`` gets ``FUZZ_INPUTS`` inputs in a bounded, seeded run:
  mutations of valid v1/v2 streams (bit flips, interesting integers written
  over length and offset fields, inserted tags, deleted, duplicated and
  spliced ranges, truncations) and random bytes; then ``LINEAGE_INPUTS``
  hostile ``L`` (lineage) records around the reader's cap. Only ``DiffFormatError`` may
  come out, every input within ``PER_INPUT_SECONDS`` (a watchdog interrupts a
  hang). Every input is also applied with ``engine.apply_records`` to a
  recording sink: an accepted stream is written exactly inside its declared
  extents and size, with the declared bytes; a rejected one is aborted,
  never committed.
* ``service_metadata`` and exported records forged in every way we could
  think of (separators, ``..``, NUL, oversize names, other pools, other
  volumes' chains, wrong types, deep nesting) are refused with
  ``exception.InvalidBackup`` and nothing changes on either cluster.
"""

import contextlib
import io
import json
import os
import random
import signal
import struct
import sys
import time
import unittest
import uuid

import rbd
from cinder import exception

from cinder_rbd_incremental import diffstream, engine
from tests.reliability import base, sandbox

SEED = int(os.environ.get("RELIABILITY_SEED") or random.SystemRandom().randrange(1 << 32))
FUZZ_INPUTS = int(os.environ.get("RELIABILITY_FUZZ_INPUTS") or 100_000)
LINEAGE_INPUTS = 1000
FUZZ_BUDGET_SECONDS = 150     # the whole campaign (it takes ~30 s on two cores)
PER_INPUT_SECONDS = 2.0       # the watchdog; the slowest input is reported
GRANULARITY = 512
INTERESTING = [0, 1, 2, 7, 8, 15, 16, 511, 512, 4095, 4096, 4097, 65535, 65536,
               1 << 20, (1 << 26) - 1, 1 << 26, (1 << 26) + 1, 1 << 31, (1 << 32) - 1,
               1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
TAGS = b"ftswzeLpxE\x00\xff"



def check_within_budget(raw):
    """``check_input(raw)``, or why not when it ran past ``PER_INPUT_SECONDS``
    (a SIGALRM handler raising Watchdog must be installed)."""
    signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
    try:
        return check_input(raw)
    except Watchdog as exc:
        return str(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

class Watchdog(Exception):
    pass


def _alarm(_signum, _frame):
    raise Watchdog("input took longer than %.1f s" % PER_INPUT_SECONDS)


class RecordingSink(engine.Sink):
    def __init__(self):
        self.ops = []
        self.began = self.committed = self.aborted = 0

    def begin(self, plan):
        self.began += 1

    def write(self, offset, data):
        self.ops.append(("w", offset, bytes(data)))

    def zero(self, offset, length):
        self.ops.append(("z", offset, length))

    def commit(self):
        self.committed += 1

    def abort(self):
        self.aborted += 1


def valid_stream(rng):
    """A small valid v1 or v2 diff (names, lineage and unknown v2 records too)."""
    version = rng.choice((1, 2))
    size = rng.choice((0, 4096, 65536, rng.randrange(1, 1 << 20), 1 << 40))
    out = io.BytesIO()
    writer = diffstream.DiffWriter(out, version=version)
    lineage = ({"from": {"fsid": "x", "snap_id": rng.randrange(9)}, "k": "v" * rng.randrange(9)}
               if version == 2 and rng.random() < 0.5 else None)
    writer.write_header(rng.choice((None, "", "s0", "snap-é")),
                        rng.choice((None, "s1", "x" * rng.randrange(1, 64))), size,
                        lineage=lineage)
    offset = 0
    for _ in range(rng.randrange(0, 8)):
        if size - offset < 2:
            break
        offset += rng.randrange(0, min(size - offset - 1, 8192))
        length = rng.randrange(1, min(size - offset, 3000) + 1)
        if rng.random() < 0.5:
            data = bytearray(rng.randbytes(length))
            if rng.random() < 0.5:  # runs of zeros inside data records
                start = rng.randrange(length)
                data[start:start + rng.randrange(1, 2048)] = bytes(
                    len(data[start:start + 2048]))
            writer.write_data(offset, bytes(data[:length]))
        else:
            writer.write_zero(offset, length)
        offset += length
        if version == 2 and rng.random() < 0.1:  # an unknown record rbd would skip
            payload = rng.randbytes(rng.randrange(0, 16))
            out.write(b"p" + struct.pack("<Q", len(payload)) + payload)
    writer.close()
    return out.getvalue()


def mutate(rng, data, pool):
    data = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:                      # bit flip
            pos = min(pos, len(data) - 1)
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and data:                    # random byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 2:                             # interesting u64 / u32 over a field
            value = rng.choice(INTERESTING)
            packed = (struct.pack("<Q", value) if rng.random() < 0.7
                      else struct.pack("<I", value & 0xFFFFFFFF))
            data[pos:pos + len(packed)] = packed
        elif op == 3:                             # insert a tag (and a length)
            insert = bytes([rng.choice(TAGS)])
            if rng.random() < 0.5:
                insert += struct.pack("<Q", rng.choice(INTERESTING))
            data[pos:pos] = insert
        elif op == 4:                             # delete a range
            del data[pos:pos + rng.randrange(1, 32)]
        elif op == 5:                             # duplicate a range
            end = min(len(data), pos + rng.randrange(1, 64))
            data[pos:pos] = data[pos:end]
        elif op == 6:                             # truncate
            del data[pos:]
        elif op == 7:                             # splice with another stream
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            data = data[:pos] + bytearray(other[cut:])
        else:                                     # random bytes
            data[pos:pos] = rng.randbytes(rng.randrange(1, 24))
    return bytes(data)


def lineage_input(rng):
    """A v2 header whose ``L`` record is hostile: declared far larger than
    the cap, just over or under it, deeply nested, not an object, or cut."""
    cap = diffstream.MAX_LINEAGE_BYTES
    body = rng.choice((b"[" * rng.randrange(1, cap + 2),
                       b'{"a":' * rng.randrange(1, 2000) + b"1" + b"}" * rng.randrange(0, 2000),
                       json.dumps({"k": "v" * rng.randrange(0, cap)}).encode(),
                       b"[" + b"0," * rng.randrange(0, cap // 8) + b"0]",
                       rng.randbytes(rng.randrange(0, 64))))
    declared = rng.choice((len(body), len(body), rng.choice(INTERESTING), cap, cap + 1))
    raw = (diffstream.BANNER_V2 + b"s" + struct.pack("<QQ", 8, 1 << 20)
           + b"L" + struct.pack("<Q", declared) + body)
    return raw + b"e" if rng.random() < 0.8 else raw[:rng.randrange(len(raw) + 1)]


def random_input(rng):
    tail = rng.randbytes(rng.randrange(0, 200))
    prefix = rng.choice((b"", diffstream.BANNER_V1, diffstream.BANNER_V2,
                         diffstream.BANNER_V2 + b"s" + struct.pack("<QQ", 8, 1 << 20)))
    return prefix + tail


def check_input(raw):
    """Parse and apply one input; return a problem description or None."""
    reader = diffstream.DiffReader(io.BytesIO(raw))
    records, error = [], None
    try:
        header = reader.header
        records = list(reader)
    except diffstream.DiffFormatError as exc:
        error, header = exc, None
    except Exception as exc:  # noqa: BLE001 - anything else is a finding
        return "DiffReader raised %s: %s" % (type(exc).__name__, exc)
    sink = RecordingSink()
    reader = diffstream.DiffReader(io.BytesIO(raw))
    try:
        size = reader.header.size
        plan = engine.Plan(to_snap=reader.header.to_snap, size=size)
        engine.apply_records(reader, sink, plan, GRANULARITY)
    except diffstream.DiffFormatError:
        if error is None:
            return "apply_records failed on a stream the reader accepted"
        if sink.committed or (sink.began and not sink.aborted):
            return "a rejected stream was committed or not aborted"
        return None
    except Exception as exc:  # noqa: BLE001
        return "apply_records raised %s: %s" % (type(exc).__name__, exc)
    if error is not None:
        return "apply_records accepted a stream the reader rejects (%s)" % error
    if sink.committed != 1 or sink.aborted:
        return "accepted stream: commit %d, abort %d" % (sink.committed, sink.aborted)
    return check_writes(header, records, sink.ops)


def check_writes(header, records, ops):
    """Every write inside a declared extent and the size, with the declared bytes."""
    size = header.size
    covered = 0
    index = 0
    extents = sorted((r.offset, r.length, getattr(r, "data", None)) for r in records)
    for op in sorted(ops, key=lambda o: o[1]):
        kind, offset = op[0], op[1]
        length = len(op[2]) if kind == "w" else op[2]
        if length <= 0 or offset < 0 or size is None or offset + length > size:
            return "%s of %d bytes at %d outside size %s" % (kind, length, offset, size)
        while index < len(extents) and extents[index][0] + extents[index][1] <= offset:
            index += 1
        if index == len(extents):
            return "%s at %d outside every declared extent" % (kind, offset)
        start, extent_length, data = extents[index]
        if offset < start or offset + length > start + extent_length:
            return "%s %d+%d crosses declared extent %d+%d" % (kind, offset, length, start,
                                                               extent_length)
        declared = None if data is None else data[offset - start:offset - start + length]
        if kind == "w" and op[2] != (declared if declared is not None else bytes(length)):
            return "write at %d does not write the declared bytes" % offset
        if kind == "z" and declared is not None and declared.count(0) != length:
            return "zero at %d over declared non-zero data" % offset
        covered += length
    declared = sum(length for _o, length, _d in extents)
    if covered != declared:
        return "wrote %d of %d declared bytes" % (covered, declared)
    return None


class DiffReaderFuzzTestCase(unittest.TestCase):
    """No clusters needed: a pure, bounded fuzzing campaign."""

    def test_fuzz_diff_reader_and_apply(self):
        rng = random.Random(SEED)
        print("reliability fuzz seed: %d" % SEED, file=sys.stderr)
        pool = [valid_stream(rng) for _ in range(300)]
        problems, slowest, tried, accepted = [], (0.0, None), 0, 0
        previous = signal.signal(signal.SIGALRM, _alarm)
        started = time.monotonic()
        try:
            while tried < FUZZ_INPUTS and time.monotonic() - started < FUZZ_BUDGET_SECONDS:
                choice = rng.random()
                if choice < 0.05:
                    raw = rng.choice(pool)
                elif choice < 0.15:
                    raw = random_input(rng)
                else:
                    raw = mutate(rng, rng.choice(pool), pool)
                begin = time.perf_counter()
                problem = check_within_budget(raw)
                spent = time.perf_counter() - begin
                if spent > slowest[0]:
                    slowest = (spent, raw[:64])
                tried += 1
                if problem is None:
                    accepted += _accepted(raw)
                elif len(problems) < 20:
                    problems.append((problem, raw))
        finally:
            signal.signal(signal.SIGALRM, previous)
        base.count("fuzz_inputs", tried)
        base.count("fuzz_inputs_accepted", accepted)
        base.set_figure("fuzz_slowest_input_ms", round(slowest[0] * 1000, 2))
        base.set_figure("fuzz_seed", SEED)
        print("fuzz: %d inputs (%d accepted) in %.1f s, slowest %.1f ms"
              % (tried, accepted, time.monotonic() - started, slowest[0] * 1000),
              file=sys.stderr)
        self.assertEqual([], ["%s: %r" % (p, raw[:200]) for p, raw in problems],
                         "seed %d" % SEED)
        self.assertGreaterEqual(tried, FUZZ_INPUTS, "the time budget ran out first")
        self.assertLess(slowest[0], PER_INPUT_SECONDS)


    def test_fuzz_lineage_records(self):
        """``LINEAGE_INPUTS`` hostile ``L`` records (apart from the campaign
        above: each costs a few times a mutated stream)."""
        rng = random.Random(SEED ^ 0x4C)
        problems, refused = [], 0
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            for _ in range(LINEAGE_INPUTS):
                raw = lineage_input(rng)
                problem = check_within_budget(raw)
                if problem is not None:
                    problems.append((problem, raw[:200]))
                refused += not _accepted(raw)
        finally:
            signal.signal(signal.SIGALRM, previous)
        base.count("fuzz_lineage_inputs", LINEAGE_INPUTS)
        base.count("fuzz_lineage_inputs_refused", refused)
        self.assertEqual([], problems[:20], "seed %d" % SEED)


def _accepted(raw):
    try:
        reader = diffstream.DiffReader(io.BytesIO(raw))
        list(reader)
        return 1
    except diffstream.DiffFormatError:
        return 0


# -- forged metadata and records against the driver ---------------------------------

def forged_names():
    """Image, snapshot and pool names no lineage may carry."""
    some = str(uuid.uuid4())
    return ["a/b", "volumes/x", "x@y", "..", ".", "../backups", "a\x00b", "\x00",
            "x" * 256, "y" * 100_000, "", " ", "a\nb", "volume-%s.backup.%s/.." % (some, some),
            "volume-%s.backup.%s@s" % (some, some), "back\u202eup"]


class ForgedMetadataTestCase(base.ReliabilityTestCase):
    """Forged ``service_metadata`` and backup records against real backups."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.drv = cls.env.driver()
        cls.volumes, cls.backups = [], []
        for _ in range(2):
            volume = cls.env.create_volume(1)
            cls.volumes.append(volume)
            with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
                sandbox.Writer(volume.id).scatter(img, 8 * sandbox.MiB, 4)
            backup = cls.env.create_backup(volume)
            cls.backups.append(cls.env.run_backup(cls.drv, backup))

    @classmethod
    def tearDownClass(cls):
        for backup in cls.backups:
            with contextlib.suppress(Exception):
                cls.drv.delete_backup(cls.env.backup(backup.id))
        for volume in cls.volumes:
            with contextlib.suppress(Exception):
                sandbox.remove_image(sandbox.PRIMARY, volume.name)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.before = self.cluster_state()

    def cluster_state(self):
        return {name: sandbox.state(name) for name in (sandbox.PRIMARY, sandbox.SECONDARY)}

    def assertUntouched(self):
        self.assertEqual(self.before, self.cluster_state(), "the clusters changed")

    def forged_backup(self, volume, service_metadata):
        backup = self.env.create_backup(volume)
        backup.service_metadata = service_metadata
        with self.env.db_lock:
            backup.save()
        return backup

    def service_metadata_cases(self):
        volume_a, _volume_b = self.volumes
        pool, image_a, snap_a = self.env.location(self.backups[0])
        _pool, image_b, snap_b = self.env.location(self.backups[1])

        def compact(**fields):
            record = {"schema": "rbd-incremental", "v": 1, "pool": pool, "image": image_a,
                      "snap": snap_a}
            record.update(fields)
            return json.dumps(record)

        # (Cinder's column holds 255 characters; longer values are tried anyway)
        cases = [None, "", "{not json", "[]", "null", '"text"', "1e999", "[" * 250,
                 '{"schema": "rbd-incremental"}', compact(v=2),
                 compact(schema="other"), compact(pool="volumes"), compact(pool=None),
                 compact(image=None), compact(image=123), compact(snap=["x"]),
                 compact(image=image_b, snap=snap_b),  # another volume's chain
                 json.dumps({"schema": "rbd-incremental", "v": 1}) + "x" * 300]
        for name in forged_names():
            cases += [compact(image=name), compact(snap=name), compact(pool=name)]
        return cases

    def test_forged_service_metadata_is_refused(self):
        """Restore and export of a backup whose service_metadata is forged."""
        volume_a = self.volumes[0]
        failures = []
        for metadata in self.service_metadata_cases():
            backup = self.forged_backup(volume_a, metadata)
            for what, call in (
                    ("restore", lambda b=backup: self.env.run_restore(
                        self.drv, b, volume_a, False)),
                    ("export_record", lambda b=backup: self.drv.export_record(b))):
                base.count("forged_inputs")
                try:
                    call()
                    failures.append("%s accepted %r" % (what, (metadata or "")[:120]))
                except exception.InvalidBackup:
                    pass
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append("%s of %r raised %s: %s" % (
                        what, (metadata or "")[:80], type(exc).__name__, str(exc)[:200]))
        self.assertEqual([], failures)
        self.assertUntouched()

    def test_delete_of_forged_service_metadata_touches_no_other_volume(self):
        """``delete_backup`` of a backup whose metadata names another volume's
        chain (e.g. imported from a forged record) must not remove that
        volume's restore point."""
        volume_a = self.volumes[0]
        victim = self.env.create_volume(1)
        self.addCleanup(sandbox.remove_image, sandbox.PRIMARY, victim.name)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, victim.name) as img:
            sandbox.Writer(victim.id).scatter(img, 4 * sandbox.MiB, 2)
        victim_backup = self.env.run_backup(self.drv, self.env.create_backup(victim))
        self.addCleanup(self.drv.delete_backup, victim_backup)
        _pool, image, snap = self.env.location(victim_backup)
        self.before = self.cluster_state()
        metadata = json.dumps({"schema": "rbd-incremental", "v": 1, "pool": "backups",
                               "image": image, "snap": snap})
        backup = self.forged_backup(volume_a, metadata)
        base.count("forged_inputs")
        with contextlib.suppress(exception.InvalidBackup):
            self.drv.delete_backup(backup)
        self.assertIn(snap, sandbox.snapshots(sandbox.SECONDARY, image)
                      if image in sandbox.images(sandbox.SECONDARY) else [],
                      "delete_backup of a backup of volume %s removed restore point %s@%s "
                      "of volume %s" % (volume_a.id, image, snap, victim.id))
        self.assertUntouched()

    def test_forged_export_records_are_refused(self):
        """``import_record`` of exported records forged in every field."""
        volume_a, volume_b = self.volumes
        genuine = self.drv.export_record(self.backups[0])["lineage"]
        other = self.drv.export_record(self.backups[1])["lineage"]

        def forge(**changes):
            record = json.loads(json.dumps(genuine))
            for path, value in changes.items():
                node, keys = record, path.split("__")
                for key in keys[:-1]:
                    node = node[key]
                node[keys[-1]] = value
            return {"lineage": record}

        cases = [("not a dict", None), ("a list", []), ("a string", "lineage"),
                 ("no lineage", {}), ("lineage not JSON", {"lineage": "{oops"}),
                 ("lineage deeply nested", {"lineage": "[" * 100_000 + "]" * 100_000}),
                 ("lineage a list", {"lineage": [genuine]}),
                 ("wrong types", forge(target="x")), ("size negative", forge(size=-1)),
                 ("method unknown", forge(method="dd")), ("schema", forge(schema="x")),
                 ("version", forge(v=99)), ("backup_id", forge(backup_id="../x")),
                 ("volume_id", forge(volume_id=str(uuid.uuid4()))),
                 ("pool", forge(target__pool="volumes")),
                 ("parent", forge(parent={"backup_id": "x", "snapshot": "y"})),
                 ("another volume's chain (its volume_id)",
                  forge(target__image=other["target"]["image"])),
                 ("another volume's chain, its genuine record", {"lineage": other}),
                 ("this volume's record imported under another backup id",
                  {"lineage": genuine}),
                 ("another volume's chain, record relabelled to this volume",
                  {"lineage": dict(other, volume_id=volume_a.id)})]
        for name in forged_names():
            cases += [("image %r" % name[:20], forge(target__image=name)),
                      ("snapshot %r" % name[:20], forge(target__snapshot=name)),
                      ("pool %r" % name[:20], forge(target__pool=name))]
        failures = []
        for label, driver_info in cases:
            backup = self.env.create_backup(volume_a)
            base.count("forged_inputs")
            try:
                self.drv.import_record(backup, driver_info)
                failures.append("accepted: %s" % label)
            except exception.InvalidBackup:
                pass
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append("%s: raised %s: %s" % (label, type(exc).__name__,
                                                       str(exc)[:200]))
            backup = self.env.backup(backup.id)
            if backup.service_metadata:
                failures.append("%s: service_metadata set to %s" % (
                    label, backup.service_metadata))
        self.assertEqual([], failures, "volume %s, other volume %s" % (volume_a.id,
                                                                       volume_b.id))
        self.assertUntouched()

    def test_record_of_another_volume_is_refused(self):
        """A genuine record of volume B's backup imported as a backup of volume A
        (Cinder re-creates the backup row from the outer record, whose volume_id
        is free text): the lineage names B, the backup A; InvalidBackup."""
        volume_a = self.volumes[0]
        victim = self.env.create_volume(1)
        self.addCleanup(sandbox.remove_image, sandbox.PRIMARY, victim.name)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, victim.name) as img:
            sandbox.Writer(victim.id).scatter(img, 4 * sandbox.MiB, 2)
        victim_backup = self.env.run_backup(self.drv, self.env.create_backup(victim))
        self.addCleanup(self.drv.delete_backup, victim_backup)
        record = self.drv.export_record(victim_backup)["lineage"]
        self.before = self.cluster_state()
        imported = self.env.backup(victim_backup.id)   # the same id, now "of volume A"
        imported.volume_id, imported.service_metadata = volume_a.id, None
        base.count("forged_inputs")
        try:
            with self.assertRaises(exception.InvalidBackup):
                self.drv.import_record(imported, {"lineage": record})
        finally:
            self.env.finish_backup(victim_backup, {
                "volume_id": victim.id, "service_metadata": victim_backup.service_metadata})
        self.assertUntouched()
