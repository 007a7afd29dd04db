"""Ceph-side faults: a stopped OSD, a full pool, a flaky network, concurrency,
and a user without the capabilities it needs.

Every operation that can meet a fault runs in a child of the crash worker or
as a subprocess, with a hard time limit: a hang is reported as a failure, it
never blocks the tier. Faults are injected on the tier's own clusters only.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import threading
import time
import uuid

import rbd
from cinder import exception

from cinder_rbd_incremental import naming
from tests.reliability import base, sandbox

MiB = sandbox.MiB
OP_TIMEOUT = 5                    # [backup_rbd_incremental] op_timeout for these tests
LIMIT = 3 * OP_TIMEOUT + 15       # a failing operation must end within this (s)
TIMEOUT_WORDS = re.compile(r"time[sd]? ?out|ETIMEDOUT|errno 110", re.I)
CLI = os.path.join(sandbox.REPO, ".venv", "bin", "rbd-incremental")
CONCURRENT_VOLUMES = 8


class FaultHelpers(base.ReliabilityTestCase):
    """Helpers of the fault tests (no tests of its own)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.worker = base.worker()
        cls.drv = cls.env.driver()

    def setUp(self):
        super().setUp()
        self.writer = sandbox.Writer(self.id())
        self.problems = []

    # -- helpers --------------------------------------------------------------------

    def volume_with_data(self, total, pieces=16):
        volume = self.new_volume()
        self.write(volume, total, pieces)
        return volume

    def write(self, volume, total, pieces=8):
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, volume.name) as img:
            self.writer.scatter(img, total, pieces)

    def source_image(self, total):
        name = "faults-src-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.PRIMARY, name)
        sandbox.create_image(sandbox.PRIMARY, name, sandbox.GiB)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, name) as img:
            self.writer.scatter(img, total, 16)
            img.create_snap("s0")
        return name, sandbox.digest_of(sandbox.PRIMARY, name, "s0")

    def new_backup(self, volume, parent=None):
        backup = self.env.create_backup(volume, parent)
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY,
                        naming.chain_image(volume.id, backup.id))
        return backup

    def backup_ok(self, volume, parent=None, options=None):
        """A backup in the worker that must complete; returns (backup, digest)."""
        backup = self.new_backup(volume, parent)
        outcome = self.worker.run({"op": "backup", "backup_id": backup.id,
                                   "options": options or {}}, timeout=120)
        self.assertTrue(outcome.done, "%s\n%s" % (outcome.describe(), outcome.traceback))
        backup = self.env.backup(backup.id)
        snap = self.env.location(backup)[2]
        return backup, sandbox.digest_of(sandbox.PRIMARY, volume.name, snap)

    def assertRestores(self, backup, digest, options=None):
        target = self.new_volume()
        outcome = self.worker.run({"op": "restore", "backup_id": backup.id,
                                   "volume_id": target.id, "volume_is_new": True,
                                   "options": options or {}}, timeout=120)
        self.assertTrue(outcome.done, "%s\n%s" % (outcome.describe(), outcome.traceback))
        self.assertEqual(digest, sandbox.digest_of(sandbox.PRIMARY, target.name),
                         "restore of %s" % backup.id)
        base.count("restores_verified")
        sandbox.remove_image(sandbox.PRIMARY, target.name)

    def cinder_cleans_up(self, backup):
        """What Cinder does with a backup that failed: error, then delete."""
        self.env.mark_error(backup)
        self.drv.delete_backup(self.env.backup(backup.id))

    def delete_all(self, backups):
        for backup in reversed(backups):
            self.drv.delete_backup(self.env.backup(backup.id))

    def problem(self, message):
        self.problems.append(message)

    def assertNoProblems(self):
        self.assertEqual([], self.problems)

    def check_failure(self, what, succeeded, seconds, error, limit=LIMIT):
        """A failed operation: ended in time, with an error that says why."""
        if seconds > limit:
            self.problem("%s: still running %.0f s after the fault (limit %d s, op_timeout "
                         "%d s); killed" % (what, seconds, limit, OP_TIMEOUT))
            return
        if succeeded:
            self.problem("%s: succeeded despite the fault" % what)
        elif not error:
            self.problem("%s: failed without an error message" % what)
        base.count("faults_survived")


