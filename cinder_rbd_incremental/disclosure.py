"""What a tenant sees of a failure, and what only the log keeps.

Cinder's backup manager stores the message of the exception a driver raises
as the backup's ``fail_reason``, which the backup's owner reads through the
API. The driver's own messages are written for operators: they name ceph.conf
paths, cephx users, pools and images of both clusters. :func:`tenant_facing`
logs that message in full (with the request id, which every log line of the
request carries) and raises, in its place, one that says what kind of failure
it was and what to do, and names only the backup and the request.
"""

import errno
import functools
import logging

import rados
import rbd
from cinder import exception

from cinder_rbd_incremental import cluster, engine, locking
from cinder_rbd_incremental.targets import base as target_base

LOG = logging.getLogger(__name__)


class VerificationFailed(exception.BackupDriverException):
    """The new restore point does not read back like the source."""


class ContainerRefused(exception.BackupDriverException):
    """The container a user asked for is no pool this service can write to.
    ``container`` is the user's own input: the tenant may read it back."""

    def __init__(self, container, **kwargs):
        super().__init__(**kwargs)
        self.container = container


PERMISSION = (cluster.PermissionDenied, rados.PermissionError, rados.PermissionDeniedError,
              rbd.PermissionError)
UNREACHABLE = (cluster.ClusterError, rados.TimedOut, rbd.Timeout, rados.ConnectionShutdown)

# (cause types, what the tenant reads), first match wins
CATEGORIES = (
    (PERMISSION, "the backup service lacks a Ceph capability it needs; an operator must "
                 "fix its configuration"),
    ((target_base.ChainInUse,), "later backups depend on this one: delete them first"),
    ((VerificationFailed,), "verification failed: the stored data did not read back like "
                            "the volume, so none was kept; try again"),
    ((target_base.ChainNotFound,), "the data of this backup is missing from the backup "
                                   "target"),
    ((locking.ChainBusy,), "another backup of this volume was still writing to its chain "
                           "when the wait for it ended; try again once it has finished"),
    ((engine.TransferError,), "reading or writing the data on a Ceph cluster failed or "
                              "timed out; try again later"),
    (UNREACHABLE, "a Ceph cluster could not be reached or timed out; try again later"),
    ((exception.InvalidBackup,), "the backup does not match the data stored for it (an "
                                 "edited or misimported record?); an operator must check it"),
)
GENERIC = "the backup driver failed"
# Cinder's own messages that carry nothing of the configuration
PASS_THROUGH = (exception.BackupRestoreCancel,)


def causes(exc):
    """``exc`` and the exceptions it was raised from or while handling."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def tenant_message(exc):
    for cause in causes(exc):
        if isinstance(cause, ContainerRefused):
            return ("the container %r is not a pool of the backup cluster that the backup "
                    "service can write to; leave it out or ask an operator which to use"
                    % cause.container)
    for types, text in CATEGORIES:
        if any(isinstance(cause, types) for cause in causes(exc)):
            return text
    if any(getattr(cause, "errno", None) == errno.ETIMEDOUT for cause in causes(exc)):
        return "a Ceph operation timed out; try again later"
    return GENERIC


def tenant_facing(operation):
    """Decorate a driver method taking ``(self, backup, ...)``: any failure is
    logged in full and re-raised with a message fit for the backup's owner
    (InvalidBackup stays InvalidBackup, anything else becomes
    BackupDriverException)."""
    def decorate(method):
        @functools.wraps(method)
        def call(self, backup, *args, **kwargs):
            try:
                return method(self, backup, *args, **kwargs)
            except PASS_THROUGH:
                raise
            except Exception as exc:
                request = getattr(self.context, "request_id", None)
                LOG.error("%s of backup %s failed (request %s): %s", operation, backup.id,
                          request, exc, exc_info=not isinstance(exc, exception.CinderException))
                reason = "%s failed: %s (backup %s, request %s; the cinder-backup log has " \
                         "the details)" % (operation, tenant_message(exc), backup.id, request)
                if isinstance(exc, exception.InvalidBackup):
                    raise exception.InvalidBackup(reason=reason) from exc
                raise exception.BackupDriverException(reason=reason) from exc
        return call
    return decorate
