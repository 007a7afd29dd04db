"""Helpers for bench/run.py: the sandbox clusters, images, counters, processes.

Everything the benchmark measures runs as a child process (``rbd-incremental``,
``rbd``) and is reaped with ``os.wait4``, so the CPU time and peak RSS of each
process are its own. Preparing images (writing data, snapshots, rollbacks) happens
in this process through librbd and is never measured.
"""

import contextlib
import json
import os
import random
import re
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import rados
import rbd

from cinder_rbd_incremental.targets import rbd as rbd_target

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
OBJECT = 4 * MiB
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


class Cluster:
    """One sandbox cluster: its ceph.conf, pool and OSD (admin socket, pid)."""

    def __init__(self, name, pool):
        self.name = name
        self.pool = pool
        self.dir = SANDBOX / name
        self.conf = str(self.dir / "ceph.conf")
        self._rados = None

    # -- connection (admin, for preparing images) --

    def rados(self):
        if self._rados is None:
            client = rados.Rados(conffile=self.conf, conf={"client_mount_timeout": "30"})
            client.connect(timeout=30)
            self._rados = client
        return self._rados

    def close(self):
        if self._rados is not None:
            self._rados.shutdown()
            self._rados = None

    def ioctx(self):
        return self.rados().open_ioctx(self.pool)

    def image(self, name, snapshot=None, read_only=False):
        ctx = self.ioctx()
        try:
            return _ImageHandle(ctx, rbd.Image(ctx, name, snapshot=snapshot,
                                               read_only=read_only))
        except BaseException:
            ctx.close()
            raise

    def spec(self, name, snap=None):
        return "%s/%s%s" % (self.pool, name, "@" + snap if snap else "")

    def create(self, name, size):
        ctx = self.ioctx()
        try:
            rbd.RBD().create(ctx, name, size, old_format=False)
        finally:
            ctx.close()

    def list(self, prefix):
        ctx = self.ioctx()
        try:
            return [n for n in rbd.RBD().list(ctx) if n.startswith(prefix)]
        finally:
            ctx.close()

    def remove(self, name):
        """Delete an image and its snapshots; no error when it does not exist."""
        ctx = self.ioctx()
        try:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd_target.remove_image(ctx, name)
        finally:
            ctx.close()

    # -- OSD counters --

    def osd_perf(self):
        """``perf dump`` of osd.0 through its admin socket (no process, no cephx)."""
        return asok_command(self.dir / "run" / "ceph-osd.0.asok", "perf dump")

    def osd_cpu(self):
        """User+system CPU seconds used so far by the OSD process."""
        try:
            pid = int((self.dir / "run" / "osd.0.pid").read_text())
            fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, ValueError, IndexError):
            return float("nan")

    def usage(self):
        """(bytes used, bytes total) of the OSD."""
        osd = self.osd_perf()["osd"]
        return osd["stat_bytes_used"], osd["stat_bytes"]

    def counters(self):
        osd = self.osd_perf()["osd"]
        return {"op_in_bytes": osd["op_in_bytes"], "op_out_bytes": osd["op_out_bytes"],
                "op_w": osd["op_w"], "op_r": osd["op_r"], "osd_cpu": self.osd_cpu()}


# The OSDs are 20 GiB sparse files shared with the tests. Deleted snapshot data
# is freed only as the OSD trims snapshots (slowly on the sandbox's "hdd"), so
# a benchmark that keeps creating and deleting copies could fill them.
MAX_USED = 0.5
ABORT_USED = 0.75


def check_space(cluster, needed):
    """Refuse to start when ``needed`` more bytes would take the OSD past MAX_USED."""
    wait_for_space([cluster])
    used, total = cluster.usage()
    if used + needed > MAX_USED * total:
        raise BenchError("%s OSD: %.1f GiB used of %.1f GiB; the benchmark needs up to "
                         "%.1f GiB more and keeps the OSD under %d%%"
                         % (cluster.name, used / GiB, total / GiB, needed / GiB,
                            MAX_USED * 100))


