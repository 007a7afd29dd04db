"""One writer per chain at a time, across threads, processes and hosts.

Two backups of one volume can run at once under Cinder (a backup of a Cinder
snapshot does not set the volume ``backing-up``; several cinder-backup
services serve one cloud). Both would write to the chain's HEAD, one rolling
it back under the other: a restore point holding a mix of both. So a backup
holds its chain's lock from before its first write until its restore point
and lineage are stored; a second backup of the chain *waits* for it (bounded
by ``chain_lock_timeout``, logging who holds it, then failing with a message
that names the holder) and then continues the chain, incrementally: waiting
keeps every backup incremental, where starting a new chain would make it a
full copy.

* ``rbd`` target: librbd's exclusive lock on the chain image, taken
  explicitly (``lock_acquire``): held on the backup cluster itself, so it
  serves every host; while it is held, librbd refuses other clients' writes
  (EROFS) instead of handing the lock over. A holder that died (SIGKILL, host
  gone) keeps it until its watch on the image expires (about 30 s); the next
  ``lock_acquire`` then breaks it and blocklists the dead client, as ``rbd
  lock rm`` does, so a holder that was only partitioned away cannot write
  any more; a live holder's lock is never broken (its watch is there). What
  the dead holder wrote is rolled back to the parent's snapshot by the next
  writer (``ImageSink``).
* ``file`` target: ``flock`` on ``<chain>/.lock`` (the kernel, or the NFS
  server's lease, releases it when its holder dies) plus a per-process
  registry (on NFS ``flock`` is emulated per process, not per open file).
  The lock file holds the holder's backup id, host and pid.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

import rbd

from cinder_rbd_incremental import cluster, engine, native

LOG = native.get_logger(__name__)
RETRY_SECONDS = 2
REPORT_SECONDS = 30
WRITER_KEY = "rbd_incremental.writer"


class ChainBusy(cluster.ClusterError):
    """Another backup kept writing to the chain for longer than we may wait."""


def owner(backup_id):
    """Who takes a lock: written next to it for the operator (and messages)."""
    return {"backup_id": backup_id, "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def wait_for(try_acquire, holder, chain, me, timeout, should_cancel=None):
    """Call ``try_acquire()`` until it returns True, at most ``timeout`` s.

    Logs who holds ``chain`` (``holder()``) every REPORT_SECONDS; ChainBusy
    when the time is up; engine.Cancelled when ``should_cancel()`` says so.
    """
    started = time.monotonic()
    reported = started
    while not try_acquire():
        now = time.monotonic()
        if now - started >= timeout:
            raise ChainBusy(
                "backup %s waited %d s for chain %s, which %s is still writing "
                "(chain_lock_timeout); retry the backup later"
                % (me["backup_id"], now - started, chain, holder()))
        if should_cancel and should_cancel():
            raise engine.Cancelled("cancelled while waiting for chain %s" % chain)
        if now - reported >= REPORT_SECONDS:
            reported = now
            LOG.info("backup %s has waited %d s for chain %s, held by %s",
                     me["backup_id"], now - started, chain, holder())
        native.sleep(min(RETRY_SECONDS, max(0.1, timeout - (now - started))))


# -- rbd -------------------------------------------------------------------------------

def _try_image_lock(img):
    try:
        img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
    except (rbd.ReadOnlyImage, rbd.ImageBusy):
        return False  # a live holder refused to hand it over
    return True


def _image_holder(img):
    """The recorded writer and the client librbd shows as the lock's owner."""
    try:
        writer = json.loads(img.metadata_get(WRITER_KEY))
    except (KeyError, ValueError, rbd.Error):
        writer = {}
    try:
        owners = [owner["owner"] for owner in img.lock_get_owners()]
    except rbd.Error:
        owners = []
    return "backup %s (host %s, pid %s, since %s; client %s)" % (
        writer.get("backup_id", "?"), writer.get("host", "?"), writer.get("pid", "?"),
        writer.get("since", "?"), ", ".join(owners) or "gone")


@contextlib.contextmanager
def image_lock(img, chain, me, timeout, should_cancel=None):
    """Hold librbd's exclusive lock on ``img`` (open for writing) for the block."""
    wait_for(lambda: _try_image_lock(img), lambda: _image_holder(img), chain, me, timeout,
             should_cancel)
    try:
        img.metadata_set(WRITER_KEY, json.dumps(me, sort_keys=True))
        yield
    finally:
        try:
            img.lock_release()
        except rbd.Error as exc:  # closing the image releases it too
            LOG.debug("releasing the lock of chain %s: %s", chain, exc)


# -- file ------------------------------------------------------------------------------

_held_here: set[str] = set()          # lock files this process holds
_held_here_guard = engine.threading.Lock()


def _try_file_lock(fd, path, me):
    with _held_here_guard:
        if path in _held_here:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _held_here.add(path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me, sort_keys=True).encode(), 0)
    return True


def _file_holder(path):
    try:
        with open(path) as lock_file:
            writer = json.loads(lock_file.read() or "{}")
    except (OSError, ValueError):
        writer = {}
    return "backup %s (host %s, pid %s, since %s)" % (
        writer.get("backup_id", "?"), writer.get("host", "?"), writer.get("pid", "?"),
        writer.get("since", "?"))


@contextlib.contextmanager
def file_lock(path, chain, me, timeout, should_cancel=None):
    """Hold ``path`` locked (created if needed) for the block."""
    # 0600 and no link followed, like every file of the file target
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        wait_for(lambda: _try_file_lock(fd, path, me), lambda: _file_holder(path), chain, me,
                 timeout, should_cancel)
        try:
            yield
        finally:
            with _held_here_guard:
                _held_here.discard(path)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
