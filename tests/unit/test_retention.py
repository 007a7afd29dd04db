"""Keep rules of the retention command: which backup a policy keeps, and why."""

import datetime
import unittest
import unittest.mock

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from tenacity import wait_none

from cinder_rbd_incremental import retention, retention_cmd
from cinder_rbd_incremental.retention import Backup, Policy

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday


def nightly(days, volume="vol-a", incremental=False, hour=2, end=NOW):
    """One backup a night at ``hour`` UTC for ``days`` nights up to ``end``, oldest first."""
    last = end.replace(hour=hour, minute=0)
    if last > end:
        last -= datetime.timedelta(days=1)
    return [Backup(id="%s-%03d" % (volume, n), volume_id=volume,
                   time=last - datetime.timedelta(days=n), incremental=incremental and n
                   != days - 1)
            for n in reversed(range(days))]


def kept(decisions):
    return [d.backup.id for d in decisions if d.keep]


def reasons(decisions):
    return {d.backup.id: d.reasons for d in decisions if d.reasons}


class PolicyTest(unittest.TestCase):
    def test_a_policy_needs_a_rule(self):
        with self.assertRaises(retention.PolicyError):
            Policy()
        with self.assertRaises(retention.PolicyError):
            Policy(daily=-1, last=1)
        Policy(within=datetime.timedelta(days=1))

    def test_durations(self):
        self.assertEqual(datetime.timedelta(days=14), retention.parse_duration("14d"))
        self.assertEqual(datetime.timedelta(weeks=2, hours=12),
                         retention.parse_duration("2w12h"))
        for bad in ("", "14", "1m", "d", "-1d", "1d2w"):
            with self.assertRaises(retention.PolicyError, msg=bad):
                retention.parse_duration(bad)

    def test_cinder_times_are_utc(self):
        self.assertEqual(datetime.datetime(2026, 11, 29, 22, 43, 45, tzinfo=UTC),
                         retention.parse_time("2026-11-29T22:43:45.000000"))
        self.assertEqual(datetime.datetime(2026, 11, 29, 21, 43, tzinfo=UTC),
                         retention.parse_time("2026-11-29T22:43:00+01:00"))


class RulesTest(unittest.TestCase):
    def test_keep_last(self):
        decisions = retention.plan(nightly(5), Policy(last=2), NOW)
        self.assertEqual(["vol-a-001", "vol-a-000"], kept(decisions))
        self.assertEqual({"vol-a-000": ["newest", "last 1"], "vol-a-001": ["last 2"]},
                         reasons(decisions))

    def test_daily_keeps_the_newest_of_each_day(self):
        backups = nightly(3, hour=2) + nightly(3, volume="vol-a", hour=14)[1:]
        backups = [Backup(id="%s-%s" % (b.time.day, b.time.hour), volume_id="vol-a",
                          time=b.time) for b in backups]
        decisions = retention.plan(backups, Policy(daily=2), NOW)
        self.assertEqual(["29-14", "30-2"], kept(decisions))
        self.assertEqual(["daily 2026-11-29"], reasons(decisions)["29-14"])

    def test_days_without_backups_do_not_count(self):
        """restic's rule: the N most recent days that have a backup."""
        backups = nightly(3, end=NOW - datetime.timedelta(days=30))
        decisions = retention.plan(backups, Policy(daily=2), NOW)
        self.assertEqual(["vol-a-001", "vol-a-000"], kept(decisions))

    def test_grandfather_father_son(self):
        backups = nightly(400)
        policy = Policy(daily=7, weekly=4, monthly=12, yearly=3)
        decisions = retention.plan(backups, policy, NOW)
        by_id = {d.backup.id: d for d in decisions}
        self.assertEqual(7, sum(1 for d in decisions for r in d.reasons
                                if r.startswith("daily")))
        # weekly: the Sundays, the newest of each ISO week (Monday to Sunday)
        weekly = [d.backup.time for d in decisions
                  if any(r.startswith("weekly") for r in d.reasons)]
        self.assertEqual(4, len(weekly))
        self.assertEqual([6] * 3 + [0], [t.weekday() for t in weekly])
        monthly = [d for d in decisions if any(r.startswith("monthly") for r in d.reasons)]
        self.assertEqual(12, len(monthly))
        self.assertTrue(all(
            (d.backup.time + datetime.timedelta(days=1)).day == 1 for d in monthly[:-1]),
            "the last night of each month")
        self.assertEqual(["yearly 2025", "yearly 2026"],
                         [r for d in decisions for r in d.reasons if r.startswith("yearly")])
        self.assertIn("daily 2026-11-30", by_id["vol-a-000"].reasons)
        self.assertEqual(7 + 2 + 11, len(kept(decisions)),
                         "a backup that several rules keep counts once")

    def test_within_is_relative_to_now(self):
        decisions = retention.plan(nightly(10), Policy(within=datetime.timedelta(days=3)), NOW)
        self.assertEqual(["vol-a-002", "vol-a-001", "vol-a-000"], kept(decisions))
        self.assertEqual(["within 3d"], reasons(decisions)["vol-a-002"])
        later = NOW + datetime.timedelta(days=30)
        decisions = retention.plan(nightly(10), Policy(within=datetime.timedelta(days=3)), later)
        self.assertEqual({"vol-a-000": ["newest"]}, reasons(decisions),
                         "the newest backup stays: the next incremental's parent")

    def test_volumes_are_independent(self):
        backups = nightly(3, volume="vol-b") + nightly(3)
        decisions = retention.plan(backups, Policy(last=1), NOW)
        self.assertEqual(["vol-a-000", "vol-b-000"], kept(decisions))
        self.assertEqual(["vol-a"] * 3 + ["vol-b"] * 3,
                         [d.backup.volume_id for d in decisions])

    def test_only_available_backups_count_and_others_stay(self):
        backups = nightly(4)
        backups[-1] = Backup(id="failed", volume_id="vol-a", time=backups[-1].time,
                             status="error")
        decisions = retention.plan(backups, Policy(last=1), NOW)
        self.assertEqual(["vol-a-001", "failed"], kept(decisions))
        self.assertEqual("status error", decisions[-1].skipped)


