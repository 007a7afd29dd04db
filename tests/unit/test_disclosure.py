"""What a tenant reads of a failure: the kind and what to do, never names."""

import unittest

import rados
from cinder import exception

from cinder_rbd_incremental import cluster, disclosure
from cinder_rbd_incremental.targets import base as target_base

SECRET = "/etc/ceph/backup.conf client.cinder-backup pool bkpool volume-1.backup.2"


class Driver:
    class context:  # noqa: N801 - stands for the request context
        request_id = "req-1234"

    @disclosure.tenant_facing("backup")
    def fail(self, backup, exc):
        raise exc


class Backup:
    id = "b-1"


def raised(exc, cause=None):
    try:
        if cause is None:
            raise exc
        try:
            raise cause
        except Exception:
            raise exc from None
    except Exception as error:
        return error


class TenantFacingTest(unittest.TestCase):

    def failure(self, exc):
        with self.assertRaises(exception.CinderException) as caught:
            with self.assertLogs(disclosure.LOG, "ERROR") as logged:
                Driver().fail(Backup(), exc)
        self.assertIn(SECRET, "\n".join(logged.output), "the log keeps the details")
        message = str(caught.exception)
        for word in ("/etc/ceph", "client.", "bkpool", "volume-1"):
            self.assertNotIn(word, message)
        self.assertIn("req-1234", message)
        self.assertIn("b-1", message)
        self.assertLess(len(message), 255, "Cinder's fail_reason column")
        return caught.exception, message

    def test_categories(self):
        for exc, expected_type, words in (
                (cluster.PermissionDenied(SECRET), exception.BackupDriverException,
                 "capability"),
                (raised(exception.BackupDriverException(reason=SECRET),
                        rados.PermissionError(SECRET)), exception.BackupDriverException,
                 "capability"),
                (cluster.ClusterError(SECRET), exception.BackupDriverException,
                 "could not be reached"),
                (raised(exception.InvalidBackup(reason=SECRET), target_base.ChainInUse(SECRET)),
                 exception.InvalidBackup, "later backups"),
                (exception.InvalidBackup(reason=SECRET), exception.InvalidBackup,
                 "does not match"),
                (disclosure.VerificationFailed(reason=SECRET), exception.BackupDriverException,
                 "verification failed"),
                (target_base.ChainNotFound(SECRET), exception.BackupDriverException,
                 "missing"),
                (RuntimeError(SECRET), exception.BackupDriverException, "driver failed")):
            error, message = self.failure(exc)
            self.assertIsInstance(error, expected_type, message)
            self.assertIn(words, message)

    def test_cancel_passes_through(self):
        with self.assertRaises(exception.BackupRestoreCancel):
            Driver().fail(Backup(), exception.BackupRestoreCancel(back_id="b", vol_id="v"))
