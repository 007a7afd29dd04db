"""End to end through the front doors users have: Keystone tokens and the
``openstack`` CLI, on the real stack of ``tools/cinder-stack``.

- the demo's journey (``tools/journey.py``) through ``openstack`` commands;
- Cinder refuses a request without a valid token (401, pointing at Keystone);
- a member of another project neither sees nor restores, deletes or exports a
  project's backups (Cinder's default policy, proven on our stack).
"""

import importlib.util
import os
import random
import unittest

import requests
from cinderclient import exceptions as cinder_exc

from tests.e2e import stack
from tests.e2e.stack import MiB


def setUpModule():
    stack.ensure_up()


def load_journey():
    """``tools/journey.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        "journey", os.path.join(stack.REPO, "tools", "journey.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestOpenstackCLIJourney(unittest.TestCase):

    def test_journey_through_openstack_commands(self):
        journey = load_journey()
        cinder = stack.Cinder()
        self.addCleanup(cinder.cleanup)
        commands = []
        rows = journey.run_journey(cinder, random.Random(15),
                                   rounds=(("full", 8), ("incremental", 2), ("incremental", 2)),
                                   echo=commands.append)
        self.assertEqual([False, True, True], [row["incremental"] for row in rows])
        self.assertTrue(all(row["verified"] for row in rows),
                        "a restore differs from its volume: %s" % rows)
        ran = [line.strip() for line in commands if line.strip().startswith("$ openstack")]
        for expected in ("volume create", "volume backup create --name demo-1 --incremental",
                         "volume backup restore", "volume backup record export",
                         "volume backup delete"):
            self.assertTrue(any(expected in line for line in ran),
                            "no `openstack %s` among %s" % (expected, ran))
        self.assertTrue(any(line.strip().startswith("$ cinder backup-import")
                            for line in commands), commands)
        self.assertEqual([], cinder.backups, "the journey deletes its backups")
        self.assertEqual([], cinder.volumes, "the journey deletes its volumes")


class TestTokens(unittest.TestCase):

    def get(self, headers):
        return requests.get(stack.ENDPOINT + "/backups", headers=headers, timeout=30)

    def test_no_token_is_refused(self):
        reply = self.get({})
        self.assertEqual(401, reply.status_code, reply.text)
        # keystonemiddleware names where to get one.
        self.assertIn(stack.openrc()["OS_AUTH_URL"].rsplit("/v3", 1)[0],
                      reply.headers.get("WWW-Authenticate", ""))

    def test_forged_token_is_refused(self):
        reply = self.get({"X-Auth-Token": "gAAAAAforged"})
        self.assertEqual(401, reply.status_code, reply.text)

    def test_admin_token_is_accepted(self):
        token = stack.session_for("admin", stack.openrc()["OS_PASSWORD"], "admin").get_token()
        reply = self.get({"X-Auth-Token": token})
        self.assertEqual(200, reply.status_code, reply.text)


class TestProjectIsolation(unittest.TestCase):
    """Two projects, one plain member each: the second is a stranger to the first's
    backups, whatever it tries."""

    def setUp(self):
        self.owner = stack.Cinder(stack.client_for("e2e-project-a", "e2e-member-a"))
        self.addCleanup(self.owner.cleanup)
        self.stranger = stack.client_for("e2e-project-b", "e2e-member-b")

    def test_other_project_cannot_see_or_restore(self):
        vol = self.owner.create_volume(1, name="e2e-isolation")
        stack.write(vol.id, (0, os.urandom(MiB)))
        expected = stack.volume_digest(vol.id)
        backup = self.owner.create_backup(vol.id, name="e2e-isolation")

        self.assertIn(backup.id, [b.id for b in self.owner.c.backups.list()])
        self.assertNotIn(backup.id, [b.id for b in self.stranger.backups.list()])
        try:
            everyone = self.stranger.backups.list(search_opts={"all_tenants": 1})
        except cinder_exc.Forbidden:
            everyone = []
        self.assertNotIn(backup.id, [b.id for b in everyone], "all_tenants is for admins")
        self.assertRaises(cinder_exc.NotFound, self.stranger.backups.get, backup.id)
        self.assertRaises(cinder_exc.NotFound, self.stranger.restores.restore, backup.id)
        self.assertRaises(cinder_exc.NotFound, self.stranger.backups.delete, backup.id)
        self.assertRaises((cinder_exc.NotFound, cinder_exc.Forbidden),
                          self.stranger.backups.export_record, backup.id)
        # Nothing happened to it: still there, and the owner restores it.
        self.assertEqual("available", self.owner.c.backups.get(backup.id).status)
        restored = self.owner.restore(backup.id)
        self.assertEqual(expected, stack.volume_digest(restored.id))
