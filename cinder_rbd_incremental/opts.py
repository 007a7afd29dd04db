"""Configuration options of the backup driver (group ``[backup_rbd_incremental]``).

``list_opts`` is registered under the ``oslo.config.opts`` entry point, so
``oslo-config-generator --namespace cinder_rbd_incremental`` documents them.
"""

from oslo_config import cfg

from cinder_rbd_incremental.engine import TransferOptions as engine_defaults

GROUP = "backup_rbd_incremental"

backup_cluster_opts = [
    cfg.StrOpt("target", default="rbd",
               help="Where backups land: a plugin of the cinder_rbd_incremental.targets "
                    "namespace. 'rbd': a chain image per volume in a pool on the backup "
                    "cluster; 'file': a directory of RBD diff files."),
    cfg.StrOpt("backup_ceph_conf", default="/etc/ceph/backup-cluster.conf",
               help="ceph.conf of the backup (second) cluster."),
    cfg.StrOpt("backup_ceph_user", default="cinder-backup",
               help="cephx user on the backup cluster, without 'client.'; needs "
                    "'profile rbd pool=<backup_ceph_pool>'."),
    cfg.StrOpt("backup_ceph_keyring",
               help="Keyring of backup_ceph_user (default: the one backup_ceph_conf names)."),
    cfg.StrOpt("backup_ceph_pool", default="backups",
               help="Pool on the backup cluster that holds the chain images."),
    cfg.StrOpt("file_target_dir", default="/var/lib/cinder/backup-diffs",
               help="Directory for target = file (e.g. an NFS mount for an offsite copy). "
                    "Each chain is a subdirectory of RBD diff files, NNNNNN.<snapshot>.diff, "
                    "that `rbd import-diff` applies in order; its name (the last path "
                    "component) is recorded as the backups' container, so keep it when "
                    "moving the mount. Must exist and be writable by cinder-backup."),
]

source_cluster_opts = [
    cfg.StrOpt("source_ceph_conf", default="/etc/ceph/ceph.conf",
               help="ceph.conf of the cluster holding the volumes. Backups and restores "
                    "use the connection os-brick hands over; this one is used where "
                    "there is none (deleting source snapshots when a backup is deleted)."),
    cfg.StrOpt("source_ceph_user", default="cinder",
               help="cephx user on the volume cluster, without 'client.'."),
    cfg.StrOpt("source_ceph_keyring", help="Keyring of source_ceph_user."),
    cfg.StrOpt("source_ceph_pool", default="volumes",
               help="Pool of the volumes (as the RBD volume driver's rbd_pool): where an "
                    "interrupted backup's snapshot is looked for when it is deleted."),
]

engine_opts = [
    cfg.IntOpt("zero_granularity", default=4096, min=512,
               help="Block size in bytes at which runs of zeros are detected and not sent."),
    cfg.IntOpt("max_in_flight_ops", default=engine_defaults.max_in_flight_ops, min=1,
               help="Concurrent librbd requests per direction (small requests: the "
                    "bytes limit bounds large ones). A deep queue lets the OSDs batch "
                    "small writes."),
    cfg.IntOpt("max_in_flight_mib", default=32, min=4,
               help="Bytes in flight per direction, in MiB: bounds memory per backup."),
    cfg.BoolOpt("whole_object", default=False,
                help="Diff whole objects (fast with the fast-diff feature, coarser)."),
    cfg.IntOpt("connect_timeout", default=30, min=1,
               help="Seconds to wait for a cluster connection before failing."),
    cfg.IntOpt("op_timeout", default=120, min=1,
               help="Seconds before a single RADOS operation fails (a stopped OSD or a "
                    "full cluster makes a backup fail instead of hanging)."),
    cfg.StrOpt("verify", default="sample", choices=[
        ("none", "no verification"),
        ("sample", "compare a random sample of objects with the source snapshot"),
        ("full", "compare every allocated object with the source snapshot")],
        help="Read back and compare each backup after it is written."),
    cfg.IntOpt("verify_sample_objects", default=16, min=1,
               help="Objects compared by verify = sample."),
    cfg.IntOpt("file_chunk_mib", default=4, min=1,
               help="Chunk size of non-RBD volumes, in MiB: the unit of change detection "
                    "by checksum."),
]

safety_opts = [
    cfg.IntOpt("max_source_snapshots", default=3, min=1,
               help="Backup snapshots (backup.<id>.snap.<ts>) kept on each volume: the "
                    "newest N, each the possible base of the next incremental. With 1, "
                    "deleting the newest backup makes the next incremental a full one; "
                    "each kept snapshot holds the blocks overwritten since it on the "
                    "volume cluster. Backups of Cinder snapshots never remove any."),
    cfg.IntOpt("chain_lock_timeout", default=1800, min=0,
               help="Seconds a backup waits for another backup writing to the same chain "
                    "(one writer per chain, held on the backup cluster) before it fails "
                    "with a timeout naming the holder. A holder that died releases the "
                    "chain by itself after about 30 s (its watch expires; it is then "
                    "blocklisted and its partial writes rolled back)."),
]

ALL_OPTS = backup_cluster_opts + source_cluster_opts + engine_opts + safety_opts


def register_opts(conf):
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts():
    """Entry point for oslo-config-generator."""
    return [(GROUP, ALL_OPTS)]
