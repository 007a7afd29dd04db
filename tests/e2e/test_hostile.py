"""End to end, hostile: tampered backup records and a second project.

* A record exported from backup B, its outer fields (``service_metadata``,
  ``volume_id``) edited to name volume A's backup, imported after B's row is
  lost: Cinder applies those outer fields *after* the driver's
  ``import_record``, so only the driver's checks at restore, export and
  delete keep B's row from reaching A's restore point.
* Two projects: a member of the second sees, restores, exports and deletes
  nothing of the first's, and what it can put into a request of its own
  (container, names, metadata) never leads the driver to the first's chains.

Users come from ``stack.client_for``: Keystone users, members of their project.
"""

import os

from cinderclient import exceptions as cinder_exc

from tests.e2e import stack
from tests.e2e.stack import MiB
from tests.e2e.test_backup import E2ETestCase

PROJECT_ONE, PROJECT_TWO = "e2e-project-one", "e2e-project-two"
DISCLOSED = ("ceph.conf", "client.", "/etc/", "/work/", "backups/", "volume-")


def setUpModule():
    stack.ensure_up()


class HostileE2ETestCase(E2ETestCase):

    def setUp(self):
        if stack.STOCK:
            self.skipTest("tests this driver's checks (BACKUP_DRIVER=stock)")
        super().setUp()

    def volume_with_backup(self, cinder, name):
        vol = cinder.create_volume(1, name=name)
        stack.write(vol.id, (0, os.urandom(2 * MiB)), (300 * MiB, os.urandom(MiB)))
        digest = stack.volume_digest(vol.id)
        return vol, cinder.create_backup(vol.id, name=name), digest

    def assertNotDisclosed(self, text):
        for word in DISCLOSED:
            self.assertNotIn(word, text or "", "a tenant-visible message names %r" % word)

    def assertRestorePointKept(self, vol_id, backup_id, digest):
        snaps = [snap for snaps in stack.chain_snapshots(vol_id).values() for snap in snaps]
        self.assertTrue(any(snap.startswith("backup.%s.snap." % backup_id) for snap in snaps),
                        "restore point of backup %s is gone: %s" % (backup_id, snaps))
        self.assert_restores_to(backup_id, digest)


class TestTamperedImport(HostileE2ETestCase):

    def test_record_edited_to_another_restore_point_is_refused(self):
        vol_a, backup_a, digest_a = self.volume_with_backup(self.cinder, "e2e-victim")
        vol_b, backup_b, _digest_b = self.volume_with_backup(self.cinder, "e2e-forger")
        record_b, decoded_b = self.cinder.export_record(backup_b.id)
        _record_a, decoded_a = self.cinder.export_record(backup_a.id)
        forged = dict(decoded_b, service_metadata=decoded_a["service_metadata"],
                      volume_id=vol_a.id)
        # B's row lost (a rebuilt database), then the edited record imported
        stack.forget_backup_record(backup_b.id)
        self.addCleanup(self.put_back_genuine, backup_b.id, record_b)
        self.c.backups.import_record(record_b["backup_service"], stack.record_url(forged))
        # B's own lineage is genuine: the import succeeds, then Cinder applies
        # the edited outer fields, and the row names A's volume and restore point
        imported = self.cinder.wait_backup(backup_b.id, "available")
        self.assertEqual(vol_a.id, imported.volume_id)
        self.refuse_restore(backup_b.id)
        with self.assertRaises(cinder_exc.BadRequest):
            self.c.backups.export_record(backup_b.id)
        self.c.backups.delete(backup_b.id)
        failed = stack.wait_for("the delete to fail", lambda: [
            b for b in [self.c.backups.get(backup_b.id)] if b.status == "error"])[0]
        self.assertIn("does not match", failed.fail_reason)
        self.assertNotDisclosed(failed.fail_reason)
        self.assertRestorePointKept(vol_a.id, backup_a.id, digest_a)

    def refuse_restore(self, backup_id):
        restore = self.c.restores.restore(backup_id)
        self.cinder.volumes.append(restore.volume_id)
        vol = stack.wait_for("the restore to end", lambda: [
            v for v in [self.c.volumes.get(restore.volume_id)]
            if v.status == "available" or v.status.startswith("error")])[0]
        self.assertNotEqual("available", vol.status, "backup %s restored from another "
                            "volume's restore point" % backup_id)
        self.cinder.wait_backup(backup_id, "available")

    def put_back_genuine(self, backup_id, record):
        """Replace the forged row by the genuine record, for the cleanup to delete."""
        stack.forget_backup_record(backup_id)
        self.c.backups.import_record(record["backup_service"], record["backup_url"])
        self.cinder.wait_backup(backup_id, "available")