class DependenciesTest(unittest.TestCase):
    def chains(self):
        """Two chains of a full and two incrementals each, nightly."""
        backups = nightly(6)
        return [Backup(id=b.id, volume_id=b.volume_id, time=b.time, incremental=n % 3 != 0)
                for n, b in enumerate(backups)]

    def test_a_kept_incremental_keeps_its_chain(self):
        decisions = retention.plan(self.chains(), Policy(last=1), NOW)
        self.assertEqual(["vol-a-002", "vol-a-001", "vol-a-000"], kept(decisions))
        self.assertEqual(["parent of vol-a-000"], reasons(decisions)["vol-a-001"])
        self.assertEqual(["parent of vol-a-001"], reasons(decisions)["vol-a-002"])

    def test_deletion_order_children_first_oldest_chain_first(self):
        backups = self.chains() + nightly(3, volume="vol-b")
        decisions = retention.plan(backups, Policy(last=1), NOW)
        order = [b.id for b in retention.deletion_order(decisions)]
        self.assertEqual(["vol-a-003", "vol-a-004", "vol-a-005", "vol-b-002", "vol-b-001"],
                         order)

    def test_incremental_forever_backups_go_oldest_first(self):
        """Recorded without a Cinder parent: nothing depends on anything."""
        decisions = retention.plan(nightly(5), Policy(last=2), NOW)
        self.assertEqual(["vol-a-004", "vol-a-003", "vol-a-002"],
                         [b.id for b in retention.deletion_order(decisions)])

    def test_a_failed_incremental_keeps_its_parent(self):
        """Cinder refuses to delete a parent while a failed child names it."""
        backups = nightly(4)
        backups.insert(2, Backup(id="failed", volume_id="vol-a", incremental=True,
                                 time=backups[1].time + datetime.timedelta(hours=1),
                                 status="error"))
        decisions = retention.plan(backups, Policy(last=1), NOW)
        self.assertEqual(["vol-a-002", "failed", "vol-a-000"], kept(decisions))
        self.assertEqual(["parent of failed"], reasons(decisions)["vol-a-002"])
        self.assertEqual(["vol-a-003", "vol-a-001"],
                         [b.id for b in retention.deletion_order(decisions)])

    def test_the_parent_is_never_a_failed_backup(self):
        backups = self.chains()[:3]
        backups.insert(2, Backup(id="failed", volume_id="vol-a", status="error",
                                 time=backups[1].time + datetime.timedelta(hours=1)))
        decisions = retention.plan(backups, Policy(last=1), NOW)
        self.assertEqual(["parent of vol-a-003"], reasons(decisions)["vol-a-004"])


class CommandLogicTest(unittest.TestCase):
    """The command's own logic: which API errors it retries, its arguments."""

    def flaky(self, *errors):
        calls = []

        def call():
            calls.append(1)
            if len(calls) <= len(errors):
                raise errors[len(calls) - 1]
            return "done"
        return call, calls

    def test_transient_errors_are_retried(self):
        retry = retention_cmd.retrying(attempts=3, wait=wait_none())
        call, calls = self.flaky(ks_exc.ConnectFailure("refused"),
                                 sdk_exc.HttpException(message="busy", http_status=503))
        self.assertEqual("done", retry(call)())
        self.assertEqual(3, len(calls))
        call, calls = self.flaky(sdk_exc.BadRequestException(message="no", http_status=400))
        with self.assertRaises(sdk_exc.BadRequestException):
            retry(call)()
        self.assertEqual(1, len(calls), "a refusal is not retried")
        call, calls = self.flaky(*[ks_exc.ConnectTimeout("slow")] * 3)
        with self.assertRaises(ks_exc.ConnectTimeout):
            retry(call)()
        self.assertEqual(3, len(calls))

    def test_arguments(self):
        argv = ["--volume", "v1", "--volume", "v2", "--keep-within", "1w",
                "--now", "2026-11-30T12:00:00Z"]
        args = retention_cmd.build_parser(argv).parse_args(argv)
        self.assertEqual([{"volume_id": "v1", "all_projects": True},
                          {"volume_id": "v2", "all_projects": True}],
                         retention_cmd.scope_queries(args))
        self.assertEqual(NOW, args.now)
        self.assertEqual(datetime.timedelta(weeks=1), retention_cmd.policy_from(args).within)
        for bad in (["--keep-last", "1"],                          # no scope
                    ["--all-volumes", "--project", "p", "--keep-last", "1"],
                    ["--all-volumes", "--keep-within", "2x"]):
            with self.assertRaises(SystemExit, msg=bad), \
                    unittest.mock.patch("sys.stderr"):
                retention_cmd.build_parser(bad).parse_args(bad)
