"""The reliability tier's own pair of Ceph clusters, and helpers to hurt them.

Fault tests stop OSDs, fill pools and kill processes, so they never use the
shared sandbox (``.sandbox/``) that other tiers and people run against: they
boot an independent pair with ``tools/sandbox`` in ``.sandbox-faults/``, every
port shifted by ``SANDBOX_PORT_OFFSET`` (1000). ``ensure_up()`` boots it once
per process (``up`` is idempotent) and stops it (``down``) when the process
exits, unless ``RELIABILITY_KEEP_SANDBOX=1``.
"""

import atexit
import contextlib
import glob
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time

import rados
import rbd

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FAULTS_DIR = os.path.abspath(os.environ.get("RELIABILITY_SANDBOX_DIR")
                             or os.path.join(REPO, ".sandbox-faults"))
PORT_OFFSET = os.environ.get("RELIABILITY_PORT_OFFSET", "1000")
SANDBOX = os.path.join(REPO, "tools", "sandbox")
PRIMARY, SECONDARY = "primary", "secondary"
POOL = {PRIMARY: "volumes", SECONDARY: "backups"}
USER = {PRIMARY: "cinder", SECONDARY: "cinder-backup"}
MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB
ADMIN_OP_TIMEOUT = 30
FEATURES = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
            | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)

# A killed client's watches (and so its exclusive locks) outlive it until the
# OSD times them out, 30 s by default: until then a re-run waits to break the
# lock and removing the image fails with EBUSY. A crashed cinder-backup takes
# longer than that to come back; the tier shortens the wait to keep its time
# bound, and has live clients ping their watches every second accordingly.
CLUSTER_CONFIG = [("osd", "osd_client_watch_timeout", "3"),
                  ("client", "objecter_tick_interval", "1")]
WATCH_TIMEOUT = 3

_lock = threading.Lock()
_state = {"up": False, "admin": {}}


def conf(name):
    return os.path.join(FAULTS_DIR, name, "ceph.conf")


def path(name, *parts):
    return os.path.join(FAULTS_DIR, name, *parts)


