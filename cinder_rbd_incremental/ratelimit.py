"""A bandwidth cap: one token bucket per process, on the bytes a transfer sends.

``max_bandwidth_mib`` (driver) and ``--limit-rate`` (CLI) wrap a transfer's
sink in :class:`ThrottledSink`: every data write takes its length in tokens
from the process's bucket first, so all transfers of one process (the
backups and restores of one cinder-backup worker, the parallel writes of one
sync) share the rate. Zero runs cost no tokens: they travel as small
requests, not as data.

The bucket lets a writer run into debt and sleep it off, so a write larger
than the bucket (a 4 MiB object under a small cap) passes at the right
average rate. It starts empty and holds at most one second of tokens: a
stall of the transfer (a slow read, a busy OSD) shorter than that is caught
up afterwards instead of lost, and an idle moment buys at most one second's
worth of burst.
"""

import re
import sys
import time

from cinder_rbd_incremental import engine

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_buckets: dict = {}
_buckets_lock = engine.threading.Lock()


def _native_sleep():
    """time.sleep of the OS (the caller may be a native thread under eventlet)."""
    if "eventlet" in sys.modules:
        from eventlet import patcher
        if patcher.is_monkey_patched("time"):
            return patcher.original("time").sleep
    return time.sleep


class TokenBucket:
    """``rate`` bytes per second, shared by the threads that :meth:`take` from it."""

    BURST_SECONDS = 1.0

    def __init__(self, rate, clock=time.monotonic, sleep=None):
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep or _native_sleep()
        self._lock = engine.threading.Lock()
        self._tokens = 0.0
        self._stamp = clock()

    def take(self, count):
        """Wait until ``count`` bytes may go (the wait sleeps off a debt)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate * self.BURST_SECONDS,
                               self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


def shared(rate):
    """The process's bucket for ``rate`` bytes/s (None: no limit)."""
    if not rate:
        return None
    with _buckets_lock:
        bucket = _buckets.get(rate)
        if bucket is None:
            bucket = _buckets[rate] = TokenBucket(rate)
        return bucket


def parse_rate(text):
    """``--limit-rate`` value: bytes per second, with an optional K, M or G
    (binary, like curl and wget: 10M is 10 MiB/s)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?(?:/s)?\s*", text or "")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if value < 1:
        raise ValueError("%r is not a rate such as 50M (bytes per second, K/M/G suffix)" % text)
    return int(value)


class ThrottledSink(engine.Sink):
    """A sink that takes tokens from ``bucket`` for each data write, then
    hands it to ``sink``; everything else passes through."""

    def __init__(self, sink, bucket):
        self.sink = sink
        self.bucket = bucket

    def __getattr__(self, name):  # snap_id, data_bytes, bytes_written...
        return getattr(self.sink, name)

    def begin(self, plan):
        self.sink.begin(plan)

    def write(self, offset, data):
        self.bucket.take(len(data))
        self.sink.write(offset, data)

    def zero(self, offset, length):
        self.sink.zero(offset, length)

    def flush(self):
        self.sink.flush()

    def commit(self):
        self.sink.commit()

    def abort(self):
        self.sink.abort()


def throttled(sink, bucket):
    """``sink`` throttled by ``bucket``, or ``sink`` itself when there is no limit."""
    return sink if bucket is None else ThrottledSink(sink, bucket)
