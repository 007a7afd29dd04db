"""How chain images are laid out on the backup cluster: data pool, striping, features.

Options of ``[backup_rbd_incremental]`` (see ``opts.py``): ``backup_ceph_data_pool``
puts the images' data objects in another pool (typically erasure coded) while
their headers, metadata, lineage and checksums stay in ``backup_ceph_pool``
(``rbd create --data-pool``); ``backup_ceph_stripe_unit``/``_count`` stripe
them (``rbd create --stripe-unit --stripe-count``); ``backup_ceph_image_features``
picks their features, and when it is unset librbd applies the backup
cluster's ``rbd_default_features``. ``backup_ceph_image_journals`` adds
journaling (with exclusive-lock), which rbd-mirror's journal mode needs.
"""

import dataclasses
import json
import logging

import rados
import rbd

from cinder_rbd_incremental import cluster

LOG = logging.getLogger(__name__)
FEATURES = {
    "layering": rbd.RBD_FEATURE_LAYERING,
    "striping": rbd.RBD_FEATURE_STRIPINGV2,
    "exclusive-lock": rbd.RBD_FEATURE_EXCLUSIVE_LOCK,
    "object-map": rbd.RBD_FEATURE_OBJECT_MAP,
    "fast-diff": rbd.RBD_FEATURE_FAST_DIFF,
    "deep-flatten": rbd.RBD_FEATURE_DEEP_FLATTEN,
    "journaling": rbd.RBD_FEATURE_JOURNALING,
}
PROBE = "rbd_incremental.probe"


@dataclasses.dataclass
class Layout:
    """What ``rbd create`` is told beyond name, size and object size.
    ``features`` None: the cluster's ``rbd_default_features``."""

    data_pool: str | None = None
    stripe_unit: int | None = None
    stripe_count: int | None = None
    feature_names: list | None = None
    journaling: bool = False

    @classmethod
    def from_conf(cls, options):
        return cls(data_pool=options.backup_ceph_data_pool or None,
                   stripe_unit=options.backup_ceph_stripe_unit or None,
                   stripe_count=options.backup_ceph_stripe_count or None,
                   feature_names=options.backup_ceph_image_features,
                   journaling=options.backup_ceph_image_journals)

    @property
    def features(self):
        """The feature mask asked for (ValueError for an unknown name), or None."""
        return parse_features(self.feature_names)

    def create_args(self, client):
        """Keyword arguments of ``rbd.RBD().create`` on ``client``'s cluster."""
        features = self.features
        if self.journaling:
            if features is None:
                features = default_features(client)
            features |= rbd.RBD_FEATURE_JOURNALING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        args = {"features": features, "data_pool": self.data_pool}
        if self.stripe_unit:
            args.update(stripe_unit=self.stripe_unit, stripe_count=self.stripe_count)
        return args

    def check(self, client, who):
        """ClusterError unless the layout can be created by ``who``."""
        if bool(self.stripe_unit) != bool(self.stripe_count):
            raise cluster.ClusterError("backup_ceph_stripe_unit and backup_ceph_stripe_count "
                                       "go together: set both or neither")
        if self.stripe_unit and self.stripe_unit & (self.stripe_unit - 1):
            raise cluster.ClusterError("backup_ceph_stripe_unit %d is not a power of two"
                                       % self.stripe_unit)
        features = self.features or 0
        if features & rbd.RBD_FEATURE_OBJECT_MAP and not features & rbd.RBD_FEATURE_EXCLUSIVE_LOCK:
            raise cluster.ClusterError("backup_ceph_image_features: object-map needs "
                                       "exclusive-lock")
        if features & rbd.RBD_FEATURE_FAST_DIFF and not features & rbd.RBD_FEATURE_OBJECT_MAP:
            raise cluster.ClusterError("backup_ceph_image_features: fast-diff needs object-map")
        if self.data_pool:
            check_data_pool(client, self.data_pool, who)


def parse_features(names):
    """A feature bit mask from names (None or empty: None, the cluster's default)."""
    if not names:
        return None
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise ValueError("backup_ceph_image_features: unknown feature(s) %s (known: %s)"
                         % (", ".join(unknown), ", ".join(sorted(FEATURES))))
    mask = 0
    for name in names:
        mask |= FEATURES[name]
    return mask


def default_features(client):
    """The backup cluster's ``rbd_default_features`` (a number or names) as a mask."""
    value = client.conf_get("rbd_default_features").strip()
    if value.isdigit():
        return int(value)
    return parse_features([name.strip() for name in value.split(",") if name.strip()]) or 0


def pool_details(client, pool):
    """``ceph osd pool ls detail`` of ``pool`` (needs mon 'profile rbd'), or None
    when the monitors do not answer that user."""
    ret, out, _err = client.mon_command(json.dumps({"prefix": "osd pool ls", "detail": "detail",
                                                    "format": "json"}), b"")
    if ret != 0:
        return None
    for entry in json.loads(out or b"[]"):
        if entry.get("pool_name") == pool:
            return entry
    return None


def check_data_pool(client, pool, who):
    """The data pool exists, ``who`` can write it, and an erasure-coded one
    allows overwrites (RBD needs them: ``ceph osd pool set POOL
    allow_ec_overwrites true``)."""
    with cluster.ioctx(client, pool) as ctx:
        try:
            ctx.write_full(PROBE, b"ok")
            ctx.remove_object(PROBE)
        except (rados.PermissionError, rados.PermissionDeniedError):
            raise cluster.ClusterError(
                "%s cannot write to data pool %s: give it 'profile rbd pool=%s' as well"
                % (who, pool, pool)) from None
    # (a whole-object write works on any erasure-coded pool: ask the monitors)
    details = pool_details(client, pool)
    if details is None:
        LOG.warning("could not read the settings of data pool %s (mon 'profile rbd' "
                    "lets the user list pools): not checking allow_ec_overwrites", pool)
        return
    if lacks_overwrites(details):
        raise cluster.ClusterError(
            "data pool %s is erasure coded without overwrites, which RBD needs: run 'ceph "
            "osd pool set %s allow_ec_overwrites true'" % (pool, pool))


def lacks_overwrites(details):
    """True for an erasure-coded pool (``osd pool ls detail``) without
    ``allow_ec_overwrites``."""
    erasure = details.get("type") == 3 or bool(details.get("erasure_code_profile"))
    return erasure and "ec_overwrites" not in (details.get("flags_names") or "").split(",")
