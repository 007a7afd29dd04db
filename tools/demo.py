#!/usr/bin/env python3
"""The main job, on the sandbox clusters: incremental backups of a volume.

``make demo`` runs this after ``tools/sandbox up``. With the least-privilege
users (``client.cinder`` on the primary, ``client.cinder-backup`` on the
secondary) it:

1. creates a 256 MiB volume image ``volumes/demo-volume`` on the primary and
   writes data into it;
2. takes a backup: snapshot, ``rbd-incremental sync`` (full) to
   ``backups/demo-volume`` on the secondary, ``verify``;
3. changes the volume and takes two incremental backups the same way (random
   small writes; then larger writes and a discard);
4. re-verifies every restore point, writes one incremental as a diff file with
   ``export-diff`` and reads it back with ``inspect``;
5. prints a table and deletes both images.

Idempotent: images left over by an interrupted run are deleted first. Exits
non-zero when any step fails.
"""

import dataclasses
import json
import os
import random
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rados
import rbd

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
TOOL = str(Path(sys.executable).parent / "rbd-incremental")
MiB, KiB = 1 << 20, 1 << 10
VOLUME = "demo-volume"
VOLUME_SIZE = 256 * MiB


class DemoError(Exception):
    """A step failed; the message says which."""


@dataclasses.dataclass
class Side:
    """One cluster as one least-privilege user."""

    name: str
    pool: str
    user: str

    @property
    def conf(self):
        return str(SANDBOX / self.name / "ceph.conf")

    def spec(self, snap=None):
        return "%s/%s%s" % (self.pool, VOLUME, "@" + snap if snap else "")

    def connect(self):
        client = rados.Rados(rados_id=self.user, conffile=self.conf,
                             conf={"client_mount_timeout": "30"})
        client.connect(timeout=30)
        return client


PRIMARY = Side("primary", "volumes", "cinder")
SECONDARY = Side("secondary", "backups", "cinder-backup")


@dataclasses.dataclass
class Change:
    """What one step does to the volume before its backup."""

    describe: str
    writes: list      # [(offset, length)], data is random
    discards: list = dataclasses.field(default_factory=list)  # [(offset, length)]

    @property
    def changed_bytes(self):
        return sum(n for _, n in self.writes) + sum(n for _, n in self.discards)


@dataclasses.dataclass
class Row:
    step: str
    kind: str
    changed: int
    sent: int = 0
    zeroed: int = 0
    received: int = None
    seconds: float = 0.0
    verified: str = "no"


# -- output ----------------------------------------------------------------------

def say(text=""):
    print(text, flush=True)


def size(n):
    if n is None:
        return "-"
    if n >= MiB:
        return "%.1f MiB" % (n / MiB)
    if n >= KiB:
        return "%.1f KiB" % (n / KiB)
    return "%d B" % n


def run(cmd, what, echo=True):
    """Run a command, echo it, return (stdout, stderr); DemoError when it fails."""
    if echo:
        shown = [os.path.relpath(c, ROOT) if str(c).startswith(str(ROOT)) else str(c)
                 for c in cmd]
        say("    $ " + " ".join(shlex.quote(c) for c in shown))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise DemoError("%s failed (exit %d): %s" % (what, proc.returncode,
                                                     proc.stderr.strip() or proc.stdout.strip()))
    return proc.stdout, proc.stderr


def tool_stats(stderr):
    """The ``key=value`` report ``rbd-incremental`` prints on stderr."""
    for line in reversed(stderr.splitlines()):
        if "data_bytes=" in line:
            return {k: v for k, v in (item.split("=", 1) for item in line.split() if "=" in item)}
    return {}


def secondary_received():
    """Bytes the secondary's OSD has received so far (admin socket), or None."""
    path = SANDBOX / SECONDARY.name / "run" / "ceph-osd.0.asok"
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b'{"prefix": "perf dump"}\0')
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return None
                buf += chunk
        return json.loads(buf[4:])["osd"]["op_in_bytes"]
    except (OSError, ValueError, KeyError):
        return None


