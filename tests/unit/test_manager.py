"""manager.BackupManager: the service works only while the backup target
answers (the state logic; the check itself runs against real clusters in
tests/functional/test_health.py)."""

import threading
import unittest

from cinder import objects

objects.register_all()  # cinder.manager needs the object classes at import

from cinder_rbd_incremental import manager  # noqa: E402


def bare_manager(initialized=True):
    """The manager's state without Cinder's service machinery."""
    backup_manager = manager.BackupManager.__new__(manager.BackupManager)
    backup_manager.is_initialized = initialized
    backup_manager.target_problem = None
    return backup_manager


class IsWorkingTest(unittest.TestCase):

    def test_working_while_the_target_answers(self):
        backup_manager = bare_manager()
        self.assertTrue(backup_manager.is_working())
        backup_manager.record_check("pool backups does not answer")
        self.assertFalse(backup_manager.is_working())
        backup_manager.record_check(None)
        self.assertTrue(backup_manager.is_working())

    def test_a_failed_start_up_check_stays_down(self):
        backup_manager = bare_manager(initialized=False)
        backup_manager.record_check(None)
        self.assertFalse(backup_manager.is_working())


class BoundedTest(unittest.TestCase):

    def test_outcomes(self):
        self.assertIsNone(manager.bounded(lambda: None, 5))

        def fails():
            raise RuntimeError("pool backups does not exist")
        self.assertEqual("pool backups does not exist", manager.bounded(fails, 5))

    def test_a_check_that_hangs_counts_as_failed(self):
        release = threading.Event()
        self.addCleanup(release.set)
        self.assertEqual("no answer within 0.05 s", manager.bounded(release.wait, 0.05))
