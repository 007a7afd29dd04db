"""Shared parts of the reliability tier: the faults sandbox, the Cinder
environment on a shared sqlite file, the crash worker and the tier's counters.
"""

import atexit
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests.reliability import sandbox

WORKER = os.path.join(os.path.dirname(__file__), "crash_worker.py")
FIGURES = os.path.join(sandbox.REPO, ".stestr", "reliability-figures.json")
_figures = {}
_shared = {}


def count(name, n=1):
    """Add to one of the tier's figures (written to .stestr/ at exit)."""
    _figures[name] = _figures.get(name, 0) + n


def set_figure(name, value):
    _figures[name] = value


def _write_figures():
    if not _figures:
        return
    os.makedirs(os.path.dirname(FIGURES), exist_ok=True)
    previous = {}
    try:
        with open(FIGURES) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        pass
    previous.update(_figures)
    with open(FIGURES, "w") as f:
        json.dump(previous, f, indent=1, sort_keys=True)


atexit.register(_write_figures)


def env():
    """The process's Cinder environment on the faults clusters (boots them)."""
    if "env" not in _shared:
        sandbox.ensure_up()
        from tests.reliability import cinder_env
        # inside the faults sandbox: removed with it (kept with RELIABILITY_KEEP_SANDBOX=1)
        directory = tempfile.mkdtemp(prefix="tier-", dir=sandbox.FAULTS_DIR)
        _shared["env"] = cinder_env.Env.get(cinder_env.db_file(directory))
        _shared["dir"] = directory
    return _shared["env"]


def workdir():
    env()
    return _shared["dir"]


@dataclasses.dataclass
class Outcome:
    """How one worker operation ended."""

    killed: bool = False
    hung: bool = False
    started: bool = False
    done: bool = False
    rc: int = None
    signal: int = None
    error: str = None
    error_type: str = None
    traceback: str = None
    stderr: str = None
    seconds: float = 0.0   # from "start" to the end (or the kill)

    def describe(self):
        return ("killed=%s hung=%s rc=%s signal=%s %.1fs error=%s: %s%s"
                % (self.killed, self.hung, self.rc, self.signal, self.seconds,
                   self.error_type, self.error,
                   " stderr: %s" % self.stderr.strip() if self.stderr else ""))


class Worker:
    """Client of ``crash_worker.py --serve`` (one operation at a time)."""

    def __init__(self, db, log_path):
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, WORKER, "--serve", "--db", db],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=sandbox.REPO)
        self.events = queue.Queue()
        self.requests = 0
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready", 120)

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put({"event": "eof"})

    def _expect(self, kind, timeout):
        event = self.events.get(timeout=timeout)
        if event["event"] != kind:
            raise AssertionError("worker: expected %s, got %r" % (kind, event))
        return event

    def run(self, request, kill_after=None, timeout=180, fault=None):
        """Run ``request``; SIGKILL it ``kill_after`` s after it started (if
        still running) or when it runs longer than ``timeout`` s (then hung).
        ``fault``: ``(delay, function)``: ``function(pid)`` is called in a thread
        ``delay`` s after the start (it may kill the child: then ``killed``)."""
        self.requests += 1
        rid = self.requests
        self.proc.stdin.write((json.dumps(dict(request, rid=rid)) + "\n").encode())
        self.proc.stdin.flush()
        pid = None
        outcome = Outcome()
        started_at = time.monotonic()
        deadline = started_at + timeout
        kill_at = None
        sent_kill = False
        while True:
            now = time.monotonic()
            wake = deadline if kill_at is None else min(deadline, kill_at)
            try:
                event = self.events.get(timeout=max(0.0, wake - now))
            except queue.Empty:
                if sent_kill:
                    raise AssertionError("worker child %d survived SIGKILL" % pid) from None
                outcome.killed = kill_at is not None and time.monotonic() >= kill_at
                outcome.hung = not outcome.killed
                outcome.seconds = time.monotonic() - started_at
                if pid is None:
                    raise AssertionError("crash worker did not start request %d" % rid)
                os.kill(pid, signal.SIGKILL)
                sent_kill, kill_at = True, None
                deadline = time.monotonic() + 60  # for the exit report
                continue
            kind = event["event"]
            if kind == "eof":
                raise AssertionError("crash worker died")
            if event.get("rid") != rid:
                continue  # a report of an earlier request (e.g. a test that failed)
            pid = pid or event.get("pid")
            if kind == "start":
                outcome.started = True
                started_at = time.monotonic()
                deadline = started_at + timeout
                if kill_after is not None and not sent_kill:
                    kill_at = started_at + kill_after
                if fault is not None:
                    timer = threading.Timer(fault[0], fault[1], args=(pid,))
                    timer.daemon = True
                    timer.start()
            elif kind == "done":
                outcome.done = True
                outcome.rc = event.get("rc")
                outcome.stderr = event.get("stderr")
            elif kind == "error":
                outcome.error, outcome.error_type = event["error"], event["type"]
                outcome.traceback = event["traceback"]
            elif kind == "exit":
                if not outcome.killed and not outcome.hung:
                    outcome.seconds = time.monotonic() - started_at
                outcome.rc = event["rc"] if outcome.rc is None else outcome.rc
                outcome.signal = event["signal"]
                outcome.killed = outcome.killed or event["signal"] == signal.SIGKILL
                return outcome

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def worker():
    """The process's crash worker (started once, on the shared database)."""
    if "worker" not in _shared:
        e = env()
        log = os.path.join(workdir(), "worker.log")
        _shared["worker"] = Worker(e.db_path, log)
        atexit.register(_shared["worker"].close)
    return _shared["worker"]


class ReliabilityTestCase(unittest.TestCase):
    """Boots the faults pair (once per process) and cleans up what a test made."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = env()
        cls.tmp = workdir()

    def cli_cluster_args(self, src_conf=None, dest_conf=None):
        return ["--src-conf", src_conf or sandbox.conf(sandbox.PRIMARY), "--src-id", "cinder",
                "--dest-conf", dest_conf or sandbox.conf(sandbox.SECONDARY),
                "--dest-id", "cinder-backup", "--no-progress"]

    def new_volume(self, size_gb=1):
        from tests.reliability import cinder_env
        volume = self.env.create_volume(size_gb)
        self.addCleanup(cinder_env.delete_volume_image, volume)
        return volume

    def assertNothingLeft(self, volumes=(), chains=()):
        """No chain image and no backup snapshot of ours on either cluster, in any
        snapshot namespace (librbd moves a snapshot to the trash namespace,
        renamed to a UUID, before it removes it)."""
        left = [c for c in chains if c in sandbox.images(sandbox.SECONDARY)]
        self.assertEqual([], left, "chain images left on the backup cluster")
        existing = sandbox.images(sandbox.PRIMARY)
        for volume in volumes:
            if volume.name in existing:
                snaps = [s for s in sandbox.all_snapshots(sandbox.PRIMARY, volume.name)
                         if s[0].startswith("backup.")
                         or (s[2] or {}).get("original_name", "").startswith("backup.")]
                self.assertEqual([], snaps, "backup snapshots left on %s" % volume.name)
