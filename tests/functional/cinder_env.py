"""A real Cinder environment for driver tests: objects on sqlite, a sandbox pair.

Follows what cinder-backup does: the manager creates the driver with a
request context, hands it os-brick's ``RBDVolumeIOWrapper`` and applies the
returned updates to the backup.

One environment per process (oslo.config's CONF is global). By default it
uses the main sandbox (``$SANDBOX_DIR`` or ``.sandbox/``) and a fresh sqlite
file; the reliability tier passes its own sandbox directory and a database
file that its crash-worker processes open too (``create_db=False``), so a
chain started in one process is continued in another.
"""

import contextlib
import os
import tempfile
import threading

import rbd
from cinder import context, objects, rpc
from cinder.common import config
from cinder.db import migration
from cinder.volume import volume_types
from os_brick.initiator import linuxrbd

from cinder_rbd_incremental import cluster, driver, lineage, opts
from cinder_rbd_incremental.targets import rbd as rbd_target

SANDBOX = os.path.abspath(os.environ.get("SANDBOX_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", ".sandbox"))
CLASS_PATH = "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver"
FEATURES = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
            | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)


def conf_path(sandbox_dir, name):
    """ceph.conf of cluster ``name`` (primary, secondary) of a sandbox pair."""
    return os.path.join(os.path.abspath(sandbox_dir), name, "ceph.conf")


PRIMARY_CONF = conf_path(SANDBOX, "primary")
SECONDARY_CONF = conf_path(SANDBOX, "secondary")


@contextlib.contextmanager
def brick_volume_file(conf, image, pool="volumes", user="cinder"):
    """os-brick's file object for an attached RBD volume, as cinder-backup gets it."""
    client = linuxrbd.RBDClient(user, pool, conffile=conf)
    try:
        rbd_volume = linuxrbd.RBDVolume(client, image)
        meta = linuxrbd.RBDImageMetadata(rbd_volume, pool, user, conf)
        wrapper = linuxrbd.RBDVolumeIOWrapper(meta)
        try:
            yield wrapper
        finally:
            wrapper.close()
    finally:
        client.disconnect()


