"""Backups through the real Cinder API stack (``tools/cinder-stack``), for bench/run.py.

The stack is shared with the e2e tests: every use holds ``/tmp/cinder-stack.lock``
(``flock``; set ``CINDER_STACK_LOCK_HELD=1`` when the caller already holds it,
e.g. ``flock /tmp/cinder-stack.lock bench/run.py``), and the stack is left down.

A timed step runs from the API request until Cinder reports the backup (or the
restored volume) ``available``, polled every 0.1 s. CPU and peak RSS are those
of the cinder-backup service: every process of its tree (oslo.service forks a
worker; the stock driver's ``rbd`` children count once reaped, as ``cutime``).
"""

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, SANDBOX, BenchError

STACK = ROOT / "tools" / "cinder-stack"
LOCK = "/tmp/cinder-stack.lock"
TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.1
TIMEOUT = 900


@contextlib.contextmanager
def stack_lock(log):
    if os.environ.get("CINDER_STACK_LOCK_HELD") == "1":
        yield
        return
    with open(LOCK, "a") as f:
        log("waiting for %s (the Cinder stack is shared)" % LOCK)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stack(*args, log=None):
    env = dict(os.environ)
    env.pop("BACKUP_DRIVER", None)
    env.pop("STOCK", None)
    proc = subprocess.run([str(STACK)] + list(args), capture_output=True, text=True,
                          timeout=600, env=env)
    if log:
        for line in proc.stderr.strip().splitlines()[-3:]:
            log(line)
    if proc.returncode != 0:
        raise BenchError("tools/cinder-stack %s failed: %s" % (" ".join(args),
                                                             proc.stderr.strip()[-1500:]))


def _tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path("/proc/%d/task" % p).glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


class BackupService:
    """CPU and peak RSS of the cinder-backup service's process tree."""

    def __init__(self):
        self.pid = int((SANDBOX / "cinder" / "run" / "cinder-backup.pid").read_text())

    def cpu(self):
        total = 0.0
        for p in _tree(self.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path("/proc/%d/stat" % p).read_text().rsplit(")", 1)[1].split()
                total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS
        return total

    def reset_peak(self):
        for p in _tree(self.pid):
            with contextlib.suppress(OSError):
                Path("/proc/%d/clear_refs" % p).write_text("5")

    def peak_mib(self):
        peak = 0.0
        for p in _tree(self.pid):
            with contextlib.suppress(OSError, ValueError):
                for line in Path("/proc/%d/status" % p).read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        return peak


class Api:
    def __init__(self):
        # The e2e tier's client: the stack's admin, authenticated by its Keystone.
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.e2e import stack as e2e_stack
        self.c = e2e_stack.client()
        self.volumes, self.backups = [], []

    def _wait(self, what, get, obj_id, status):
        deadline = time.monotonic() + TIMEOUT
        while True:
            obj = get(obj_id)
            if obj.status == status:
                return obj
            if obj.status.startswith("error"):
                raise BenchError("%s %s went %s: %s (see %s/cinder/log)"
                                 % (what, obj_id, obj.status,
                                    getattr(obj, "fail_reason", ""), SANDBOX))
            if time.monotonic() > deadline:
                raise BenchError("%s %s still %s after %d s" % (what, obj_id, obj.status,
                                                                 TIMEOUT))
            time.sleep(POLL)

    def create_volume(self, size_gb, name="rbdinc-bench"):
        vol = self.c.volumes.create(size_gb, name=name)
        self.volumes.append(vol.id)
        self._wait("volume", self.c.volumes.get, vol.id, "available")
        return vol.id

    def backup(self, vol_id, incremental):
        """Back up; return (backup id, monotonic start of the attempt that worked).

        Right after cinder-backup restarts (a driver switch) the scheduler may
        not know it yet ("Service not found for creating backup"): such an
        attempt is deleted and made again, its time not counted.
        """
        for _ in range(30):
            started = time.monotonic()
            backup = self.c.backups.create(vol_id, name="rbdinc-bench",
                                           incremental=incremental)
            self.backups.append(backup.id)
            try:
                self._wait("backup", self.c.backups.get, backup.id, "available")
                return backup.id, started
            except BenchError as exc:
                if "Service not found" not in str(exc):
                    raise
                self.c.backups.delete(backup.id)
                self.backups.remove(backup.id)
                time.sleep(2)
        raise BenchError("no backup service after 30 attempts")

    def restore(self, backup_id):
        restore = self.c.restores.restore(backup_id, None)
        self.volumes.append(restore.volume_id)
        self._wait("backup", self.c.backups.get, backup_id, "available")
        self._wait("volume", self.c.volumes.get, restore.volume_id, "available")
        return restore.volume_id

    def cleanup(self):
        from cinderclient import exceptions as exc
        for backup_id in reversed(self.backups):
            with contextlib.suppress(exc.NotFound):
                self.c.backups.delete(backup_id)
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        if self.c.backups.get(backup_id).status == "error_deleting":
                            break
                    except exc.NotFound:
                        break
                    time.sleep(0.3)
        self.backups = []
        for vol_id in reversed(self.volumes):
            with contextlib.suppress(exc.NotFound):
                self.c.volumes.delete(vol_id)
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        self.c.volumes.get(vol_id)
                    except exc.NotFound:
                        break
                    time.sleep(0.3)
        self.volumes = []
