#!/usr/bin/env python3
"""The operator's journey through a real Cinder (what `make demo` shows first).

Boots the stack of ``tools/cinder-stack`` on the sandbox clusters (if it is not
up: Keystone, Cinder, Horizon), then drives Cinder with the ``openstack`` CLI,
as the stack's admin (the openrc of ``tools/cinder-stack env``), printing each
command as it runs it: creates a volume, writes into it, takes a full backup and
two ``--incremental`` ones, restores every backup to a new volume and compares
it with what the volume held, exports the newest backup's record and imports it
back (after Cinder forgot it, as with a lost database), deletes the backups
newest first (the order Cinder allows) and the volumes, and prints a table.

Waiting for a status polls the API (python-cinderclient, same credentials):
one ``openstack`` call costs seconds of start-up. The volume's data is written
and compared directly in its RBD image on the primary cluster.

    tools/journey.py          run the journey, clean up, leave the stack running
    tools/journey.py --stock  the same with Cinder's stock CephBackupDriver
"""

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from tests.e2e import stack  # noqa: E402  (the e2e tier's client helpers)

MiB = 1 << 20
OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
CINDER = os.path.join(os.path.dirname(sys.executable), "cinder")


class JourneyError(Exception):
    """A command failed; the message says which and why."""


def say(text=""):
    print(text, flush=True)


