"""Lineage schema: build, compact form, parse, validation of hostile input."""

import json
import unittest
import uuid

from cinder_rbd_incremental import lineage, naming


def _record(**overrides):
    volume_id, backup_id = str(uuid.uuid4()), str(uuid.uuid4())
    values = dict(backup_id=backup_id, volume_id=volume_id, pool="backups",
                  image=naming.chain_image(volume_id, backup_id),
                  snapshot=naming.backup_snapshot(backup_id, now=1795691152.3021584),
                  snap_id=4, method="rbd-full", source={"pool": "volumes"}, size=1 << 30)
    values.update(overrides)
    return lineage.build(**values)


class LineageTest(unittest.TestCase):
    def test_compact_fits_cinder_column_and_parses_back(self):
        record = _record()
        text = lineage.compact(record)
        self.assertLessEqual(len(text), 255)
        pool, image, snap = lineage.parse_compact(text)
        self.assertEqual(("backups", record["target"]["image"], record["target"]["snapshot"]),
                         (pool, image, snap))

    def test_full_record_round_trip(self):
        record = _record()
        self.assertEqual(record, lineage.parse(json.dumps(record)))

    def test_rejects_hostile_names(self):
        record = _record()
        for field, value in (("image", "../etc"), ("image", "volume-x/y"),
                             ("snapshot", "snap\x00"), ("snapshot", "a@b"),
                             ("pool", "a/b"), ("pool", "p" * 300)):
            bad = json.loads(json.dumps(record))
            bad["target"][field] = value
            with self.assertRaises(lineage.InvalidLineage, msg=(field, value)):
                lineage.parse(bad)

    def test_rejects_malformed(self):
        for text in ("", "{", "[]", '{"schema": "other"}', json.dumps({"schema": "rbd-incremental",
                                                                          "v": 99})):
            with self.assertRaises(lineage.InvalidLineage):
                lineage.parse(text)
            with self.assertRaises(lineage.InvalidLineage):
                lineage.parse_compact(text)

    def test_rejects_unknown_method_and_bad_size(self):
        with self.assertRaises(lineage.InvalidLineage):
            _record(method="magic")
        with self.assertRaises(lineage.InvalidLineage):
            _record(size=-1)

    def test_parent_is_validated(self):
        with self.assertRaises(lineage.InvalidLineage):
            _record(parent={"backup_id": "not-a-uuid", "snapshot": "x"})


def _rbd_record(**overrides):
    """A lineage as an RBD backup records it (the source names the volume side)."""
    volume_id, backup_id = str(uuid.uuid4()), str(uuid.uuid4())
    snap = naming.backup_snapshot(backup_id, now=1795691152.3021584)
    values = dict(backup_id=backup_id, volume_id=volume_id, pool="backups",
                  image=naming.chain_image(volume_id, backup_id), snapshot=snap, snap_id=4,
                  method="rbd-full", size=1 << 30,
                  source={"pool": "volumes", "image": "volume-%s" % volume_id,
                          "snapshot": snap, "identity": None, "cinder_snapshot": None})
    values.update(overrides)
    return lineage.build(**values)


def _location(record):
    target = record["target"]
    return target["pool"], target["image"], target["snapshot"]


class BelongsTest(unittest.TestCase):
    """A record read back from a target is used only for its own backup."""

    def test_own_record_is_accepted(self):
        record = _rbd_record()
        self.assertIs(record, lineage.check_belongs(record, record["backup_id"],
                                                    record["volume_id"], _location(record)))

    def test_incremental_lives_in_a_chain_started_by_another_backup(self):
        first = _rbd_record()
        backup_id = str(uuid.uuid4())
        snap = naming.backup_snapshot(backup_id, now=1795691153.5)
        record = _rbd_record(backup_id=backup_id, volume_id=first["volume_id"],
                             image=first["target"]["image"], snapshot=snap,
                             source=dict(first["source"], snapshot=snap))
        lineage.check_belongs(record, backup_id, first["volume_id"], _location(record))

    def test_cinder_snapshot_source(self):
        record = _rbd_record()
        record["source"].update(snapshot="snapshot-x", cinder_snapshot="snapshot-x")
        lineage.check_belongs(record, record["backup_id"], record["volume_id"])

    def test_foreign_records_are_refused(self):
        record = _rbd_record()
        other = _rbd_record()
        backup_id, volume_id = record["backup_id"], record["volume_id"]
        cases = {
            "missing": (None, backup_id, volume_id, None),
            "another backup's": (other, backup_id, volume_id, None),
            "another volume's": (record, backup_id, other["volume_id"], None),
            "stored elsewhere": (record, backup_id, volume_id, _location(other)),
        }
        for field, value in (("backup_id", other["backup_id"]),
                             ("volume_id", other["volume_id"])):
            cases["relabelled " + field] = (dict(record, **{field: value}), backup_id,
                                            volume_id, None)
        for field, value in (("image", other["target"]["image"]),
                             ("snapshot", other["target"]["snapshot"])):
            forged = json.loads(json.dumps(record))
            forged["target"][field] = value
            cases["target " + field] = (forged, backup_id, volume_id, None)
        for field, value in (("snapshot", other["source"]["snapshot"]), ("pool", "a/b"),
                             ("image", None), ("snapshot", None)):
            forged = json.loads(json.dumps(record))
            forged["source"][field] = value
            cases["source %s %r" % (field, value)] = (forged, backup_id, volume_id, None)
        forged = json.loads(json.dumps(record))
        forged["source"].update(snapshot=other["source"]["snapshot"],
                                cinder_snapshot=other["source"]["snapshot"])
        cases["another backup's snapshot as a Cinder snapshot"] = (forged, backup_id,
                                                                   volume_id, None)
        for label, args in cases.items():
            with self.assertRaises(lineage.InvalidLineage, msg=label):
                lineage.check_belongs(*args)

    def test_restore_point_names(self):
        record = _rbd_record()
        other = _rbd_record()
        image, snap = record["target"]["image"], record["target"]["snapshot"]
        lineage.check_restore_point(image, snap, record["backup_id"], record["volume_id"])
        for args in ((image, other["target"]["snapshot"]), (other["target"]["image"], snap),
                     ("rbd", snap), (image, "snap")):
            with self.assertRaises(lineage.InvalidLineage, msg=args):
                lineage.check_restore_point(*args, record["backup_id"], record["volume_id"])