class CinderEnv:
    """Cinder objects and the driver on one sandbox pair (see the module doc)."""

    _instance = None
    # [backup_rbd_incremental] options the tests run with (set_options' defaults)
    DEFAULT_OPTIONS = {"verify": "full", "connect_timeout": 10}

    @classmethod
    def get(cls, sandbox_dir=None, db_path=None, create_db=True):
        """The process's environment; the first call's arguments choose it."""
        if CinderEnv._instance is None:
            CinderEnv._instance = cls(sandbox_dir, db_path, create_db)
        elif (not isinstance(CinderEnv._instance, cls)
              or (sandbox_dir or SANDBOX) != CinderEnv._instance.sandbox_dir
              or (db_path and db_path != CinderEnv._instance.db_path)):
            raise RuntimeError("one Cinder environment per process")
        return CinderEnv._instance

    def __init__(self, sandbox_dir=None, db_path=None, create_db=True):
        self.sandbox_dir = sandbox_dir or SANDBOX
        self.sandbox_primary_conf = conf_path(self.sandbox_dir, "primary")
        self.secondary_conf = conf_path(self.sandbox_dir, "secondary")
        for conf in (self.sandbox_primary_conf, self.secondary_conf):
            if not os.path.exists(conf):
                raise RuntimeError("sandbox is not up (%s missing): run `make sandbox`" % conf)
        # what os-brick connects with (a test may hand it another conf file)
        self.primary_conf = self.sandbox_primary_conf
        objects.register_all()
        self.conf = config.CONF
        if db_path:
            self.tmpdir = os.path.dirname(os.path.abspath(db_path))
        else:
            self.tmpdir = tempfile.mkdtemp(prefix="cinder-env-")
        self.db_path = db_path or os.path.join(self.tmpdir, "cinder.sqlite")
        self.conf([], project="cinder", default_config_files=[])
        self.conf.set_override("connection", "sqlite:///%s" % self.db_path, group="database")
        if create_db:
            migration.db_sync()
        import oslo_messaging
        oslo_messaging.get_notification_transport(self.conf, url="fake:/")
        self.conf.set_override("transport_url", "fake:/")
        self.conf.set_override("driver", ["test"], group="oslo_messaging_notifications")
        rpc.init(self.conf)
        self.ctxt = context.RequestContext("user", "project", is_admin=True)
        self.db_lock = threading.Lock()  # sqlite: one writer at a time in this process
        with self.db_lock:
            self.volume_type = volume_types.get_default_volume_type()
        self.set_options()

    def set_options(self, **overrides):
        values = dict(self.DEFAULT_OPTIONS, backup_ceph_conf=self.secondary_conf,
                      backup_ceph_user="cinder-backup", backup_ceph_pool="backups",
                      backup_ceph_keyring=None, source_ceph_conf=self.primary_conf,
                      source_ceph_user="cinder")
        values.update(overrides)
        for name, value in values.items():
            self.conf.set_override(name, value, group=opts.GROUP)

    @contextlib.contextmanager
    def overridden(self, primary_conf=None, **overrides):
        """Options (and the conf file os-brick uses for volumes) changed for a block."""
        self.primary_conf = primary_conf or self.primary_conf
        for name, value in overrides.items():
            self.conf.set_override(name, value, group=opts.GROUP)
        try:
            yield
        finally:
            self.primary_conf = self.sandbox_primary_conf
            for name in overrides:
                self.conf.clear_override(name, group=opts.GROUP)
            self.set_options()

    def driver(self):
        return driver.RBDIncrementalBackupDriver(self.ctxt)

    # -- Cinder objects ------------------------------------------------------------

    def create_volume(self, size_gb=1):
        with self.db_lock:
            volume = objects.Volume(self.ctxt, size=size_gb, status="available",
                                    volume_type_id=self.volume_type["id"], user_id="user",
                                    project_id="project")
            volume.create()
        with self.primary() as ctx:
            rbd.RBD().create(ctx, volume.name, size_gb << 30, old_format=False,
                             features=FEATURES)
        return volume

    def delete_volume(self, volume):
        self.remove_volume_image(volume.name)

    def remove_volume_image(self, name):
        """Remove image ``name`` of the volumes pool, if there is one."""
        with self.primary() as ctx, contextlib.suppress(rbd.ImageNotFound):
            rbd_target.remove_image(ctx, name)

    def volume(self, volume_id):
        with self.db_lock:
            return objects.Volume.get_by_id(self.ctxt, volume_id)

    def create_snapshot(self, volume):
        with self.db_lock:
            snapshot = objects.Snapshot(self.ctxt, volume_id=volume.id, volume_size=volume.size,
                                        status="available", user_id="user",
                                        project_id="project",
                                        volume_type_id=self.volume_type["id"])
            snapshot.create()
        with self.volume_image(volume) as img:
            img.create_snap(snapshot.name)
        return snapshot

    def create_backup(self, volume, parent=None, snapshot=None):
        with self.db_lock:
            backup = objects.Backup(self.ctxt, volume_id=volume.id, size=volume.size,
                                    status="creating", user_id="user", project_id="project",
                                    parent_id=parent.id if parent else None,
                                    snapshot_id=snapshot.id if snapshot else None,
                                    service=CLASS_PATH)
            backup.create()
        return backup

    def backup(self, backup_id):
        with self.db_lock:
            return objects.Backup.get_by_id(self.ctxt, backup_id)

    def finish_backup(self, backup, updates):
        """What Cinder's backup manager does with the driver's return value."""
        with self.db_lock:
            backup.refresh()
            backup.status = "available"
            backup.update(updates or {})
            backup.save()

    def mark_error(self, backup):
        """What cinder-backup does at start-up with a backup left 'creating'."""
        with self.db_lock:
            backup.refresh()
            backup.status = "error"
            backup.save()

    def delete_backup_quietly(self, drv, backup):
        with contextlib.suppress(Exception):
            drv.delete_backup(backup)

    def user_messages(self, volume):
        from cinder.db import api as db_api
        return db_api.message_get_all(self.ctxt, filters={"resource_uuid": volume.id})

    @staticmethod
    def location(backup):
        return lineage.parse_compact(backup.service_metadata)

    # -- clusters ------------------------------------------------------------------

    @contextlib.contextmanager
    def primary(self):
        spec = cluster.ClusterSpec(conf=self.sandbox_primary_conf, user="cinder")
        with cluster.cluster(spec) as client, cluster.ioctx(client, "volumes") as ctx:
            yield ctx

    @contextlib.contextmanager
    def secondary(self):
        spec = cluster.ClusterSpec(conf=self.secondary_conf, user="cinder-backup")
        with cluster.cluster(spec) as client, cluster.ioctx(client, "backups") as ctx:
            yield ctx

    @contextlib.contextmanager
    def volume_image(self, volume, read_only=False):
        with self.primary() as ctx, cluster.image(ctx, volume.name, read_only=read_only) as img:
            yield img

    @contextlib.contextmanager
    def chain_image(self, name):
        with self.secondary() as ctx, cluster.image(ctx, name) as img:
            yield img

    def chain_exists(self, name):
        with self.secondary() as ctx:
            return name in rbd.RBD().list(ctx)

    # -- what the manager does around the driver --------------------------------

    def volume_file(self, volume):
        return brick_volume_file(self.primary_conf, volume.name)

    def run_backup(self, drv, backup):
        volume = self.volume(backup.volume_id)
        with self.volume_file(volume) as volume_file:
            updates = drv.backup(backup, volume_file)
        self.finish_backup(backup, updates)
        return backup

    def run_restore(self, drv, backup, volume, volume_is_new):
        with self.volume_file(volume) as volume_file:
            drv.restore(backup, volume.id, volume_file, volume_is_new)
