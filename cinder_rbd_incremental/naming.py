"""Names of images and snapshots, and validation of names from outside.

Compatible with Cinder's RBD volume driver and its stock Ceph backup driver:

* a backup snapshot on the volume is ``backup.<backup_id>.snap.<timestamp>``;
  the RBD volume driver deletes snapshots of that shape when it deletes a
  volume, so any other name would make volume deletion fail;
* the chain image on the backup cluster is ``volume-<volume_id>.backup.<id>``
  where ``<id>`` is the backup that started the chain (the stock driver's
  shape for its base images), and it holds one snapshot per backup, named
  like the source snapshot.
"""

import re
import time

MAX_NAME_BYTES = 255
_BACKUP_SNAP_RE = re.compile(r"^backup\.([a-z0-9\-]+?)\.snap\.([0-9.]+)$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CHAIN_RE = re.compile(r"^volume-([0-9a-f\-]{36})\.backup\.([0-9a-f\-]{36})$")


class InvalidName(ValueError):
    """A name that must not be used for an image, snapshot or pool."""


def check_name(name, what="name"):
    """Return ``name`` if it is safe as a pool, image or snapshot name.

    Rejects the separators of ``pool/image@snap`` specs, NUL and other control
    characters, ``.``/``..`` and names over 255 bytes.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("%s must be a non-empty string" % what)
    if name in (".", "..") or any(c in name for c in "/@") or not name.isprintable():
        raise InvalidName("%s %r contains a forbidden character or is reserved" % (what, name))
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidName("%s is longer than %d bytes" % (what, MAX_NAME_BYTES))
    return name


def check_uuid(value, what="id"):
    if not isinstance(value, str) or not _UUID_RE.match(value):
        raise InvalidName("%s %r is not a UUID" % (what, value))
    return value


def backup_snapshot(backup_id, now=None):
    """The snapshot a backup takes of its volume (and keeps on the chain image)."""
    return "backup.%s.snap.%s" % (check_uuid(backup_id, "backup id"),
                                  repr(time.time() if now is None else now))


def parse_backup_snapshot(name):
    """Return the backup id of a backup snapshot name, or None."""
    match = _BACKUP_SNAP_RE.match(name or "")
    return match.group(1) if match else None


def chain_image(volume_id, first_backup_id):
    """The image on the backup cluster that holds a chain of backups."""
    return "volume-%s.backup.%s" % (check_uuid(volume_id, "volume id"),
                                    check_uuid(first_backup_id, "backup id"))


def parse_chain_image(name):
    """Return ``(volume_id, first_backup_id)`` of a chain image name, or None."""
    match = _CHAIN_RE.match(name or "")
    return match.groups() if match else None


def parse_image_spec(spec, need_snap=False, allow_snap=True):
    """Split ``POOL/IMAGE[@SNAP]`` into ``(pool, image, snap)`` and validate.

    Like the rbd CLI, a spec without a pool means pool ``rbd``.
    """
    rest, _, snap = spec.partition("@")
    pool, _, image = rest.rpartition("/")
    pool = pool or "rbd"
    if snap and not allow_snap:
        raise InvalidName("%s: a snapshot is not allowed here" % spec)
    if need_snap and not snap:
        raise InvalidName("%s: a snapshot is required (POOL/IMAGE@SNAP)" % spec)
    check_name(pool, "pool")
    check_name(image, "image")
    if snap:
        check_name(snap, "snapshot")
    return pool, image, snap or None
