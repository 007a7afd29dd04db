"""The lineage of a backup: versioned schema, build, parse, validate.

A lineage says exactly where a backup's data is and which state of which
volume it reproduces. It is stored in three places:

* in full, as metadata of the chain image on the backup cluster
  (``rbd_incremental.backup.<backup_id>``), next to the data it describes;
* in full, as ``driver_info`` of an exported backup record;
* compact, in the backup's ``service_metadata``: Cinder stores that column
  as VARCHAR(255), too small for the full record, so it holds what restore
  and delete need to find the rest (``schema``, ``v``, ``pool``, ``image``,
  ``snap``; and ``t``, the target plugin, when it is not ``rbd``).
"""

import json

from cinder_rbd_incremental import naming

SCHEMA = "rbd-incremental"
VERSION = 1
SERVICE_METADATA_LIMIT = 255
METHODS = ("rbd-full", "rbd-diff", "stream-full", "stream-checksum")
TARGETS = ("rbd", "file")


class InvalidLineage(ValueError):
    """A lineage that is malformed or names something it must not."""


def build(*, backup_id, volume_id, pool, image, snapshot, snap_id, method, source,
          parent=None, full_reason=None, size=0, stats=None, verification=None,
          target_fsid=None, target="rbd"):
    """Return a full lineage dict (validated)."""
    record = {
        "schema": SCHEMA, "v": VERSION, "backup_id": backup_id, "volume_id": volume_id,
        "target": {"name": target, "fsid": target_fsid, "pool": pool, "image": image,
                   "snapshot": snapshot, "snap_id": snap_id},
        "method": method, "source": source, "parent": parent, "full_reason": full_reason,
        "size": size, "stats": stats or {}, "verification": verification,
    }
    validate(record)
    return record


def compact(record):
    """The part of ``record`` kept in ``service_metadata`` (at most 255 chars)."""
    target = record["target"]
    fields = {"schema": SCHEMA, "v": VERSION, "pool": target["pool"],
              "image": target["image"], "snap": target["snapshot"]}
    if target.get("name", "rbd") != "rbd":
        fields["t"] = target["name"]
    text = json.dumps(fields, separators=(",", ":"))
    if len(text) > SERVICE_METADATA_LIMIT:
        raise InvalidLineage("service metadata would exceed %d characters (Cinder's column "
                             "size): use a shorter pool name than %r"
                             % (SERVICE_METADATA_LIMIT, target["pool"]))
    return text


def check_pool_fits(pool, target="rbd"):
    """Raise InvalidLineage if backups in ``pool`` would not fit service_metadata."""
    some_id = "00000000-0000-0000-0000-000000000000"
    compact({"target": {"name": target, "pool": naming.check_name(pool, "pool"),
                        "image": naming.chain_image(some_id, some_id),
                        "snapshot": naming.backup_snapshot(some_id, now=1e10 + 0.1234567)}})


def compact_target(text):
    """The target plugin named by ``service_metadata`` (call after parse_compact)."""
    return json.loads(text).get("t", "rbd")


def parse_compact(text):
    """Parse ``service_metadata``; return ``(pool, image, snap)``."""
    try:
        data = json.loads(text or "")
    except ValueError:
        raise InvalidLineage("service metadata is not JSON") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InvalidLineage("service metadata was not written by this driver")
    if data.get("v") != VERSION:
        raise InvalidLineage("unsupported lineage version %r" % data.get("v"))
    try:
        return (naming.check_name(data["pool"], "pool"), _check_image(data["image"]),
                _check_snap(data["snap"]))
    except (KeyError, TypeError, AttributeError, naming.InvalidName) as exc:
        raise InvalidLineage("service metadata: %s" % exc) from None


def parse(text_or_dict):
    """Parse and validate a full lineage (JSON text or dict)."""
    record = text_or_dict
    if not isinstance(record, dict):
        try:
            record = json.loads(text_or_dict)
        except (TypeError, ValueError, RecursionError):
            raise InvalidLineage("lineage is not JSON (or nested too deeply)") from None
    validate(record)
    return record


