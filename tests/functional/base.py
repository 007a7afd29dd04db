"""Base test case of the functional tier: two real Ceph clusters, no mocks.

The clusters are the sandbox of ``tools/sandbox up`` (state in ``$SANDBOX_DIR``,
default ``<repo>/.sandbox``):

* primary: pool ``volumes``, least-privilege user ``cinder``;
* secondary: pool ``backups``, least-privilege user ``cinder-backup``.

Helpers connect as admin (to set up and inspect images), run the installed
``rbd-incremental`` command and the real ``/usr/bin/rbd``. Every image a test
creates, or expects a command to create, is removed in a cleanup with its
snapshots, whether the test passed or not.
"""

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import uuid

import fixtures
import rados
import rbd
import testtools

from cinder_rbd_incremental import cluster
from cinder_rbd_incremental.targets import rbd as rbd_target

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANDBOX_DIR = os.path.abspath(os.environ.get("SANDBOX_DIR") or os.path.join(REPO, ".sandbox"))
CLI = os.path.join(os.path.dirname(sys.executable), "rbd-incremental")
if not os.path.exists(CLI):
    CLI = os.path.join(REPO, ".venv", "bin", "rbd-incremental")
RBD = "/usr/bin/rbd"
COMMAND_TIMEOUT = 120
MiB = 1 << 20
KiB = 1 << 10
ORDER_DEFAULT = 22  # 4 MiB objects


@dataclasses.dataclass
class Cluster:
    """One sandbox cluster: where it is, its pool and its least-privilege user."""

    name: str
    pool: str
    user: str
    client: rados.Rados = None
    ioctx: rados.Ioctx = None

    @property
    def conf(self):
        return os.path.join(SANDBOX_DIR, self.name, "ceph.conf")

    def spec(self, user=None):
        return cluster.ClusterSpec(conf=self.conf, user=user, connect_timeout=10)

    def image_spec(self, image, snap=None):
        return "%s/%s%s" % (self.pool, image, "@" + snap if snap else "")


PRIMARY = Cluster("primary", "volumes", "cinder")
SECONDARY = Cluster("secondary", "backups", "cinder-backup")
_connect_lock = threading.Lock()
_connect_error = None


def _connect_all():
    """Connect (once per process) as admin to both clusters; return an error or None."""
    global _connect_error
    with _connect_lock:
        if _connect_error is not None or PRIMARY.ioctx is not None:
            return _connect_error
        for c in (PRIMARY, SECONDARY):
            if not os.path.isfile(c.conf):
                _connect_error = (
                    "sandbox cluster %r is not set up: %s is missing. Start the clusters with "
                    "`tools/sandbox up` (or set SANDBOX_DIR)" % (c.name, c.conf))
                return _connect_error
            try:
                c.client = cluster.connect(c.spec())
                c.ioctx = c.client.open_ioctx(c.pool)
            except (cluster.ClusterError, rados.Error) as exc:
                _connect_error = (
                    "sandbox cluster %r (%s) is not reachable: %s. Start the clusters with "
                    "`tools/sandbox up` (or set SANDBOX_DIR)" % (c.name, c.conf, exc))
                return _connect_error
        atexit.register(_disconnect_all)
        return None


def _disconnect_all():
    for c in (PRIMARY, SECONDARY):
        if c.ioctx is not None:
            c.ioctx.close()
        if c.client is not None:
            c.client.shutdown()


def unique_name(prefix="test"):
    return "%s-%s" % (prefix, uuid.uuid4())


def random_bytes(length, seed):
    """Deterministic pseudo-random bytes (never all-zero blocks)."""
    return random.Random(seed).randbytes(length)


def remove_image(cl, name):
    """Purge snapshots (unprotecting them) and remove the image; ignore a missing one."""
    with contextlib.suppress(rbd.ImageNotFound):
        rbd_target.remove_image(cl.ioctx, name)


