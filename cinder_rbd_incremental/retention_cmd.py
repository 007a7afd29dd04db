"""``rbd-incremental-retention``: apply keep rules to Cinder backups.

Talks to the Cinder API only (openstacksdk: ``OS_*`` variables, clouds.yaml
with ``--os-cloud``, or ``--os-*`` options), so it runs anywhere with the
credentials of the project (or an admin), typically from cron. It works for
any backup driver; with this driver's ``incremental_forever`` every backup
can go on its own, otherwise a chain goes newest first and only once nothing
kept needs it (see :mod:`cinder_rbd_incremental.retention` for the rules).

Dry run by default: prints, per backup, the rules that keep it or that it
goes. ``--apply`` deletes, oldest first, one at a time, each checked again
just before (still ``available``, no dependent backup in Cinder's eyes) and
waited for until Cinder has removed it; transient API errors are retried.
"""

import argparse
import datetime
import json
import sys
import time

import openstack
import tenacity
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from openstack.config import loader

from cinder_rbd_incremental import retention

PROG = "rbd-incremental-retention"
TRANSIENT_STATUS = (408, 429, 502, 503, 504)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def is_transient(exc):
    """Worth retrying: no connection, a timeout, an overloaded or restarting API."""
    if isinstance(exc, ks_exc.RetriableConnectionFailure):
        return True
    return (isinstance(exc, sdk_exc.HttpException)
            and getattr(exc, "status_code", None) in TRANSIENT_STATUS)


BACKOFF = tenacity.wait_exponential(multiplier=1, max=30)


def retrying(attempts=6, wait=BACKOFF):
    """Decorator: retry transient API errors, up to ``attempts`` calls."""
    return tenacity.retry(retry=tenacity.retry_if_exception(is_transient), wait=wait,
                          stop=tenacity.stop_after_attempt(attempts), reraise=True)


class Cinder:
    """The few Cinder calls the command makes, each retried when transient."""

    def __init__(self, conn, retry=None):
        self.storage = conn.block_storage
        retry = retry or retrying()
        self.list = retry(self._list)
        self.get = retry(self._get)
        self.delete = retry(self.storage.delete_backup)

    def _list(self, **query):
        return list(self.storage.backups(details=True, **query))

    def _get(self, backup_id):
        """The backup, or None once it is gone."""
        try:
            return self.storage.get_backup(backup_id)
        except sdk_exc.NotFoundException:
            return None


# -- choosing ------------------------------------------------------------------------

def scope_queries(args):
    """API queries that list the backups the command works on."""
    if args.volume:
        # all_tenants: an admin sees another project's volume (others: ignored)
        return [{"volume_id": volume, "all_projects": True} for volume in args.volume]
    if args.project:
        return [{"project_id": args.project, "all_projects": True}]
    return [{}]  # --all-volumes: the project of the credentials


def to_backup(api_backup):
    when = api_backup.data_timestamp or api_backup.created_at
    return retention.Backup(id=api_backup.id, volume_id=api_backup.volume_id,
                            time=retention.parse_time(when), status=api_backup.status,
                            incremental=bool(api_backup.is_incremental),
                            name=api_backup.name)


def list_backups(cinder, args):
    found = {}
    for query in scope_queries(args):
        for api_backup in cinder.list(**query):
            found[api_backup.id] = to_backup(api_backup)
    return list(found.values())


# -- deleting ------------------------------------------------------------------------

def delete_backup(cinder, backup, timeout, poll=2.0):
    """Delete one backup and wait until it is gone; return what happened."""
    current = cinder.get(backup.id)
    if current is None:
        return "gone"
    if current.status != "available":
        return "skipped: it is %s now" % current.status
    if current.has_dependent_backups:
        return "skipped: Cinder records backups that depend on it"
    try:
        cinder.delete(backup.id)
    except sdk_exc.NotFoundException:
        return "gone"
    except sdk_exc.HttpException as exc:
        # a retried request may have been applied already: it is deleting
        current = cinder.get(backup.id)
        if current is not None and current.status != "deleting":
            return "failed: %s" % _api_message(exc)
    return wait_deleted(cinder, backup.id, timeout, poll)


def wait_deleted(cinder, backup_id, timeout, poll):
    deadline = time.monotonic() + timeout
    while True:
        current = cinder.get(backup_id)
        if current is None:
            return "deleted"
        if current.status == "error_deleting":
            return "failed: error_deleting: %s" % (current.fail_reason or "see cinder-backup's log")
        if time.monotonic() > deadline:
            return "failed: still %s after %d s" % (current.status, timeout)
        time.sleep(poll)


def _api_message(exc):
    return (getattr(exc, "details", None) or str(exc)).strip().splitlines()[0]


# -- output --------------------------------------------------------------------------

def action_of(decision):
    if decision.skipped:
        return "skip"
    return "keep" if decision.keep else "delete"