def validate(record):
    """Raise InvalidLineage unless ``record`` is a well-formed lineage."""
    try:
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise InvalidLineage("not a lineage of this driver")
        if record.get("v") != VERSION:
            raise InvalidLineage("unsupported lineage version %r" % record.get("v"))
        naming.check_uuid(record["backup_id"], "backup_id")
        naming.check_uuid(record["volume_id"], "volume_id")
        target = record["target"]
        naming.check_name(target["pool"], "target pool")
        if target.get("name", "rbd") not in TARGETS:
            raise InvalidLineage("unknown target %r" % (target.get("name"),))
        _check_image(target["image"])
        _check_snap(target["snapshot"])
        if record["method"] not in METHODS:
            raise InvalidLineage("unknown method %r" % record["method"])
        if not isinstance(record["source"], dict):
            raise InvalidLineage("source must be an object")
        parent = record.get("parent")
        if parent is not None:
            naming.check_uuid(parent["backup_id"], "parent backup_id")
            _check_snap(parent["snapshot"])
        if not isinstance(record["size"], int) or record["size"] < 0:
            raise InvalidLineage("size must be a non-negative integer")
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidLineage("lineage lacks or mistypes %s" % exc) from None
    except naming.InvalidName as exc:
        raise InvalidLineage(str(exc)) from None


def check_restore_point(image, snap, backup_id, volume_id):
    """Raise InvalidLineage unless ``image@snap`` is a restore point of backup
    ``backup_id`` of volume ``volume_id``.

    Every restore point is named after its own backup and lives in a chain
    named after its volume. Cinder's import applies the exported record's
    outer fields (``service_metadata``, ``volume_id``) after the driver's
    ``import_record``, so these names are the only link between a backup row
    and its data that a tampered record cannot move.
    """
    chain = naming.parse_chain_image(image)
    if chain is None or chain[0] != volume_id:
        raise InvalidLineage("chain %r is not a chain of volume %s" % (image, volume_id))
    if naming.parse_backup_snapshot(snap) != backup_id:
        raise InvalidLineage("restore point %r is not backup %s's" % (snap, backup_id))


def check_belongs(record, backup_id, volume_id, location=None):
    """Return ``record`` (a lineage read back from a target) if it is
    well-formed and describes backup ``backup_id`` of volume ``volume_id``,
    stored at ``location`` ``(pool, image, snap)`` when given; else raise
    InvalidLineage.

    Whoever can write to the backup cluster or the file share can plant a
    record; it drives deletions on the volume cluster, the next backup's
    chain and in-place restores, so nothing in it is trusted unchecked.
    """
    if record is None:
        raise InvalidLineage("no lineage stored for backup %s" % backup_id)
    validate(record)
    if (record["backup_id"], record["volume_id"]) != (backup_id, volume_id):
        raise InvalidLineage("the stored lineage describes backup %s of volume %s, not "
                             "backup %s of volume %s" % (record["backup_id"],
                                                         record["volume_id"], backup_id,
                                                         volume_id))
    target = record["target"]
    check_restore_point(target["image"], target["snapshot"], backup_id, volume_id)
    if location is not None and \
            (target["pool"], target["image"], target["snapshot"]) != tuple(location):
        raise InvalidLineage("the stored lineage names %s/%s@%s, not %s/%s@%s" % (
            target["pool"], target["image"], target["snapshot"], *location))
    _check_source(record["source"], backup_id)
    return record


def _check_source(source, backup_id):
    """The volume-side names of an RBD backup: its own snapshot (or the Cinder
    snapshot it backed up) of a well-named image."""
    if source.get("kind") == "file":
        return
    try:
        naming.check_name(source.get("pool"), "source pool")
        naming.check_name(source.get("image"), "source image")
        snap = naming.check_name(source.get("snapshot"), "source snapshot")
    except naming.InvalidName as exc:
        raise InvalidLineage(str(exc)) from None
    cinder_snapshot = source.get("cinder_snapshot")
    owner = naming.parse_backup_snapshot(snap)
    if owner != backup_id and (cinder_snapshot is None or owner is not None):
        raise InvalidLineage("source snapshot %r is not backup %s's" % (snap, backup_id))
    if cinder_snapshot is not None and snap != cinder_snapshot:
        raise InvalidLineage("source snapshot %r is not the Cinder snapshot %r"
                             % (snap, cinder_snapshot))


def _check_image(name):
    if naming.parse_chain_image(name) is None:
        raise InvalidLineage("image %r is not a chain image name" % (name,))
    return name


def _check_snap(name):
    if naming.parse_backup_snapshot(name) is None:
        raise InvalidLineage("snapshot %r is not a backup snapshot name" % (name,))
    return name
