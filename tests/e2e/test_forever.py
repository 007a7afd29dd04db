"""End to end: ``incremental_forever`` and ``rbd-incremental-retention``.

The stack runs with the option off (the other tests rely on Cinder's
parents); ``IncrementalForeverTest`` turns it on for its tests by an option
file and SIGHUP to cinder-backup (the option is mutable), and off again.
The retention command runs as a process against the real API, with backups
dated back in Cinder's database and ``--now`` where the policy needs days.
"""

import datetime
import json
import os
import subprocess
import sys
import unittest

from cinderclient import exceptions as cinder_exc

from tests.e2e import stack
from tests.e2e.stack import MiB
from tests.e2e.test_backup import E2ETestCase, lineage_of

RETENTION = os.path.join(os.path.dirname(sys.executable), "rbd-incremental-retention")
OPTION_FILE = "incremental-forever"


def setUpModule():
    stack.ensure_up()


def retention(*args):
    """Run the command; return (exit code, output)."""
    proc = subprocess.run([RETENTION, *args], env=stack.openstack_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return proc.returncode, proc.stdout


def nights_ago(count):
    """Naive UTC times of ``count`` nights, 02:00, oldest first, ending days ago."""
    base = datetime.datetime.now(datetime.timezone.utc).replace(
        tzinfo=None, hour=2, minute=0, second=0, microsecond=0)
    return [base - datetime.timedelta(days=10 - n) for n in range(count)]


def iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class RetentionCase(E2ETestCase):

    def setUp(self):
        if stack.STOCK:
            self.skipTest("this driver's option and lineage (BACKUP_DRIVER=stock)")
        super().setUp()

    def dated_backups(self, vol_id, incremental):
        """Back up once per ``incremental`` flag (a small change before each),
        dated one night apart."""
        backups = []
        for n, flag in enumerate(incremental):
            stack.write(vol_id, (n * 64 * MiB, os.urandom(64 * 1024)))
            backups.append(self.cinder.create_backup(vol_id, incremental=flag))
        for backup, when in zip(backups, nights_ago(len(backups)), strict=True):
            stack.set_backup_time(backup.id, when)
        return backups

    def assert_gone(self, *backups):
        for backup in backups:
            self.assertRaises(cinder_exc.NotFound, self.c.backups.get, backup.id)


class IncrementalForeverTest(RetentionCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not stack.STOCK:
            cls.addClassCleanup(stack.set_backup_options, OPTION_FILE, None)
            stack.set_backup_options(OPTION_FILE, {"incremental_forever": "true"})

    def take_incremental(self, vol_id, parent, offset):
        """Change 64 KiB, back up incrementally; check it diffs against ``parent``
        and that the backup cluster received about the change only."""
        stack.write(vol_id, (offset, os.urandom(64 * 1024)))
        state = stack.volume_digest(vol_id)
        backup = self.cinder.create_backup(vol_id, incremental=True)
        # Cinder derives is_incremental from parent_id, which is not recorded
        self.assertFalse(backup.is_incremental)
        self.assertFalse(self.c.backups.get(parent.id).has_dependent_backups)
        record, parent_record = lineage_of(self.cinder, backup.id), lineage_of(
            self.cinder, parent.id)
        self.assertEqual(("rbd-diff", None, parent.id),
                         (record["method"], record["full_reason"],
                          record["parent"]["backup_id"]))
        received = stack.restore_point_diff_bytes(
            record["target"]["image"], parent_record["target"]["snapshot"],
            record["target"]["snapshot"])
        self.assertLessEqual(received, 4 * MiB, "the backup cluster received %d bytes for "
                             "a 64 KiB change" % received)
        return backup, state

    def test_delete_the_oldest_again_and_again(self):
        vol = self.cinder.create_volume(1, name="e2e-forever")
        stack.write(vol.id, (0, os.urandom(8 * MiB)), (600 * MiB, os.urandom(2 * MiB)))
        backups, states = [self.cinder.create_backup(vol.id)], [stack.volume_digest(vol.id)]
        chain = lineage_of(self.cinder, backups[0].id)["target"]["image"]
        for step in range(3):
            if step:  # the oldest goes, the full one first
                self.cinder.delete_backup(backups.pop(0).id)
                states.pop(0)
                self.assertIn(chain, stack.backup_images(), "the chain outlives its first "
                              "backup")
            backup, state = self.take_incremental(vol.id, backups[-1], (step + 1) * 100 * MiB)
            backups.append(backup)
            states.append(state)
        self.assertEqual({chain}, {lineage_of(self.cinder, b.id)["target"]["image"]
                                   for b in backups}, "still one chain")
        for backup, state in zip(backups, states, strict=True):
            self.assert_restores_to(backup.id, state)

    def test_retention_applies_a_rolling_window(self):
        vol = self.cinder.create_volume(1, name="e2e-forever-retention")
        stack.write(vol.id, (0, os.urandom(4 * MiB)))
        backups = self.dated_backups(vol.id, [False, True, True, True])
        now = iso(nights_ago(4)[-1] + datetime.timedelta(hours=10))
        policy = ["--volume", vol.id, "--keep-daily", "2", "--now", now]
        chain = lineage_of(self.cinder, backups[0].id)["target"]["image"]

        code, out = retention(*policy, "--format", "json")
        self.assertEqual(0, code, out)
        plan = {b["backup_id"]: b for b in json.loads(out)["backups"]}
        self.assertEqual(["delete", "delete", "keep", "keep"],
                         [plan[b.id]["action"] for b in backups], out)
        self.assertIn("newest", plan[backups[-1].id]["reasons"])
        self.assertEqual("available", self.c.backups.get(backups[0].id).status,
                         "a dry run deletes nothing")

        code, out = retention(*policy, "--apply")
        self.assertEqual(0, code, out)
        self.assertIn("2 kept, 2 to delete, 0 skipped; 2 deleted, 0 not", out)
        self.assert_gone(*backups[:2])
        self.assertEqual([chain], [name for name in stack.backup_images() if vol.id in name],
                         "the full one's chain holds the rest")


class RetentionChainsTest(RetentionCase):
    """With the option off, a chain goes only as a whole, newest first."""

    def test_chains_go_whole_and_newest_first(self):
        vol = self.cinder.create_volume(1, name="e2e-retention-chains")
        stack.write(vol.id, (0, os.urandom(4 * MiB)))
        full_a, inc_a, full_b = self.dated_backups(vol.id, [False, True, False])
        self.assertTrue(inc_a.is_incremental)
        scope = ["--volume", vol.id, "--now", iso(nights_ago(3)[-1])]

        code, out = retention(*scope, "--keep-last", "2", "--format", "json")
        self.assertEqual(0, code, out)
        plan = {b["backup_id"]: b for b in json.loads(out)["backups"]}
        self.assertEqual(["parent of %s" % inc_a.id], plan[full_a.id]["reasons"], out)

        code, out = retention(*scope, "--keep-last", "1", "--apply")
        self.assertEqual(0, code, out)
        order = [line.split()[1] for line in out.splitlines() if line.startswith("deleted ")]
        self.assertEqual([inc_a.id, full_a.id], order, out)
        self.assert_gone(full_a, inc_a)
        self.assertEqual("available", self.c.backups.get(full_b.id).status)


if __name__ == "__main__":
    unittest.main()
