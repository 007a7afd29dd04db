"""Horizon's backup panels in a real browser, on the real stack.

As a plain member of its own project (``stack.client_for``), in headless
Chromium: log in, back a volume up from the Volumes panel ("Create Backup":
a full backup, then one with the Incremental box ticked), watch both become
Available in the Volume Backups panel, restore the incremental one from there
to a new volume, and check that volume's bytes against the volume's at the
time of that backup. The volume is made and written through the API and RBD
(Horizon has no way to write data); everything about backups goes through
Horizon. Screenshots of each step land in ``.test-logs/horizon/`` (the user
guide's come from there).
"""

import os
import unittest

from selenium.webdriver.common.by import By

from tests.e2e import stack
from tests.e2e.stack import MiB
from tests.horizon import browser

PROJECT = USER = "horizon-demo"


def setUpModule():
    stack.ensure_up()


class TestBackupPanel(unittest.TestCase):

    def setUp(self):
        self.cinder = stack.Cinder(stack.client_for(PROJECT, USER))
        self.addCleanup(self.cinder.cleanup)
        self.horizon = browser.Horizon(USER, stack.password_of(USER))
        self.addCleanup(self.horizon.close)

    def backup_named(self, name, vol_id):
        """The backup Horizon just asked for (its id, for the checks and the cleanup);
        of this test's volume: an earlier run may have left one of the same name."""
        found = stack.wait_for("backup %s to be listed" % name, lambda: [
            b for b in self.cinder.c.backups.list(search_opts={"name": name,
                                                               "volume_id": vol_id})])
        self.assertEqual(1, len(found), found)
        self.cinder.backups.append(found[0].id)
        return found[0].id

    def create_backup(self, vol_id, name, incremental, shot=None):
        """Volumes panel, the volume's "Create Backup"; back in Volume Backups,
        wait until the new backup is Available there."""
        self.horizon.open("/project/volumes/")
        self.horizon.row_action("volumes", vol_id, "backups")
        form = self.horizon.dialog()
        form.find_element(By.CSS_SELECTOR, "#id_name").send_keys(name)
        boxes = form.find_elements(By.CSS_SELECTOR, "#id_incremental")
        if incremental:  # offered only once the volume has an available backup
            self.assertTrue(boxes, "no Incremental box in Create Backup")
            # Horizon's themed checkbox hides the input: its label takes the click.
            form.find_element(By.CSS_SELECTOR, "label[for=id_incremental]").click()
            self.assertTrue(boxes[0].is_selected(), "the Incremental box did not tick")
        if shot:
            self.horizon.screenshot(shot)
        self.horizon.submit(form)
        backup_id = self.backup_named(name, vol_id)
        self.horizon.wait_row_text("/project/backups/", "volume_backups", backup_id,
                                   "Available")
        self.cinder.wait_backup(backup_id, "available")
        return backup_id

    def test_backup_from_volumes_panel_and_restore(self):
        vol = self.cinder.create_volume(1, name="horizon-volume")
        stack.write(vol.id, (0, os.urandom(2 * MiB)), (300 * MiB, os.urandom(MiB)))
        full_id = self.create_backup(vol.id, "horizon-full", incremental=False)
        stack.write(vol.id, (MiB, os.urandom(MiB)), (900 * MiB, os.urandom(MiB)))
        expected = stack.volume_digest(vol.id)
        incr_id = self.create_backup(vol.id, "horizon-incremental", incremental=True,
                                     shot="horizon-create-backup")
        self.assertFalse(self.cinder.c.backups.get(full_id).is_incremental)
        self.assertTrue(self.cinder.c.backups.get(incr_id).is_incremental)
        self.horizon.screenshot("horizon-backups")

        # Restore from the Volume Backups panel to a new volume (the dialog offers the
        # backed-up volume first: "Create a New Volume" is the select's empty choice;
        # its themed drop-down mirrors the hidden select, which takes the value).
        self.horizon.row_action("volume_backups", incr_id, "restore")
        form = self.horizon.dialog()
        self.horizon.driver.execute_script(
            "arguments[0].value = ''; arguments[0].dispatchEvent(new Event('change'))",
            form.find_element(By.CSS_SELECTOR, "select#id_volume_id"))
        self.horizon.submit(form)
        restored = stack.wait_for("the restored volume to be listed", lambda: [
            v for v in self.cinder.c.volumes.list()
            if v.name == "restore_backup_%s" % incr_id])[0]
        self.cinder.volumes.append(restored.id)
        self.cinder.wait_volume(restored.id, "available")
        self.cinder.wait_backup(incr_id, "available")
        self.horizon.wait_row_text("/project/volumes/", "volumes", restored.id, "Available")
        self.horizon.screenshot("horizon-restored")
        self.assertEqual(expected, stack.volume_digest(restored.id),
                         "the volume restored from Horizon differs from the backed-up one")
