"""Disaster recovery without Cinder's database, end to end.

Backups are taken through the API and nothing is exported; then Cinder loses
its database (``tools/cinder-stack wipe-db``). ``rbd-incremental catalog``
reads the backup cluster alone, and each line of ``--records`` is imported
with the API call behind ``openstack volume backup record import``; every
backup must then restore to exactly what the volume held when it was taken.
"""

import base64
import json
import os
import subprocess
import sys

from tests.e2e import stack
from tests.e2e.stack import MiB
from tests.e2e.test_backup import DRIVER, E2ETestCase


def setUpModule():
    stack.ensure_up()


def catalog(*args):
    """``rbd-incremental catalog ARGS... backups`` on the backup cluster; its stdout."""
    command = [sys.executable, "-m", "cinder_rbd_incremental.cli", "catalog",
               "-c", os.path.join(stack.SANDBOX_DIR, "secondary", "ceph.conf"),
               "--id", "cinder-backup", *args, "backups"]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                          cwd=stack.REPO, timeout=120).stdout


def records_of(volume_id):
    """The ``(backup_service, backup_url)`` lines of ``catalog --records`` for one
    volume (the pool may hold other tests' chains), with their decoded urls."""
    lines = []
    for line in catalog("--records").splitlines():
        service, url = line.split(" ")
        decoded = json.loads(base64.b64decode(url))
        if decoded["volume_id"] == volume_id:
            lines.append((service, url, decoded))
    return lines


class TestRebuildFromCatalog(E2ETestCase):

    def setUp(self):
        self.skip_unless_ours()
        super().setUp()

    def test_wipe_database_then_import_catalog_records_and_restore_all(self):
        vol = self.cinder.create_volume(1, name="e2e-dr")
        # Cinder will not know this volume after the wipe: remove its image then.
        self.addCleanup(stack.remove_volume_image, vol.id)
        stack.write(vol.id, (0, os.urandom(4 * MiB)), (600 * MiB, os.urandom(MiB)))
        states = [stack.volume_digest(vol.id)]
        backups = [self.cinder.create_backup(vol.id)]
        stack.write(vol.id, (2 * MiB, os.urandom(2 * MiB)), (800 * MiB, os.urandom(MiB)))
        states.append(stack.volume_digest(vol.id))
        backups.append(self.cinder.create_backup(vol.id, incremental=True))
        ids = [backup.id for backup in backups]

        stack.wipe_database()
        self.assertEqual([], self.c.backups.list(), "the database was not wiped")

        listing = catalog()
        for backup_id in ids:
            self.assertIn(backup_id, listing)
        chain = [c for c in json.loads(catalog("--format", "json"))
                 if c["volume_id"] == vol.id]
        self.assertEqual(1, len(chain), chain)
        points = chain[0]["restore_points"]
        self.assertEqual(ids, [point["backup_id"] for point in points])
        self.assertEqual([None] + ids[:-1], [point["parent_id"] for point in points])
        # The volume's Cinder fields saved with each backup say whose it was.
        saved = points[0]["volume_metadata"]["volume-base-metadata"]
        project = self.c.client.session.get_project_id()  # the stack admin's (Keystone)
        self.assertEqual((vol.id, "e2e-dr", project),
                         (saved["id"], saved["display_name"], saved["project_id"]))
        self.assertIn("volume e2e-dr, project %s" % project, listing)

        records = records_of(vol.id)
        self.assertEqual(ids, [decoded["id"] for _s, _u, decoded in records])
        for service, url, _decoded in records:
            self.assertEqual(DRIVER, service)
            self.c.backups.import_record(service, url)
        for backup_id in ids:
            self.cinder.wait_backup(backup_id, "available")
        self.assertEqual([False, True],
                         [self.c.backups.get(backup_id).is_incremental for backup_id in ids])

        for backup_id, digest in zip(ids, states, strict=True):
            self.assert_restores_to(backup_id, digest)
