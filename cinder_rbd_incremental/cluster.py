"""Connect to a Ceph cluster and open RBD images.

Every connection gets timeouts, so a cluster that goes away makes calls fail
with an error instead of hanging: ``client_mount_timeout`` bounds connecting,
``rados_osd_op_timeout`` / ``rados_mon_op_timeout`` bound each operation.
A spec's timeout left at None keeps what ceph.conf says; an operation
timeout that ceph.conf leaves at librados' "wait forever" (0) becomes
:data:`DEFAULT_OP_TIMEOUT`.

Connections run without the librbd cache (``rbd_cache = false``): the engine
keeps many requests in flight itself, and the writeback cache retries a
failed flush forever, so a stopped OSD would hang a transfer past any
operation timeout.
"""

import contextlib
import dataclasses
import os

import rados
import rbd

from cinder_rbd_incremental import native

LOG = native.get_logger(__name__)
DEFAULT_OP_TIMEOUT = 120
OP_TIMEOUT_OPTIONS = ("rados_osd_op_timeout", "rados_mon_op_timeout")


class ClusterError(Exception):
    """A cluster could not be reached or used; the message says why."""


class PermissionDenied(ClusterError):
    """The cephx user lacks a capability; the message names the one needed."""


@dataclasses.dataclass
class ClusterSpec:
    """How to reach one cluster as one user.

    ``conf`` is a ceph.conf path (None: librados' default search),
    ``user`` a cephx id without the ``client.`` prefix, ``keyring`` an optional
    keyring path (otherwise the one ceph.conf names). ``connect_timeout`` and
    ``op_timeout`` are seconds; None keeps ceph.conf's values (see the module
    doc). ``options`` are extra librados settings, e.g. ``{"rbd_cache": "true"}``.
    """

    conf: str | None = None
    user: str | None = None
    keyring: str | None = None
    connect_timeout: int | None = None
    op_timeout: int | None = None
    options: dict = dataclasses.field(default_factory=dict)

    def describe(self):
        return "%s as client.%s" % (self.conf or "default ceph.conf", self.user or "admin")


def connect(spec):
    """Return a connected ``rados.Rados`` for ``spec``; raise ClusterError."""
    try:
        client = configure(spec)
        client.connect()
    except (rados.PermissionError, rados.PermissionDeniedError) as exc:
        raise PermissionDenied("cannot connect to %s: %s (the user needs the capability "
                               "mon 'profile rbd')" % (spec.describe(), exc)) from exc
    except rados.Error as exc:
        raise ClusterError("cannot connect to %s: %s" % (spec.describe(), exc)) from exc
    return client


def configure(spec):
    """A ``rados.Rados`` for ``spec``, configured but not connected yet.

    Settings, last wins: ceph.conf; no librbd cache; the spec's timeouts
    (those left at None stay ceph.conf's, an operation timeout of 0 there,
    librados' "wait forever", becomes DEFAULT_OP_TIMEOUT); the spec's keyring
    and ``options``.
    """
    if spec.conf and not os.path.isfile(spec.conf):
        raise ClusterError("ceph conf %s does not exist" % spec.conf)
    if spec.keyring and not os.access(spec.keyring, os.R_OK):
        raise ClusterError("keyring %s is missing or unreadable" % spec.keyring)
    conf = {
        # Our own aio pipeline keeps the requests in flight; the writeback
        # cache would only add a copy, and it retries a failed flush forever
        # (a stopped OSD would hang the transfer past rados_osd_op_timeout).
        "rbd_cache": "false",
        # Should ``options`` enable rbd_cache: like the rbd tool, the
        # writeback cache then works from the first write.
        "rbd_cache_writethrough_until_flush": "false",
    }
    if spec.connect_timeout is not None:
        conf["client_mount_timeout"] = str(spec.connect_timeout)
    if spec.op_timeout is not None:
        conf.update((option, str(spec.op_timeout)) for option in OP_TIMEOUT_OPTIONS)
    if spec.keyring:
        conf["keyring"] = spec.keyring
    conf.update({k: str(v) for k, v in spec.options.items()})
    client = rados.Rados(rados_id=spec.user, conffile=spec.conf or "", conf=conf)
    for option in OP_TIMEOUT_OPTIONS:
        if option not in conf and _seconds(client.conf_get(option)) == 0:
            client.conf_set(option, str(DEFAULT_OP_TIMEOUT))
    return client


def _seconds(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def missing_capability(who, pool, doing, exc=None):
    """A PermissionDenied naming what ``who`` (``client.<id>``, or None) was
    refused and the capability that allows it (the one ``profile rbd`` grants)."""
    where = " in pool %s" % pool if pool else ""
    return PermissionDenied(
        "%s may not %s%s: it needs the capability osd 'profile rbd pool=%s'%s"
        % (who or "the cephx user", doing, where, pool or "<pool>",
           " (%s)" % exc if exc else ""))


def user_name(spec):
    return "client.%s" % (spec.user or "admin")


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
def image(ctx, name, snapshot=None, read_only=False, who=None):
    """Context manager: an open ``rbd.Image``; ClusterError if it is missing,
    PermissionDenied (naming ``who``, ``client.<id>``) if the user may not open it."""
    try:
        img = rbd.Image(ctx, name, snapshot=snapshot, read_only=read_only)
    except rbd.ImageNotFound:
        where = "%s/%s" % (ctx.get_pool_name(), name)
        if snapshot:
            raise ClusterError("image or snapshot %s@%s not found" % (where, snapshot)) from None
        raise ClusterError("image %s not found" % where) from None
    except rbd.PermissionError as exc:
        doing = "open image %s%s" % (name, " to read" if read_only else " to write")
        raise missing_capability(who, ctx.get_pool_name(), doing, exc) from None
    try:
        yield img
    except BaseException:
        _close_quietly(img)  # the error that ended the block is the one to report
        raise
    img.close()


def _close_quietly(img):
    """Close an image after an error; a failing close (the cluster went away
    too: releasing the lock times out) is logged, not raised over the error."""
    try:
        img.close()
    except rbd.Error as exc:
        LOG.debug("ignoring an error closing an image after an error: %s", exc)


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


def create_image_like(ctx, name, size, order=None, who=None, layout=None):
    """Create a format 2 image for a copy (layering, exclusive-lock, object-map, fast-diff).

    ``who`` (``client.<id>``) names the user in a permission error. ``layout``:
    more ``rbd.RBD().create`` arguments (data pool, striping, features; a
    ``features`` of None there means the cluster's ``rbd_default_features``).
    """
    features = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
                | rbd.RBD_FEATURE_DEEP_FLATTEN)
    args = dict({"features": features}, **(layout or {}))
    pool = ctx.get_pool_name()
    try:
        rbd.RBD().create(ctx, name, size, order=order, old_format=False, **args)
    except rbd.ImageExists:
        raise ClusterError("image %s/%s already exists" % (pool, name)) from None
    except rbd.PermissionError as exc:
        raise missing_capability(who, pool, "create images", exc) from None
