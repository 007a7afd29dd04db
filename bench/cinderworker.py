#!/usr/bin/env python3
"""A Cinder backup driver, in process, with real Cinder objects (for bench/run.py).

Run as ``cinderworker.py ours|stock``: Cinder 29's objects on an sqlite
database (as ``tests/functional/cinder_env.py``), the sandbox clusters with
Cinder's users (``cinder`` on the primary, ``cinder-backup`` on the
secondary), os-brick's ``RBDVolumeIOWrapper`` as the volume file, the way
cinder-backup hands it over. ``ours`` is this project's driver, ``stock``
Cinder's ``CephBackupDriver``.

Commands come one JSON object a line on stdin; each answer is one line on
stdout starting with ``RESULT``. Only the driver call is timed: the volume
file is opened before and closed after, as cinder-backup's manager does. For
each timed call the answer holds wall seconds, CPU seconds (this process'
threads plus the children it waited for, e.g. the stock driver's ``rbd``
pipes) and peak RSS (this process' high-water mark, reset before the call via
``/proc/self/clear_refs``; the children's peak separately).
"""

import contextlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
import warnings

warnings.simplefilter("ignore")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from cinder import context, objects, rpc  # noqa: E402
from cinder.common import config  # noqa: E402
from cinder.db import migration  # noqa: E402
from cinder.volume import volume_types  # noqa: E402

from cinder_rbd_incremental import opts  # noqa: E402
from tests.functional import cinder_env  # noqa: E402

SANDBOX = os.path.abspath(os.environ.get("SANDBOX_DIR") or os.path.join(ROOT, ".sandbox"))
PRIMARY_CONF = os.path.join(SANDBOX, "primary", "ceph.conf")
SECONDARY_CONF = os.path.join(SANDBOX, "secondary", "ceph.conf")
OURS = "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver"
STOCK = "cinder.backup.drivers.ceph.CephBackupDriver"


def peak_rss_reset():
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Worker:
    def __init__(self, kind):
        self.kind = kind
        objects.register_all()
        self.conf = config.CONF
        self.tmpdir = tempfile.mkdtemp(prefix="rbdinc-bench-cinder-")
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
        self.backup_conf = SECONDARY_CONF
        self.volumes, self.backups = {}, {}
        if kind == "stock":
            from cinder.backup.drivers import ceph  # registers the backup_ceph_* options
            del ceph

    def driver(self):
        """A new driver: both read the backup cluster's conf when created."""
        if self.kind == "ours":
            from cinder_rbd_incremental import driver
            for name, value in dict(backup_ceph_conf=self.backup_conf,
                                    backup_ceph_user="cinder-backup",
                                    backup_ceph_pool="backups",
                                    source_ceph_conf=PRIMARY_CONF,
                                    source_ceph_user="cinder").items():
                self.conf.set_override(name, value, group=opts.GROUP)
            return driver.RBDIncrementalBackupDriver(self.ctxt)
        from cinder.backup.drivers import ceph
        for name, value in dict(backup_ceph_conf=self.backup_conf,
                                backup_ceph_user="cinder-backup",
                                backup_ceph_pool="backups").items():
            self.conf.set_override(name, value)
        return ceph.CephBackupDriver(self.ctxt)

    # -- commands ------------------------------------------------------------------

    def cmd_conf(self, backup_conf):
        self.backup_conf = backup_conf
        return {}

    def cmd_volume(self, size_gb):
        """A Cinder volume record; the caller creates its image ``volume-<id>``."""
        volume = objects.Volume(self.ctxt, size=size_gb, status="available",
                                volume_type_id=self.volume_type["id"], user_id="user",
                                project_id="project")
        volume.create()
        self.volumes[volume.id] = volume
        return {"id": volume.id, "name": volume.name}

    def _backup(self, drv, volume_id, parent_id):
        volume = self.volumes[volume_id]
        backup = objects.Backup(self.ctxt, volume_id=volume_id, size=volume.size,
                                status="creating", user_id="user", project_id="project",
                                parent_id=parent_id, container=None,
                                service=OURS if self.kind == "ours" else STOCK)
        backup.create()
        with self.volume_file(volume) as volume_file:
            timed = {}
            started = time.monotonic()
            updates = drv.backup(backup, volume_file)
            timed["seconds"] = time.monotonic() - started
        backup.refresh()
        backup.status = "available"
        backup.update(updates or {})
        backup.save()
        self.backups[backup.id] = backup
        return backup.id, timed["seconds"]

    def cmd_backup(self, volume_ids, parents=None):
        """Back up ``volume_ids`` at once (one thread each); timed as a whole."""
        parents = parents or [None] * len(volume_ids)
        drv = self.driver()
        results, errors = [None] * len(volume_ids), []

        def one(i):
            try:
                results[i] = self._backup(drv, volume_ids[i], parents[i])
            except Exception:
                errors.append(traceback.format_exc())

        def run():
            if len(volume_ids) == 1:
                one(0)
                return
            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(volume_ids))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        out = self.measured(run)
        if errors:
            raise RuntimeError(errors[0])
        out["backup_ids"] = [r[0] for r in results]
        out["driver_seconds"] = [r[1] for r in results]
        return out

    def cmd_restore(self, backup_id, volume_id, is_new):
        drv = self.driver()
        backup = objects.Backup.get_by_id(self.ctxt, backup_id)
        volume = self.volumes[volume_id]
        with self.volume_file(volume) as volume_file:
            return self.measured(lambda: drv.restore(backup, volume_id, volume_file, is_new))

    def cmd_delete(self, backup_ids):
        drv = self.driver()
        for backup_id in backup_ids:
            backup = objects.Backup.get_by_id(self.ctxt, backup_id)
            drv.delete_backup(backup)
            backup.destroy()
        return {}

    # -- plumbing --------------------------------------------------------------------

    @staticmethod
    def measured(func):
        peak_rss_reset()
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        func()
        wall = time.monotonic() - started
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        user = (self_after.ru_utime - self_before.ru_utime
                + children_after.ru_utime - children_before.ru_utime)
        system = (self_after.ru_stime - self_before.ru_stime
                  + children_after.ru_stime - children_before.ru_stime)
        return {"wall": wall, "cpu_user": user, "cpu_sys": system, "cpu": user + system,
                "maxrss_mib": peak_rss_mib(),
                "children_maxrss_mib": children_after.ru_maxrss / 1024
                if children_after.ru_utime > children_before.ru_utime else 0.0}

    def volume_file(self, volume):
        return cinder_env.brick_volume_file(PRIMARY_CONF, volume.name)


def main():
    kind = sys.argv[1]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the answers
    worker = Worker(kind)
    out.write("RESULT %s\n" % json.dumps({"ok": True, "ready": True}))
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            result = getattr(worker, "cmd_" + request.pop("cmd"))(**request)
            result["ok"] = True
        except Exception:
            result = {"ok": False, "error": traceback.format_exc()[-3000:]}
        out.write("RESULT %s\n" % json.dumps(result))


if __name__ == "__main__":
    main()
