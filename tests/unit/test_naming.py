"""Tests for cinder_rbd_incremental.naming."""

import unittest
import uuid

import hypothesis
from hypothesis import strategies as st

from cinder_rbd_incremental import naming

SETTINGS = hypothesis.settings(max_examples=200, deadline=None)
VOLUME_ID = "0b6f1f0e-8a57-4c6a-9e1e-6a1d5c0e2f11"
BACKUP_ID = "5d2c4a3b-1f0e-4d9c-8b7a-6f5e4d3c2b1a"

valid_names = st.text(min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..") and not any(c in s for c in "/@") and s.isprintable())


class CheckNameTest(unittest.TestCase):

    def test_accepts_ordinary_names(self):
        for name in ("volumes", "volume-%s" % VOLUME_ID, "a.b_c-d", "snap 1", "é", "x" * 255,
                     "é" * 127, "..."):
            with self.subTest(name=name):
                self.assertEqual(name, naming.check_name(name))

    def test_rejects(self):
        for name in ("", ".", "..", "a/b", "a@b", "/", "@", "a\0b", "a\nb", "tab\t",
                     "x" * 256, "é" * 128, None, 42, b"bytes"):
            with self.subTest(name=name):
                self.assertRaises(naming.InvalidName, naming.check_name, name)

    def test_message_names_what(self):
        with self.assertRaisesRegex(naming.InvalidName, "^snapshot "):
            naming.check_name("a@b", "snapshot")

    def test_invalid_name_is_a_value_error(self):
        self.assertTrue(issubclass(naming.InvalidName, ValueError))

    @SETTINGS
    @hypothesis.given(valid_names)
    def test_valid_names_pass_unless_too_long(self, name):
        if len(name.encode("utf-8")) > naming.MAX_NAME_BYTES:
            self.assertRaises(naming.InvalidName, naming.check_name, name)
        else:
            self.assertEqual(name, naming.check_name(name))


class UuidTest(unittest.TestCase):

    def test_check_uuid(self):
        value = str(uuid.uuid4())
        self.assertEqual(value, naming.check_uuid(value))
        for bad in ("", "not-a-uuid", value.upper(), value + "0", value[:-1], "{%s}" % value,
                    value.replace("-", ""), None, uuid.UUID(value)):
            with self.subTest(bad=bad):
                self.assertRaises(naming.InvalidName, naming.check_uuid, bad)


class BackupSnapshotTest(unittest.TestCase):

    def test_shape(self):
        self.assertEqual("backup.%s.snap.1700000000.25" % BACKUP_ID,
                         naming.backup_snapshot(BACKUP_ID, now=1700000000.25))

    def test_now_defaults_to_the_clock(self):
        name = naming.backup_snapshot(BACKUP_ID)
        self.assertRegex(name, r"^backup\.%s\.snap\.[0-9]+\.[0-9]+$" % BACKUP_ID)
        self.assertEqual(BACKUP_ID, naming.parse_backup_snapshot(name))

    def test_rejects_invalid_backup_id(self):
        for bad in ("x", "../etc", BACKUP_ID.upper(), ""):
            with self.subTest(bad=bad):
                self.assertRaises(naming.InvalidName, naming.backup_snapshot, bad, 1.0)

    @SETTINGS
    @hypothesis.given(st.uuids(), st.floats(min_value=1e9, max_value=1e10))
    def test_round_trip(self, backup_id, now):
        name = naming.backup_snapshot(str(backup_id), now=now)
        self.assertEqual(str(backup_id), naming.parse_backup_snapshot(name))
        naming.check_name(name, "snapshot")  # usable as an RBD snapshot name

    def test_parse_other_names(self):
        for name in (None, "", "s1", "backup.", "backup.%s.snap." % BACKUP_ID,
                     "backup.%s.snap.12x" % BACKUP_ID, "xbackup.%s.snap.1.0" % BACKUP_ID,
                     "backup.%s.snap.1.0 " % BACKUP_ID, "backup.ABC.snap.1.0"):
            with self.subTest(name=name):
                self.assertIsNone(naming.parse_backup_snapshot(name))

    def test_parse_stock_driver_names(self):
        # the shape cinder's RBD drivers use: backup.<id>.snap.<time.time()>
        self.assertEqual(BACKUP_ID, naming.parse_backup_snapshot(
            "backup.%s.snap.1700000000.123456" % BACKUP_ID))


class ChainImageTest(unittest.TestCase):

    def test_shape_and_round_trip(self):
        name = naming.chain_image(VOLUME_ID, BACKUP_ID)
        self.assertEqual("volume-%s.backup.%s" % (VOLUME_ID, BACKUP_ID), name)
        self.assertEqual((VOLUME_ID, BACKUP_ID), naming.parse_chain_image(name))
        naming.check_name(name, "image")

    @SETTINGS
    @hypothesis.given(st.uuids(), st.uuids())
    def test_round_trip_any_ids(self, volume_id, backup_id):
        name = naming.chain_image(str(volume_id), str(backup_id))
        self.assertEqual((str(volume_id), str(backup_id)), naming.parse_chain_image(name))

    def test_rejects_invalid_ids(self):
        self.assertRaises(naming.InvalidName, naming.chain_image, "vol", BACKUP_ID)
        self.assertRaises(naming.InvalidName, naming.chain_image, VOLUME_ID, "b/../x")

    def test_parse_other_names(self):
        for name in (None, "", "volume-%s" % VOLUME_ID,
                     "volume-%s.backup.base" % VOLUME_ID,  # the stock driver's base image
                     "volume-%s.backup.%s.x" % (VOLUME_ID, BACKUP_ID),
                     "xvolume-%s.backup.%s" % (VOLUME_ID, BACKUP_ID)):
            with self.subTest(name=name):
                self.assertIsNone(naming.parse_chain_image(name))


class ParseImageSpecTest(unittest.TestCase):

    def test_forms(self):
        self.assertEqual(("volumes", "img", "snap"),
                         naming.parse_image_spec("volumes/img@snap"))
        self.assertEqual(("volumes", "img", None), naming.parse_image_spec("volumes/img"))
        self.assertEqual(("rbd", "img", None), naming.parse_image_spec("img"))
        self.assertEqual(("rbd", "img", "s"), naming.parse_image_spec("img@s"))
        self.assertEqual(("rbd", "img", "s"), naming.parse_image_spec("img@s", need_snap=True))

    def test_snapshot_rules(self):
        self.assertRaisesRegex(naming.InvalidName, "snapshot is required",
                               naming.parse_image_spec, "volumes/img", need_snap=True)
        self.assertRaisesRegex(naming.InvalidName, "not allowed",
                               naming.parse_image_spec, "volumes/img@s", allow_snap=False)
        self.assertEqual(("volumes", "img", None),
                         naming.parse_image_spec("volumes/img", allow_snap=False))

    def test_invalid(self):
        for spec in ("", "volumes/", "a/b/c", "volumes/img@s@t", "volumes/..", "./img",
                     "volumes/im\0g", "volumes/img@" + "s" * 256):
            with self.subTest(spec=spec):
                self.assertRaises(naming.InvalidName, naming.parse_image_spec, spec)

    @SETTINGS
    @hypothesis.given(valid_names, valid_names, st.none() | valid_names)
    def test_round_trip(self, pool, image, snap):
        hypothesis.assume(all(len(n.encode()) <= naming.MAX_NAME_BYTES
                              for n in (pool, image, snap or "")))
        spec = "%s/%s%s" % (pool, image, "@" + snap if snap else "")
        self.assertEqual((pool, image, snap), naming.parse_image_spec(spec))
