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
    cfg.StrOpt("backup_ceph_data_pool",
               help="Pool for the data objects of chain images (rbd create --data-pool), "
                    "e.g. an erasure-coded pool with allow_ec_overwrites; their headers, "
                    "metadata and checksums stay in backup_ceph_pool. backup_ceph_user "
                    "needs 'profile rbd pool=<it>' too. Unset: data in backup_ceph_pool."),
    cfg.IntOpt("backup_ceph_stripe_unit", default=0, min=0,
               help="Stripe unit of new chain images in bytes (a power of two dividing "
                    "the object size); 0: no striping. Set with backup_ceph_stripe_count."),
    cfg.IntOpt("backup_ceph_stripe_count", default=0, min=0,
               help="Objects a new chain image stripes over; 0: no striping."),
    cfg.ListOpt("backup_ceph_image_features",
                help="Features of new chain images, e.g. layering,exclusive-lock,object-map,"
                     "fast-diff,deep-flatten. Unset: the backup cluster's "
                     "rbd_default_features. Without object-map and fast-diff, changed "
                     "extents and restores are listed object by object (slower)."),
    cfg.BoolOpt("backup_ceph_image_journals", default=False,
                help="Add journaling (and exclusive-lock) to new chain images, so rbd-mirror "
                     "in journal mode can copy the backups to a third site. Every write "
                     "then goes to the journal too."),
    cfg.StrOpt("file_target_dir", default="/var/lib/cinder/backup-diffs",
               help="Directory for target = file (e.g. an NFS mount for an offsite copy). "
                    "Each chain is a subdirectory of RBD diff files, NNNNNN.<snapshot>.diff, "
                    "that `rbd import-diff` applies in order; its name (the last path "
                    "component) is recorded as the backups' container, so keep it when "
                    "moving the mount. Must exist and be writable by cinder-backup."),
    cfg.BoolOpt("incremental_forever", default=False, mutable=True,
                help="Record completed incremental backups in Cinder without a parent, so "
                     "that any backup can be deleted in any order (a rolling window "
                     "without periodic full backups). The transfer stays incremental "
                     "(against the volume's newest backup) and its real parent stays in "
                     "the lineage; Cinder then shows every backup with is_incremental "
                     "false. Only for target = rbd, whose restore points do not depend "
                     "on each other. Mutable: SIGHUP to cinder-backup applies a change."),
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
        ("sample", "compare verify_sample_objects of the chunks 'full' compares, picked at "
                   "random"),
        ("full", "compare every 4 MiB chunk the backup covers: a full backup's chunks "
                 "allocated in the source or the copy, an incremental's chunks changed "
                 "since its parent (checking costs what the backup changed)")],
        help="Read back each RBD backup after it is written and compare it with the "
             "source snapshot; a difference fails the backup."),
    cfg.IntOpt("verify_sample_objects", default=16, min=1,
               help="Chunks (4 MiB) compared by verify = sample."),
    cfg.IntOpt("max_bandwidth_mib", default=0, min=0,
               help="Cap on the data one cinder-backup process sends to or reads from the "
                    "backup target, in MiB/s, shared by all its backups and restores; "
                    "0: no cap. Each backup worker process (backup_workers) has its own."),
    cfg.IntOpt("file_chunk_mib", default=4, min=1,
               help="Chunk size of non-RBD volumes, in MiB: the unit of change detection "
                    "by checksum."),
]

# Read by manager.BackupManager (enabled with [DEFAULT] backup_manager).
health_opts = [
    cfg.IntOpt("health_check_interval", default=60, min=0,
               help="Seconds between checks that the backup target still answers, by "
                    "cinder_rbd_incremental.manager.BackupManager (Cinder's [DEFAULT] "
                    "backup_manager): while it does not, the service reports itself down. "
                    "Cinder runs periodic tasks every periodic_interval (60 s) at most. "
                    "0 disables the check."),
    cfg.IntOpt("health_check_timeout", default=10, min=1,
               help="Seconds each step of that check (connect, one read) may take before "
                    "the target counts as not answering."),
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

ALL_OPTS = backup_cluster_opts + source_cluster_opts + engine_opts + safety_opts + health_opts


def register_opts(conf):
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts():
    """Entry point for oslo-config-generator."""
    return [(GROUP, ALL_OPTS)]
