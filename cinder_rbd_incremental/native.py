"""Work on native threads under eventlet, without touching eventlet there.

cinder-backup runs under eventlet and calls the driver's librbd work through
its tpool (native OS threads). Code on such a thread must not enter eventlet:
oslo.log's handlers take locks that monkey-patching made green, and a green
lock taken from a native thread can hang the process (eventlet #432; Cinder's
own ``chunkeddriver._calculate_sha`` "cannot log anything" for this reason).

So this package's modules log through :func:`get_logger`: inside a
:func:`section` (what :func:`run_native` and the driver's helper threads
run in) a log call only appends the record to a queue, a plain
``collections.deque`` (its ``append`` takes no lock a green thread could
hold); :func:`flush_logs`, called by the driver from its green thread, logs
the queued records for real. Outside a section a call logs at once, as usual
(the CLI, tests, Cinder in threading mode). :func:`sleep` waits on a native
event, never on eventlet's patched ``time.sleep``.
"""

import collections
import contextlib
import logging
import sys

from cinder_rbd_incremental import engine

_local = engine.threading.local()   # the OS thread's own, even under eventlet
_queued: collections.deque = collections.deque()


@contextlib.contextmanager
def section():
    """Mark the calling OS thread as native for the block: logs are queued."""
    outer = getattr(_local, "native", False)
    _local.native = True
    try:
        yield
    finally:
        _local.native = outer


def in_section():
    return getattr(_local, "native", False)


def sleep(seconds):
    """Sleep without eventlet (a native event's wait, even when patched)."""
    engine.threading.Event().wait(seconds)


def flush_logs():
    """Log what native sections queued (call from the green thread)."""
    while True:
        try:
            logger, level, msg, args, kwargs = _queued.popleft()
        except IndexError:
            return
        logger.log(level, msg, *args, **kwargs)


class DeferringLogger:
    """The few ``logging.Logger`` methods this package uses; queued while
    the calling thread is in a :func:`section`."""

    def __init__(self, name):
        self.logger = logging.getLogger(name)

    def log(self, level, msg, *args, **kwargs):
        if not in_section():
            self.logger.log(level, msg, *args, **kwargs)
            return
        if kwargs.get("exc_info") is True:  # the exception of now, not of the flush
            kwargs["exc_info"] = sys.exc_info()
        _queued.append((self.logger, level, msg, args, kwargs))

    def debug(self, msg, *args, **kwargs):
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg, *args, **kwargs):
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg, *args, **kwargs):
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg, *args, **kwargs):
        kwargs.setdefault("exc_info", True)
        self.error(msg, *args, **kwargs)


def get_logger(name):
    return DeferringLogger(name)


def run_native(func, *args, threaded=False):
    """``func(*args)`` in a :func:`section`; on eventlet's tpool when
    ``threaded`` (the caller runs under eventlet), else in the caller."""
    def marked():
        with section():
            return func(*args)

    if not threaded:
        return marked()
    from eventlet import tpool
    return tpool.execute(marked)