def remove_images(images):
    """Remove ``[(cluster, name)]`` in parallel; raise if any removal failed.

    Each snapshot removal waits for a monitor commit (about a second); the
    monitor batches those of concurrent removals, so one thread per image
    makes the cleanup as long as the longest chain instead of the sum.
    """
    errors = []

    def remove(cl, name):
        try:
            remove_image(cl, name)
        except Exception as exc:  # reported below, after every removal ran
            errors.append("%s/%s: %r" % (cl.name, name, exc))

    threads = [threading.Thread(target=remove, args=item) for item in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise AssertionError("cleanup failed: " + "; ".join(errors))


class FunctionalTestCase(testtools.TestCase):
    """A TestCase connected to both sandbox clusters, with image helpers."""

    primary = PRIMARY
    secondary = SECONDARY

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._class_images = []
        cls._shared = {}

    @classmethod
    def tearDownClass(cls):
        try:
            remove_images(cls._class_images)
        finally:
            super().tearDownClass()

    def setUp(self):
        super().setUp()
        error = _connect_all()
        if error:
            self.fail(error)
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self._seed = 0
        self._images = []
        self.addCleanup(remove_images, self._images)

    def shared(self, key, build):
        """``build()``'s result, built once per class and worker process.

        For read-only fixtures: images ``build`` makes with ``for_class=True``
        live until the class is done, which saves the snapshot work (a monitor
        commit each) of every further test.
        """
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    # --- images --------------------------------------------------------

    def make_image(self, cl, size, name=None, order=ORDER_DEFAULT, for_class=False):
        """Create a format 2 image on ``cl``; removed with its snapshots at cleanup.

        ``for_class``: removed after the class's last test instead.
        """
        name = name or unique_name()
        (self._class_images if for_class else self._images).append((cl, name))
        rbd.RBD().create(cl.ioctx, name, size, order=order, old_format=False)
        return name

    def make_clone(self, cl, parent, snap, name=None):
        """Clone ``parent@snap`` (protected) on ``cl``; removed before its parent."""
        name = name or unique_name()
        rbd.RBD().clone(cl.ioctx, parent, snap, cl.ioctx, name)
        # cleanups run last-in first-out: the child goes before the parent's cleanup
        self.addCleanup(remove_image, cl, name)
        return name

    def cleanup_image(self, cl, name):
        """Remove ``name`` at cleanup if it exists then (for images commands create)."""
        self._images.append((cl, name))
        return name

    def open_image(self, cl, name, snap=None, read_only=False):
        img = rbd.Image(cl.ioctx, name, snapshot=snap, read_only=read_only)
        self.addCleanup(img.close)
        return img

    def write(self, cl, name, offset, length=None, data=None, seed=None):
        """Write ``data`` (or deterministic random bytes) at ``offset``; return the bytes."""
        if data is None:
            if seed is None:
                self._seed += 1
                seed = "%s-%d" % (self.id(), self._seed)
            data = random_bytes(length, seed)
        with rbd.Image(cl.ioctx, name) as img:
            written = img.write(data, offset)
            img.flush()
        self.assertEqual(len(data), written)
        return data

    def discard(self, cl, name, offset, length):
        with rbd.Image(cl.ioctx, name) as img:
            img.discard(offset, length)

    def resize(self, cl, name, size):
        with rbd.Image(cl.ioctx, name) as img:
            img.resize(size)

    def snap(self, cl, name, snap_name):
        with rbd.Image(cl.ioctx, name) as img:
            img.create_snap(snap_name)
        return snap_name

    def snapshots(self, cl, name):
        with rbd.Image(cl.ioctx, name, read_only=True) as img:
            return [s["name"] for s in img.list_snaps()]

    def image_exists(self, cl, name):
        return name in rbd.RBD().list(cl.ioctx)

    def size_of(self, cl, name, snap=None):
        with rbd.Image(cl.ioctx, name, snapshot=snap, read_only=True) as img:
            return img.size()

    def metadata(self, cl, name):
        with rbd.Image(cl.ioctx, name, read_only=True) as img:
            return dict(img.metadata_list())

    def read_image(self, cl, name, snap=None):
        """The whole content of ``name`` (at ``snap``); images here are small."""
        with rbd.Image(cl.ioctx, name, snapshot=snap, read_only=True) as img:
            size = img.size()
            return b"".join(img.read(off, min(4 * MiB, size - off))
                            for off in range(0, size, 4 * MiB))

    def sha256_of(self, cl, pool, image, snap=None):
        """SHA-256 of an image's content at ``snap`` (HEAD if None), plus its size."""
        ctx = cl.ioctx if pool in (None, cl.pool) else cl.client.open_ioctx(pool)
        try:
            digest = hashlib.sha256()
            with rbd.Image(ctx, image, snapshot=snap, read_only=True) as img:
                size = img.size()
                for off in range(0, size, 4 * MiB):
                    digest.update(img.read(off, min(4 * MiB, size - off)))
            return "%d:%s" % (size, digest.hexdigest())
        finally:
            if ctx is not cl.ioctx:
                ctx.close()

    def assertSameContent(self, cl_a, image_a, snap_a, cl_b, image_b, snap_b):
        self.assertEqual(self.sha256_of(cl_a, None, image_a, snap_a),
                         self.sha256_of(cl_b, None, image_b, snap_b),
                         "%s/%s@%s differs from %s/%s@%s" % (cl_a.name, image_a, snap_a,
                                                             cl_b.name, image_b, snap_b))

    # --- commands ------------------------------------------------------

    def _run(self, argv, input=None, binary=False):
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=COMMAND_TIMEOUT)
        stdout = proc.stdout if binary else proc.stdout.decode(errors="replace")
        return proc.returncode, stdout, proc.stderr.decode(errors="replace")

    def run_cli(self, *args, input=None, binary=False):
        """Run ``rbd-incremental --no-progress ARGS``; return (rc, stdout, stderr).

        ``input`` (bytes) goes to stdin; ``binary`` returns stdout as bytes.
        """
        return self._run([CLI, "--no-progress", *args], input=input, binary=binary)

    def run_rbd(self, *args, input=None, binary=False):
        """Run the real ``rbd ARGS``; return (rc, stdout, stderr)."""
        return self._run([RBD, *args], input=input, binary=binary)

    def cli_ok(self, *args):
        """Run the CLI and assert it exits 0; return stdout."""
        rc, out, err = self.run_cli(*args)
        self.assertEqual(0, rc, "rbd-incremental %s failed (%d): %s" % (" ".join(args), rc, err))
        return out

    def rbd_ok(self, *args):
        """Run rbd and assert it exits 0; return stdout."""
        rc, out, err = self.run_rbd(*args)
        self.assertEqual(0, rc, "rbd %s failed (%d): %s" % (" ".join(args), rc, err))
        return out

    def rbd_json(self, *args):
        return json.loads(self.rbd_ok(*args, "--format", "json"))

    def assertUsageOrOneLineError(self, rc, stderr):
        """Exit 2 with argparse's usage message, or exit 1 with one line; no traceback."""
        self.assertIn(rc, (1, 2), stderr)
        self.assertNotIn("Traceback", stderr)
        if rc == 2:  # argparse may print its usage lines first
            self.assertRegex(stderr.strip().splitlines()[-1],
                             r"^rbd-incremental( [a-z-]+)?: (error: )?", stderr)
        else:
            self.assertOneLineError(stderr)

    def assertOneLineError(self, stderr):
        lines = stderr.strip().splitlines()
        self.assertEqual(1, len(lines), "expected a one-line error, got: %r" % stderr)
        self.assertTrue(lines[0].startswith("rbd-incremental: "), lines[0])
        self.assertNotIn("Traceback", stderr)

    # --- cluster arguments ----------------------------------------------

    def conf_args(self, cl, user=None, prefix=""):
        """``--PREFIXconf FILE [--PREFIXid USER]`` for the CLI."""
        args = ["--%sconf" % prefix, cl.conf]
        if user:
            args += ["--%sid" % prefix, user]
        return args

    def sync_args(self, least_privilege=True):
        """Cluster arguments of ``sync``/``verify``: primary as source, secondary as dest."""
        return (self.conf_args(self.primary, least_privilege and self.primary.user, "src-")
                + self.conf_args(self.secondary, least_privilege and self.secondary.user,
                                 "dest-"))

    # --- a realistic history of changes -------------------------------

    HISTORY_SIZE = 64 * MiB

    def change(self, cl, name, step):
        """Apply change set ``step`` (1, 2, 3) to a >= 64 MiB image.

        1: data in several objects (one crossing an object boundary, one whole
        object); 2: small overwrites, zeros written over data, a discarded whole
        object, a new object, the image's last block; 3: a new MiB, a partial
        discard, an overwrite.
        """
        if step == 1:
            self.write(cl, name, 0, 1 * MiB)
            self.write(cl, name, 6 * MiB, 3 * MiB)
            self.write(cl, name, 20 * MiB, 4 * MiB)
            self.write(cl, name, 40 * MiB, 64 * KiB)
        elif step == 2:
            self.write(cl, name, 512 * KiB, 4 * KiB)
            self.write(cl, name, 7 * MiB, data=bytes(64 * KiB))
            self.discard(cl, name, 20 * MiB, 4 * MiB)
            self.write(cl, name, 50 * MiB, 8 * KiB)
            self.write(cl, name, self.HISTORY_SIZE - 4 * KiB, 4 * KiB)
        elif step == 3:
            self.write(cl, name, 30 * MiB, 1 * MiB)
            self.discard(cl, name, 6 * MiB + 512 * KiB, 100 * KiB)
            self.write(cl, name, 40 * MiB + 4 * KiB, 16 * KiB)
        else:
            raise ValueError(step)

    def make_history(self, cl, steps=2, size=None, for_class=False):
        """An image on ``cl`` with snapshots s1..s<steps> after change sets 1..steps."""
        name = self.make_image(cl, size or self.HISTORY_SIZE, for_class=for_class)
        for step in range(1, steps + 1):
            self.change(cl, name, step)
            self.snap(cl, name, "s%d" % step)
        return name
