"""A real Cinder environment for driver tests: objects on sqlite, the sandbox.

Follows what cinder-backup does: the manager creates the driver with a
request context, hands it os-brick's ``RBDVolumeIOWrapper`` and applies the
returned updates to the backup.
"""

import contextlib
import os
import tempfile

import rbd
from cinder import context, objects, rpc
from cinder.common import config
from cinder.db import migration
from cinder.volume import volume_types
from os_brick.initiator import linuxrbd

from cinder_rbd_incremental import cluster, driver, lineage, opts
from cinder_rbd_incremental.targets import rbd as rbd_target

SANDBOX = os.environ.get("SANDBOX_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", ".sandbox")
PRIMARY_CONF = os.path.abspath(os.path.join(SANDBOX, "primary", "ceph.conf"))
SECONDARY_CONF = os.path.abspath(os.path.join(SANDBOX, "secondary", "ceph.conf"))
CLASS_PATH = "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver"


class CinderEnv:
    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        for conf in (PRIMARY_CONF, SECONDARY_CONF):
            if not os.path.exists(conf):
                raise RuntimeError("sandbox is not up (%s missing): run `make sandbox`" % conf)
        objects.register_all()
        self.conf = config.CONF
        self.tmpdir = tempfile.mkdtemp(prefix="cinder-env-")
        self.conf([], project="cinder", default_config_files=[])
        self.conf.set_override("connection", "sqlite:///%s/cinder.sqlite" % self.tmpdir,
                               group="database")
        migration.db_sync()
        import oslo_messaging
        oslo_messaging.get_notification_transport(self.conf, url="fake:/")
        self.conf.set_override("transport_url", "fake:/")
        self.conf.set_override("driver", ["test"], group="oslo_messaging_notifications")
        rpc.init(self.conf)
        self.ctxt = context.RequestContext("user", "project", is_admin=True)
        self.volume_type = volume_types.get_default_volume_type()
        self.set_options()

    def set_options(self, **overrides):
        values = dict(backup_ceph_conf=SECONDARY_CONF, backup_ceph_user="cinder-backup",
                      backup_ceph_pool="backups", source_ceph_conf=PRIMARY_CONF,
                      source_ceph_user="cinder", verify="full", connect_timeout=10)
        values.update(overrides)
        for name, value in values.items():
            self.conf.set_override(name, value, group=opts.GROUP)

    @contextlib.contextmanager
    def overridden(self, **overrides):
        """Options changed for the duration of a block."""
        for name, value in overrides.items():
            self.conf.set_override(name, value, group=opts.GROUP)
        try:
            yield
        finally:
            for name in overrides:
                self.conf.clear_override(name, group=opts.GROUP)
            self.set_options()

    def driver(self):
        return driver.RBDIncrementalBackupDriver(self.ctxt)

    # -- Cinder objects ------------------------------------------------------------

    def create_volume(self, size_gb):
        volume = objects.Volume(self.ctxt, size=size_gb, status="available",
                                volume_type_id=self.volume_type["id"], user_id="user",
                                project_id="project")
        volume.create()
        with self.primary() as ctx:
            rbd.RBD().create(ctx, volume.name, size_gb << 30, old_format=False,
                             features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                             | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)
        return volume

    def delete_volume(self, volume):
        with self.primary() as ctx:
            with contextlib.suppress(rbd.ImageNotFound):
                rbd_target.RBDTarget.delete_image(ctx, volume.name)

    def create_snapshot(self, volume):
        snapshot = objects.Snapshot(self.ctxt, volume_id=volume.id, volume_size=volume.size,
                                    status="available", user_id="user", project_id="project",
                                    volume_type_id=self.volume_type["id"])
        snapshot.create()
        with self.volume_image(volume) as img:
            img.create_snap(snapshot.name)
        return snapshot

    def create_backup(self, volume, parent, snapshot):
        backup = objects.Backup(self.ctxt, volume_id=volume.id, size=volume.size,
                                status="creating", user_id="user", project_id="project",
                                parent_id=parent.id if parent else None,
                                snapshot_id=snapshot.id if snapshot else None,
                                service=CLASS_PATH)
        backup.create()
        return backup

    @staticmethod
    def finish_backup(backup, updates):
        """What Cinder's backup manager does with the driver's return value."""
        backup.refresh()
        backup.status = "available"
        backup.update(updates or {})
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
        spec = cluster.ClusterSpec(conf=PRIMARY_CONF, user="cinder")
        with cluster.cluster(spec) as client, cluster.ioctx(client, "volumes") as ctx:
            yield ctx

    @contextlib.contextmanager
    def secondary(self):
        spec = cluster.ClusterSpec(conf=SECONDARY_CONF, user="cinder-backup")
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

    @contextlib.contextmanager
    def volume_file(self, volume):
        """os-brick's file object for an attached RBD volume, as cinder-backup gets it."""
        client = linuxrbd.RBDClient("cinder", "volumes", conffile=PRIMARY_CONF)
        try:
            rbd_volume = linuxrbd.RBDVolume(client, volume.name)
            meta = linuxrbd.RBDImageMetadata(rbd_volume, "volumes", "cinder", PRIMARY_CONF)
            wrapper = linuxrbd.RBDVolumeIOWrapper(meta)
            try:
                yield wrapper
            finally:
                wrapper.close()
        finally:
            client.disconnect()
