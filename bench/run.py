#!/usr/bin/env python3
"""Benchmark ``rbd-incremental`` and the driver against the rbd pipe, Cinder's
stock Ceph backup driver and the hardware ceiling.

Runs on the two sandbox clusters (``tools/sandbox up``): volumes live in
``volumes`` on the primary, backups go to ``backups`` on the secondary. Tools:

* ``pipe``: ``rbd export-diff [--from-snap] ... - | rbd import-diff - ...``;
* ``ours``: ``rbd-incremental sync``;
* ``ours driver`` / ``stock driver``: this project's driver and Cinder 29's
  ``CephBackupDriver``, in process with real Cinder objects
  (``bench/cinderworker.py``);
* ``ours API`` / ``stock API``: the same drivers in the real Cinder services
  of ``tools/cinder-stack`` (``--stock``), driven through the API.

Every measurement records wall time, CPU (user+sys), peak RSS, the bytes the
receiving OSD took in (``op_in_bytes``, read from its admin socket before and
after) and the librbd cache settings of the connection to the secondary. The
tools alternate within a run (the order reverses every other run); the report
gives medians of ``--runs``.

Workloads (one *journey* per tool and run, on its own volume):

1. full backup of a volume holding random data in half of its objects;
2. incremental after 1% sequential writes;
3. incremental after random 4 KiB writes spread over the whole volume;
4. full backup of a thin volume: a 4 KiB write in each of a few objects;
5. restore of the third backup of the chain (3) to a new volume;
6. restore of that backup onto the original volume after 1% changed since;
7. eight volumes backed up at once.

Every workload runs again with WAN latency injected on the secondary's
connection (``ms_inject_delay_*`` in the ``[client]`` section of a copy of
its ceph.conf), at smaller sizes. Also: the ceiling (``rbd bench``), diff file
sizes, the scattered incremental over WAN without the rbd cache, and the peak
RSS of a full copy of a large sparse image.

Backup-site rows: ``--only site``, ``sync`` with and without checksums (full
and 4 KiB scattered incremental: what checksums cost); ``--only limit``,
``--limit-rate`` on a 256 MiB transfer (the rate achieved against the cap).

Usage: ``bench/run.py [--quick] [--runs N] [--only ...] [--write-doc]``.
Writes ``bench/results/latest.json``; ``--write-doc`` also writes
``doc/source/benchmarks.md``, ``doc/source/_static/bench.json`` and
``doc/source/_static/bench.png``.
"""

import argparse
import datetime
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import rados
import report
from benchlib import (
    OBJECT,
    ROOT,
    BenchError,
    Cluster,
    GiB,
    KiB,
    MiB,
    check_space,
    counters_delta,
    counters_snapshot,
    parse_rbd_bench,
    parse_stats,
    run_measured,
    seeded,
    spread_blocks,
    wait_for_space,
    write_blocks,
)

PRIMARY = Cluster("primary", "volumes")
SECONDARY = Cluster("secondary", "backups")
CLUSTERS = (PRIMARY, SECONDARY)
PREFIX = "rbdinc-bench-"
SRC, SPARSE, CEIL = PREFIX + "src", PREFIX + "sparse", PREFIX + "ceiling"
DEST = {"ours": PREFIX + "ours", "pipe": PREFIX + "pipe"}
SPARSE_DEST = {"ours": PREFIX + "sparse-ours", "pipe": PREFIX + "sparse-pipe"}
TOOL = shutil.which("rbd-incremental", path=os.path.dirname(sys.executable)) or str(
    ROOT / ".venv" / "bin" / "rbd-incremental")
RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("ceiling", "journey", "wan", "many", "api", "files", "nocache", "sparse", "site",
             "limit", "scale", "extents")
SCALE_TOOLS = ("ours", "ours driver", "stock driver")
SHARED_CEILING = "read + write at once"  # bench/report.py keeps it out of the ceiling
JOURNEY_TOOLS = ("pipe", "ours", "ours driver", "stock driver")
API_TOOLS = ("ours API", "stock API")
LATENCY = ("ms_inject_delay_type = osd\nms_inject_delay_max = 0.02\n"
           "ms_inject_delay_probability = 1\n")
SMALL_WRITE = 4 * KiB
DEV_NULL = ["dd", "of=/dev/null", "bs=1M", "status=none"]
# the --limit-rate rows: a cap well under what the sandbox does even when busy
LIMITED = {"transfer": 256 * MiB, "rate": 8 * MiB}
SPARSE_BLOCK = 1 * MiB

# "wan": the sizes of every WAN row; "many": each of the eight volumes.
SIZES = {
    "full": {"image": 2 * GiB, "data": 1 * GiB, "small_writes": 4096, "thin_writes": 256,
             "many_image": 1 * GiB, "many_data": 128 * MiB,
             "sparse_image": 8 * GiB, "sparse_data": 1 * GiB, "ceiling_total": 1 * GiB,
             "scale_images": (2 * GiB, 256 * GiB, 1024 * GiB), "scale_data": 256 * MiB,
             "scale_span": 2 * GiB, "scale_writes": 1024, "extents_image": 1024 * GiB,
             "extents_writes": 1 << 20, "extents_span": 8 * GiB,
             "wan": {"image": 1 * GiB, "data": 256 * MiB, "small_writes": 1024,
                     "thin_writes": 64, "many_image": 1 * GiB, "many_data": 32 * MiB}},
    "quick": {"image": 1 * GiB, "data": 256 * MiB, "small_writes": 1024, "thin_writes": 64,
              "many_image": 1 * GiB, "many_data": 32 * MiB,
              "sparse_image": 2 * GiB, "sparse_data": 256 * MiB, "ceiling_total": 256 * MiB,
              "scale_images": (2 * GiB, 1024 * GiB), "scale_data": 256 * MiB,
              "scale_span": 2 * GiB, "scale_writes": 1024, "extents_image": 1024 * GiB,
              "extents_writes": 1 << 16, "extents_span": 512 * MiB,
              "wan": {"image": 1 * GiB, "data": 64 * MiB, "small_writes": 256,
                      "thin_writes": 32, "many_image": 1 * GiB, "many_data": 8 * MiB}},
}


