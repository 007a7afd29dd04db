"""Which backups a retention policy keeps: pure logic, no API, no clock.

Rules, per volume, over the volume's ``available`` backups (the
grandfather-father-son scheme of restic's ``forget``):

* ``last N``: the N newest;
* ``hourly/daily/weekly/monthly/yearly N``: the newest backup of each of the
  N most recent hours (days, ISO weeks, months, years) that have a backup, in
  UTC. Periods without a backup do not count, so a pause in the backups
  never makes older ones expire;
* ``within D``: every backup newer than ``now - D``;
* always the newest backup: it is the parent of the next incremental (whose
  source snapshot on the volume makes it incremental at all).

A backup's time is when its data is from: Cinder's ``data_timestamp`` (the
snapshot's time for a backup of a snapshot), else ``created_at``.

Backups that are not ``available`` are never deleted and count for no rule.
A backup that Cinder records as incremental needs its parent: the parent is
kept as long as the child is (Cinder would refuse to delete it anyway). The
API does not show ``parent_id``; the parent is the one Cinder picked, the
newest earlier backup of the volume that is not in ``error`` (an incremental
with incremental_forever on is recorded without a parent: nothing depends on
it).
"""

import dataclasses
import datetime
import re

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
PERIOD_FORMATS = {
    "hourly": "%Y-%m-%dT%H",
    "daily": "%Y-%m-%d",
    "weekly": "%G-W%V",
    "monthly": "%Y-%m",
    "yearly": "%Y",
}
NEVER_PARENTS = ("error", "creating")  # not available when the child was created
_DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$")


class PolicyError(ValueError):
    """A policy that cannot be applied."""


@dataclasses.dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: datetime.timedelta | None = None

    def __post_init__(self):
        for rule in RULES:
            if getattr(self, rule) < 0:
                raise PolicyError("--keep-%s must not be negative" % rule)
        if not any(getattr(self, rule) for rule in RULES) and not self.within:
            raise PolicyError("no keep rule: give at least one --keep-* option")


@dataclasses.dataclass(frozen=True)
class Backup:
    """What the rules need of a Cinder backup."""

    id: str
    volume_id: str
    time: datetime.datetime  # aware
    status: str = "available"
    incremental: bool = False
    name: str | None = None


@dataclasses.dataclass
class Decision:
    """``reasons``: why it is kept (empty: it goes); ``skipped``: why it is
    not considered (status), which keeps it too."""

    backup: Backup
    reasons: list = dataclasses.field(default_factory=list)
    skipped: str | None = None

    @property
    def keep(self):
        return bool(self.reasons or self.skipped)


def parse_duration(text):
    """``2w``, ``14d``, ``36h``, ``1w3d12h`` as a timedelta."""
    match = _DURATION_RE.match(text or "")
    if not text or not match:
        raise PolicyError("duration %r: use weeks, days and hours, e.g. 14d, 2w, 36h, 1d12h"
                          % text)
    weeks, days, hours = (int(group or 0) for group in match.groups())
    return datetime.timedelta(weeks=weeks, days=days, hours=hours)


def parse_time(text):
    """An ISO 8601 time from Cinder (naive means UTC) as an aware datetime."""
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def period(rule, time):
    """The UTC period (hour, day, ISO week, month, year) ``time`` falls in."""
    return time.astimezone(datetime.timezone.utc).strftime(PERIOD_FORMATS[rule])


def plan(backups, policy, now):
    """Decisions for ``backups`` (any volumes), each volume's oldest first."""
    by_volume = {}
    for backup in backups:
        by_volume.setdefault(backup.volume_id, []).append(backup)
    decisions = []
    for volume_id in sorted(by_volume):
        decisions.extend(_plan_volume(by_volume[volume_id], policy, now))
    return decisions


def _plan_volume(backups, policy, now):
    ordered = sorted(backups, key=lambda backup: (backup.time, backup.id))
    decisions = [Decision(backup) for backup in ordered]
    for decision in decisions:
        if decision.backup.status != "available":
            decision.skipped = "status %s" % decision.backup.status
    candidates = [d for d in reversed(decisions) if not d.skipped]  # newest first
    _apply_rules(candidates, policy, now)
    _keep_parents(decisions)
    return decisions


def _apply_rules(newest_first, policy, now):
    if newest_first:
        newest_first[0].reasons.append("newest")
    for index, decision in enumerate(newest_first[:policy.last]):
        decision.reasons.append("last %d" % (index + 1))
    if policy.within:
        cutoff = now - policy.within
        for decision in newest_first:
            if decision.backup.time > cutoff:
                decision.reasons.append("within %s" % _format_duration(policy.within))
    for rule in PERIOD_FORMATS:
        left, seen = getattr(policy, rule), None
        for decision in newest_first:
            if left <= 0:
                break
            key = period(rule, decision.backup.time)
            if key != seen:
                decision.reasons.append("%s %s" % (rule, key))
                seen, left = key, left - 1


def _keep_parents(decisions):
    """Keep the (inferred) parent of every kept incremental, newest first."""
    for index in range(len(decisions) - 1, -1, -1):
        decision = decisions[index]
        if not (decision.keep and decision.backup.incremental):
            continue
        parent = parent_of(decisions, index)
        if parent is not None and not parent.keep:
            parent.reasons.append("parent of %s" % decision.backup.id)


def parent_of(decisions, index):
    """The decision of the backup Cinder picked as parent of ``decisions[index]``."""
    for earlier in reversed(decisions[:index]):
        if earlier.backup.status not in NEVER_PARENTS:
            return earlier
    return None


def deletion_order(decisions):
    """The backups to delete, oldest first, yet never one before a backup
    that depends on it (a chain goes newest first)."""
    order = []
    by_volume = {}
    for decision in decisions:
        by_volume.setdefault(decision.backup.volume_id, []).append(decision)
    for volume_decisions in by_volume.values():
        order.extend(_volume_deletion_order(volume_decisions))
    return order


def _volume_deletion_order(decisions):
    dependents = {index: [] for index in range(len(decisions))}
    for index, decision in enumerate(decisions):
        if decision.backup.incremental:
            parent = parent_of(decisions, index)
            if parent is not None:
                dependents[decisions.index(parent)].append(index)
    going = [index for index, decision in enumerate(decisions) if not decision.keep]
    order, done = [], set()

    def visit(index):
        for child in sorted(dependents[index], reverse=True):
            if child not in done and not decisions[child].keep:
                visit(child)
        done.add(index)
        order.append(decisions[index].backup)

    for index in going:
        if index not in done:
            visit(index)
    return order


def _format_duration(delta):
    hours = int(delta.total_seconds()) // 3600
    days, hours = divmod(hours, 24)
    return "".join("%d%s" % (n, unit) for n, unit in ((days, "d"), (hours, "h")) if n) or "0h"
