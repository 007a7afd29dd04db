"""Diff files as targets: the engine's diff-stream sink.

:class:`DiffStreamSink` writes a transfer as an RBD diff (v1 or v2) that
``rbd import-diff`` understands. The ``e`` record that ends a diff is written
only by ``commit``: an interrupted stream stays truncated, and every reader
(ours and rbd's) rejects it rather than applying half a diff. Named files
are written under a temporary name and renamed on commit, so a file with the
final name is always complete.
"""

import contextlib
import json
import os
import random
import re
import shutil
import stat
import tempfile

from cinder_rbd_incremental import cluster, diffstream, engine, locking, naming, native
from cinder_rbd_incremental.targets import base

LOG = native.get_logger(__name__)


def fsync_directory(path):
    """Make a rename in ``path`` durable (a crash must not undo a commit)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiffStreamSink(engine.Sink):
    """Write a transfer to a binary stream as an RBD diff.

    In a full diff (no from-snapshot) zero runs are left out: a full diff is
    applied to an empty image, which reads as zeros already.
    """

    def __init__(self, stream, version=1):
        self.stream = stream
        self.writer = diffstream.DiffWriter(stream, version=version)
        self._skip_zero = False

    def begin(self, plan):
        lineage = None
        if plan.identity_from or plan.identity_to:
            lineage = {"from": plan.identity_from, "to": plan.identity_to}
        from_snap, to_snap = self._header_names(plan)
        self.writer.write_header(from_snap, to_snap, plan.size, lineage=lineage)
        self._skip_zero = from_snap is None

    @staticmethod
    def _header_names(plan):
        """The snapshot names the diff's header carries (the source's)."""
        return plan.from_snap, plan.to_snap

    def write(self, offset, data):
        self.writer.write_data(offset, data)

    def zero(self, offset, length):
        if not self._skip_zero:
            self.writer.write_zero(offset, length)

    def commit(self):
        self.writer.close()
        self.stream.flush()

    def abort(self):
        pass  # no "e" record: the stream reads as truncated

    @property
    def bytes_written(self):
        return self.writer.bytes_written


class SpecialFileSink(DiffStreamSink):
    """A :class:`DiffStreamSink` on a FIFO or device, written in place:
    replacing it with a regular file would break the pipe or the device node.
    An aborted diff lacks its ``e`` record and reads as truncated."""

    def __init__(self, path, version=1):
        super().__init__(open(path, "wb", buffering=1 << 20), version=version)

    def commit(self):
        super().commit()
        self.stream.close()

    def abort(self):
        self.stream.close()


class DiffFileSink(DiffStreamSink):
    """A :class:`DiffStreamSink` on a file that appears only when complete."""

    def __init__(self, path, version=1):
        directory = os.path.dirname(os.path.abspath(path))
        fd, self._tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path),
                                         dir=directory)
        self.path = path
        super().__init__(os.fdopen(fd, "wb", buffering=1 << 20), version=version)

    def flush(self):
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def commit(self):
        super().commit()
        os.fsync(self.stream.fileno())  # the end record; little left after flush()
        self.stream.close()
        os.replace(self._tmp, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def abort(self):
        self.stream.close()
        os.unlink(self._tmp)


DIFF_SUFFIX = ".diff"
CHAIN_DIR_MODE = 0o700  # like the diffs' 0600: backups are the tenants' data
_DIFF_NAME_RE = re.compile(r"^([0-9]{6})\.(.+)\.diff$")


class FileTarget(base.BackupTarget):
    """The ``file`` backup target: a directory of RBD diff files per chain.

    ``<dir>/<chain>/`` holds one diff per backup, named
    ``<NNNNNN>.<snapshot>.diff`` where ``NNNNNN`` is its place in the chain:
    the first is a full diff, each next one goes from the previous one's
    snapshot to its own. A chain directory is always linear, so plain
    ``rbd`` restores any point without this package::

        rbd create --size <size> pool/restored
        for f in <dir>/<chain>/*.diff; do rbd import-diff "$f" pool/restored; done

    (stop after the file of the point wanted). Next to the diffs:
    ``backup.<id>.json`` (the lineage), ``backup.<id>.volmeta``,
    ``backup.<id>.digests``. Every file appears only complete (written
    under a temporary name, synced, renamed), so nothing half-written ever
    looks like a restore point. Meant for an offsite copy on an NFS mount.
    """

    name = "file"

    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.pool = os.path.basename(self.directory)

    @classmethod
    def from_conf(cls, options):
        return cls(options.file_target_dir)

    @contextlib.contextmanager
    def session(self, writing=False):
        yield FileSession(self.directory)

    def check_setup(self):
        if not os.path.isdir(self.directory):
            raise cluster.ClusterError("file_target_dir %s is not a directory (create it, or "
                                       "mount the share there)" % self.directory)
        # mkstemp: unique (several backup workers probe at once), never a planted link
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe.", dir=self.directory)
            os.close(fd)
            os.unlink(probe)
            _mark_target(self.directory)
        except OSError as exc:
            raise cluster.ClusterError("cannot write to file_target_dir %s: %s"
                                       % (self.directory, exc.strerror)) from None


class FileSession(base.TargetSession):
    """Chains as directories of diff files under one directory."""

    def __init__(self, directory):
        self.directory = directory

    def _path(self, chain, *names):
        """A path in ``chain``'s directory, which must not be a symbolic link
        (whoever can write to the share could point it anywhere)."""
        naming.check_name(chain, "chain")
        directory = os.path.join(self.directory, chain)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(directory).st_mode):
                raise cluster.ClusterError("%s is a symbolic link, not a chain directory: "
                                           "refusing to use it" % directory)
        return os.path.join(directory, *names)

    def _diffs(self, chain):
        """``[(sequence, snapshot, path)]`` of ``chain`` in order."""
        try:
            names = os.listdir(self._path(chain))
        except FileNotFoundError:
            raise base.ChainNotFound("chain %s not found in %s" % (chain, self.directory)) \
                from None
        found = [(int(m.group(1)), m.group(2), self._path(chain, name))
                 for name in names for m in [_DIFF_NAME_RE.match(name)] if m]
        return sorted(found)

    def _diff_of(self, chain, snap):
        for entry in self._diffs(chain):
            if entry[1] == snap:
                return entry
        raise base.ChainNotFound("no restore point %s in chain %s" % (snap, chain))

    def snapshots(self, chain):
        return [snap for _seq, snap, _path in self._diffs(chain)]

    def new_chain(self, chain, size, order):
        _mark_target(self.directory)
        shutil.rmtree(self._path(chain), ignore_errors=True)
        os.mkdir(self._path(chain), CHAIN_DIR_MODE)

    def locked(self, chain, me, timeout, should_cancel=None):
        return locking.file_lock(self._path(chain, ".lock"), chain, me, timeout, should_cancel)

    @contextlib.contextmanager
    def writing(self, chain, fresh, options):
        yield ChainDiffSink(self, chain)

    def verify(self, source_image, chain, snap, options, sample=None, since=None):
        """The diff file's records against the source (a diff holds only what
        changed since its from-snapshot, so ``since`` is implied)."""
        _seq, _snap, path = self._diff_of(chain, snap)
        estimated_records = max(1, os.path.getsize(path) // options.chunk_size)
        odds = 1.0 if sample is None else sample / estimated_records
        with _open_no_follow(path) as stream:
            for record in diffstream.DiffReader(stream):
                if random.random() >= odds:
                    continue
                data = getattr(record, "data", None)
                expected = source_image.read(record.offset, record.length)
                if data is None:
                    data = bytes(record.length)
                if data != expected:
                    return record.offset + next(
                        i for i, (x, y) in enumerate(zip(data, expected, strict=True)) if x != y)
        return None

    @contextlib.contextmanager
    def restore_point(self, chain, snap):
        seq, _snap, _path = self._diff_of(chain, snap)
        yield DiffChainRestorePoint([path for n, _s, path in self._diffs(chain) if n <= seq])

    def save_lineage(self, chain, record, volume_metadata=None):
        backup_id = record["backup_id"]
        if volume_metadata:
            _write_atomically(self._path(chain, "backup.%s.volmeta" % backup_id),
                              volume_metadata.encode("utf-8"))
        _write_atomically(self._path(chain, "backup.%s.json" % backup_id),
                          json.dumps(record, sort_keys=True).encode("utf-8"))

    def load_lineage(self, chain, backup_id):
        self._diffs(chain)  # ChainNotFound without a chain
        try:
            return json.loads(_read(self._path(chain, "backup.%s.json" % backup_id)))
        except (FileNotFoundError, ValueError):
            return None

    def load_volume_metadata(self, chain, backup_id):
        with contextlib.suppress(FileNotFoundError):
            return _read(self._path(chain, "backup.%s.volmeta" % backup_id)).decode("utf-8")
        return None

    def save_digests(self, chain, backup_id, digests):
        _write_atomically(self._path(chain, "backup.%s.digests" % backup_id), digests)

    def load_digests(self, chain, backup_id):
        with contextlib.suppress(FileNotFoundError, base.ChainNotFound):
            return _read(self._path(chain, "backup.%s.digests" % backup_id))
        return None

    def delete_backup(self, chain, snap, backup_id):
        try:
            diffs = self._diffs(chain)
        except base.ChainNotFound:
            _check_marked(self.directory)  # gone, or the share is not mounted?
            LOG.info("chain %s is already gone", chain)
            return
        for index, (_seq, name, path) in enumerate(diffs):
            if name == snap:
                if index != len(diffs) - 1:
                    # later diffs start from this one: removing it loses them
                    raise base.ChainInUse("%s is not the newest backup of chain %s: delete "
                                          "the backups after it first" % (snap, chain))
                os.unlink(path)
        self._remove_records(chain, backup_id)

    def delete_attempt(self, chain, backup_id):
        try:
            diffs = self._diffs(chain)
        except base.ChainNotFound:
            return
        for _seq, snap, path in diffs:
            if naming.parse_backup_snapshot(snap) == backup_id:
                os.unlink(path)
        self._remove_records(chain, backup_id)

    def _remove_records(self, chain, backup_id):
        """The backup's records, temporary files an interrupted write left, and
        the chain directory once no diff is left in it."""
        for name in os.listdir(self._path(chain)):
            leftover = name.startswith(".") and backup_id in name
            if leftover or name.startswith("backup.%s." % backup_id):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(chain, name))
        if not self._diffs(chain):
            LOG.info("removing chain directory %s: no backup left in it", self._path(chain))
            shutil.rmtree(self._path(chain), ignore_errors=True)


class ChainDiffSink(DiffFileSink):
    """Append a restore point to a chain directory as a v1 diff file.

    ``begin`` refuses a diff that would not continue the chain from its
    newest restore point (the chain stays linear, so replaying its files in
    order is always right) and one whose end point is there already.
    """

    def __init__(self, session, chain):
        self.session = session
        self.chain = chain
        self.snap_id = None
        self._begun = False

    def begin(self, plan):
        diffs = self.session._diffs(self.chain)
        names = [snap for _seq, snap, _path in diffs]
        if plan.dest_to in names:
            raise engine.AlreadyApplied("chain %s already has %s" % (self.chain, plan.dest_to))
        newest = names[-1] if names else None
        if newest != plan.dest_from:
            raise engine.StateError(
                "chain %s ends at %s, not at %s: the diff does not continue it"
                % (self.chain, newest or "nothing", plan.dest_from or "nothing"))
        self.snap_id = len(diffs) + 1
        path = self.session._path(self.chain, "%06d.%s%s" % (self.snap_id, plan.dest_to,
                                                            DIFF_SUFFIX))
        super().__init__(path, version=1)
        self._begun = True
        super().begin(plan)

    @staticmethod
    def _header_names(plan):
        return plan.dest_from, plan.dest_to

    def abort(self):
        if self._begun:
            super().abort()


class DiffChainRestorePoint(base.RestorePoint):
    """A restore point of a diff chain: its files replayed in order."""

    def __init__(self, paths):
        self.paths = paths
        with _open_no_follow(paths[-1]) as stream:
            self.size = diffstream.DiffReader(stream).header.size

    def restore(self, make_sink, options, dest_size, fresh, changed=None, dest_image=None,
                should_cancel=None):
        """Each diff through its own sink: a sink's commit waits for all its
        writes, so a later diff's write never races an earlier one's."""
        plan = engine.Plan(to_snap=None, size=max(dest_size, self.size))
        stats = engine.Stats()
        if not fresh:  # whatever the diffs do not write must read as zero
            engine.apply_records([diffstream.ZeroRecord(0, plan.size)], make_sink(False), plan,
                                 options.zero_granularity)
        for index, path in enumerate(self.paths):
            with _open_no_follow(path) as stream:
                records = engine.cancellable(diffstream.DiffReader(stream), should_cancel)
                done = engine.apply_records(records, make_sink(
                    fresh and index == 0), plan, options.zero_granularity)
            stats.data_bytes += done.data_bytes
            stats.changed_bytes += done.changed_bytes
            stats.seconds += done.seconds
        return stats


TARGET_MARKER = ".rbd-incremental-target"


def _mark_target(directory):
    """Leave a marker that this directory holds backups (see _check_marked)."""
    if not os.path.exists(os.path.join(directory, TARGET_MARKER)):
        _write_atomically(os.path.join(directory, TARGET_MARKER),
                          b"cinder-rbd-incremental file target\n")


def _check_marked(directory):
    """ClusterError unless ``directory`` is the one backups were written to:
    an unmounted share (an empty mount point) must not make a chain look gone,
    or deleting its backups would orphan their files."""
    if not os.path.exists(os.path.join(directory, TARGET_MARKER)):
        raise cluster.ClusterError(
            "file_target_dir %s does not hold this driver's backups (no %s): mount the "
            "share there or set file_target_dir to where the backups are"
            % (directory, TARGET_MARKER))


def _write_atomically(path, data):
    """Write ``path`` (mode 0600) so that it appears complete or not at all.

    The temporary file has a unique name, created exclusively (a planted
    symbolic link under a predictable name would make us write wherever it
    points); it is removed if anything fails, and the rename is made durable.
    """
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % name, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def _open_no_follow(path):
    """Open ``path`` for reading unless it is a symbolic link."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=1 << 20)


def _read(path):
    with _open_no_follow(path) as stream:
        return stream.read()
