"""What the end-to-end tests drive: the real Cinder of ``tools/cinder-stack``.

``ensure_up()`` runs ``tools/cinder-stack up`` (idempotent) once per process.
``client()`` is python-cinderclient (API 3.64) authenticated by the stack's
Keystone as ``admin`` of project ``admin`` (the openrc of ``tools/cinder-stack
env``); ``client_for(project, user)`` is one for a plain member of another
project, made on first use. ``Cinder`` wraps a client with the
waiting every step needs (polling with a deadline, never hanging) and records
what a test creates so a cleanup removes it: backups newest first (Cinder
refuses to delete a backup with dependents), then volumes.

The volumes' RBD images are read and written directly on the primary cluster
(image ``volume-<id>`` in pool ``volumes``, user ``cinder``).
"""

import base64
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import time

import rados
import rbd
from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3 as ks_v3

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANDBOX_DIR = os.path.abspath(os.environ.get("SANDBOX_DIR") or os.path.join(REPO, ".sandbox"))
STACK_DIR = os.path.join(SANDBOX_DIR, "cinder")
STACK_DB = os.path.join(STACK_DIR, "state", "cinder.sqlite")
ENDPOINT = "http://127.0.0.1:%s/v3" % os.environ.get("CINDER_API_PORT", "18776")
API_VERSION = "3.64"
STOCK = os.environ.get("BACKUP_DRIVER") == "stock"
TIMEOUT = 120          # seconds for any one Cinder operation
POLL = 0.5
MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB
ZERO_CHUNK = bytes(CHUNK)

_up = None


def ensure_up():
    """Boot the stack (or find it up); raise with its output if that fails."""
    global _up
    if _up is None:
        proc = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "up"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=300)
        _up = (proc.returncode, proc.stdout)
    if _up[0] != 0:
        raise RuntimeError("tools/cinder-stack up failed:\n%s" % _up[1])
    leftovers = os.listdir(CONF_D) if os.path.isdir(CONF_D) else []
    for leftover in sorted(leftovers):  # of a test run that was killed
        if leftover.endswith(".conf"):
            set_backup_options(leftover[:-len(".conf")], None)


@functools.lru_cache(maxsize=None)
def openrc():
    """The ``export NAME=value`` settings ``tools/cinder-stack env`` prints, as a dict."""
    out = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "env"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def openstack_env():
    """``os.environ`` plus the openrc: what an ``openstack`` command runs with."""
    return dict(os.environ, PYTHONWARNINGS="ignore", **openrc())


def session_for(username, password, project_name):
    env = openrc()
    auth = ks_v3.Password(auth_url=env["OS_AUTH_URL"], username=username, password=password,
                          project_name=project_name,
                          user_domain_name=env["OS_USER_DOMAIN_NAME"],
                          project_domain_name=env["OS_PROJECT_DOMAIN_NAME"])
    return ks_session.Session(auth=auth, timeout=60)


def client():
    """Cinder as the stack's admin (user ``admin``, project ``admin``)."""
    env = openrc()
    return cinder_client.Client(API_VERSION, session=session_for(
        env["OS_USERNAME"], env["OS_PASSWORD"], env["OS_PROJECT_NAME"]),
        region_name=env["OS_REGION_NAME"])


