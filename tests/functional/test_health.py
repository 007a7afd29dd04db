"""The periodic health check's probe (manager.BackupManager) against the
sandbox's backup cluster: it answers; a missing pool or a cluster nobody
answers for is a failure with a reason, never a hang."""

import os
import tempfile
import unittest

from cinder_rbd_incremental import cluster
from cinder_rbd_incremental.targets import rbd as rbd_target
from tests.functional.base import SECONDARY


def target(conf=None, pool=SECONDARY.pool):
    spec = cluster.ClusterSpec(conf=conf or SECONDARY.conf, user=SECONDARY.user)
    return rbd_target.RBDTarget(spec, pool)


class CheckReachableTest(unittest.TestCase):

    def test_the_backup_cluster_answers(self):
        target().check_reachable(timeout=30)

    def test_a_missing_pool_fails(self):
        with self.assertRaisesRegex(cluster.ClusterError, "pool no-such-pool does not exist"):
            target(pool="no-such-pool").check_reachable(timeout=30)

    def test_no_monitor_answering_fails_within_the_timeout(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
            conf.write("[global]\nmon_host = 127.0.0.1:1\n")  # nothing listens there
        self.addCleanup(os.unlink, conf.name)
        with self.assertRaisesRegex(cluster.ClusterError, "cannot connect"):
            target(conf=conf.name).check_reachable(timeout=2)