def wait_for_space(clusters, timeout=900):
    """Wait (for snapshot trimming) while an OSD is more than MAX_USED full."""
    deadline = time.monotonic() + timeout
    for cluster in clusters:
        while True:
            used, total = cluster.usage()
            if used <= MAX_USED * total:
                break
            if used > ABORT_USED * total or time.monotonic() > deadline:
                raise BenchError("%s OSD is %.0f%% full; stopping (deleted snapshots are "
                                 "still being trimmed?)" % (cluster.name, 100 * used / total))
            print("bench: %s OSD %.0f%% full, waiting for snapshot trimming"
                  % (cluster.name, 100 * used / total), file=sys.stderr, flush=True)
            time.sleep(10)


class _ImageHandle:
    """An open rbd.Image that also closes its ioctx (``with`` friendly)."""

    def __init__(self, ctx, img):
        self.ctx, self.img = ctx, img

    def __enter__(self):
        return self.img

    def __exit__(self, *exc):
        try:
            self.img.close()
        finally:
            self.ctx.close()


def asok_command(path, prefix):
    def recv_exact(sock, count):
        buf = bytearray()
        while len(buf) < count:
            chunk = sock.recv(count - len(buf))
            if not chunk:
                raise BenchError("admin socket %s closed early" % path)
            buf += chunk
        return bytes(buf)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(json.dumps({"prefix": prefix}).encode() + b"\0")
        (length,) = struct.unpack(">I", recv_exact(sock, 4))
        return json.loads(recv_exact(sock, length))


# -- writing test data ---------------------------------------------------------

def write_blocks(img, blocks, depth=32):
    """``aio_write`` every ``(offset, data)`` with ``depth`` requests in flight; flush."""
    sem = threading.BoundedSemaphore(depth)
    errors = []
    for offset, data in blocks:
        sem.acquire()

        def done(completion, offset=offset):
            if completion.get_return_value() < 0:
                errors.append((offset, completion.get_return_value()))
            sem.release()

        img.aio_write(data, offset, done)
    for _ in range(depth):
        sem.acquire()
    for _ in range(depth):
        sem.release()
    img.flush()
    if errors:
        raise BenchError("%d writes failed, first at offset %d: %d"
                         % (len(errors), errors[0][0], errors[0][1]))