def _stack_identity():
    """``tools/stack_identity.py`` (what registers the stack's users) as a module."""
    spec = importlib.util.spec_from_file_location(
        "stack_identity", os.path.join(REPO, "tools", "stack_identity.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def password_of(user):
    """The password ``client_for`` gives a user it makes (a loopback test stack)."""
    return "%s-stack-password" % user


@functools.lru_cache(maxsize=None)
def ensure_member(project, user):
    """The Keystone project and its user with the ``member`` role (made if missing,
    password ``password_of(user)``); returns ``(project id, user id)``."""
    identity = _stack_identity()
    conn = identity.connect_admin(openrc())
    try:
        found_project, found_user = identity.ensure_user(conn, project, user,
                                                         password_of(user))
    finally:
        conn.close()
    return found_project.id, found_user.id


def client_for(project, user):
    """Cinder as ``user``, a plain member (not admin) of ``project``; both are made
    in Keystone on first use. For tests between projects (tenant isolation)."""
    ensure_member(project, user)
    return cinder_client.Client(API_VERSION, session=session_for(user, password_of(user),
                                                                 project),
                                region_name=openrc()["OS_REGION_NAME"])


def record_url(decoded):
    """``backup_url`` of a (possibly edited) decoded backup record."""
    return base64.b64encode(json.dumps(decoded).encode()).decode()


class OperationFailed(AssertionError):
    pass


def wait_gone(kind, get, resource_id, timeout=TIMEOUT):
    """Wait until ``get(resource_id)`` raises NotFound; OperationFailed on
    ``error_deleting``."""
    def probe():
        try:
            resource = get(resource_id)
        except cinder_exc.NotFound:
            return True
        if resource.status == "error_deleting":
            raise OperationFailed("%s %s: error_deleting" % (kind, resource_id))
        return False
    wait_for("%s %s to be deleted" % (kind, resource_id), probe, timeout)


def retry_if_locked(create, *args, **kwargs):
    """``create(...)``, again after an HTTP 500: the stack's SQLite answers
    "database is locked" when writers collide on a busy machine (the request
    is rolled back; a production Cinder runs MySQL)."""
    for attempt in range(4):
        try:
            return create(*args, **kwargs)
        except cinder_exc.ClientException as exc:
            if getattr(exc, "code", None) != 500 or attempt == 3:
                raise
            time.sleep(3)


def wait_for(what, probe, timeout=TIMEOUT):
    """Poll ``probe()`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise OperationFailed("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(POLL)


class Cinder:
    """python-cinderclient plus waiting and cleanup bookkeeping for one test."""

    def __init__(self, api=None):
        """``api``: a python-cinderclient, e.g. ``client_for(...)``; the admin's by default."""
        self.c = api or client()
        self.volumes = []   # ids, creation order
        self.backups = []   # ids, creation order
        self.attachments = []
        self.snapshots = []  # Cinder snapshots: removed after the backups, before volumes
        self.deleted_volumes = []

    # -- volumes ---------------------------------------------------------------------

    def create_volume(self, size_gb=1, name="e2e"):
        vol = retry_if_locked(self.c.volumes.create, size_gb, name=name)
        self.volumes.append(vol.id)
        return self.wait_volume(vol.id, "available")

    def wait_volume(self, vol_id, status, timeout=TIMEOUT):
        def probe():
            vol = self.c.volumes.get(vol_id)
            if vol.status == status:
                return vol
            if vol.status.startswith("error"):
                raise OperationFailed("volume %s went %s (wanted %s); see %s/log"
                                      % (vol_id, vol.status, status, STACK_DIR))
            return None
        return wait_for("volume %s to be %s" % (vol_id, status), probe, timeout)

    def wait_volume_gone(self, vol_id, timeout=TIMEOUT):
        wait_gone("volume", self.c.volumes.get, vol_id, timeout)

    def delete_volume(self, vol_id):
        self.c.volumes.delete(vol_id)
        self.wait_volume_gone(vol_id)
        self.volumes.remove(vol_id)
        self.deleted_volumes.append(vol_id)

    def attach_without_vm(self, vol_id):
        """Attach the volume to a made-up host the way Nova would (attachments
        API, a connector for which the RBD driver only hands out connection
        info): Cinder then has it ``in-use``. Return the attachment id."""
        connector = {"host": "e2e-no-such-host", "ip": "127.0.0.1", "platform": "x86_64",
                     "os_type": "linux", "multipath": False, "do_local_attach": False}
        # No instance id: deleting an attachment with one asks Nova first.
        attachment = self.c.attachments.create(vol_id, connector, mode="rw")
        self.attachments.append(attachment["id"])
        self.c.attachments.complete(attachment["id"])
        return attachment["id"]

    def detach(self, attachment_id, vol_id):
        self.c.attachments.delete(attachment_id)
        self.attachments.remove(attachment_id)
        return self.wait_volume(vol_id, "available")

    # -- snapshots -------------------------------------------------------------------

    def create_snapshot(self, vol_id, name="e2e"):
        snapshot = self.c.volume_snapshots.create(vol_id, name=name)
        self.snapshots.append(snapshot.id)
        return wait_for("snapshot %s to be available" % snapshot.id, lambda: [
            snap for snap in [self.c.volume_snapshots.get(snapshot.id)]
            if snap.status == "available"])[0]

    def delete_snapshot(self, snapshot_id):
        self.c.volume_snapshots.delete(snapshot_id)
        wait_gone("snapshot", self.c.volume_snapshots.get, snapshot_id)
        self.snapshots.remove(snapshot_id)

    # -- backups ---------------------------------------------------------------------

    def create_backup(self, vol_id, incremental=False, force=False, name="e2e",
                      snapshot_id=None, container=None):
        backup = self.start_backup(vol_id, incremental, force, name, snapshot_id, container)
        return self.wait_backup(backup.id, "available")

    def start_backup(self, vol_id, incremental=False, force=False, name="e2e",
                     snapshot_id=None, container=None):
        """Ask for a backup; return at once (it is ``creating``)."""
        backup = retry_if_locked(self.c.backups.create, vol_id, name=name,
                                 incremental=incremental, force=force,
                                 snapshot_id=snapshot_id, container=container)
        self.backups.append(backup.id)
        return backup

    def wait_backup(self, backup_id, status, timeout=TIMEOUT):
        def probe():
            backup = self.c.backups.get(backup_id)
            if backup.status == status:
                return backup
            if backup.status == "error":
                raise OperationFailed("backup %s failed: %s (see %s/log/cinder-backup.log)"
                                      % (backup_id, backup.fail_reason, STACK_DIR))
            return None
        return wait_for("backup %s to be %s" % (backup_id, status), probe, timeout)

    def wait_backup_gone(self, backup_id, timeout=TIMEOUT):
        def probe():
            try:
                backup = self.c.backups.get(backup_id)
            except cinder_exc.NotFound:
                return True
            if backup.status == "error_deleting":
                raise OperationFailed("backup %s: error_deleting: %s"
                                      % (backup_id, backup.fail_reason))
            return False
        wait_for("backup %s to be deleted" % backup_id, probe, timeout)

    def delete_backup(self, backup_id):
        self.c.backups.delete(backup_id)
        self.wait_backup_gone(backup_id)
        self.backups.remove(backup_id)

    def restore(self, backup_id, vol_id=None):
        """Restore to ``vol_id``, or to a new volume; wait; return the volume."""
        restore = self.c.restores.restore(backup_id, vol_id)
        if vol_id is None:
            self.volumes.append(restore.volume_id)
        self.wait_backup(backup_id, "available")
        return self.wait_volume(restore.volume_id, "available")

    def export_record(self, backup_id):
        """``(record, decoded backup_url)``: the latter holds ``driver_info``."""
        record = dict(self.c.backups.export_record(backup_id))
        return record, json.loads(base64.b64decode(record["backup_url"]))

    def settle(self, get, resource_id, states):
        """Let a resource that is busy (creating, restoring...) finish first:
        resetting its state under a running operation only races with it."""
        def probe():
            resource = get(resource_id)
            return resource if resource.status in states else None

        try:
            return wait_for("%s to settle" % resource_id, probe)
        except OperationFailed:
            return get(resource_id)

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self):
        """Remove what is left, newest backup first, then volumes; report all failures."""
        errors = []
        for attachment_id in list(self.attachments):
            try:
                self.c.attachments.delete(attachment_id)
            except cinder_exc.NotFound:
                pass
            except Exception as exc:
                errors.append("attachment %s: %s" % (attachment_id, exc))
        for backup_id in reversed(list(self.backups)):
            try:
                with contextlib.suppress(cinder_exc.NotFound):
                    backup = self.settle(self.c.backups.get, backup_id, ("available", "error"))
                    if backup.status not in ("available", "error"):
                        self.c.backups.reset_state(backup_id, "error")
                    self.delete_backup(backup_id)
            except Exception as exc:  # keep cleaning up
                errors.append("backup %s: %s" % (backup_id, exc))
        for snapshot_id in reversed(list(self.snapshots)):
            try:
                with contextlib.suppress(cinder_exc.NotFound):
                    self.delete_snapshot(snapshot_id)
            except Exception as exc:
                errors.append("snapshot %s: %s" % (snapshot_id, exc))
        for vol_id in reversed(list(self.volumes)):
            try:
                with contextlib.suppress(cinder_exc.NotFound):
                    vol = self.settle(self.c.volumes.get, vol_id, ("available", "in-use",
                                                                   "error"))
                    if vol.status != "available":
                        self.c.volumes.reset_state(vol_id, "available",
                                                   attach_status="detached")
                    self.delete_volume(vol_id)
            except Exception as exc:
                errors.append("volume %s: %s" % (vol_id, exc))
        for vol_id in self.deleted_volumes:
            try:
                purge_deleted_image(vol_id)
            except Exception as exc:
                errors.append("image volume-%s.deleted: %s" % (vol_id, exc))
        if errors:
            raise OperationFailed("cleanup failed: " + "; ".join(errors))


def forget_backup_record(backup_id):
    """Make Cinder's database forget a backup, data kept: what losing the record
    (e.g. a rebuilt control plane) looks like to ``backup-import``, which only
    accepts an id that is absent or soft-deleted."""
    with contextlib.closing(sqlite3.connect(STACK_DB, timeout=30)) as db, db:
        rows = db.execute("UPDATE backups SET deleted = 1, status = 'deleted', "
                          "deleted_at = CURRENT_TIMESTAMP WHERE id = ?", (backup_id,)).rowcount
    if rows != 1:
        raise OperationFailed("backup %s not in %s" % (backup_id, STACK_DB))


def set_backup_time(backup_id, when):
    """Date a backup back (``created_at`` and ``data_timestamp``, a naive UTC
    datetime): what a retention policy reads, without waiting for days."""
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")
    with contextlib.closing(sqlite3.connect(STACK_DB, timeout=30)) as db, db:
        rows = db.execute("UPDATE backups SET created_at = ?, data_timestamp = ? WHERE id = ?",
                          (stamp, stamp, backup_id)).rowcount
    if rows != 1:
        raise OperationFailed("backup %s not in %s" % (backup_id, STACK_DB))


# -- the clusters --------------------------------------------------------------------

@contextlib.contextmanager
def pool(cluster, pool_name, user):
    conf = os.path.join(SANDBOX_DIR, cluster, "ceph.conf")
    client = rados.Rados(conffile=conf, rados_id=user)
    client.conf_set("client_mount_timeout", "20")
    client.conf_set("rados_osd_op_timeout", "60")
    client.connect(timeout=20)
    try:
        with client.open_ioctx(pool_name) as ioctx:
            yield ioctx
    finally:
        client.shutdown()


def primary():
    return pool("primary", "volumes", "cinder")


def secondary():
    return pool("secondary", "backups", "cinder-backup")


@contextlib.contextmanager
def volume_image(vol_id, read_only=False):
    with primary() as ioctx, rbd.Image(ioctx, "volume-%s" % vol_id,
                                       read_only=read_only) as img:
        yield img


def write(vol_id, *extents):
    """Write ``(offset, bytes)`` pieces; ``(offset, int)`` discards that many bytes."""
    with volume_image(vol_id) as img:
        for offset, data in extents:
            if isinstance(data, int):
                img.discard(offset, data)
            else:
                img.write(data, offset)
        img.flush()


def write_random(vol_id, offsets, length):
    """Write ``length`` random bytes at each offset (one piece in memory at a time)."""
    with volume_image(vol_id) as img:
        for offset in offsets:
            img.write(os.urandom(length), offset)
        img.flush()


def content_digest(img):
    """sha256 of an image's content: its size, then each 4 MiB chunk that is not
    all zeros with its index. Equal for equal content however sparse, and
    reads only allocated chunks (a 1 GiB volume hashes in a fraction of a second).
    """
    size = img.size()
    chunks = set()

    def extent(offset, length, _exists):
        chunks.update(range(offset // CHUNK, (offset + length - 1) // CHUNK + 1))
        return 0

    img.diff_iterate(0, size, None, extent)
    digest = hashlib.sha256(b"size %d\n" % size)
    for index in sorted(chunks):
        offset = index * CHUNK
        data = img.read(offset, min(CHUNK, size - offset))
        if data != ZERO_CHUNK[:len(data)]:
            digest.update(b"chunk %d\n" % index)
            digest.update(data)
    return digest.hexdigest()


def volume_digest(vol_id):
    with volume_image(vol_id, read_only=True) as img:
        return content_digest(img)


def snapshot_digest(vol_id, snapshot_id):
    """Digest of a Cinder snapshot (``snapshot-<id>`` on the volume's image)."""
    with primary() as ioctx, rbd.Image(ioctx, "volume-%s" % vol_id,
                                       snapshot="snapshot-%s" % snapshot_id,
                                       read_only=True) as img:
        return content_digest(img)


def volume_snapshots(vol_id):
    with volume_image(vol_id, read_only=True) as img:
        return [snap["name"] for snap in img.list_snaps()]


def purge_deleted_image(vol_id):
    """Remove ``volume-<id>.deleted``, which Cinder 29's RBD driver leaves behind.

    Deleting a volume that ever had a clone (e.g. the temporary clone Cinder
    makes to back up an in-use volume with a backup driver other than its own
    Ceph one) renames its image to ``<name>.deleted``, to be removed with its
    last clone; but deleting a clone takes a fast path (``RBD.remove``) that
    skips that parent clean-up, so the renamed image stays forever.
    """
    name = "volume-%s.deleted" % vol_id
    with primary() as ioctx:
        try:
            img = rbd.Image(ioctx, name)
        except rbd.ImageNotFound:
            return
        with img:
            for snap in list(img.list_snaps()):
                if not snap["name"].endswith(".clone_snap"):
                    raise OperationFailed("%s has snapshot %s" % (name, snap["name"]))
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)


def restore_point_diff_bytes(image, from_snap, to_snap):
    """Bytes of chain ``image`` that differ between two of its restore points:
    what a backup from ``from_snap`` to ``to_snap`` wrote on the backup cluster."""
    with secondary() as ioctx, rbd.Image(ioctx, image, snapshot=to_snap,
                                         read_only=True) as img:
        extents = []
        img.diff_iterate(0, img.size(), from_snap, lambda *extent: extents.append(extent))
    return sum(length for _offset, length, _exists in extents)


def backup_images():
    with secondary() as ioctx:
        return rbd.RBD().list(ioctx)


def chain_snapshots(vol_id):
    """``{chain image: [snapshot names]}`` of the volume's images in the backups pool."""
    with secondary() as ioctx:
        chains = {}
        for name in rbd.RBD().list(ioctx):
            if vol_id in name:
                with rbd.Image(ioctx, name, read_only=True) as img:
                    chains[name] = [snap["name"] for snap in img.list_snaps()]
        return chains


def head_written(img, ioctx):
    """True when HEAD holds data that the image's newest snapshot does not.

    Compares content: after a rollback librbd still lists the rolled-back
    objects in a diff, though HEAD equals the snapshot again.
    """
    extents = []
    snaps = sorted(img.list_snaps(), key=lambda snap: snap["id"])
    newest = snaps[-1]["name"] if snaps else None
    img.diff_iterate(0, img.size(), newest, lambda *extent: extents.append(extent),
                     whole_object=True)
    if not extents or newest is None:
        return bool(extents)
    with rbd.Image(ioctx, img.get_name(), snapshot=newest, read_only=True) as snap:
        for offset, length, _exists in extents:
            for start in range(offset, offset + length, CHUNK):
                size = min(CHUNK, offset + length - start)
                if img.read(start, size) != snap.read(start, size):
                    return True
    return False


def chain_heads_written(vol_id):
    """The volume's chain images with data on HEAD that their newest snapshot
    does not have: a backup transfer is (or was, until killed) writing into them."""
    with secondary() as ioctx:
        written = []
        for name in rbd.RBD().list(ioctx):
            if vol_id in name:
                with rbd.Image(ioctx, name, read_only=True) as img:
                    if head_written(img, ioctx):
                        written.append(name)
        return written


# -- the services --------------------------------------------------------------------

def service_log(name="cinder-backup"):
    return os.path.join(STACK_DIR, "log", "%s.log" % name)


def log_size(name="cinder-backup"):
    try:
        return os.path.getsize(service_log(name))
    except FileNotFoundError:
        return 0


def logged_since(offset, text, name="cinder-backup"):
    """True when ``text`` is in the service's log after byte ``offset``."""
    with open(service_log(name), "rb") as log:
        log.seek(offset)
        return text.encode() in log.read()


def process_alive(pid):
    """Running (a zombie is not: PID 1 may reap a killed service late)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def service_pid(name):
    """The pid of this stack's ``name`` service, checked against its command line
    (its pid file, and the process must run that binary with this stack's
    configuration: never another stack's or test's process)."""
    with open(os.path.join(STACK_DIR, "run", "%s.pid" % name)) as pidfile:
        pid = int(pidfile.read().strip())
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            argv = cmdline.read().decode(errors="replace").split("\0")
    except FileNotFoundError:
        raise OperationFailed("%s (pid %d) is not running" % (name, pid)) from None
    conf = os.path.join(STACK_DIR, "etc", "cinder.conf")
    if not (any(arg.endswith("/" + name) for arg in argv) and conf in argv):
        raise OperationFailed("pid %d of %s is not this stack's %s: %s"
                              % (pid, STACK_DIR, name, " ".join(argv)))
    return pid


def kill_service(name, timeout=10):
    """SIGKILL the service's main process (only it: what it started stays, as
    after a crash); return its pid once it is dead."""
    pid = service_pid(name)
    os.kill(pid, 9)
    wait_for("%s (pid %d) to die" % (name, pid), lambda: not process_alive(pid), timeout)
    return pid


CONF_D = os.path.join(STACK_DIR, "etc", "cinder.conf.d")


def set_backup_options(name, options):
    """Run cinder-backup with ``[backup_rbd_incremental]`` ``options`` (mutable
    ones; None: without them again): writes or removes the option file
    ``etc/cinder.conf.d/<name>.conf``, sends SIGHUP and waits until the service
    logged each change."""
    path = os.path.join(CONF_D, "%s.conf" % name)
    text = None
    if options:
        text = "[backup_rbd_incremental]\n" + "".join(
            "%s = %s\n" % item for item in sorted(options.items()))
    try:
        with open(path) as current:
            old = current.read()
    except FileNotFoundError:
        old = None
    if old == text:
        return
    changed = sorted(set((options or {}).keys()) | set(_option_names(old)))
    pid = service_pid("cinder-backup")
    # oslo.service removes its handler while it reloads: a SIGHUP then would
    # stop the service
    wait_for("cinder-backup to handle SIGHUP", lambda: catches_sighup(pid), 60)
    offset = log_size("cinder-backup")
    if text is None:
        os.remove(path)
    else:
        with open(path + ".tmp", "w") as new:
            new.write(text)
        os.rename(path + ".tmp", path)
    os.kill(pid, signal.SIGHUP)
    for option in changed:
        wait_for("cinder-backup to apply %s" % option, lambda option=option: logged_since(
            offset, "Option backup_rbd_incremental.%s changed" % option), 60)
    wait_for("cinder-backup to handle SIGHUP again", lambda: catches_sighup(pid), 60)


def _option_names(text):
    return [line.split("=")[0].strip() for line in (text or "").splitlines() if "=" in line]


def catches_sighup(pid):
    """True when process ``pid`` has a handler for SIGHUP (its SigCgt mask)."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def restart_service(name):
    """``tools/cinder-stack restart NAME``: only that service; the database
    and the other services stay. Returns once it reported in again."""
    proc = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "restart", name],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=200)
    if proc.returncode != 0:
        raise OperationFailed("tools/cinder-stack restart %s failed:\n%s"
                              % (name, proc.stdout))
    return proc.stdout


def wipe_database():
    """``tools/cinder-stack wipe-db``: Cinder loses its database (every volume
    and backup record), the clusters keep every image; returns once the
    services are up again on an empty database."""
    proc = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "wipe-db"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise OperationFailed("tools/cinder-stack wipe-db failed:\n%s" % proc.stdout)


def remove_volume_image(vol_id):
    """Remove ``volume-<id>`` and its snapshots from the primary cluster: the
    image of a volume that Cinder no longer knows (after ``wipe_database``)."""
    name = "volume-%s" % vol_id
    with primary() as ioctx:
        try:
            img = rbd.Image(ioctx, name)
        except rbd.ImageNotFound:
            return
        with img:
            for snap in list(img.list_snaps()):
                img.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)


def ensure_service_running(name="cinder-backup"):
    """For a cleanup: start the service again if a failed test left it dead."""
    try:
        if process_alive(service_pid(name)):
            return
    except (OperationFailed, FileNotFoundError, ValueError):
        pass
    restart_service(name)