# -- the volume (as client.cinder, through librbd) ----------------------------

def remove_image(side):
    """Delete the demo image and its snapshots on ``side``; True if there was one."""
    client = side.connect()
    try:
        with client.open_ioctx(side.pool) as ctx:
            try:
                img = rbd.Image(ctx, VOLUME)
            except rbd.ImageNotFound:
                return False
            with img:
                for snap in list(img.list_snaps()):
                    if img.is_protected_snap(snap["name"]):
                        img.unprotect_snap(snap["name"])
                    img.remove_snap(snap["name"])
            rbd.RBD().remove(ctx, VOLUME)
            return True
    finally:
        client.shutdown()


def create_volume():
    run(["rbd", "-c", PRIMARY.conf, "--id", PRIMARY.user, "create", "--size",
         "%dM" % (VOLUME_SIZE // MiB), PRIMARY.spec()], "creating the volume")


def apply_change(change, rng):
    client = PRIMARY.connect()
    try:
        with client.open_ioctx(PRIMARY.pool) as ctx, rbd.Image(ctx, VOLUME) as img:
            for offset, length in change.writes:
                img.write(rng.randbytes(length), offset)
            for offset, length in change.discards:
                img.discard(offset, length)
            img.flush()
    finally:
        client.shutdown()


def snapshot(name):
    run(["rbd", "-c", PRIMARY.conf, "--id", PRIMARY.user, "snap", "create",
         PRIMARY.spec(name)], "snapshotting the volume")


# -- the backup journey (rbd-incremental) --------------------------------------

def cluster_args():
    return ["--src-conf", PRIMARY.conf, "--src-id", PRIMARY.user,
            "--dest-conf", SECONDARY.conf, "--dest-id", SECONDARY.user]


def sync(snap, from_snap=None):
    cmd = [TOOL, "--no-progress", "sync"] + cluster_args()
    if from_snap:
        cmd += ["--from-snap", from_snap]
    before = secondary_received()
    started = time.monotonic()
    _, stderr = run(cmd + [PRIMARY.spec(snap), SECONDARY.spec()], "sync of %s" % snap)
    seconds = time.monotonic() - started
    after = secondary_received()
    stats = tool_stats(stderr)
    received = after - before if before is not None and after is not None else None
    return stats, seconds, received


def verify(snap):
    _, stderr = run([TOOL, "--no-progress", "verify"] + cluster_args()
                    + [PRIMARY.spec(snap), SECONDARY.spec(snap)], "verify of %s" % snap)
    say("      " + (stderr.strip().splitlines() or ["identical"])[-1])


def export_and_inspect(from_snap, snap, workdir):
    path = os.path.join(workdir, "%s-%s.diff" % (from_snap, snap))
    _, stderr = run([TOOL, "-c", PRIMARY.conf, "--id", PRIMARY.user, "--no-progress",
                     "export-diff", "--from-snap", from_snap, PRIMARY.spec(snap), path],
                    "export-diff")
    say("      %s: %s" % (os.path.basename(path), size(os.path.getsize(path))))
    out, _ = run([TOOL, "inspect", path], "inspect")
    for line in out.splitlines():
        say("      " + line)
    summary, _ = run([TOOL, "inspect", "--format", "json", path], "inspect --format json",
                     echo=False)
    return json.loads(summary), tool_stats(stderr)


# -- the plan ----------------------------------------------------------------------

def plan(rng):
    """Three backups: full, small random writes, larger writes plus a discard."""
    blocks = VOLUME_SIZE // MiB
    first = sorted(rng.sample(range(blocks), 24))
    small = sorted(rng.sample(range(VOLUME_SIZE // (4 * KiB)), 256))
    medium = sorted(rng.sample(range(VOLUME_SIZE // (64 * KiB)), 64))
    hole = (first[0] // 4) * 4 * MiB  # a 4 MiB object that holds data since backup-1
    return [
        ("backup-1", "full", Change("24 x 1 MiB of random data spread over the volume",
                                    [(b * MiB, MiB) for b in first])),
        ("backup-2", "incremental", Change("256 random 4 KiB writes",
                                           [(b * 4 * KiB, 4 * KiB) for b in small])),
        ("backup-3", "incremental", Change("64 random 64 KiB writes and a 4 MiB discard",
                                           [(b * 64 * KiB, 64 * KiB) for b in medium],
                                           [(hole, 4 * MiB)])),
    ]


def journey(workdir):
    rng = random.Random(2024)
    rows, previous = [], None
    say("Volume %s (%s) on the primary as client.%s; backups to %s on the secondary as "
        "client.%s." % (PRIMARY.spec(), size(VOLUME_SIZE), PRIMARY.user, SECONDARY.spec(),
                        SECONDARY.user))
    say("\n[setup] create the volume")
    create_volume()
    steps = plan(rng)
    for i, (snap, kind, change) in enumerate(steps, 1):
        say("\n[%d/%d] %s (%s): %s" % (i, len(steps), snap, kind, change.describe))
        apply_change(change, rng)
        snapshot(snap)
        stats, seconds, received = sync(snap, previous)
        row = Row(snap, kind, change.changed_bytes, int(stats.get("data_bytes", 0)),
                  int(stats.get("zero_bytes", 0)), received, seconds)
        say("      sent %s of data in %.2f s; %s of the changed extents read as zeros"
            % (size(row.sent), seconds, size(row.zeroed)))
        verify(snap)
        row.verified = "yes"
        rows.append(row)
        previous = snap

    say("\n[check] every backup is still a restore point on the secondary")
    for row in rows:
        verify(row.step)
        row.verified = "yes, twice"

    first, last = steps[-2][0], steps[-1][0]
    say("\n[file] the last incremental as a diff file (rbd import-diff can apply it)")
    summary, _ = export_and_inspect(first, last, workdir)
    if summary["data_bytes"] != rows[-1].sent or not summary["end_seen"]:
        raise DemoError("the diff file holds %d data bytes, the sync sent %d"
                        % (summary["data_bytes"], rows[-1].sent))
    return rows


def table(rows):
    head = ("step", "kind", "bytes changed", "bytes sent", "zeros", "received", "seconds",
            "verified")
    body = [(r.step, r.kind, size(r.changed), size(r.sent), size(r.zeroed), size(r.received),
             "%.2f" % r.seconds, r.verified) for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


LEGEND = """
  bytes changed  written or discarded on the volume since the previous backup
  bytes sent     data written to the backup image
  zeros          parts of the extents librbd reported as changed that read as zeros:
                 sent as zero requests (nothing on a new image), never as data
  received       what the secondary's OSD received (op_in_bytes, metadata included)"""


def cleanup(quiet=False):
    for side in (PRIMARY, SECONDARY):
        if remove_image(side) and not quiet:
            say("    removed %s" % side.spec())


def main():
    for side in (PRIMARY, SECONDARY):
        if not os.path.exists(side.conf):
            print("demo: %s not found; run `make sandbox` first" % side.conf, file=sys.stderr)
            return 1
    started = time.monotonic()
    status = 0
    with tempfile.TemporaryDirectory(prefix="rbd-incremental-demo-") as workdir:
        try:
            say("[setup] remove what an earlier run left")
            cleanup()
            rows = journey(workdir)
            say("\nSummary")
            say(table(rows))
            say(LEGEND)
        except (DemoError, rados.Error, rbd.Error, OSError) as exc:
            print("\ndemo: FAILED: %s" % exc, file=sys.stderr)
            status = 1
        finally:
            say("\n[cleanup] delete both images")
            try:
                cleanup()
            except (rados.Error, rbd.Error) as exc:
                print("demo: cleanup failed: %s" % exc, file=sys.stderr)
                status = 1
    say("\ndemo: %s in %.1f s" % ("OK" if status == 0 else "FAILED",
                                   time.monotonic() - started))
    return status


if __name__ == "__main__":
    sys.exit(main())