def log(msg):
    print("bench: %s" % msg, file=sys.stderr, flush=True)


def human(size):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return "%d %s" % (size // scale, unit)
    return "%.1f MiB" % (size / MiB)


# -- command lines ---------------------------------------------------------------

def ours_sync(src, dest, from_snap=None, src_conf=PRIMARY.conf, dest_conf=SECONDARY.conf,
              extra=()):
    cmd = [TOOL, "--no-progress", "sync", "--src-conf", src_conf, "--dest-conf", dest_conf,
           *extra]
    if from_snap:
        cmd += ["--from-snap", from_snap]
    return [cmd + [src, dest]]


def pipe_sync(src, dest, from_snap=None, src_conf=PRIMARY.conf, dest_conf=SECONDARY.conf):
    export = ["rbd", "-c", src_conf, "--no-progress", "export-diff"]
    if from_snap:
        export += ["--from-snap", from_snap]
    return [export + [src, "-"],
            ["rbd", "-c", dest_conf, "--no-progress", "import-diff", "-", dest]]


def sync_commands(tool):
    return ours_sync if tool == "ours" else pipe_sync


def new_copy(tool, cluster, name):
    """Make ``name`` an empty image on ``cluster`` for ``tool`` to copy into,
    untimed and the same for both tools (rbd import-diff needs an existing
    image; ``sync`` writes into it all the same); returns the sync command
    builder of ``tool``."""
    cluster.remove(name)
    cluster.create(name, MiB)
    return sync_commands(tool)


def cache_settings(conf):
    """The librbd cache settings a client of ``conf`` gets (as Ceph parses them)."""
    client = rados.Rados(conffile=conf)
    try:
        values = {k: client.conf_get(k) for k in ("rbd_cache", "rbd_cache_policy",
                                                  "rbd_cache_writethrough_until_flush",
                                                  "rbd_cache_size")}
    finally:
        client.shutdown()
    if values["rbd_cache"] != "true":
        return "off"
    return "%s %d MiB%s" % (values["rbd_cache_policy"], int(values["rbd_cache_size"]) >> 20,
                            ", wt until flush" if values[
                                "rbd_cache_writethrough_until_flush"] == "true" else "")


class Worker:
    """A ``bench/cinderworker.py`` process (one Cinder driver, in process)."""

    def __init__(self, kind, logdir):
        self.kind = kind
        self.log = open(logdir / ("cinderworker-%s.log" % kind.replace(" ", "-")), "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cinderworker.py"), kind.split()[0]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1)
        self.read()  # ready

    def read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise BenchError("cinderworker %s died (see %s)" % (self.kind, self.log.name))
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                if not result.pop("ok"):
                    raise BenchError("cinderworker %s: %s" % (self.kind, result["error"]))
                return result

    def __call__(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps(dict(kwargs, cmd=cmd)) + "\n")
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Volume:
    """A source image on the primary: ``volume-<uuid>`` (a Cinder volume for the
    drivers) or a bench-named image (for the pipe and ours)."""

    def __init__(self, bench, tool, size, role):
        self.bench, self.tool, self.size = bench, tool, size
        self.driver = tool.endswith("driver")
        if self.driver:
            self.id = bench.worker(tool)("volume", size_gb=size // GiB)["id"]
            bench.volume_ids.add(self.id)
            self.name = "volume-" + self.id
        else:
            self.id = str(uuid.uuid4())
            self.name = "%s%s-%s-%s" % (PREFIX, role, tool.replace(" ", "-"), self.id[:8])
        PRIMARY.create(self.name, size)
        bench.primary_images.add(self.name)
        self.data_objects = set()

    def write(self, blocks, depth=32):
        with PRIMARY.image(self.name) as img:
            write_blocks(img, blocks, depth=depth)

    def snap(self, name):
        with PRIMARY.image(self.name) as img:
            img.create_snap(name)

    def spec(self, snap=None):
        return PRIMARY.spec(self.name, snap)


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.cfg = {k: v for k, v in SIZES[self.mode].items()}
        if args.extent_writes:
            self.cfg["extents_writes"] = args.extent_writes
            self.cfg["extents_span"] = args.extent_writes * 2 * SMALL_WRITE
        self.runs = args.runs
        self.results = {}
        self.notes = {"cache": {}}
        self.tmp = Path(tempfile.mkdtemp(prefix="rbdinc-bench-"))
        self.workers = {}
        self.primary_images, self.volume_ids = set(), set()
        # Data comes from slices of a small random pool: every process the bench
        # starts inherits its RSS as the floor of its peak RSS (fork + exec).
        self.pool = seeded(args.seed).randbytes(8 * MiB)
        self.wan_conf = self.latency_conf(cache=True)
        self.caches = {SECONDARY.conf: cache_settings(SECONDARY.conf),
                       self.wan_conf: cache_settings(self.wan_conf)}

    # -- helpers -------------------------------------------------------------------

    def worker(self, tool):
        if tool not in self.workers:
            log("starting the in-process %s (Cinder objects on sqlite)" % tool)
            self.workers[tool] = Worker(tool, self.tmp)
        return self.workers[tool]

    def latency_conf(self, cache):
        path = self.tmp / ("secondary-latency-%s.conf" % ("cache" if cache else "nocache"))
        text = Path(SECONDARY.conf).read_text()
        text += "\n[client]\n" + LATENCY + ("" if cache else "rbd_cache = false\n")
        path.write_text(text)
        return str(path)

    def random_objects(self, rng, count, size):
        """``count`` 4 MiB blocks of random data (slices of a random pool)."""
        for _ in range(count):
            start = rng.randrange(0, len(self.pool) - size) & ~4095
            yield self.pool[start:start + size]

    def fill(self, vol, rng, data, span=None):
        """Random data in ``data // OBJECT`` whole objects at random places
        (within the first ``span`` bytes, default the whole volume)."""
        count = data // OBJECT
        objects = sorted(rng.sample(range((span or vol.size) // OBJECT), count))
        vol.data_objects = set(objects)
        vol.write(zip((o * OBJECT for o in objects),
                      self.random_objects(rng, count, OBJECT), strict=True))
        return count * OBJECT

    @staticmethod
    def seq_change(vol, rng):
        """1% of the volume, sequential, at a random 4 KiB-aligned place."""
        length = (vol.size // 100) & ~4095
        start = rng.randrange(0, vol.size - length) & ~4095
        blocks = [(off, rng.randbytes(min(MiB, start + length - off)))
                  for off in range(start, start + length, MiB)]
        vol.write(blocks)
        return length

    @staticmethod
    def scattered_change(vol, rng, count):
        written, blocks = spread_blocks(rng, vol.size, count * SMALL_WRITE, SMALL_WRITE)
        vol.write(blocks, depth=64)
        return written

    @staticmethod
    def thin_change(vol, rng, count):
        """One 4 KiB write in each of ``count`` objects of an empty volume."""
        objects = rng.sample(range(vol.size // OBJECT), count)
        blocks = [(o * OBJECT + (rng.randrange(OBJECT // SMALL_WRITE) * SMALL_WRITE),
                   rng.randbytes(SMALL_WRITE)) for o in sorted(objects)]
        vol.write(blocks)
        return count * SMALL_WRITE

    # -- measurement -----------------------------------------------------------------

    def measure(self, scenario, tool, action, payload, cache, receiver=SECONDARY, extra=None):
        """Time ``action()`` (returns run_measured's or the worker's result)."""
        wait_for_space(CLUSTERS)
        # Let the map changes of the preparation (snapshots removed and
        # created) settle: the mon batches them every paxos_propose_interval
        # (1 s) and each tool's own snapshot would queue behind them.
        time.sleep(self.args.settle)
        before = counters_snapshot(CLUSTERS)
        parent_rss = rss_mib()
        result = action()
        result["osd"] = counters_delta(before, counters_snapshot(CLUSTERS))
        result["received"] = result["osd"][receiver.name]["op_in_bytes"]
        result["receiver"] = receiver.name
        result["payload"] = payload
        # ours turns the cache off on its own connections (cluster.py), whatever
        # the conf says; the pipe and the stock driver's rbd commands use the conf's
        result["cache"] = "off (rbd_cache=false)" if tool.startswith("ours") else cache
        if "procs" not in result:
            result["procs"] = [{"cmd": tool, "maxrss_mib": result["maxrss_mib"]}]
            if result.get("children_maxrss_mib"):
                result["procs"].append({"cmd": "rbd children",
                                        "maxrss_mib": result["children_maxrss_mib"]})
        elif tool == "ours":
            result["stats"] = parse_stats(result["procs"][0]["stderr"])
        result["bench_rss_mib"] = parent_rss
        result.update(extra or {})
        self.results.setdefault(scenario, {}).setdefault(tool, []).append(result)
        log("%-26s %-13s %7.2f s  cpu %6.2f s  rss %6.1f MiB  received %8.2f MiB  (bench %.0f)"
            % (scenario, tool, result["wall"], result["cpu"], result["maxrss_mib"],
               result["received"] / MiB, parent_rss))
        return result

    def order(self, tools, run):
        return list(tools) if run % 2 == 0 else list(tools)[::-1]

    # -- cleanup -------------------------------------------------------------------

    def remove_secondary_of(self, volume_ids):
        """The chain / base images the drivers made for these volumes."""
        for name in SECONDARY.list(""):
            if any(vid in name for vid in volume_ids):
                SECONDARY.remove(name)

    def drop_volumes(self, vols):
        for vol in vols:
            PRIMARY.remove(vol.name)
            self.primary_images.discard(vol.name)

    def cleanup(self):
        for cluster in CLUSTERS:
            for name in cluster.list(PREFIX):
                log("removing %s/%s" % (cluster.pool, name))
                cluster.remove(name)
        for name in list(self.primary_images):
            PRIMARY.remove(name)
        if self.volume_ids:
            self.remove_secondary_of(self.volume_ids)

    # -- the ceiling ---------------------------------------------------------------

    def ceiling(self):
        total = self.cfg["ceiling_total"]
        base = ["--io-size", "4M", "--io-threads", "8", "--io-total", str(total),
                "--io-pattern", "seq"]
        read = ["rbd", "-c", PRIMARY.conf, "bench", "--io-type", "read"] + base
        write = ["rbd", "-c", SECONDARY.conf, "bench", "--io-type", "write"] + base
        try:
            PRIMARY.remove(CEIL)
            PRIMARY.create(CEIL, total)
            run_measured([["rbd", "-c", PRIMARY.conf, "bench", "--io-type", "write"] + base
                          + [PRIMARY.spec(CEIL)]])
            for run in range(self.runs):
                for what in self.order(("read primary", "write secondary", SHARED_CEILING),
                                       run):
                    if what != "read primary":
                        SECONDARY.remove(CEIL)
                        SECONDARY.create(CEIL, total)
                    # "at once": what a copy needs on a machine whose cores serve
                    # both clusters, the read and the write at the same time
                    pipelines = {"read primary": [[read + [PRIMARY.spec(CEIL)]]],
                                 "write secondary": [[write + [SECONDARY.spec(CEIL)]]]}
                    pipelines[SHARED_CEILING] = (pipelines["read primary"]
                                                 + pipelines["write secondary"])
                    action = functools.partial(run_measured, None, pipelines=pipelines[what])
                    cluster = PRIMARY if what == "read primary" else SECONDARY
                    result = self.measure("ceiling", what, action, total,
                                          self.caches[SECONDARY.conf], cluster)
                    if what != SHARED_CEILING:  # its rate: bytes over the wall time of both
                        result["rbd_bench_bytes_per_s"] = parse_rbd_bench(result["stdout"])
        finally:
            PRIMARY.remove(CEIL)
            SECONDARY.remove(CEIL)

    # -- the journey: workloads 1-6 ----------------------------------------------------

    def journey(self, tool, run, wan):
        """Workloads 1-6 for one tool: a chain of three backups of a volume,
        a restore of the third to a new volume, then onto the original after
        1% changed; and the full backup of a thin volume."""
        cfg = self.cfg["wan"] if wan else self.cfg
        conf = self.wan_conf if wan else SECONDARY.conf
        cache = self.caches[conf]
        tag = "WAN " if wan else ""
        rng = seeded(self.args.seed * 100 + run)  # same content for every tool of a run
        driver = tool.endswith("driver")
        work = self.worker(tool) if driver else None
        if driver:
            work("conf", backup_conf=conf)
        dest = PREFIX + "dest-" + tool.replace(" ", "-")
        vols, backups = [], []

        def backup(vol, snap, parent_snap, scenario, payload):
            """One backup of ``vol`` (the snapshot ``snap`` for pipe and ours)."""
            if driver:
                parent = [backups[-1]] if parent_snap else None

                def action():
                    return work("backup", volume_ids=[vol.id], parents=parent)
                result = self.measure(tag + scenario, tool, action, payload, cache)
                backups.extend(result["backup_ids"])
                return result
            vol.snap(snap)
            target = dest if vol is vols[0] else dest + "-thin"
            sync = (new_copy(tool, SECONDARY, target) if parent_snap is None
                    else sync_commands(tool))
            cmds = sync(vol.spec(snap), SECONDARY.spec(target), from_snap=parent_snap,
                        dest_conf=conf)
            return self.measure(tag + scenario, tool, lambda: run_measured(cmds), payload,
                                cache)

        try:
            vol = Volume(self, tool, cfg["image"], "src")
            vols.append(vol)
            data = self.fill(vol, rng, cfg["data"])
            backup(vol, "b1", None, "1 full backup", data)
            backup(vol, "b2", "b1", "2 incr. 1% sequential", self.seq_change(vol, rng))
            backup(vol, "b3", "b2", "3 incr. 4K scattered",
                   self.scattered_change(vol, rng, cfg["small_writes"]))

            # 5: restore of the third backup to a new volume
            new = Volume(self, tool, cfg["image"], "restore")
            vols.append(new)
            if driver:
                self.measure(tag + "5 restore to new volume", tool,
                             lambda: work("restore", backup_id=backups[-1], volume_id=new.id,
                                          is_new=True), data, cache, PRIMARY)
            else:
                sync = new_copy(tool, PRIMARY, new.name)
                cmds = sync(SECONDARY.spec(dest, "b3"), new.spec(), src_conf=conf,
                            dest_conf=PRIMARY.conf)
                self.measure(tag + "5 restore to new volume", tool,
                             lambda: run_measured(cmds), data, cache, PRIMARY)
                if not self.args.no_verify and tool == "ours" and not wan:
                    self.verify("5 ours restore", vol.spec("b3"), new.spec("b3"))

            # 6: back onto the original volume after 1% changed (the drivers only:
            # the pipe and `sync` have no way to restore onto a changed image)
            changed = self.seq_change(vol, rng)
            if driver:
                self.measure(tag + "6 restore in place, 1% changed", tool,
                             lambda: work("restore", backup_id=backups[-1], volume_id=vol.id,
                                          is_new=False), changed, cache, PRIMARY)

            # 4: a thin volume, one 4 KiB write in each of a few objects
            thin = Volume(self, tool, cfg["image"], "thin")
            vols.append(thin)
            written = self.thin_change(thin, rng, cfg["thin_writes"])
            backups_before = len(backups)
            backup(thin, "b1", None, "4 thin volume, full", written)
            thin_backups = backups[backups_before:]
            del backups[backups_before:]
            if driver:
                work("delete", backup_ids=thin_backups)
        finally:
            if driver and backups:
                work("delete", backup_ids=list(reversed(backups)))
            self.drop_volumes(vols)
            if driver:
                self.remove_secondary_of([v.id for v in vols])
            for name in (dest, dest + "-thin"):
                SECONDARY.remove(name)

    # -- scale: the same change on thin volumes of growing size -----------------------

    def scale(self, tool, run, size):
        """A thin volume of ``size`` holding ``scale_data`` in its first
        ``scale_span`` bytes, backed up (untimed), then ``scale_writes``
        random 4 KiB writes in that span: the incremental is timed. Its cost
        should follow the change, not the volume's size."""
        cfg, cache = self.cfg, self.caches[SECONDARY.conf]
        rng = seeded(self.args.seed * 100 + 70 + run)  # the same change at every size
        driver = tool.endswith("driver")
        work = self.worker(tool) if driver else None
        if driver:
            work("conf", backup_conf=SECONDARY.conf)
        dest = PREFIX + "scale-" + tool.replace(" ", "-")
        vol = Volume(self, tool, size, "scale")
        backups = []
        try:
            self.fill(vol, rng, cfg["scale_data"], cfg["scale_span"])
            if driver:
                backups += work("backup", volume_ids=[vol.id])["backup_ids"]
            else:
                vol.snap("b1")
                sync = new_copy(tool, SECONDARY, dest)
                run_measured(sync(vol.spec("b1"), SECONDARY.spec(dest)))
            written, blocks = spread_blocks(rng, cfg["scale_span"],
                                            cfg["scale_writes"] * SMALL_WRITE, SMALL_WRITE)
            vol.write(blocks, depth=64)
            scenario = "scale %s thin, incr. %d x 4 KiB" % (human(size), cfg["scale_writes"])
            if driver:
                result = self.measure(scenario, tool, lambda: work(
                    "backup", volume_ids=[vol.id], parents=[backups[-1]]), written, cache)
                backups += result["backup_ids"]
            else:
                vol.snap("b2")
                cmds = ours_sync(vol.spec("b2"), SECONDARY.spec(dest), from_snap="b1")
                self.measure(scenario, tool, lambda: run_measured(cmds), written, cache)
        finally:
            if driver and backups:
                work("delete", backup_ids=list(reversed(backups)))
            self.drop_volumes([vol])
            if driver:
                self.remove_secondary_of([vol.id])
            SECONDARY.remove(dest)

    def extents(self):
        """Peak RSS of an incremental ``sync`` of ``extents_writes`` changed
        4 KiB extents (4 KiB written every 8 KiB in the first
        ``extents_span`` bytes of a thin volume; every object held data
        before, so each write is an extent of its own)."""
        cfg = self.cfg
        size, count, span = cfg["extents_image"], cfg["extents_writes"], cfg["extents_span"]
        rng = seeded(self.args.seed)
        dest = PREFIX + "extents-ours"
        vol = Volume(self, "ours", size, "extents")
        try:
            vol.write(((o * OBJECT, rng.randbytes(SMALL_WRITE)) for o in range(span // OBJECT)),
                      depth=64)
            vol.snap("b1")
            sync = new_copy("ours", SECONDARY, dest)
            run_measured(sync(vol.spec("b1"), SECONDARY.spec(dest)))
            slots = range(1, span // SMALL_WRITE, span // SMALL_WRITE // count)
            vol.write(((slot * SMALL_WRITE, self.pool[slot % 1024 * SMALL_WRITE:
                                                      (slot % 1024 + 1) * SMALL_WRITE])
                       for slot in slots), depth=64)
            vol.snap("b2")
            cmds = ours_sync(vol.spec("b2"), SECONDARY.spec(dest), from_snap="b1")
            self.measure("scale %s thin, incr. %d x 4 KiB (every 8 KiB)" % (human(size), count),
                         "ours", lambda: run_measured(cmds), len(slots) * SMALL_WRITE,
                         self.caches[SECONDARY.conf])
        finally:
            self.drop_volumes([vol])
            SECONDARY.remove(dest)

    # -- 7: eight volumes at once ---------------------------------------------------

    def many(self, tool, run, wan):
        cfg = self.cfg["wan"] if wan else self.cfg
        conf = self.wan_conf if wan else SECONDARY.conf
        rng = seeded(self.args.seed * 100 + 50 + run)
        driver = tool.endswith("driver")
        vols = []
        dests = [PREFIX + "many-%s-%d" % (tool.replace(" ", "-"), i) for i in range(8)]
        try:
            data = 0
            for _ in range(8):
                vol = Volume(self, tool, cfg["many_image"], "many")
                vols.append(vol)
                data += self.fill(vol, rng, cfg["many_data"])
            scenario = ("WAN " if wan else "") + "7 eight volumes at once"
            if driver:
                work = self.worker(tool)
                work("conf", backup_conf=conf)
                result = self.measure(scenario, tool, lambda: work(
                    "backup", volume_ids=[v.id for v in vols]), data, self.caches[conf])
                work("delete", backup_ids=result["backup_ids"])
                return
            pipelines = []
            for vol, dest in zip(vols, dests, strict=True):
                vol.snap("b1")
                sync = new_copy(tool, SECONDARY, dest)
                pipelines.append(sync(vol.spec("b1"), SECONDARY.spec(dest), dest_conf=conf))
            self.measure(scenario, tool, lambda: run_measured(None, pipelines=pipelines),
                         data, self.caches[conf])
        finally:
            self.drop_volumes(vols)
            if driver:
                self.remove_secondary_of([v.id for v in vols])
            for dest in dests:
                SECONDARY.remove(dest)

    # -- through the Cinder API -------------------------------------------------------

    def api(self):
        import apibench
        cfg = self.cfg
        size_gb = cfg["image"] // GiB
        with apibench.stack_lock(log):
            current = None
            try:
                for run in range(self.runs):
                    for tool in self.order(API_TOOLS, run):
                        if tool != current:
                            log("tools/cinder-stack up%s" % (" --stock" if "stock" in tool
                                                             else ""))
                            apibench.stack("up", *(["--stock"] if "stock" in tool else []),
                                           log=log)
                            current = tool
                        self.api_journey(apibench, tool, run, size_gb)
            finally:
                log("tools/cinder-stack down")
                apibench.stack("down", log=log)

    def api_journey(self, apibench, tool, run, size_gb):
        cfg = self.cfg
        cache = self.caches[SECONDARY.conf]
        rng = seeded(self.args.seed * 100 + run)
        api = apibench.Api()
        service = apibench.BackupService()

        class Vol:  # the API's volume, written directly through librbd
            def __init__(self, vol_id):
                self.id, self.name, self.size = vol_id, "volume-" + vol_id, size_gb * GiB
                self.data_objects = set()

            def write(self, blocks, depth=32):
                with PRIMARY.image(self.name) as img:
                    write_blocks(img, blocks, depth=depth)

        def timed(func):
            def action():
                service.reset_peak()
                cpu = service.cpu()
                started = time.monotonic()
                value = func()
                if isinstance(value, tuple):  # (value, when the attempt that worked began)
                    value, started = value
                wall = time.monotonic() - started
                used = service.cpu() - cpu
                return {"wall": wall, "cpu": used, "cpu_user": used, "cpu_sys": 0.0,
                        "maxrss_mib": service.peak_mib(), "value": value}
            return action

        try:
            vol = Vol(api.create_volume(size_gb))
            self.volume_ids.add(vol.id)
            data = self.fill(vol, rng, cfg["data"])
            self.measure("1 full backup", tool, timed(lambda: api.backup(vol.id, False)),
                         data, cache)
            self.measure("2 incr. 1% sequential", tool,
                         timed(lambda: api.backup(vol.id, True)), self.seq_change(vol, rng),
                         cache)
            self.measure("3 incr. 4K scattered", tool,
                         timed(lambda: api.backup(vol.id, True)),
                         self.scattered_change(vol, rng, cfg["small_writes"]), cache)
            result = self.measure("5 restore to new volume", tool,
                                  timed(lambda: api.restore(api.backups[-1])), data, cache,
                                  PRIMARY)
            self.volume_ids.add(result["value"])
        finally:
            api.cleanup()
            for vol_id in api.volumes:
                for name in ("volume-" + vol_id, "volume-%s.deleted" % vol_id):
                    PRIMARY.remove(name)

    # -- diff files, WAN without cache, sparse RSS (pipe and ours) ------------------------

    def prepare_source(self, cfg):
        rng = seeded(self.args.seed)
        PRIMARY.remove(SRC)
        PRIMARY.create(SRC, cfg["image"])
        with PRIMARY.image(SRC) as img:
            count = cfg["data"] // OBJECT
            objects = sorted(rng.sample(range(cfg["image"] // OBJECT), count))
            write_blocks(img, zip((o * OBJECT for o in objects),
                                  self.random_objects(rng, count, OBJECT), strict=True))
            img.create_snap("s1")
            written, blocks = spread_blocks(rng, cfg["image"], cfg["small_writes"] * SMALL_WRITE,
                                            SMALL_WRITE)
            write_blocks(img, blocks, depth=64)
            img.create_snap("s2")
        self.notes["incremental_bytes"] = written
        return written

    def diff_files(self, written):
        paths = {tool: self.tmp / ("%s.diff" % tool) for tool in ("ours", "pipe")}
        spec = PRIMARY.spec(SRC, "s2")
        cmds = {"ours": [TOOL, "-c", PRIMARY.conf, "--no-progress", "export-diff",
                         "--from-snap", "s1", spec, str(paths["ours"])],
                "pipe": ["rbd", "-c", PRIMARY.conf, "--no-progress", "export-diff",
                         "--from-snap", "s1", spec, str(paths["pipe"])]}
        try:
            for run in range(self.runs):
                for tool in self.order(("ours", "pipe"), run):
                    paths[tool].unlink(missing_ok=True)
                    self.measure("diff file", tool, lambda tool=tool: run_measured(
                        [cmds[tool]]), written, "-", extra=None)
                    self.results["diff file"][tool][-1]["file_bytes"] = \
                        paths[tool].stat().st_size
        finally:
            for path in paths.values():
                path.unlink(missing_ok=True)

    def reset_dest(self, tool):
        """Put the destination back to exactly s1 (untimed), without a new copy:
        drop s2, roll HEAD back to s1 and snapshot s1 anew (a diff from the old
        s1 would still list the rolled-back extents)."""
        name = DEST[tool]
        if not has_snap(SECONDARY, name, "s1"):
            sync = new_copy(tool, SECONDARY, name)
            run_measured(sync(PRIMARY.spec(SRC, "s1"), SECONDARY.spec(name)))
        with SECONDARY.image(name) as img:
            if any(snap["name"] == "s2" for snap in img.list_snaps()):
                img.remove_snap("s2")
            img.rollback_to_snap("s1")
            img.remove_snap("s1")
            img.create_snap("s1")
            for key in ("rbd_incremental.snap.s2", "rbd_incremental.pending"):
                try:
                    img.metadata_remove(key)
                except KeyError:
                    pass

    def nocache(self, written):
        conf = self.latency_conf(cache=False)
        cache = cache_settings(conf)
        for run in range(self.runs):
            for tool in self.order(("ours", "pipe"), run):
                self.reset_dest(tool)
                sync = sync_commands(tool)
                cmds = sync(PRIMARY.spec(SRC, "s2"), SECONDARY.spec(DEST[tool]),
                            from_snap="s1", dest_conf=conf)
                self.measure("WAN 3 incr. 4K scattered, no cache", tool,
                             lambda cmds=cmds: run_measured(cmds), written, cache)

    def sparse(self):
        size, data = self.cfg["sparse_image"], self.cfg["sparse_data"]
        log("sparse source: %s image, %s random data in %s writes spread out"
            % (human(size), human(data), human(SPARSE_BLOCK)))
        try:
            PRIMARY.remove(SPARSE)
            PRIMARY.create(SPARSE, size)
            with PRIMARY.image(SPARSE) as img:
                written, blocks = spread_blocks(seeded(self.args.seed), size, data,
                                                SPARSE_BLOCK)
                write_blocks(img, blocks)
                img.create_snap("s1")
            for run in range(self.runs):
                for tool in self.order(("ours", "pipe"), run):
                    sync = new_copy(tool, SECONDARY, SPARSE_DEST[tool])
                    cmds = sync(PRIMARY.spec(SPARSE, "s1"), SECONDARY.spec(SPARSE_DEST[tool]))
                    self.measure("sparse %s image, full" % human(size), tool,
                                 lambda cmds=cmds: run_measured(cmds), written,
                                 self.caches[SECONDARY.conf])
        finally:
            for name in SPARSE_DEST.values():
                SECONDARY.remove(name)
            PRIMARY.remove(SPARSE)

    # -- the backup site: checksums' cost, the bandwidth cap ------------------------

    def site(self):
        """``sync`` with checksums (the default) and without, alternating; then
        ``--limit-rate`` on a 256 MiB transfer: sync, and export-diff to a pipe."""
        cfg, cache = self.cfg, self.caches[SECONDARY.conf]
        rng = seeded(self.args.seed + 19)
        vols = [Volume(self, "ours", cfg["image"], "site")]
        try:
            vol = vols[0]
            data = self.fill(vol, rng, cfg["data"])
            vol.snap("b1")
            scattered = self.scattered_change(vol, rng, cfg["small_writes"])
            vol.snap("b2")
            for run in range(self.runs):
                for variant in self.order(("checksums", "no checksums"), run):
                    extra = ["--no-checksums"] if variant == "no checksums" else []
                    dest = PREFIX + "site-" + variant.replace(" ", "-")
                    new_copy("ours", SECONDARY, dest)
                    for snap, parent, name, payload in (
                            ("b1", None, "site: full backup", data),
                            ("b2", "b1", "site: incr. 4K scattered", scattered)):
                        cmds = ours_sync(vol.spec(snap), SECONDARY.spec(dest), parent,
                                         extra=extra)
                        self.measure(name, "ours, " + variant, self.with_stats(cmds),
                                     payload, cache)
                    SECONDARY.remove(dest)
        finally:
            self.drop_volumes(vols)
            for name in SECONDARY.list(PREFIX + "site-"):
                SECONDARY.remove(name)

    @staticmethod
    def with_stats(cmds):
        def action():
            result = run_measured(cmds)
            result["stats"] = parse_stats(result["procs"][0]["stderr"])  # ours is first
            return result
        return action

    def limited(self):
        """The cap: the rate a capped transfer achieves, by its own clock
        (``seconds`` of its report: the transfer, not the process start)."""
        vol = Volume(self, "ours", LIMITED["transfer"], "limited")
        try:
            self.limited_rows(vol, self.caches[SECONDARY.conf])
        finally:
            self.drop_volumes([vol])
            for name in SECONDARY.list(PREFIX + "site-"):
                SECONDARY.remove(name)

    def limited_rows(self, vol, cache):
        total, cap = LIMITED["transfer"], LIMITED["rate"]
        self.fill(vol, seeded(self.args.seed + 20), total)
        vol.snap("l1")
        rate = ["--limit-rate", "%dM" % (cap // MiB)]
        dest = PREFIX + "site-limited"
        def export(*extra):
            return [[TOOL, "--no-progress", "-c", PRIMARY.conf, "export-diff", *extra,
                     vol.spec("l1"), "-"], DEV_NULL]
        for run in range(self.runs):
            new_copy("ours", SECONDARY, dest)
            for tool, cmds in self.order((
                    ("sync --limit-rate", ours_sync(vol.spec("l1"), SECONDARY.spec(dest),
                                                   extra=rate)),
                    ("export-diff --limit-rate", export(*rate)),
                    ("export-diff, no cap", export())), run):
                result = self.measure("site: 256 MiB capped at %d MiB/s" % (cap // MiB), tool,
                                      self.with_stats(cmds), total, cache)
                stats = result["stats"]
                achieved = stats["data_bytes"] / stats["seconds"]
                if "limit" not in tool:
                    log("%s: %.2f MiB/s" % (tool, achieved / MiB))
                    continue
                result["achieved_mib_per_s"] = achieved / MiB
                self.notes.setdefault("limit_rate", []).append(
                    {"tool": tool, "cap_mib_per_s": cap / MiB,
                     "achieved_mib_per_s": round(achieved / MiB, 2),
                     "error": round(achieved / cap - 1, 4)})
                log("%s: %.2f MiB/s for a cap of %d MiB/s (%+.1f%%)"
                    % (tool, achieved / MiB, cap // MiB, 100 * (achieved / cap - 1)))
            SECONDARY.remove(dest)

    def verify(self, what, first, second):
        cmd = [TOOL, "--no-progress", "verify", "--src-conf", PRIMARY.conf,
               "--dest-conf", PRIMARY.conf, first, second]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        ok = proc.returncode == 0
        self.notes.setdefault("verified", {})[what] = ok
        if not ok:
            raise BenchError("verify %s: %s vs %s: %s" % (what, first, second,
                                                         proc.stderr.strip()))

    # -- all --------------------------------------------------------------------------

    def run(self):
        only = self.args.only
        started = time.monotonic()
        self.cleanup()
        cfg = self.cfg
        check_space(PRIMARY, 4 * max(cfg["data"], cfg["sparse_data"], cfg["ceiling_total"]))
        check_space(SECONDARY, 4 * max(cfg["data"], cfg["sparse_data"]))
        try:
            if "ceiling" in only:
                self.ceiling()
            for wan in (False, True):
                if ("wan" if wan else "journey") in only:
                    for run in range(self.runs):
                        for tool in self.order(JOURNEY_TOOLS, run):
                            self.journey(tool, run, wan)
            if "many" in only:
                for wan in (False, True):
                    for run in range(self.runs):
                        for tool in self.order(JOURNEY_TOOLS, run):
                            self.many(tool, run, wan)
            if only & {"files", "nocache"}:
                files_cfg = self.cfg if "files" in only else self.cfg["wan"]
                written = self.prepare_source(files_cfg)
                if "files" in only:
                    self.diff_files(written)
                if "nocache" in only:
                    if files_cfg is not self.cfg["wan"]:
                        written = self.prepare_source(self.cfg["wan"])
                    self.nocache(written)
                PRIMARY.remove(SRC)
            if "sparse" in only:
                self.sparse()
            if "site" in only:
                self.site()
            if "limit" in only:
                self.limited()
            if "scale" in only:
                for run in range(self.runs):
                    for size in cfg["scale_images"]:
                        for tool in self.order(SCALE_TOOLS, run):
                            self.scale(tool, run, size)
            if "extents" in only:
                self.extents()
            if "api" in only:
                self.api()
        finally:
            for work in self.workers.values():
                work.close()
            self.cleanup()
            for cluster in CLUSTERS:
                cluster.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.notes["bench_seconds"] = time.monotonic() - started


def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def has_snap(cluster, name, snap):
    if name not in cluster.list(PREFIX):
        return False
    with cluster.image(name, read_only=True) as img:
        return any(s["name"] == snap for s in img.list_snaps())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per cell (default 3; 1 with --quick)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated subset of %s" % ",".join(SCENARIOS))
    parser.add_argument("--extent-writes", type=int, default=None, metavar="N",
                        help="changed extents of the 'extents' row (default 2^20; 2^16 with "
                             "--quick); written 4 KiB every 8 KiB")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--settle", type=float, default=1.2, metavar="SECONDS",
                        help="idle time before each measurement (default 1.2)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the (untimed) byte-for-byte check of a restore")
    parser.add_argument("--write-doc", action="store_true",
                        help="also write %s and its JSON and chart"
                        % report.DOC.relative_to(ROOT))
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    args.only = set(filter(None, args.only.split(",")))
    if args.only - set(SCENARIOS) or args.runs < 1:
        parser.error("--only takes %s; --runs >= 1" % ",".join(SCENARIOS))
    for cluster in CLUSTERS:
        if not os.path.exists(cluster.conf):
            parser.error("%s not found: run tools/sandbox up (make sandbox)" % cluster.conf)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    bench = Bench(args)
    bench.notes["cache"] = {"secondary": bench.caches[SECONDARY.conf],
                            "secondary WAN": bench.caches[bench.wan_conf]}
    try:
        bench.run()
    except BenchError as exc:
        log("error: %s" % exc)
        return 1
    rep = report.build(bench, args, datetime.datetime.now().isoformat(timespec="seconds"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(dict(rep, raw=bench.results), indent=1,
                                                    sort_keys=True, default=str) + "\n")
    print(report.text_table(rep))
    print()
    for name, t in rep["targets"].items():
        verdict = "" if t["pass"] is None else ("met" if t["pass"] else "MISSED")
        print("%-70s %8s  %s" % (name, t["value"], verdict))
    print("\nresults: %s" % (RESULTS / "latest.json").relative_to(ROOT))
    if args.write_doc:
        for path in report.write_doc(rep):
            print("wrote %s" % path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