def as_json(decision, result):
    backup = decision.backup
    return {"volume_id": backup.volume_id, "backup_id": backup.id, "name": backup.name,
            "time": _iso(backup.time), "status": backup.status,
            "incremental": backup.incremental, "action": action_of(decision),
            "reasons": decision.reasons + ([decision.skipped] if decision.skipped else []),
            "result": result}


def print_text(decisions, results, out):
    volume = None
    for decision in decisions:
        backup = decision.backup
        if backup.volume_id != volume:
            volume = backup.volume_id
            out.write("volume %s\n" % volume)
        why = ", ".join(decision.reasons + ([decision.skipped] if decision.skipped else []))
        result = results.get(backup.id)
        out.write("  %-6s %s  %s  %s%s\n" % (
            action_of(decision), _iso(backup.time), backup.id, why or "-",
            "  -> %s" % result if result else ""))


def summary(decisions, results, applied):
    counts = {"keep": 0, "delete": 0, "skip": 0}
    for decision in decisions:
        counts[action_of(decision)] += 1
    text = "%(keep)d kept, %(delete)d to delete, %(skip)d skipped" % counts
    if applied:
        deleted = sum(1 for r in results.values() if r in ("deleted", "gone"))
        text += "; %d deleted, %d not" % (deleted, counts["delete"] - deleted)
    else:
        text += " (dry run: --apply deletes them)"
    return counts, text


def _iso(when):
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- command line --------------------------------------------------------------------

def build_parser(argv):
    parser = argparse.ArgumentParser(
        prog=PROG, description="Apply keep rules to the Cinder backups of volumes: a dry run "
        "unless --apply. Authentication: OS_* variables, clouds.yaml (--os-cloud) or --os-* "
        "options.")
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--volume", action="append", metavar="VOLUME_ID",
                       help="a volume whose backups to thin out (repeatable)")
    scope.add_argument("--project", metavar="PROJECT_ID",
                       help="every volume of this project (needs an admin)")
    scope.add_argument("--all-volumes", action="store_true",
                       help="every volume of the credentials' project")
    rules = parser.add_argument_group("keep rules (per volume; the newest backup is always "
                                      "kept)")
    for rule, what in (("last", "the N newest backups"),
                       ("hourly", "the newest backup of each of the last N hours with one"),
                       ("daily", "... days (UTC)"), ("weekly", "... ISO weeks"),
                       ("monthly", "... months"), ("yearly", "... years")):
        rules.add_argument("--keep-" + rule, type=int, default=0, metavar="N", help=what)
    rules.add_argument("--keep-within", type=retention.parse_duration, metavar="DURATION",
                       help="every backup newer than this (e.g. 14d, 2w, 36h)")
    parser.add_argument("--apply", action="store_true",
                        help="delete what no rule keeps (default: only print the plan)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--now", type=retention.parse_time, metavar="ISO8601",
                        help="evaluate the rules as if it were this time (to preview a "
                             "policy; default: the current time)")
    parser.add_argument("--delete-timeout", type=int, default=600, metavar="SECONDS",
                        help="how long to wait for each deletion (default: 600)")
    loader.OpenStackConfig().register_argparse_arguments(parser, argv,
                                                         service_keys=["block-storage"])
    return parser


def policy_from(args):
    return retention.Policy(last=args.keep_last, hourly=args.keep_hourly,
                            daily=args.keep_daily, weekly=args.keep_weekly,
                            monthly=args.keep_monthly, yearly=args.keep_yearly,
                            within=args.keep_within)


def connect(args):
    return openstack.connection.Connection(config=loader.OpenStackConfig().get_one(
        argparse=args))


def run(args, cinder, out):
    policy = policy_from(args)
    now = args.now or datetime.datetime.now(datetime.timezone.utc)
    decisions = retention.plan(list_backups(cinder, args), policy, now)
    results = {}
    if args.apply:
        for backup in retention.deletion_order(decisions):
            results[backup.id] = delete_backup(cinder, backup, args.delete_timeout)
            if args.format == "text":
                out.write("%s %s\n" % (results[backup.id], backup.id))
                out.flush()
    counts, text = summary(decisions, results, args.apply)
    if args.format == "json":
        json.dump({"now": _iso(now), "applied": args.apply, "counts": counts,
                   "backups": [as_json(d, results.get(d.backup.id)) for d in decisions]},
                  out, indent=2)
        out.write("\n")
    else:
        print_text(decisions, results, out)
        out.write(text + "\n")
    failed = [r for r in results.values() if r not in ("deleted", "gone")]
    return EXIT_FAILED if failed else EXIT_OK


def main(argv=None, out=sys.stdout, cinder=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        policy_from(args)
        cinder = cinder or Cinder(connect(args))
        return run(args, cinder, out)
    except retention.PolicyError as exc:
        parser.error(str(exc))
    except (sdk_exc.SDKException, ks_exc.ClientException) as exc:
        sys.stderr.write("%s: %s\n" % (PROG, _api_message(exc)))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
