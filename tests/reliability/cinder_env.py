"""Real Cinder objects on a sqlite *file* for the faults clusters.

Like ``tests/functional/cinder_env.py`` (the manager's way of calling the
driver: os-brick's ``RBDVolumeIOWrapper`` as the volume file, the driver's
updates applied to the backup), but the clusters are the reliability tier's
own pair and the database is a file that a crash worker process opens too,
so a chain started in one process is continued in another.
"""

import contextlib
import os
import threading

import rbd
from cinder import context, objects, rpc
from cinder.common import config
from cinder.db import migration
from cinder.volume import volume_types
from os_brick.initiator import linuxrbd

from cinder_rbd_incremental import driver, lineage, opts
from tests.reliability import sandbox

CLASS_PATH = "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver"
# What the tier runs with: the default verification, shorter timeouts.
DEFAULTS = {"verify": "sample", "connect_timeout": 10, "op_timeout": 30}


class Env:
    """One per process (oslo.config's CONF is global)."""

    _instance = None

    @classmethod
    def get(cls, db_path, create=True):
        if cls._instance is None:
            cls._instance = cls(db_path, create)
        elif cls._instance.db_path != db_path:
            raise RuntimeError("one Cinder environment per process")
        return cls._instance

    def __init__(self, db_path, create):
        objects.register_all()
        self.db_path = db_path
        self.conf = config.CONF
        self.conf([], project="cinder", default_config_files=[])
        self.conf.set_override("connection", "sqlite:///%s" % db_path, group="database")
        if create:
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
        self.primary_conf = sandbox.conf(sandbox.PRIMARY)
        self.set_options()

    def set_options(self, **overrides):
        values = dict(DEFAULTS, backup_ceph_conf=sandbox.conf(sandbox.SECONDARY),
                      backup_ceph_user="cinder-backup", backup_ceph_pool="backups",
                      backup_ceph_keyring=None, source_ceph_conf=self.primary_conf,
                      source_ceph_user="cinder")
        values.update(overrides)
        for name, value in values.items():
            self.conf.set_override(name, value, group=opts.GROUP)

    @contextlib.contextmanager
    def overridden(self, primary_conf=None, **overrides):
        """Options (and the volume cluster's conf file) changed for a block."""
        self.primary_conf = primary_conf or self.primary_conf
        self.set_options(**overrides)
        try:
            yield
        finally:
            self.primary_conf = sandbox.conf(sandbox.PRIMARY)
            self.set_options()

    def driver(self):
        return driver.RBDIncrementalBackupDriver(self.ctxt)

    # -- Cinder objects ----------------------------------------------------------

    def create_volume(self, size_gb=1):
        with self.db_lock:
            volume = objects.Volume(self.ctxt, size=size_gb, status="available",
                                    volume_type_id=self.volume_type["id"], user_id="user",
                                    project_id="project")
            volume.create()
        sandbox.create_image(sandbox.PRIMARY, volume.name, size_gb << 30)
        return volume

    def volume(self, volume_id):
        with self.db_lock:
            return objects.Volume.get_by_id(self.ctxt, volume_id)

    def create_backup(self, volume, parent=None):
        with self.db_lock:
            backup = objects.Backup(self.ctxt, volume_id=volume.id, size=volume.size,
                                    status="creating", user_id="user", project_id="project",
                                    parent_id=parent.id if parent else None,
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

    @staticmethod
    def location(backup):
        return lineage.parse_compact(backup.service_metadata)

    # -- what the manager does around the driver --------------------------------

    @contextlib.contextmanager
    def volume_file(self, volume):
        """os-brick's file object for an attached RBD volume, as cinder-backup gets it."""
        client = linuxrbd.RBDClient("cinder", "volumes", conffile=self.primary_conf)
        try:
            rbd_volume = linuxrbd.RBDVolume(client, volume.name)
            meta = linuxrbd.RBDImageMetadata(rbd_volume, "volumes", "cinder",
                                             self.primary_conf)
            wrapper = linuxrbd.RBDVolumeIOWrapper(meta)
            try:
                yield wrapper
            finally:
                wrapper.close()
        finally:
            client.disconnect()

    def run_backup(self, drv, backup):
        volume = self.volume(backup.volume_id)
        with self.volume_file(volume) as volume_file:
            updates = drv.backup(backup, volume_file)
        self.finish_backup(backup, updates)
        return backup

    def run_restore(self, drv, backup, volume, volume_is_new):
        with self.volume_file(volume) as volume_file:
            drv.restore(backup, volume.id, volume_file, volume_is_new)


def delete_volume_image(volume):
    with contextlib.suppress(rbd.ImageNotFound):
        sandbox.remove_image(sandbox.PRIMARY, volume.name)


def db_file(directory):
    return os.path.join(directory, "cinder.sqlite")