def run_cli(program, *args, echo=say):
    """Run ``PROGRAM ARGS`` with the stack's openrc, showing the command; return
    its parsed ``-f json`` output (or its text)."""
    echo("    $ %s %s" % (os.path.basename(program), shlex.join(args)))
    proc = subprocess.run([program, *args], env=stack.openstack_env(), capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise JourneyError("%s %s failed (exit %d): %s" % (
            os.path.basename(program), " ".join(args[:4]), proc.returncode,
            (proc.stderr or proc.stdout).strip()))
    return json.loads(proc.stdout) if "json" in args else proc.stdout


def openstack(*args, echo=say):
    return run_cli(OPENSTACK, *args, echo=echo)


def write_round(vol_id, rng, count, size=256 * 1024):
    """Write ``count`` random pieces at random 4 KiB-aligned offsets."""
    pieces = [((rng.randrange(0, stack.GiB - size) // 4096) * 4096, rng.randbytes(size))
              for _ in range(count)]
    stack.write(vol_id, *pieces)
    return count * size


def bytes_sent(cinder, backup_id):
    """What the driver recorded as sent (our lineage); None for the stock driver."""
    _record, decoded = cinder.export_record(backup_id)
    lineage = (decoded.get("driver_info") or {}).get("lineage") or {}
    return (lineage.get("stats") or {}).get("data_bytes")


def create_volume(cinder, name, echo):
    volume = openstack("volume", "create", "--size", "1", name, "-f", "json", echo=echo)
    cinder.volumes.append(volume["id"])
    return cinder.wait_volume(volume["id"], "available")


def create_backup(cinder, vol_id, name, incremental, echo):
    args = ["volume", "backup", "create", "--name", name]
    if incremental:
        args.append("--incremental")
    backup = openstack(*args, vol_id, "-f", "json", echo=echo)
    cinder.backups.append(backup["id"])
    return cinder.wait_backup(backup["id"], "available")


def restore_to_new_volume(cinder, backup_id, name, echo):
    """``openstack volume backup restore BACKUP NAME``: a new volume called NAME."""
    restore = openstack("volume", "backup", "restore", backup_id, name, "-f", "json",
                        echo=echo)
    cinder.volumes.append(restore["volume_id"])
    cinder.wait_backup(backup_id, "available")
    return cinder.wait_volume(restore["volume_id"], "available")


def export_forget_import(cinder, backup_id, echo):
    """The backup's record out, Cinder made to forget it (its data stays), and the
    record back in: what rebuilding a lost control plane looks like."""
    record = openstack("volume", "backup", "record", "export", backup_id, "-f", "json",
                       echo=echo)
    echo("    (Cinder's database forgets backup %s: its data stays on the backup "
         "cluster)" % backup_id)
    stack.forget_backup_record(backup_id)
    # Not `openstack volume backup record import`: openstacksdk (4.22) posts the
    # import to .../export_record with its own path as the URL, and Cinder says
    # 404. python-cinderclient's command posts it where it belongs.
    run_cli(CINDER, "backup-import", record["backup_service"], record["backup_url"],
            echo=echo)
    return cinder.wait_backup(backup_id, "available")


def delete_all(cinder, echo):
    """The backups newest first (Cinder refuses to delete a parent), then the volumes."""
    for backup_id in reversed(list(cinder.backups)):
        openstack("volume", "backup", "delete", backup_id, echo=echo)
        cinder.wait_backup_gone(backup_id)
        cinder.backups.remove(backup_id)
    volumes = list(cinder.volumes)
    openstack("volume", "delete", *volumes, echo=echo)
    for vol_id in volumes:
        cinder.wait_volume_gone(vol_id)
        cinder.volumes.remove(vol_id)
        cinder.deleted_volumes.append(vol_id)


def run_journey(cinder, rng, rounds=(("full", 64), ("incremental", 8), ("incremental", 16)),
                echo=say):
    """The journey; returns the table's rows. ``cinder`` (a ``stack.Cinder``)
    records what is made, for the caller's cleanup should a step fail."""
    rows = []
    echo("== a 1 GiB volume, written with random data")
    volume = create_volume(cinder, "demo-volume", echo)
    digests = []
    for step, (kind, count) in enumerate(rounds):
        written = write_round(volume.id, rng, count)
        digests.append(stack.volume_digest(volume.id))
        echo("== %s backup (%.1f MiB written since the last one)" % (kind, written / MiB))
        started = time.monotonic()
        backup = create_backup(cinder, volume.id, "demo-%d" % step, kind == "incremental",
                               echo)
        seconds = time.monotonic() - started
        rows.append({"backup": backup.id, "kind": kind, "written": written,
                     "sent": bytes_sent(cinder, backup.id), "seconds": seconds,
                     "incremental": backup.is_incremental})
    echo("== every backup restored to a new volume, compared with the volume it was taken of")
    for step, (row, digest) in enumerate(zip(rows, digests, strict=True)):
        restored = restore_to_new_volume(  # a name no earlier run left behind
            cinder, row["backup"], "demo-restore-%d-%s" % (step, row["backup"][:8]), echo)
        row["verified"] = stack.volume_digest(restored.id) == digest
        echo("    restored %s to volume %s: %s" % (row["backup"], restored.id,
                                                   "identical" if row["verified"] else "DIFFERS"))
    echo("== the newest backup's record exported and imported")
    imported = export_forget_import(cinder, rows[-1]["backup"], echo)
    echo("    imported %s: %s" % (imported.id, imported.status))
    echo("== everything deleted: backups newest first, then the volumes")
    delete_all(cinder, echo)
    return rows


def print_table(rows):
    print()
    print("%-36s  %-11s  %10s  %10s  %7s  %s" % ("backup", "type", "written", "sent",
                                               "seconds", "verified"))
    for row in rows:
        sent = "-" if row["sent"] is None else "%.1f MiB" % (row["sent"] / MiB)
        print("%-36s  %-11s  %6.1f MiB  %10s  %7.1f  %s" % (
            row["backup"], row["kind"], row["written"] / MiB, sent, row["seconds"],
            "yes" if row["verified"] else "NO"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stock", action="store_true",
                        help="use Cinder's stock CephBackupDriver for comparison")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    if args.stock:
        os.environ["BACKUP_DRIVER"] = "stock"
    say("booting the stack (tools/cinder-stack up: Keystone, Cinder, Horizon) ...")
    stack.ensure_up()
    say("as the stack's admin: eval \"$(tools/cinder-stack env)\"")
    cinder = stack.Cinder()
    try:
        rows = run_journey(cinder, random.Random(args.seed))
    except JourneyError as exc:
        print("\njourney: FAILED: %s" % exc, file=sys.stderr)
        return 1
    finally:
        cinder.cleanup()  # what a failed step left (nothing after a whole journey)
    print_table(rows)
    env = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "env"],
                         capture_output=True, text=True).stdout
    print("\nThe stack stays up for exploring; talk to it with:\n%s" % env)
    print("Horizon: %s (user admin, the OS_PASSWORD above)" % stack.openrc()["HORIZON_URL"])
    print("Stop it with: tools/cinder-stack down")
    return 0 if all(row["verified"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
