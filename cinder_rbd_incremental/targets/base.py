"""The contract between the driver and a backup target.

A target keeps *chains*: a chain is named like a chain image
(:func:`naming.chain_image`) and holds one restore point per backup, each
named like the backup's snapshot. The driver decides what goes where; a
target only stores and reads back, through a :class:`TargetSession` opened
for one operation (one connection, one set of credentials).

Targets are stevedore plugins in the ``cinder_rbd_incremental.targets``
namespace; the driver loads the one named by ``[backup_rbd_incremental]
target`` and builds it with ``from_conf(options)``.
"""

import abc

from cinder_rbd_incremental import cluster


class ChainNotFound(cluster.ClusterError):
    """The chain (or the restore point asked for) does not exist."""


class ChainInUse(cluster.ClusterError):
    """Removing this restore point would make others unrestorable."""


class BackupTarget(abc.ABC):
    """A place where chains of backups live.

    ``name`` is the plugin's name, recorded in every lineage; ``pool`` is the
    place inside the target (a pool, a directory), recorded too and checked
    against the configuration before anything is read or removed.
    """

    name: str | None = None
    pool = None
    #: True when any restore point can be removed without making another one
    #: unrestorable (what ``incremental_forever`` needs)
    independent_restore_points = False

    @classmethod
    @abc.abstractmethod
    def from_conf(cls, options):
        """Build from the driver's ``[backup_rbd_incremental]`` options."""

    @abc.abstractmethod
    def check_setup(self):
        """Prove the target is reachable and writable; ``cluster.ClusterError``
        with an operator-readable message otherwise."""

    def check_reachable(self, timeout):
        """A cheap check that the target still answers, for the periodic
        health check (``manager.py``): ``cluster.ClusterError`` if not.
        ``timeout`` (seconds) bounds each step where the target allows it.
        By default the start-up check; a target overrides it with something
        lighter and read-only (a full target must still take deletes)."""
        self.check_setup()

    def at(self, pool):
        """This target for the place ``pool`` recorded with a backup (or asked
        for as its container); ``cluster.ClusterError`` naming what to fix when
        this target cannot reach it. By default only its own place."""
        if pool != self.pool:
            raise cluster.ClusterError(
                "the %s target keeps backups in %s, not in %s: configure it back to %s to "
                "reach those backups" % (self.name, self.pool, pool, pool))
        return self

    @abc.abstractmethod
    def session(self, writing=False):
        """Context manager: a :class:`TargetSession`. ``writing``: the
        operation adds a restore point (a backup), so a target may open what
        it reads for writing from the start."""


class TargetSession(abc.ABC):
    """One operation's access to a target. ``fsid`` identifies the target
    (the backup cluster's fsid), or is None."""

    fsid = None

    @abc.abstractmethod
    def snapshots(self, chain):
        """Names of the restore points of ``chain`` (ChainNotFound if none)."""

    @abc.abstractmethod
    def new_chain(self, chain, size, order):
        """Start ``chain`` empty; a leftover of the same name is removed first
        (its name carries the backup's id that starts it: nothing else uses it)."""

    @abc.abstractmethod
    def locked(self, chain, me, timeout, should_cancel=None):
        """Context manager: hold ``chain``'s writer lock (see ``locking``);
        ``me`` (``locking.owner``) says who holds it. Waits up to ``timeout``
        seconds for another holder (``locking.ChainBusy`` then)."""

    @abc.abstractmethod
    def writing(self, chain, fresh, options):
        """Context manager: an ``engine.Sink`` that adds a restore point to
        ``chain``; after the block, its ``snap_id`` identifies that point (or
        is None). ``fresh``: the chain was just started."""

    @abc.abstractmethod
    def verify(self, source_image, chain, snap, options, sample=None, since=None):
        """First offset where restore point ``snap`` differs from
        ``source_image`` (open at the backed-up snapshot), or None.
        ``sample``: compare only that many pieces, chosen at random.
        ``since``: ``(source snapshot, restore point)`` this one was
        incremented from: compare only what changed since."""

    @abc.abstractmethod
    def restore_point(self, chain, snap):
        """Context manager: the :class:`RestorePoint` ``snap`` of ``chain``."""

    @abc.abstractmethod
    def save_lineage(self, chain, record, volume_metadata=None):
        """Store a backup's full lineage (and its volume's Cinder metadata)."""

    @abc.abstractmethod
    def load_lineage(self, chain, backup_id):
        """A backup's lineage, None if not recorded (ChainNotFound if no chain)."""

    @abc.abstractmethod
    def load_volume_metadata(self, chain, backup_id):
        """The volume metadata stored with a backup, or None."""

    def save_checksums(self, chain, snap, record):
        """Store ``checksums.Record`` of restore point ``snap`` for scrub
        (default: this target keeps none)."""
        return None

    def damage(self, chain, snap):
        """What scrub found wrong with restore point ``snap`` (a dict with its
        ``offset``), or None (default: this target is not scrubbed)."""
        return None

    @abc.abstractmethod
    def save_digests(self, chain, backup_id, digests):
        """Chunk checksums of a non-RBD volume's backup."""

    @abc.abstractmethod
    def load_digests(self, chain, backup_id):
        """Those checksums, or None."""

    @abc.abstractmethod
    def delete_backup(self, chain, snap, backup_id):
        """Remove a backup's restore point and records, and the chain once
        empty. Idempotent: pieces already gone are logged, not errors."""

    @abc.abstractmethod
    def delete_attempt(self, chain, backup_id):
        """Remove whatever an unfinished attempt at ``backup_id`` left in
        ``chain`` (the chain too, if the attempt started it and it is empty)."""


class RestorePoint(abc.ABC):
    """One backup, readable for a restore. ``size``: the volume size it holds."""

    size = 0

    @abc.abstractmethod
    def restore(self, make_sink, options, dest_size, fresh, changed=None, dest_image=None,
                should_cancel=None):
        """Write this backup's data into sinks from ``make_sink(fresh)``.

        The destination ends holding exactly the backup over ``[0, size)``
        and zeros over ``[size, dest_size)``. ``fresh``: the destination reads
        as zeros already. ``changed``: extents the caller knows are the only
        ones that differ from this backup (an in-place restore), if any;
        ``dest_image``: the destination, when it is an RBD image.
        ``should_cancel()`` True stops it with ``engine.Cancelled``. Returns
        ``engine.Stats``.
        """
