"""catalog: records for `openstack volume backup record import`, built from
lineages alone, and how restore points are read from chain metadata."""

import base64
import json
import unittest

from cinder_rbd_incremental import catalog, lineage
from cinder_rbd_incremental.targets import rbd as rbd_target

VOL = "6f1c2a0e-3b7d-4c55-9a1e-2d4f8b9c0e13"
B1 = "0b8e5c2d-7a41-4f0e-8c3b-5e9d1a2f4b60"
B2 = "c4a7e9f1-2d3b-4e8a-9f0c-7b1d6e5a3c28"
IMAGE = "volume-%s.backup.%s" % (VOL, B1)


def snap(backup_id, stamp):
    return "backup.%s.snap.%s" % (backup_id, stamp)


def record(backup_id, stamp, parent=None, size=(1 << 30) + 1):
    return lineage.build(
        backup_id=backup_id, volume_id=VOL, pool="backups", image=IMAGE,
        snapshot=snap(backup_id, stamp), snap_id=1, method="rbd-diff" if parent else "rbd-full",
        source={"pool": "volumes"}, size=size, stats={"extents": 7},
        parent={"backup_id": parent[0], "snapshot": snap(*parent)} if parent else None)


class BackupRecordTest(unittest.TestCase):

    def test_fields_cinder_requires_and_the_lineage_as_driver_info(self):
        full = record(B1, 1764069000.5)
        service, url = catalog.backup_record(full, children=1)
        fields = json.loads(base64.b64decode(url))
        self.assertEqual(catalog.DRIVER_CLASS, service)
        # what cinder/backup/manager.py import_record insists on
        for name in ("display_name", "display_description", "container", "size",
                     "service_metadata", "object_count", "id"):
            self.assertIn(name, fields)
        self.assertEqual((B1, VOL, None, "backups", 2, 7, 1),
                         (fields["id"], fields["volume_id"], fields["parent_id"],
                          fields["container"], fields["size"], fields["object_count"],
                          fields["num_dependent_backups"]))
        self.assertEqual(lineage.compact(full), fields["service_metadata"])
        self.assertEqual({"lineage": full}, fields["driver_info"])
        self.assertEqual("2025-11-25T11:10:00.500000+00:00", fields["data_timestamp"])

    def test_records_parents_first_with_their_children_counted(self):
        points = [{"backup_id": B1, "parent_id": None, "lineage": record(B1, 1.0)},
                  {"backup_id": B2, "parent_id": B1, "lineage": record(B2, 2.0, (B1, 1.0))},
                  {"backup_id": None, "parent_id": None, "lineage": None}]
        urls = [json.loads(base64.b64decode(url))
                for _s, url in catalog.records([{"restore_points": points}])]
        self.assertEqual([(B1, None, 1), (B2, B1, 0)],
                         [(u["id"], u["parent_id"], u["num_dependent_backups"]) for u in urls])


class RestorePointTest(unittest.TestCase):

    def test_a_snapshot_without_lineage_is_incomplete(self):
        point = catalog.restore_point(snap(B1, 1.0), {})
        self.assertIsNone(point["lineage"])
        self.assertIn("did not finish", point["problem"])

    def test_a_lineage_naming_another_snapshot_is_not_trusted(self):
        metadata = {rbd_target.backup_meta_key(B1): json.dumps(record(B1, 2.0))}
        point = catalog.restore_point(snap(B1, 1.0), metadata)
        self.assertIsNone(point["lineage"])
        self.assertIn("names snapshot", point["problem"])

    def test_complete_point_with_volume_metadata(self):
        metadata = {rbd_target.backup_meta_key(B2): json.dumps(record(B2, 2.0, (B1, 1.0))),
                    rbd_target.volume_meta_key(B2): '{"version": 2}'}
        point = catalog.restore_point(snap(B2, 2.0), metadata)
        self.assertEqual((B2, B1, {"version": 2}, None),
                         (point["backup_id"], point["parent_id"], point["volume_metadata"],
                          point["problem"]))

    def test_snapshot_time(self):
        self.assertEqual("1970-01-01T00:00:01.250000+00:00",
                         catalog.snapshot_time(snap(B1, 1.25)))
        self.assertIsNone(catalog.snapshot_time("not-ours"))
