"""Connection settings: ceph.conf's timeouts are kept unless overridden, the
librbd cache is off, and the CLI's --op-timeout/--connect-timeout.

``cluster.configure`` builds the librados handle without connecting, so no
cluster is needed.
"""

import contextlib
import os
import tempfile
import unittest

from cinder_rbd_incremental import cli, cluster


def conf_file(directory, extra=""):
    path = os.path.join(directory, "ceph.conf")
    with open(path, "w") as f:
        f.write("[global]\nmon host = 127.0.0.1:1\n" + extra)
    return path


class ConfigureTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def settings(self, extra="", **spec):
        client = cluster.configure(cluster.ClusterSpec(conf=conf_file(self.dir.name, extra),
                                                       **spec))
        try:
            return {key: client.conf_get(key) for key in (
                "rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout",
                "rbd_cache")}
        finally:
            client.shutdown()

    def test_op_timeout_not_set_anywhere_gets_a_bound(self):
        got = self.settings()
        self.assertEqual(float(cluster.DEFAULT_OP_TIMEOUT), float(got["rados_osd_op_timeout"]))
        self.assertEqual(float(cluster.DEFAULT_OP_TIMEOUT), float(got["rados_mon_op_timeout"]))

    def test_ceph_conf_timeouts_are_kept(self):
        got = self.settings("rados osd op timeout = 7\nrados mon op timeout = 8\n"
                            "client mount timeout = 9\n")
        self.assertEqual((7.0, 8.0, 9.0), (float(got["rados_osd_op_timeout"]),
                                           float(got["rados_mon_op_timeout"]),
                                           float(got["client_mount_timeout"])))

    def test_spec_timeouts_override_ceph_conf(self):
        got = self.settings("rados osd op timeout = 7\nclient mount timeout = 9\n",
                            op_timeout=5, connect_timeout=3)
        self.assertEqual((5.0, 5.0, 3.0), (float(got["rados_osd_op_timeout"]),
                                           float(got["rados_mon_op_timeout"]),
                                           float(got["client_mount_timeout"])))

    def test_librbd_cache_is_off_unless_asked_for(self):
        self.assertEqual("false", self.settings("rbd cache = true\n")["rbd_cache"])
        self.assertEqual("true", self.settings(options={"rbd_cache": "true"})["rbd_cache"])

    def test_missing_conf_is_a_cluster_error(self):
        with self.assertRaises(cluster.ClusterError):
            cluster.configure(cluster.ClusterSpec(conf=os.path.join(self.dir.name, "nope")))


class CommandLineTimeoutsTestCase(unittest.TestCase):
    SYNC = ["sync", "volumes/a@s", "backups/b"]

    def spec(self, argv, prefix=""):
        return cli.cluster_spec(cli.build_parser().parse_args(argv), prefix)

    def test_default_leaves_ceph_conf_alone(self):
        spec = self.spec(self.SYNC, "src_")
        self.assertIsNone(spec.op_timeout)
        self.assertIsNone(spec.connect_timeout)

    def test_before_or_after_the_command(self):
        for argv in (["--op-timeout", "7", "--connect-timeout", "3"] + self.SYNC,
                     self.SYNC[:1] + ["--op-timeout", "7", "--connect-timeout", "3"]
                     + self.SYNC[1:]):
            for prefix in ("", "src_", "dest_"):
                spec = self.spec(argv, prefix)
                self.assertEqual((7, 3), (spec.op_timeout, spec.connect_timeout), argv)

    def test_not_a_positive_number_is_a_usage_error(self):
        for bad in ("0", "-1", "x"):
            with self.assertRaises(SystemExit) as caught, \
                    open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                cli.build_parser().parse_args(["--op-timeout", bad] + self.SYNC)
            self.assertEqual(2, caught.exception.code)