def _sandbox(command, timeout=180):
    env = dict(os.environ, SANDBOX_DIR=FAULTS_DIR, SANDBOX_PORT_OFFSET=PORT_OFFSET)
    proc = subprocess.run([SANDBOX, command], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stderr


def ensure_up():
    """Boot the faults pair if needed (once per process); stop it at exit."""
    with _lock:
        if _state["up"]:
            return
        rc, err = _sandbox("up")
        if rc != 0:
            raise RuntimeError("tools/sandbox up (faults pair in %s) failed:\n%s"
                               % (FAULTS_DIR, err))
        for name in (PRIMARY, SECONDARY):
            for who, option, value in CLUSTER_CONFIG:
                ceph(name, "config", "set", who, option, value)
        _state["up"] = True
        if os.environ.get("RELIABILITY_KEEP_SANDBOX") != "1":
            atexit.register(down)


def down():
    for client in _state["admin"].values():
        with contextlib.suppress(Exception):
            client.shutdown()
    _state["admin"].clear()
    _sandbox("down", timeout=120)
    for leftover in glob.glob(os.path.join(FAULTS_DIR, "tier-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    _state["up"] = False


# -- admin access ----------------------------------------------------------------

def admin(name):
    """A process-wide admin connection to one faults cluster (ops time out)."""
    with _lock:
        client = _state["admin"].get(name)
        if client is None:
            client = rados.Rados(conffile=conf(name), conf={
                "rados_osd_op_timeout": str(ADMIN_OP_TIMEOUT),
                "rados_mon_op_timeout": str(ADMIN_OP_TIMEOUT),
                "client_mount_timeout": "20"})
            client.connect(timeout=20)
            _state["admin"][name] = client
        return client


@contextlib.contextmanager
def ioctx(name):
    ctx = admin(name).open_ioctx(POOL[name])
    try:
        yield ctx
    finally:
        ctx.close()


def ceph(name, *args, timeout=30, check=True):
    """Run an admin ``ceph`` command on a faults cluster; return stdout."""
    proc = subprocess.run(["ceph", "-c", conf(name), "--connect-timeout", "20", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("ceph %s failed (%d): %s" % (" ".join(args), proc.returncode,
                                                        proc.stderr.strip()))
    return proc.stdout


def wait_active(name, timeout=90):
    """Wait until every PG of the cluster is active+clean."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            last = ceph(name, "pg", "stat", timeout=15, check=False)
        except subprocess.TimeoutExpired:
            last = "timeout"
        match = re.match(r"(\d+) pgs: ([^;]*);", last)
        if match:  # "33 pgs: 2 active+clean+snaptrim, 31 active+clean; ..."
            states = [part.strip().split(" ", 1) for part in match.group(2).split(",")]
            clean = sum(int(n) for n, state in states if state.startswith("active+clean"))
            if clean == int(match.group(1)):
                return
        time.sleep(0.5)
    raise AssertionError("%s: PGs not active+clean after %d s: %s" % (name, timeout, last))


# -- OSD stop / start ------------------------------------------------------------

def osd_pid(name):
    with open(path(name, "run", "osd.0.pid")) as f:
        return int(f.read().strip())


def osd_alive(name):
    try:
        os.kill(osd_pid(name), 0)
        return True
    except (OSError, ValueError):
        return False


def stop_osd(name):
    """SIGKILL the OSD of ``name`` (a crash, not a clean shutdown)."""
    pid = osd_pid(name)
    os.kill(pid, 9)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError("osd.0 of %s (pid %d) did not die" % (name, pid))


def start_osd(name):
    """Start osd.0 again as tools/sandbox boot_osd does, wait for active+clean."""
    if osd_alive(name):
        return
    subprocess.run(["ceph-osd", "-c", conf(name), "-i", "0",
                    "--keyring", path(name, "osd.0", "keyring"),
                    "--pid-file", path(name, "run", "osd.0.pid")],
                   check=True, timeout=60, capture_output=True)
    deadline = time.monotonic() + 90
    asok = path(name, "run", "ceph-osd.0.asok")
    while True:  # booted, i.e. known to the monitor again, before the PGs count
        proc = subprocess.run(["ceph", "--admin-daemon", asok, "status"], capture_output=True,
                              text=True, timeout=20, check=False)
        if '"state": "active"' in proc.stdout:
            break
        if time.monotonic() > deadline:
            raise AssertionError("osd.0 of %s did not become active: %s" % (name, proc.stdout))
        time.sleep(0.5)
    wait_active(name)


# -- images -------------------------------------------------------------------------

def create_image(name, image, size):
    with ioctx(name) as ctx:
        rbd.RBD().create(ctx, image, size, old_format=False, features=FEATURES)


def remove_image(name, image):
    """Remove an image and all its snapshots; ignore a missing one."""
    with ioctx(name) as ctx:
        try:
            img = rbd.Image(ctx, image)
        except rbd.ImageNotFound:
            # missing, or half created (listed, no header): librbd removes the rest
            with contextlib.suppress(rbd.ImageNotFound):
                rbd.RBD().remove(ctx, image)
            return
        with img:
            for snap in img.list_snaps():
                if snap.get("namespace", rbd.RBD_SNAP_NAMESPACE_TYPE_USER) \
                        != rbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                    img.remove_snap_by_id(snap["id"])  # e.g. left in the trash
                    continue
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
        rbd.RBD().remove(ctx, image)


def wait_unwatched(name, images_, timeout=WATCH_TIMEOUT * 4):
    """Wait until no client watches ``images_`` (a killed client's watches expire)."""
    deadline = time.monotonic() + timeout
    with ioctx(name) as ctx:
        for image in images_:
            while True:
                try:
                    with rbd.Image(ctx, image, read_only=True) as img:
                        watchers = list(img.watchers_list())
                except rbd.ImageNotFound:
                    break
                if not watchers:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("%s/%s still watched after %d s: %s"
                                         % (name, image, timeout, watchers))
                time.sleep(0.25)


def fence_dead_clients():
    """Blocklist every client that still watches an image, on both clusters.

    Call only when no live client of the test has an image open for writing
    (read-only opens do not watch): the watchers are then those of a killed
    process. That is what an HA manager does to a crashed node, and what
    librbd does itself once the OSD has timed the watches out; it only saves
    the wait. Returns the number of clients fenced.
    """
    fenced = 0
    for name in (PRIMARY, SECONDARY):
        addrs = set()
        with ioctx(name) as ctx:
            for image in rbd.RBD().list(ctx):
                try:
                    with rbd.Image(ctx, image, read_only=True) as img:
                        addrs |= {w["addr"] for w in img.watchers_list()}
                except rbd.ImageNotFound:
                    continue
        for addr in sorted(addrs):
            ret, _out, err = admin(name).mon_command(json.dumps(
                {"prefix": "osd blocklist", "blocklistop": "add", "addr": addr}), b"")
            if ret != 0:
                raise AssertionError("blocklisting %s on %s: %s" % (addr, name, err))
            fenced += 1
        if addrs:
            wait_unwatched(name, images(name))
    return fenced


def all_snapshots(name, image):
    """Every snapshot of ``image`` in any namespace: ``[(name, namespace, trash info)]``."""
    with ioctx(name) as ctx, rbd.Image(ctx, image, read_only=True) as img:
        return [(s["name"], s.get("namespace"), s.get("trash")) for s in img.list_snaps()]


def images(name):
    with ioctx(name) as ctx:
        return sorted(rbd.RBD().list(ctx))


def snapshots(name, image):
    with ioctx(name) as ctx, rbd.Image(ctx, image, read_only=True) as img:
        return [s["name"] for s in img.list_snaps()]


def state(name):
    """Everything observable in a pool: images, their snapshots, metadata, size;
    and the pool's plain RADOS objects (not image data)."""
    result = {}
    with ioctx(name) as ctx:
        for image in sorted(rbd.RBD().list(ctx)):
            try:
                with rbd.Image(ctx, image, read_only=True) as img:
                    result[image] = {"snaps": [(s["name"], s["id"]) for s in img.list_snaps()],
                                     "meta": dict(img.metadata_list()), "size": img.size()}
            except rbd.ImageNotFound:
                result[image] = "listed but cannot be opened"
        objects = sorted(o.key for o in ctx.list_objects()
                         if not o.key.startswith(("rbd_data.", "rbd_header.", "rbd_object_map.")))
        result["<objects>"] = objects
    return result


class Writer:
    """Fast sparse writes of distinct pseudo-random data (seeded).

    A few random 4 MiB blocks are generated once; every write takes a slice of
    one and stamps a counter into its first bytes, so no two writes are equal.
    """

    def __init__(self, seed, blocks=4):
        self.rng = random.Random(seed)
        self.blocks = [self.rng.randbytes(CHUNK) for _ in range(blocks)]
        self.counter = 0

    def data(self, length):
        self.counter += 1
        block = self.rng.choice(self.blocks)
        start = self.rng.randrange(0, CHUNK - length + 1) if length < CHUNK else 0
        piece = bytearray(block[start:start + length])
        stamp = b"%016d" % self.counter
        piece[:len(stamp)] = stamp[:length]
        return bytes(piece)

    def scatter(self, img, total, pieces, align=4096, span=None):
        """Write ``total`` bytes in ``pieces`` writes at random places of ``img``
        (of its first ``span`` bytes)."""
        size = min(img.size(), span or img.size())
        length = max(align, total // pieces // align * align)
        for _ in range(pieces):
            offset = self.rng.randrange(0, (size - length) // align) * align
            img.write(self.data(length), offset)

    def discard_some(self, img, count, length=1 * MiB, span=None):
        size = min(img.size(), span or img.size())
        for _ in range(count):
            img.discard(self.rng.randrange(0, (size - length) // 4096) * 4096, length)


def image_digest(img):
    """sha256 of an image's content (open at a snapshot or HEAD), size included.

    Canonical and sparse: the digest covers every non-zero 4 MiB chunk with its
    offset, so equal content gives equal digests whatever is allocated, and
    unallocated chunks are not read.
    """
    size = img.size()
    starts = set()

    def allocated(offset, length, exists):
        if exists:
            end = offset + length
            for start in range(offset - offset % CHUNK, end, CHUNK):
                starts.add(start)
        return 0

    img.diff_iterate(0, size, None, allocated, include_parent=True)
    digest = hashlib.sha256(b"size=%d\n" % size)
    for start, data in _read_ahead(img, sorted(starts), size):
        if data.count(0) != len(data):
            digest.update(b"@%d\n" % start)
            digest.update(data)
    return digest.hexdigest()


def _read_ahead(img, starts, size, window=8):
    """Yield ``(start, data)`` of 4 MiB chunks in order, ``window`` aio reads ahead."""
    cond = threading.Condition()
    results = {}

    def submit(start):
        length = min(CHUNK, size - start)

        def done(completion, data):
            with cond:
                rc = completion.get_return_value()
                results[start] = (data.ljust(length, b"\0") if rc >= 0
                                  else OSError(-rc, "read at %d failed" % start))
                cond.notify_all()

        img.aio_read(start, length, done)

    pending = list(starts)
    for start in pending[:window]:
        submit(start)
    for index, start in enumerate(pending):
        with cond:
            cond.wait_for(lambda s=start: s in results, timeout=ADMIN_OP_TIMEOUT * 2)
            if start not in results:
                raise OSError("read at %d timed out" % start)
            data = results.pop(start)
        if index + window < len(pending):
            submit(pending[index + window])
        if isinstance(data, Exception):
            raise data
        yield start, data


def digest_of(name, image, snap=None):
    with ioctx(name) as ctx, rbd.Image(ctx, image, snapshot=snap, read_only=True) as img:
        return image_digest(img)


def conf_copy(name, directory, extra):
    """A copy of a cluster's ceph.conf with ``extra`` lines in a [client] section."""
    target = os.path.join(directory, "%s-%s.conf" % (name, abs(hash(extra)) % 10 ** 8))
    with open(conf(name)) as f:
        text = f.read()
    with open(target, "w") as f:
        f.write(text + "\n[client]\n" + extra + "\n")
    return target