class FaultTestCase(FaultHelpers):
    # -- (a) an OSD of the backup cluster stops ---------------------------------------

    def test_backup_cluster_osd_stops_mid_backup_and_mid_sync(self):
        # plenty left to write when the OSD stops (a production volume has more)
        volume = self.volume_with_data(192 * MiB, 48)
        src, src_digest = self.source_image(128 * MiB)
        dest = "faults-dst-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, dest)
        timeout_conf = "rados osd op timeout = %d\nrados mon op timeout = %d" % (
            OP_TIMEOUT, OP_TIMEOUT)
        src_conf = sandbox.conf_copy(sandbox.PRIMARY, self.tmp, timeout_conf)
        dest_conf = sandbox.conf_copy(sandbox.SECONDARY, self.tmp, timeout_conf)
        backup = self.new_backup(volume)
        chain = naming.chain_image(volume.id, backup.id)
        stopped, cli = {}, {}
        cli_argv = [CLI, "sync", *self.cli_cluster_args(src_conf, dest_conf),
                    "volumes/%s@s0" % src, "backups/" + dest]

        def wait_for(image, timeout=30):
            deadline = time.monotonic() + timeout
            while image not in sandbox.images(sandbox.SECONDARY):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)

        def stop_when_both_write(_pid):
            # the backup writes its chain, then the sync starts writing too:
            # stop the backup cluster's only OSD under both
            wait_for(chain)
            cli["proc"] = proc = subprocess.Popen(cli_argv, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)

            def reap():  # when the sync ended, not when the backup did
                cli["output"] = proc.communicate()
                cli["ended"] = time.monotonic()

            cli["reaper"] = threading.Thread(target=reap, daemon=True)
            cli["reaper"].start()
            wait_for(dest)
            sandbox.stop_osd(sandbox.SECONDARY)
            stopped["at"] = time.monotonic()
            base.count("faults_injected")

        self.addCleanup(sandbox.start_osd, sandbox.SECONDARY)
        outcome = self.worker.run(
            {"op": "backup", "backup_id": backup.id, "options": {"op_timeout": OP_TIMEOUT}},
            timeout=LIMIT + 10, fault=(0.0, stop_when_both_write))
        backup_seconds = time.monotonic() - stopped.get("at", 0)
        self.assertIn("at", stopped, "the OSD was never stopped: %s" % outcome.describe())
        proc = cli["proc"]
        cli["reaper"].join(timeout=max(1, stopped["at"] + LIMIT - time.monotonic()))
        if "ended" in cli:
            _out, cli_err = cli["output"]
            cli_seconds = cli["ended"] - stopped["at"]
        else:
            proc.kill()
            cli["reaper"].join()
            _out, cli_err = cli["output"]
            cli_seconds = LIMIT + 1
        base.set_figure("osd_stop_backup_seconds", round(backup_seconds, 1))
        base.set_figure("osd_stop_backup_error", outcome.error)
        base.set_figure("osd_stop_sync_seconds", round(cli_seconds, 1))
        base.set_figure("osd_stop_sync_error", (cli_err or "").strip())
        self.check_failure("driver backup (op_timeout = %d)" % OP_TIMEOUT, outcome.done,
                           backup_seconds, outcome.error)
        if outcome.error and not TIMEOUT_WORDS.search(outcome.error):
            self.problem("driver backup: error does not say what timed out: %s"
                         % outcome.error)
        self.check_failure("rbd-incremental sync (ceph.conf: rados osd op timeout = %d)"
                           % OP_TIMEOUT, proc.returncode == 0, cli_seconds, cli_err)
        if cli_seconds <= LIMIT and cli_err and not (
                cli_err.startswith("rbd-incremental: ") and len(cli_err.splitlines()) == 1):
            self.problem("rbd-incremental sync: not a one-line error: %r" % cli_err[:300])

        # the OSD comes back: cleaning up, the next backup and the re-run work
        sandbox.start_osd(sandbox.SECONDARY)
        sandbox.fence_dead_clients()
        self.cinder_cleans_up(backup)
        self.assertNotIn(chain, sandbox.images(sandbox.SECONDARY))
        after, digest = self.backup_ok(volume)
        self.assertRestores(after, digest)
        self.delete_all([after])
        self.assertNothingLeft(volumes=[volume], chains=[chain, self.env.location(after)[1]])
        rerun = subprocess.run([CLI, "sync", *self.cli_cluster_args(),
                                "volumes/%s@s0" % src, "backups/" + dest],
                               capture_output=True, text=True, timeout=120)
        if rerun.returncode != 0:
            opens = True
            try:
                sandbox.snapshots(sandbox.SECONDARY, dest)
            except rbd.ImageNotFound:
                opens = False
            self.problem("re-run of the sync after the OSD came back failed: %s%s" % (
                rerun.stderr.strip(), "" if opens else " (the destination is listed but "
                "cannot be opened: its creation was interrupted)"))
        else:
            self.assertEqual(src_digest, sandbox.digest_of(sandbox.SECONDARY, dest, "s0"))
            base.count("restores_verified")
        self.assertNoProblems()

    # -- (b) the backup pool is full -------------------------------------------------

    def pool_flags(self):
        for line in sandbox.ceph(sandbox.SECONDARY, "osd", "pool", "ls", "detail").splitlines():
            if "'backups'" in line:
                return line
        return ""

    def wait_flag(self, present, timeout=60):
        deadline = time.monotonic() + timeout
        while ("full" in self.pool_flags().split(" flags ")[-1].split()[0]) != present:
            self.assertLess(time.monotonic(), deadline, "pool full flag never %s: %s" % (
                "set" if present else "cleared", self.pool_flags()))
            time.sleep(0.5)

    def reset_quota(self, filler):
        sandbox.ceph(sandbox.SECONDARY, "osd", "pool", "set-quota", "backups", "max_bytes", "0")
        sandbox.remove_image(sandbox.SECONDARY, filler)
        self.wait_flag(False)

    def test_full_backup_pool(self):
        volume = self.volume_with_data(32 * MiB)
        filler = "faults-filler-%s" % uuid.uuid4()
        sandbox.ceph(sandbox.SECONDARY, "osd", "pool", "set-quota", "backups", "max_bytes",
                     str(16 * MiB))
        self.addCleanup(self.reset_quota, filler)
        sandbox.create_image(sandbox.SECONDARY, filler, sandbox.GiB)
        with sandbox.ioctx(sandbox.SECONDARY) as ctx, rbd.Image(ctx, filler) as img:
            self.writer.scatter(img, 32 * MiB, 8)
        self.wait_flag(True)
        base.count("faults_injected")

        backup = self.new_backup(volume)
        flags_before = self.pool_flags()
        outcome = self.worker.run({"op": "backup", "backup_id": backup.id,
                                   "options": {"op_timeout": OP_TIMEOUT}}, timeout=LIMIT)
        if outcome.done:
            self.problem("pool flags before: %s; after: %s; df: %s" % (
                flags_before, self.pool_flags(), sandbox.ceph(sandbox.SECONDARY, "df")))
        base.set_figure("full_pool_backup_seconds", round(outcome.seconds, 1))
        base.set_figure("full_pool_backup_error", outcome.error)
        self.check_failure("driver backup into a full pool", outcome.done,
                           LIMIT + 1 if outcome.hung else outcome.seconds, outcome.error)
        chain = naming.chain_image(volume.id, backup.id)
        self.reset_quota(filler)
        sandbox.fence_dead_clients()
        if chain in sandbox.images(sandbox.SECONDARY):
            snaps = sandbox.snapshots(sandbox.SECONDARY, chain)
            if snaps:
                self.problem("end snapshot created in a full pool: %s" % snaps)
        self.cinder_cleans_up(backup)
        self.assertNotIn(chain, sandbox.images(sandbox.SECONDARY))
        after, digest = self.backup_ok(volume)
        self.assertRestores(after, digest)
        self.delete_all([after])
        self.assertNothingLeft(volumes=[volume], chains=[chain, self.env.location(after)[1]])
        self.assertNoProblems()

    # -- (c) the network drops our connections ----------------------------------------

    def injected_failures(self):
        total = 0
        for path in glob.glob(os.path.join(sandbox.FAULTS_DIR, "*", "log", "client.*.log")):
            with open(path, errors="replace") as f:
                total += sum(1 for line in f if "injecting socket failure" in line)
        return total

    def test_socket_failures_on_our_client(self):
        inject = "ms inject socket failures = 500"
        primary_conf = sandbox.conf_copy(sandbox.PRIMARY, self.tmp, inject)
        secondary_conf = sandbox.conf_copy(sandbox.SECONDARY, self.tmp, inject)
        options = {"primary_conf": primary_conf, "backup_ceph_conf": secondary_conf,
                   "source_ceph_conf": primary_conf}
        before = self.injected_failures()
        volume = self.volume_with_data(64 * MiB)
        done = []

        def backup(parent):
            item = self.new_backup(volume, parent)
            outcome = self.worker.run({"op": "backup", "backup_id": item.id,
                                       "options": options}, timeout=LIMIT * 2)
            base.count("operations_under_socket_faults")
            if outcome.done:
                item = self.env.backup(item.id)
                done.append((item, sandbox.digest_of(sandbox.PRIMARY, volume.name,
                                                     self.env.location(item)[2])))
                return item
            if outcome.hung or not outcome.error:
                self.problem("backup under socket failures: %s" % outcome.describe())
            base.count("clean_failures_under_socket_faults")
            sandbox.fence_dead_clients()
            self.cinder_cleans_up(item)
            return parent

        last = backup(None)
        self.write(volume, 16 * MiB)
        backup(last)
        for item, digest in done:
            self.assertRestores(item, digest, options)
            base.count("operations_under_socket_faults")

        src, src_digest = self.source_image(64 * MiB)
        dest = "faults-dst-%s" % uuid.uuid4()
        self.addCleanup(sandbox.remove_image, sandbox.SECONDARY, dest)
        with sandbox.ioctx(sandbox.PRIMARY) as ctx, rbd.Image(ctx, src) as img:
            self.writer.scatter(img, 16 * MiB, 8)
            img.create_snap("s1")
        s1_digest = sandbox.digest_of(sandbox.PRIMARY, src, "s1")
        for from_snap, snap, digest in ((None, "s0", src_digest), ("s0", "s1", s1_digest)):
            argv = [CLI, "sync", *self.cli_cluster_args(primary_conf, secondary_conf)]
            argv += ["--from-snap", from_snap] if from_snap else []
            result = subprocess.run(argv + ["volumes/%s@%s" % (src, snap), "backups/" + dest],
                                    capture_output=True, text=True, timeout=LIMIT * 2)
            base.count("operations_under_socket_faults")
            if result.returncode != 0:
                self.problem("sync under socket failures failed: %s" % result.stderr)
                break
            self.assertEqual(digest, sandbox.digest_of(sandbox.SECONDARY, dest, snap))
            base.count("restores_verified")
        injected = self.injected_failures() - before
        base.count("socket_failures_injected", injected)
        base.count("faults_injected", injected)
        self.assertGreater(injected, 0, "no socket failure was injected (client logs)")
        self.assertTrue(done, "no backup completed under socket failures")
        self.delete_all([item for item, _digest in done])
        self.assertNothingLeft(volumes=[volume],
                               chains=[self.env.location(item)[1] for item, _d in done])
        self.assertNoProblems()

    # -- (d) many backups at once, with a restore and a delete -------------------------

    def test_concurrent_backups_with_restore_and_delete(self):
        env, drv = self.env, self.drv
        volumes = [self.volume_with_data(16 * MiB, 4) for _ in range(CONCURRENT_VOLUMES)]
        victim = self.volume_with_data(4 * MiB, 2)
        victim_backup = env.run_backup(drv, self.new_backup(victim))
        pool = concurrent.futures.ThreadPoolExecutor(CONCURRENT_VOLUMES + 2)
        self.addCleanup(pool.shutdown)
        rounds = []  # [{volume_id: (backup, digest)}]

        def one_backup(volume, parent):
            backup = self.new_backup(volume, parent)
            return env.run_backup(drv, backup)

        for round_ in range(2):
            if round_:
                for volume in volumes:
                    self.write(volume, 8 * MiB, 4)
            digests = {v.id: sandbox.digest_of(sandbox.PRIMARY, v.name) for v in volumes}
            futures = {pool.submit(one_backup, v, rounds[-1][v.id][0] if rounds else None): v
                       for v in volumes}
            side = {}
            if round_:
                first, first_digest = rounds[0][volumes[0].id]
                target = self.new_volume()
                side["restore"] = (pool.submit(env.run_restore, drv, first, target, True),
                                   target, first_digest)
                side["delete"] = pool.submit(drv.delete_backup, env.backup(victim_backup.id))
            result = {}
            for future, volume in futures.items():
                backup = future.result(timeout=300)
                self.assertEqual(round_ == 1, bool(backup.parent_id),
                                 "round %d backup of %s" % (round_, volume.id))
                result[volume.id] = (backup, digests[volume.id])
            rounds.append(result)
            if side:
                future, target, digest = side["restore"]
                future.result(timeout=300)
                self.assertEqual(digest, sandbox.digest_of(sandbox.PRIMARY, target.name))
                base.count("restores_verified")
                side["delete"].result(timeout=300)
        base.count("concurrent_backups", 2 * CONCURRENT_VOLUMES)
        self.assertNotIn(env.location(victim_backup)[1], sandbox.images(sandbox.SECONDARY))
        self.assertNothingLeft(volumes=[victim])

        def check_restore(backup, digest):
            target = env.create_volume(1)
            try:
                env.run_restore(drv, backup, target, True)
                return sandbox.digest_of(sandbox.PRIMARY, target.name) == digest
            finally:
                sandbox.remove_image(sandbox.PRIMARY, target.name)

        checks = [pool.submit(check_restore, *item) for result in rounds
                  for item in result.values()]
        wrong = [i for i, future in enumerate(checks) if not future.result(timeout=300)]
        base.count("restores_verified", len(checks))
        self.assertEqual([], wrong, "restores that differ from their source")

        def delete_chain(volume):
            for result in reversed(rounds):
                drv.delete_backup(env.backup(result[volume.id][0].id))

        for future in [pool.submit(delete_chain, v) for v in volumes]:
            future.result(timeout=300)
        chains = {env.location(r[v.id][0])[1] for r in rounds for v in volumes}
        self.assertNothingLeft(volumes=volumes, chains=chains)


