"""Cinder's backup manager plus a periodic health check of the backup target.

Cinder asks a backup driver once whether it works: ``check_for_setup_error``
when ``cinder-backup`` starts (a failure leaves the service down until it is
restarted; Cinder does not try again). After that, the manager's
``is_working()`` only says that this start-up check passed, so when the backup
cluster dies later the service still reports itself up, the scheduler keeps
sending it backups and each fails only after its timeouts. A driver has no
hook to change that; the manager does. This one checks every
``health_check_interval`` seconds that the target still answers (for the
``rbd`` target: connect, read one object of the pool, each step bounded by
``health_check_timeout``) and reports not working while it does not. Cinder
then:

* stops sending heartbeats, so ``openstack volume service list`` shows the
  service ``down`` once ``service_down_time`` (60 s) has passed;
* publishes ``backend_state: False``, so the scheduler sends new backups to
  another backup service of the availability zone, or fails them at once
  ("Service not found for creating backup");
* refuses backups and deletes that still reach it with a user message
  (``BACKUP_SERVICE_DOWN``) instead of letting them time out.

When the target answers again, the service reports up at its next heartbeat.
The check is read-only on purpose: a *full* backup cluster still answers and
the service stays up, since deleting backups is how space is freed.

Enable it in ``[DEFAULT]`` of ``cinder.conf`` on the ``cinder-backup`` hosts::

    backup_manager = cinder_rbd_incremental.manager.BackupManager
"""

import logging

from cinder.backup import manager as cinder_manager
from oslo_config import cfg
from oslo_service import periodic_task

from cinder_rbd_incremental import cluster, driver, engine, opts

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
INTERVAL = CONF[opts.GROUP].health_check_interval  # fixed when Cinder loads this class


def bounded(check, timeout):
    """Run ``check()`` on a native thread; return None when it passed, else
    why not. A check still running after ``timeout`` seconds counts as failed
    (a hung NFS mount, say) and is left to finish on its own."""
    outcome = []

    def run():
        try:
            check()
            outcome.append(None)
        except Exception as exc:  # reported, not raised: this is the health check
            outcome.append(str(exc) or type(exc).__name__)

    thread = engine.threading.Thread(target=run, daemon=True, name="backup-target-check")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else "no answer within %g s" % timeout


class BackupManager(cinder_manager.BackupManager):
    """``is_working()`` is also false while the backup target does not answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_problem = None

    def is_working(self):
        return super().is_working() and self.target_problem is None

    @periodic_task.periodic_task(spacing=INTERVAL, enabled=INTERVAL > 0,
                                 run_immediately=True)
    def check_backup_target(self, context):
        if not self.is_initialized or not issubclass(
                self.service, driver.RBDIncrementalBackupDriver):
            return  # down since start-up anyway, or another driver's target
        options = CONF[opts.GROUP]
        timeout = options.health_check_timeout
        try:
            target = driver.load_target(options)
        except Exception as exc:
            self.record_check("cannot load target %s: %s" % (options.target, exc))
            return
        # Each step of the check is bounded by the timeout; connect + read is two.
        self.record_check(driver.run_native(bounded, lambda: target.check_reachable(timeout),
                                            3 * timeout))

    def record_check(self, problem):
        """Keep the check's outcome; log when it changes."""
        if problem and problem != self.target_problem:
            LOG.error("backup target %s does not answer: %s. This cinder-backup reports "
                      "itself down until it does.", _where(), problem)
        elif problem is None and self.target_problem is not None:
            LOG.warning("backup target %s answers again: this cinder-backup reports "
                        "itself up.", _where())
        self.target_problem = problem


def _where():
    options = CONF[opts.GROUP]
    if options.target == "file":
        return "directory %s" % options.file_target_dir
    spec = cluster.ClusterSpec(conf=options.backup_ceph_conf, user=options.backup_ceph_user)
    return "pool %s on %s" % (options.backup_ceph_pool, spec.describe())
