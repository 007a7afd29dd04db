"""Connect to a Ceph cluster and open RBD images.

Every connection gets timeouts, so a cluster that goes away makes calls fail
with an error instead of hanging: ``client_mount_timeout`` bounds connecting,
``rados_osd_op_timeout`` / ``rados_mon_op_timeout`` bound each operation.
"""

import contextlib
import dataclasses
import os

import rados
import rbd


class ClusterError(Exception):
    """A cluster could not be reached or used; the message says why."""


@dataclasses.dataclass
class ClusterSpec:
    """How to reach one cluster as one user.

    ``conf`` is a ceph.conf path (None: librados' default search),
    ``user`` a cephx id without the ``client.`` prefix, ``keyring`` an optional
    keyring path (otherwise the one ceph.conf names). ``options`` are extra
    librados settings, e.g. ``{"rbd_cache": "false"}``.
    """

    conf: str = None
    user: str = None
    keyring: str = None
    connect_timeout: int = 30
    op_timeout: int = 120
    options: dict = dataclasses.field(default_factory=dict)

    def describe(self):
        return "%s as client.%s" % (self.conf or "default ceph.conf", self.user or "admin")


def connect(spec):
    """Return a connected ``rados.Rados`` for ``spec``; raise ClusterError."""
    if spec.conf and not os.path.isfile(spec.conf):
        raise ClusterError("ceph conf %s does not exist" % spec.conf)
    if spec.keyring and not os.access(spec.keyring, os.R_OK):
        raise ClusterError("keyring %s is missing or unreadable" % spec.keyring)
    conf = {
        # Like the rbd tool: the writeback cache works from the first write,
        # not only after a first flush (we flush before every end snapshot).
        "rbd_cache_writethrough_until_flush": "false",
        "client_mount_timeout": str(spec.connect_timeout),
        "rados_osd_op_timeout": str(spec.op_timeout),
        "rados_mon_op_timeout": str(spec.op_timeout),
    }
    if spec.keyring:
        conf["keyring"] = spec.keyring
    conf.update({k: str(v) for k, v in spec.options.items()})
    try:
        client = rados.Rados(rados_id=spec.user, conffile=spec.conf or "", conf=conf)
        client.connect(timeout=spec.connect_timeout)
    except rados.Error as exc:
        raise ClusterError("cannot connect to %s: %s" % (spec.describe(), exc)) from exc
    return client


@contextlib.contextmanager
def cluster(spec):
    """Context manager: a connected cluster, shut down on exit."""
    client = connect(spec)
    try:
        yield client
    finally:
        client.shutdown()


@contextlib.contextmanager
def ioctx(client, pool):
    """Context manager: an I/O context on ``pool``; ClusterError if it is missing."""
    try:
        ctx = client.open_ioctx(pool)
    except rados.ObjectNotFound:
        raise ClusterError("pool %s does not exist" % pool) from None
    except rados.Error as exc:
        raise ClusterError("cannot open pool %s: %s" % (pool, exc)) from exc
    try:
        yield ctx
    finally:
        ctx.close()


@contextlib.contextmanager
def image(ctx, name, snapshot=None, read_only=False):
    """Context manager: an open ``rbd.Image``; ClusterError if it is missing."""
    try:
        img = rbd.Image(ctx, name, snapshot=snapshot, read_only=read_only)
    except rbd.ImageNotFound:
        where = "%s/%s" % (ctx.get_pool_name(), name)
        if snapshot:
            raise ClusterError("image or snapshot %s@%s not found" % (where, snapshot)) from None
        raise ClusterError("image %s not found" % where) from None
    try:
        yield img
    finally:
        img.close()


@contextlib.contextmanager
def open_image(spec, pool, name, snapshot=None, read_only=False):
    """Connect, open the pool and the image: the three steps most callers need."""
    with cluster(spec) as client, ioctx(client, pool) as ctx:
        with image(ctx, name, snapshot=snapshot, read_only=read_only) as img:
            yield img


def snapshot_identity(client, img, snap_name):
    """Identify a snapshot across clusters: cluster fsid, image id, snapshot id.

    Two snapshots with equal identities are the same point in time of the
    same image; names alone can repeat.
    """
    return {"fsid": client.get_fsid(), "image_id": img.id(),
            "snap_id": img.snap_get_id(snap_name)}


def create_image_like(ctx, name, size, order=None):
    """Create a format 2 image for a copy (layering, exclusive-lock, object-map, fast-diff)."""
    features = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
                | rbd.RBD_FEATURE_DEEP_FLATTEN)
    try:
        rbd.RBD().create(ctx, name, size, order=order, old_format=False, features=features)
    except rbd.ImageExists:
        raise ClusterError("image %s/%s already exists" % (ctx.get_pool_name(), name)) from None
