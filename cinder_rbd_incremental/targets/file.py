"""Diff files as targets: the engine's diff-stream sink.

:class:`DiffStreamSink` writes a transfer as an RBD diff (v1 or v2) that
``rbd import-diff`` understands. The ``e`` record that ends a diff is written
only by ``commit``: an interrupted stream stays truncated, and every reader
(ours and rbd's) rejects it rather than applying half a diff. Named files
are written under a temporary name and renamed on commit, so a file with the
final name is always complete.
"""

import os
import tempfile

from cinder_rbd_incremental import diffstream, engine


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
        self.writer.write_header(plan.from_snap, plan.to_snap, plan.size, lineage=lineage)
        self._skip_zero = plan.from_snap is None

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


class DiffFileSink(DiffStreamSink):
    """A :class:`DiffStreamSink` on a file that appears only when complete."""

    def __init__(self, path, version=1):
        directory = os.path.dirname(os.path.abspath(path))
        fd, self._tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path),
                                         dir=directory)
        self.path = path
        super().__init__(os.fdopen(fd, "wb", buffering=1 << 20), version=version)

    def commit(self):
        super().commit()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self._tmp, self.path)

    def abort(self):
        self.stream.close()
        os.unlink(self._tmp)
