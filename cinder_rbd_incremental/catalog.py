"""What a backup pool holds, read without Cinder: every chain, every restore
point, and the Cinder backup record that registers it again.

A backup's full lineage and its volume's Cinder metadata are stored on the
chain image next to the data (see ``targets/rbd.py``), so the pool alone is
enough to rebuild Cinder's backup records after its database is lost:
:func:`backup_record` turns a lineage into the ``backup_service`` and
``backup_url`` that ``openstack volume backup record import`` takes, built the
way Cinder's own export builds them (``Backup.encode_record``: base64 of a
JSON object of the backup's fields plus ``driver_info``). The driver's
``import_record`` accepts it because ``driver_info`` is the stored lineage.
"""

import base64
import datetime
import json

import rbd

from cinder_rbd_incremental import lineage, naming
from cinder_rbd_incremental.targets import rbd as rbd_target

DRIVER_CLASS = "cinder_rbd_incremental.driver.RBDIncrementalBackupDriver"
GiB = 1 << 30


def scan(ctx):
    """The chains in the pool of ``ctx``, by image name: see :func:`chain_entry`."""
    chains = []
    for name in sorted(rbd.RBD().list(ctx)):
        ids = naming.parse_chain_image(name)
        if ids is None:
            continue  # not a chain image (the stock driver's, say)
        try:
            with rbd.Image(ctx, name, read_only=True) as img:
                chains.append(chain_entry(name, ids, img))
        except rbd.ImageNotFound:
            continue  # deleted while the pool was listed
    return chains


def chain_entry(name, ids, img):
    metadata = dict(img.metadata_list())
    return {
        "image": name, "volume_id": ids[0], "first_backup_id": ids[1], "size": img.size(),
        "pending": _json_or_text(metadata.get(rbd_target.PENDING_KEY)),
        "restore_points": [restore_point(snap, metadata)
                           for snap in rbd_target.snapshot_names(img)],
    }


def restore_point(snap, metadata):
    """One snapshot of a chain: its backup, lineage and volume metadata.

    ``problem`` says why a snapshot is not a complete backup (no lineage: a
    backup that failed before it was recorded); such a point has no record.
    """
    backup_id = naming.parse_backup_snapshot(snap)
    record, problem = None, None
    if backup_id is None:
        problem = "not a backup snapshot"
    else:
        record, problem = _lineage(snap, metadata.get(rbd_target.backup_meta_key(backup_id)))
    volume_metadata = metadata.get(rbd_target.volume_meta_key(backup_id)) if backup_id else None
    return {"snapshot": snap, "backup_id": backup_id, "taken_at": snapshot_time(snap),
            "parent_id": ((record or {}).get("parent") or {}).get("backup_id"),
            "lineage": record, "volume_metadata": _json_or_text(volume_metadata),
            "problem": problem}


def _lineage(snap, text):
    if text is None:
        return None, "no lineage: a backup that did not finish"
    try:
        record = lineage.parse(text)
    except lineage.InvalidLineage as exc:
        return None, "lineage unreadable: %s" % exc
    if record["target"]["snapshot"] != snap:
        return None, "its lineage names snapshot %s" % record["target"]["snapshot"]
    return record, None


def _json_or_text(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def snapshot_time(snap):
    """When a backup snapshot was taken (ISO 8601, UTC), from its name; or None."""
    try:
        stamp = float(snap.rsplit(".snap.", 1)[1])
    except (IndexError, ValueError):
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat()


def backup_record(record, children=0, service=DRIVER_CLASS):
    """``(backup_service, backup_url)`` for ``openstack volume backup record import``.

    The fields Cinder keeps only in its database (name, description, project,
    backup metadata) are not on the backup cluster: the import leaves them
    empty and puts the backup in the importing project. ``created_at`` and
    ``data_timestamp`` are when the backup's snapshot was taken.
    """
    taken = snapshot_time(record["target"]["snapshot"])
    fields = {
        "id": record["backup_id"], "volume_id": record["volume_id"],
        "parent_id": (record.get("parent") or {}).get("backup_id"),
        "container": record["target"]["pool"], "size": max(1, -(-record["size"] // GiB)),
        "display_name": None, "display_description": None,
        "service": service, "service_metadata": lineage.compact(record),
        "object_count": record["stats"].get("extents", 0),
        "num_dependent_backups": children, "snapshot_id": None,
        "created_at": taken, "data_timestamp": taken, "metadata": {},
        "driver_info": {"lineage": record},
    }
    url = base64.b64encode(json.dumps(fields, sort_keys=True).encode()).decode()
    return service, url


def records(chains, service=DRIVER_CLASS):
    """``(backup_service, backup_url)`` of every complete backup, parents first."""
    complete = [point for chain in chains for point in chain["restore_points"]
                if point["lineage"] is not None]
    children = {}
    for point in complete:
        if point["parent_id"]:
            children[point["parent_id"]] = children.get(point["parent_id"], 0) + 1
    return [backup_record(point["lineage"], children.get(point["backup_id"], 0), service)
            for point in complete]


def describe(chain):
    """Plain-text lines for one chain (``rbd-incremental catalog``)."""
    lines = ["%s  %.1f GiB%s" % (chain["image"], chain["size"] / GiB, _owner(chain))]
    for point in chain["restore_points"]:
        lines.append("  %s  %s  %s" % (point["taken_at"] or "-", point["backup_id"] or "-",
                                       _kind(point)))
    if chain["pending"] is not None:
        lines.append("  HEAD partly written by an unfinished backup: %s"
                     % json.dumps(chain["pending"], sort_keys=True))
    return lines


def _owner(chain):
    """``, volume NAME, project ID`` from the newest volume metadata saved."""
    for point in reversed(chain["restore_points"]):
        saved = point["volume_metadata"]
        if isinstance(saved, dict) and isinstance(saved.get("volume-base-metadata"), dict):
            fields = saved["volume-base-metadata"]
            return ", volume %s, project %s" % (fields.get("display_name"),
                                                 fields.get("project_id"))
    return ""


def _kind(point):
    record = point["lineage"]
    if record is None:
        return "INCOMPLETE (%s): %s" % (point["snapshot"], point["problem"])
    kind = "incremental of %s" % point["parent_id"] if point["parent_id"] else "full"
    if record.get("full_reason"):
        kind += " (made full: %s)" % record["full_reason"]
    verification = (record.get("verification") or {}).get("mode", "none")
    changed = record["stats"].get("changed_bytes", 0) / (1 << 20)
    return "%s, %.1f MiB changed, verify %s" % (kind, changed, verification)