class TestTwoProjects(HostileE2ETestCase):

    def setUp(self):
        super().setUp()
        self.owner = stack.Cinder(stack.client_for(PROJECT_ONE, "e2e-owner"))
        self.addCleanup(self.owner.cleanup)
        self.other = stack.Cinder(stack.client_for(PROJECT_TWO, "e2e-other"))
        self.addCleanup(self.other.cleanup)

    def test_second_project_cannot_reach_the_first(self):
        vol, backup, digest = self.volume_with_backup(self.owner, "e2e-owner")
        chains = stack.chain_snapshots(vol.id)
        record, decoded = self.cinder.export_record(backup.id)  # (exporting takes an admin)
        other = self.other.c
        refused = (cinder_exc.NotFound, cinder_exc.Forbidden)
        self.assertNotIn(backup.id, [b.id for b in other.backups.list()])
        try:
            everyone = other.backups.list(search_opts={"all_tenants": 1})
        except refused:
            everyone = []
        self.assertNotIn(backup.id, [b.id for b in everyone])
        for what, call in (
                ("show", lambda: other.backups.get(backup.id)),
                ("restore", lambda: other.restores.restore(backup.id)),
                ("restore onto its volume", lambda: other.restores.restore(backup.id, vol.id)),
                ("export", lambda: other.backups.export_record(backup.id)),
                ("delete", lambda: other.backups.delete(backup.id)),
                ("back up its volume", lambda: other.backups.create(vol.id)),
                ("import its record", lambda: other.backups.import_record(
                    record["backup_service"], record["backup_url"]))):
            with self.assertRaises(refused, msg=what):
                call()
        # What it can put into requests of its own leads nowhere near the owner's chains.
        own_vol = self.other.create_volume(1, name="e2e-other")
        chain = next(iter(chains))
        # A container is a pool of the backup cluster: the owner's chain is none.
        refused_container = self.other.c.backups.create(own_vol.id, container=chain)
        self.other.backups.append(refused_container.id)
        stack.wait_for("the backup into the owner's chain to end", lambda: {
            "available", "error"} & {self.other.c.backups.get(refused_container.id).status})
        failure = self.other.c.backups.get(refused_container.id)
        self.assertEqual("error", failure.status)
        self.assertIn("is not a pool of the backup cluster", failure.fail_reason)
        self.other.wait_volume(own_vol.id, "available")
        crafted = self.other.c.backups.create(
            own_vol.id, name=chain, description=decoded["service_metadata"])
        self.other.backups.append(crafted.id)
        crafted = self.other.wait_backup(crafted.id, "available")
        with self.assertRaises(refused):
            self.other.c.restores.restore(crafted.id, vol.id)
        self.other.restore(crafted.id)
        self.other.delete_backup(crafted.id)
        self.assertEqual(chains, stack.chain_snapshots(vol.id), "the owner's chain changed")
        self.assertEqual("available", self.owner.c.backups.get(backup.id).status)
        vol_restored = self.owner.restore(backup.id)
        self.assertEqual(digest, stack.volume_digest(vol_restored.id))
