#!/usr/bin/env python3
"""The operator's journey through a real Cinder (what `make demo` shows first).

Boots the Cinder stack of ``tools/cinder-stack`` on the sandbox clusters (if it
is not up), then, through the Cinder API with python-cinderclient: creates a
volume, writes into it, takes a full backup and two incremental ones, restores
every backup to a new volume and compares it with what the volume held, deletes
the backups newest first (the order Cinder allows) and prints a table.

    tools/journey.py          run the journey, clean up, leave the stack running
    tools/journey.py --stock  the same with Cinder's stock CephBackupDriver
"""

import argparse
import os
import random
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

from tests.e2e import stack  # noqa: E402  (the e2e tier's client helpers)

MiB = 1 << 20


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


def run_journey(cinder, rng):
    rows = []
    volume = cinder.create_volume(1, name="demo-volume")
    print("created volume %s (1 GiB)" % volume.id)
    parent_digests = []
    for step, (kind, count) in enumerate((("full", 64), ("incremental", 8),
                                          ("incremental", 16))):
        written = write_round(volume.id, rng, count)
        digest = stack.volume_digest(volume.id)
        started = time.monotonic()
        backup = cinder.create_backup(volume.id, incremental=kind == "incremental",
                                      name="demo-%d" % step)
        seconds = time.monotonic() - started
        print("backup %s (%s): %.1f s" % (backup.id, kind, seconds))
        rows.append({"backup": backup.id, "kind": kind, "written": written,
                     "sent": bytes_sent(cinder, backup.id), "seconds": seconds,
                     "incremental": backup.is_incremental})
        parent_digests.append((backup.id, digest))
    for row, (backup_id, digest) in zip(rows, parent_digests, strict=True):
        restored = cinder.restore(backup_id)
        row["verified"] = stack.volume_digest(restored.id) == digest
        print("restored %s to volume %s: %s" % (backup_id, restored.id,
                                                "identical" if row["verified"] else "DIFFERS"))
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
    print("booting the Cinder stack (tools/cinder-stack up) ...", flush=True)
    stack.ensure_up()
    cinder = stack.Cinder()
    try:
        rows = run_journey(cinder, random.Random(args.seed))
    finally:
        print("cleaning up (backups newest first, then volumes) ...", flush=True)
        cinder.cleanup()
    print_table(rows)
    env = subprocess.run([os.path.join(REPO, "tools", "cinder-stack"), "env"],
                         capture_output=True, text=True).stdout
    print("\nThe stack stays up for exploring; talk to it with:\n%s" % env)
    print("Stop it with: tools/cinder-stack down")
    return 0 if all(row["verified"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