def spread_blocks(rng, image_size, data_size, block):
    """``data_size`` bytes of random data in ``block``-sized, ``block``-aligned
    writes at random distinct offsets over the whole image (sorted, lazily)."""
    count = data_size // block
    slots = sorted(rng.sample(range(image_size // block), count))
    return count * block, ((slot * block, rng.randbytes(block)) for slot in slots)


# -- running and measuring processes ------------------------------------------

def counters_snapshot(clusters):
    return {c.name: c.counters() for c in clusters}


def counters_delta(before, after):
    return {name: {k: after[name][k] - before[name][k] for k in before[name]}
            for name in before}


def run_measured(cmds, clusters=(), timeout=1800, label=None, pipelines=None):
    """Run ``cmds`` as a pipeline (each one's stdout into the next one's stdin);
    or several pipelines at once (``pipelines``: a list of such ``cmds``).

    Returns wall seconds, per-process CPU (user, sys) and peak RSS from
    ``os.wait4``, the ``RUSAGE_CHILDREN`` CPU delta (a cross-check) and the
    OSD counter deltas of ``clusters``. Raises BenchError when a process fails.
    """
    pipelines = pipelines or [cmds]
    cmds = [cmd for pipeline in pipelines for cmd in pipeline]
    # Each command through rusage_exec.py: its own peak RSS, not the bench's.
    usage_files = [tempfile.NamedTemporaryFile(prefix="rbdinc-bench-rusage-", delete=False)
                   for _ in cmds]
    wrapped = iter([sys.executable, "-I", "-S", str(Path(__file__).with_name("rusage_exec.py")),
                    f.name, "--"] + cmd for f, cmd in zip(usage_files, cmds, strict=True))
    pipelines = [[next(wrapped) for _ in pipeline] for pipeline in pipelines]
    before = counters_snapshot(clusters)
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs, errs = [], []
    out_file = tempfile.TemporaryFile()
    started = time.monotonic()
    try:
        for pipeline in pipelines:
            prev = None
            for i, cmd in enumerate(pipeline):
                err = tempfile.TemporaryFile()
                errs.append(err)
                last = i == len(pipeline) - 1
                proc = subprocess.Popen(cmd,
                                        stdin=prev.stdout if prev else subprocess.DEVNULL,
                                        stdout=out_file if last else subprocess.PIPE,
                                        stderr=err)
                if prev is not None:
                    prev.stdout.close()
                procs.append(proc)
                prev = proc
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    timer = threading.Timer(timeout, lambda: [p.kill() for p in procs if p.returncode is None])
    timer.start()
    results = []
    try:
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            results.append((proc, usage))
    finally:
        timer.cancel()
    wall = time.monotonic() - started
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = counters_snapshot(clusters)
    out_file.seek(0)
    out = {"label": label, "wall": wall, "procs": [], "cpu_user": 0.0, "cpu_sys": 0.0,
           "stdout": out_file.read(4000).decode(errors="replace")}
    out_file.close()
    for (proc, usage), err, cmd, usage_file in zip(results, errs, cmds, usage_files,
                                                    strict=True):
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        err.close()
        try:
            own = json.loads(Path(usage_file.name).read_text())
            usage = resource.struct_rusage((own["user"], own["sys"], own["maxrss_kib"])
                                           + (0,) * 13)
        except (OSError, ValueError, KeyError):
            pass  # the launcher's own figures (its child included)
        usage_file.close()
        os.unlink(usage_file.name)
        out["procs"].append({"cmd": os.path.basename(cmd[0]) + " " + cmd[1 if len(cmd) > 1 else 0],
                             "rc": proc.returncode, "user": usage.ru_utime,
                             "sys": usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024,
                             "stderr": stderr[-2000:]})
        out["cpu_user"] += usage.ru_utime
        out["cpu_sys"] += usage.ru_stime
    out["cpu"] = out["cpu_user"] + out["cpu_sys"]
    out["cpu_children_delta"] = ((ru_after.ru_utime + ru_after.ru_stime)
                                 - (ru_before.ru_utime + ru_before.ru_stime))
    out["maxrss_mib"] = max(p["maxrss_mib"] for p in out["procs"])
    if len(pipelines) > 1:  # one process per role: the peak of each role
        width = len(pipelines[0])
        out["procs"] = [dict(out["procs"][i], maxrss_mib=max(
            p["maxrss_mib"] for p in out["procs"][i::width])) for i in range(width)] + [
            p for p in out["procs"] if p["rc"] != 0]
    out["osd"] = counters_delta(before, after) if clusters else {}
    failed = [p for p in out["procs"] if p["rc"] != 0]
    if failed:
        raise BenchError("%s failed (exit %d): %s" % (
            " | ".join(" ".join(map(str, c)) for c in cmds), failed[0]["rc"],
            failed[0]["stderr"].strip()[-1000:] or "no stderr"))
    return out


def parse_stats(stderr):
    """The ``key=value`` report line ``rbd-incremental`` prints on stderr."""
    for line in reversed(stderr.splitlines()):
        if "changed_bytes=" in line:
            pairs = (item.split("=", 1) for item in line.split() if "=" in item)
            return {k: _number(v) for k, v in pairs}
    return {}


def parse_rbd_bench(stdout):
    """Bytes/s from the last line of ``rbd bench`` (``... bytes/sec: 393 MiB/s``)."""
    units = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}
    found = re.findall(r"bytes/sec: ([\d.]+) (\w+)/s", stdout)
    if not found or found[-1][1] not in units:
        return None
    return float(found[-1][0]) * units[found[-1][1]]


def _number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def seeded(seed):
    return random.Random(seed)
