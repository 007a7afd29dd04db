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