class LeastPrivilegeTestCase(FaultHelpers):
    """A backup user that can read the backup pool but not write it."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.keyring = sandbox.path(sandbox.SECONDARY, "ceph.client.ro.keyring")
        sandbox.ceph(sandbox.SECONDARY, "auth", "get-or-create", "client.ro",
                     "mon", "profile rbd", "osd", "profile rbd-read-only pool=backups",
                     "-o", cls.keyring)
        cls.ro_options = {"backup_ceph_user": "ro", "backup_ceph_keyring": cls.keyring}

    def failed_backup(self, volume):
        backup = self.new_backup(volume)
        outcome = self.worker.run({"op": "backup", "backup_id": backup.id,
                                   "options": self.ro_options}, timeout=LIMIT)
        self.assertFalse(outcome.done or outcome.hung, outcome.describe())
        return backup, outcome

    def test_check_for_setup_error_names_the_missing_capability(self):
        with self.env.overridden(**self.ro_options):
            with self.assertRaises(exception.BackupDriverException) as caught:
                self.env.driver().check_for_setup_error()
        message = str(caught.exception)
        base.count("faults_injected")
        self.assertIn("client.ro", message)
        self.assertIn("profile rbd pool=backups", message)

    def test_backup_names_the_missing_capability(self):
        volume = self.volume_with_data(4 * MiB, 2)
        backup, outcome = self.failed_backup(volume)
        base.count("faults_injected")
        self.cinder_cleans_up(backup)
        self.assertRegex(outcome.error or "", r"profile rbd|capabilit|caps",
                         "the error does not say which capability client.ro lacks: %s: %s"
                         % (outcome.error_type, outcome.error))

    def test_failed_backup_leaves_nothing_once_deleted(self):
        volume = self.volume_with_data(4 * MiB, 2)
        backup, _outcome = self.failed_backup(volume)
        self.cinder_cleans_up(backup)
        self.assertNothingLeft(volumes=[volume],
                               chains=[naming.chain_image(volume.id, backup.id)])
