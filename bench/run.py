#!/usr/bin/env python3
"""Benchmark ``rbd-incremental`` against ``rbd export-diff | rbd import-diff``.

Runs on the two sandbox clusters (``tools/sandbox up``): the source image lives in
``volumes`` on the primary, copies go to ``backups`` on the secondary. Every
measurement runs the tools as child processes and records wall time, CPU
(user+sys of each process, from ``os.wait4``), peak RSS, the bytes the secondary
OSD received (``op_in_bytes``) and the CPU the OSDs spent. Ours and the pipe
alternate (ABBA) within one run; the tables show medians of ``--runs``.

Scenarios:

* ceiling: ``rbd bench`` 4 MiB reads on the primary, writes on the secondary;
* a: full copy of an image holding random data (half of it);
* files: incremental diff file sizes, ``rbd export-diff`` vs ours;
* b: incremental after many random 4 KiB writes;
* c: the same incremental with injected latency between the client and the
  secondary's OSD, with the default rbd cache and with ``rbd_cache = false``;
* d: peak RSS of a full copy of a large sparse image.

Disk: the OSDs are 20 GiB sparse files shared with the tests. The benchmark
refuses to start when it would take an OSD past half full, waits (for
snapshot trimming) before a measurement while one is, and deletes every image
it made, even on failure. Deleted snapshot data is freed as the OSD trims it,
which can take minutes on the sandbox.

Usage: ``bench/run.py [--quick] [--runs N] [--only a,b,...] [--write-doc]``.
Writes ``bench/results/latest.json``; ``--write-doc`` also writes
``doc/source/benchmarks.md``.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    OBJECT,
    ROOT,
    BenchError,
    Cluster,
    GiB,
    KiB,
    MiB,
    check_space,
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
TOOLS = ("ours", "pipe")
TOOL = shutil.which("rbd-incremental", path=os.path.dirname(sys.executable)) or str(
    ROOT / ".venv" / "bin" / "rbd-incremental")
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "doc" / "source" / "benchmarks.md"
SCENARIOS = ("ceiling", "a", "files", "b", "c", "d")
LATENCY = ("ms_inject_delay_type = osd\nms_inject_delay_max = 0.02\n"
           "ms_inject_delay_probability = 1\n")

SIZES = {
    "full": {"image": 2 * GiB, "data": 1 * GiB, "small_writes": 4096,
             "sparse_image": 8 * GiB, "sparse_data": 1 * GiB, "ceiling_total": 1 * GiB},
    "quick": {"image": 512 * MiB, "data": 256 * MiB, "small_writes": 1024,
              "sparse_image": 2 * GiB, "sparse_data": 256 * MiB, "ceiling_total": 256 * MiB},
}
SMALL_WRITE = 4 * KiB
SPARSE_BLOCK = 1 * MiB
RSS_TARGET_MIB = 256
FILE_RATIO_TARGET = 1.2
NOCACHE_SPEEDUP_TARGET = 10


def log(msg):
    print("bench: %s" % msg, file=sys.stderr, flush=True)


def human(size):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return "%d %s" % (size // scale, unit)
    return "%d B" % size


# -- the two ways of copying ---------------------------------------------------

def ours_sync(src, dest, from_snap=None, dest_conf=SECONDARY.conf):
    cmd = [TOOL, "--no-progress", "sync", "--src-conf", PRIMARY.conf, "--dest-conf", dest_conf]
    if from_snap:
        cmd += ["--from-snap", from_snap]
    return [cmd + [src, dest]]


def pipe_sync(src, dest, from_snap=None, dest_conf=SECONDARY.conf):
    export = ["rbd", "-c", PRIMARY.conf, "--no-progress", "export-diff"]
    if from_snap:
        export += ["--from-snap", from_snap]
    return [export + [src, "-"],
            ["rbd", "-c", dest_conf, "--no-progress", "import-diff", "-", dest]]


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.cfg = dict(SIZES[self.mode])
        self.runs = args.runs
        self.rng = seeded(args.seed)
        self.results = {}
        self.notes = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="rbdinc-bench-"))

    # -- measurement plumbing --

    def measure(self, scenario, tool, cmds, payload, prepare=None, after=None):
        wait_for_space(CLUSTERS)
        if prepare:
            prepare()
        # Let the map changes of the preparation (snapshots removed and
        # created) settle: the mon batches them every paxos_propose_interval
        # (1 s) and each tool's own snapshot would queue behind them.
        time.sleep(self.args.settle)
        result = run_measured(cmds, CLUSTERS, label="%s/%s" % (scenario, tool))
        result["payload"] = payload
        if tool == "ours":
            result["stats"] = parse_stats(result["procs"][0]["stderr"])
        if scenario == "ceiling":
            result["rbd_bench_bytes_per_s"] = parse_rbd_bench(result["stdout"])
        if after:
            result.update(after())
        self.results.setdefault(scenario, {}).setdefault(tool, []).append(result)
        sec = result["osd"]["secondary"]["op_in_bytes"] / MiB
        log("%-10s %-16s %7.2f s  cpu %6.2f s  rss %6.1f MiB  to secondary %8.1f MiB"
            % (scenario, tool, result["wall"], result["cpu"], result["maxrss_mib"], sec))
        return result

    def interleaved(self, scenario, plans, payload):
        """``plans``: {tool: (prepare, cmds, after)}; alternate the order per run (ABBA)."""
        order = list(plans)
        for i in range(self.runs):
            for tool in (order if i % 2 == 0 else order[::-1]):
                prepare, cmds, after = plans[tool]
                self.measure(scenario, tool, cmds, payload, prepare, after)

    # -- images --

    def cleanup(self):
        for cluster in CLUSTERS:
            for name in cluster.list(PREFIX):
                log("removing %s/%s" % (cluster.pool, name))
                cluster.remove(name)

    def fresh_dest(self, name, pipe):
        SECONDARY.remove(name)
        if pipe:  # rbd import-diff needs an existing image; it resizes it
            SECONDARY.create(name, 1 * MiB)

    def reset_dest(self, tool):
        """Put the destination back to exactly s1 (untimed), without a new copy.

        Drop s2, roll HEAD back to s1, then replace s1 by a new snapshot of that
        same content: after a rollback a diff from s1 still lists the rolled-back
        extents (so ``sync`` would refuse HEAD as changed), a diff from the new
        s1 lists nothing. The identity recorded for s1 in the image metadata
        stays. Copying anew instead would leave a whole copy of snapshot data
        for the OSD to trim (slowly) each time.
        """
        name = DEST[tool]
        if not has_snap(SECONDARY, name, "s1"):
            self.fresh_dest(name, pipe=tool == "pipe")
            sync = ours_sync if tool == "ours" else pipe_sync
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

    def verify(self, what, first, second, src_conf=PRIMARY.conf):
        cmd = [TOOL, "--no-progress", "verify", "--src-conf", src_conf,
               "--dest-conf", SECONDARY.conf, first, second]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        ok = proc.returncode == 0
        self.notes.setdefault("verified", {})[what] = ok
        if not ok:
            raise BenchError("verify %s: %s vs %s: %s" % (what, first, second,
                                                         proc.stderr.strip()))
        log("verified %s: %s == %s" % (what, first, second))

    # -- scenarios --

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

            def fresh_secondary():
                SECONDARY.remove(CEIL)
                SECONDARY.create(CEIL, total)

            self.interleaved("ceiling", {
                "read primary": (None, [read + [PRIMARY.spec(CEIL)]], None),
                "write secondary": (fresh_secondary, [write + [SECONDARY.spec(CEIL)]], None),
            }, total)
        finally:
            PRIMARY.remove(CEIL)
            SECONDARY.remove(CEIL)

    def prepare_source(self):
        size, data = self.cfg["image"], self.cfg["data"]
        log("source: %s image, %s random data in 4 MiB objects" % (human(size), human(data)))
        PRIMARY.remove(SRC)
        PRIMARY.create(SRC, size)
        with PRIMARY.image(SRC) as img:
            written, blocks = spread_blocks(self.rng, size, data, OBJECT)
            write_blocks(img, blocks)
            img.create_snap("s1")
        self.notes["full_data_bytes"] = written

    def full_copy(self):
        plans = {
            "ours": (lambda: self.fresh_dest(DEST["ours"], pipe=False),
                     ours_sync(PRIMARY.spec(SRC, "s1"), SECONDARY.spec(DEST["ours"])), None),
            "pipe": (lambda: self.fresh_dest(DEST["pipe"], pipe=True),
                     pipe_sync(PRIMARY.spec(SRC, "s1"), SECONDARY.spec(DEST["pipe"])), None),
        }
        self.interleaved("a", plans, self.notes["full_data_bytes"])
        if not self.args.no_verify:
            for tool in TOOLS:
                self.verify("a " + tool, PRIMARY.spec(SRC, "s1"), SECONDARY.spec(DEST[tool], "s1"))

    def prepare_incremental(self):
        count = self.cfg["small_writes"]
        log("source: %d random %s writes, snapshot s2" % (count, human(SMALL_WRITE)))
        with PRIMARY.image(SRC) as img:
            written, blocks = spread_blocks(self.rng, self.cfg["image"], count * SMALL_WRITE,
                                            SMALL_WRITE)
            write_blocks(img, blocks, depth=64)
            img.create_snap("s2")
        self.notes["incremental_bytes"] = written

    def diff_files(self):
        paths = {tool: self.tmp / ("%s.diff" % tool) for tool in TOOLS}
        spec = PRIMARY.spec(SRC, "s2")

        def remover(path):
            return lambda: path.unlink(missing_ok=True)

        def sizer(path):
            return lambda: {"file_bytes": path.stat().st_size}

        plans = {
            "ours": (remover(paths["ours"]),
                     [[TOOL, "-c", PRIMARY.conf, "--no-progress", "export-diff",
                       "--from-snap", "s1", spec, str(paths["ours"])]], sizer(paths["ours"])),
            "pipe": (remover(paths["pipe"]),
                     [["rbd", "-c", PRIMARY.conf, "--no-progress", "export-diff",
                       "--from-snap", "s1", spec, str(paths["pipe"])]], sizer(paths["pipe"])),
        }
        try:
            self.interleaved("files", plans, self.notes["incremental_bytes"])
        finally:
            for path in paths.values():
                path.unlink(missing_ok=True)

    def incremental(self, scenario, dest_conf=SECONDARY.conf):
        plans = {}
        for tool, sync in (("ours", ours_sync), ("pipe", pipe_sync)):
            plans[tool] = ((lambda tool=tool: self.reset_dest(tool)),
                           sync(PRIMARY.spec(SRC, "s2"), SECONDARY.spec(DEST[tool]),
                                from_snap="s1", dest_conf=dest_conf), None)
        self.interleaved(scenario, plans, self.notes["incremental_bytes"])

    def latency_conf(self, cache):
        path = self.tmp / ("secondary-latency-%s.conf" % ("cache" if cache else "nocache"))
        text = Path(SECONDARY.conf).read_text()
        text += "\n[client]\n" + LATENCY + ("" if cache else "rbd_cache = false\n")
        path.write_text(text)
        return str(path)

    def sparse(self):
        size, data = self.cfg["sparse_image"], self.cfg["sparse_data"]
        log("sparse source: %s image, %s random data in %s writes spread out"
            % (human(size), human(data), human(SPARSE_BLOCK)))
        try:
            PRIMARY.remove(SPARSE)
            PRIMARY.create(SPARSE, size)
            with PRIMARY.image(SPARSE) as img:
                written, blocks = spread_blocks(self.rng, size, data, SPARSE_BLOCK)
                write_blocks(img, blocks)
                img.create_snap("s1")
            self.notes["sparse_data_bytes"] = written
            plans = {
                "ours": (lambda: self.fresh_dest(SPARSE_DEST["ours"], pipe=False),
                         ours_sync(PRIMARY.spec(SPARSE, "s1"),
                                   SECONDARY.spec(SPARSE_DEST["ours"])), None),
                "pipe": (lambda: self.fresh_dest(SPARSE_DEST["pipe"], pipe=True),
                         pipe_sync(PRIMARY.spec(SPARSE, "s1"),
                                   SECONDARY.spec(SPARSE_DEST["pipe"])), None),
            }
            self.interleaved("d", plans, written)
            if not self.args.no_verify:
                self.verify("d ours", PRIMARY.spec(SPARSE, "s1"),
                            SECONDARY.spec(SPARSE_DEST["ours"], "s1"))
        finally:
            for name in SPARSE_DEST.values():
                SECONDARY.remove(name)
            PRIMARY.remove(SPARSE)

    def run(self):
        only = self.args.only
        started = time.monotonic()
        self.cleanup()
        cfg = self.cfg
        check_space(PRIMARY, 2 * max(cfg["data"], cfg["sparse_data"], cfg["ceiling_total"]))
        check_space(SECONDARY, 4 * max(cfg["data"], cfg["sparse_data"]))
        try:
            if "ceiling" in only:
                self.ceiling()
            if only & {"a", "files", "b", "c"}:
                self.prepare_source()
                if "a" in only:
                    self.full_copy()
                if only & {"files", "b", "c"}:
                    self.prepare_incremental()
                if "files" in only:
                    self.diff_files()
                if "b" in only:
                    self.incremental("b")
                    if not self.args.no_verify:
                        for tool in TOOLS:
                            self.verify("b " + tool, PRIMARY.spec(SRC, "s2"),
                                        SECONDARY.spec(DEST[tool], "s2"))
                if "c" in only:
                    self.incremental("c cache", self.latency_conf(cache=True))
                    self.incremental("c no cache", self.latency_conf(cache=False))
                for name in DEST.values():
                    SECONDARY.remove(name)
                PRIMARY.remove(SRC)
            if "d" in only:
                self.sparse()
        finally:
            self.cleanup()
            for cluster in CLUSTERS:
                cluster.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.notes["bench_seconds"] = time.monotonic() - started


# -- summaries -------------------------------------------------------------------

def median(runs, key):
    return statistics.median(key(r) for r in runs)


def summarize(runs):
    def osd(name, field):
        return lambda r: r["osd"][name][field]

    out = {
        "runs": len(runs),
        "wall": median(runs, lambda r: r["wall"]),
        "wall_min": min(r["wall"] for r in runs),
        "wall_max": max(r["wall"] for r in runs),
        "cpu": median(runs, lambda r: r["cpu"]),
        "cpu_user": median(runs, lambda r: r["cpu_user"]),
        "cpu_sys": median(runs, lambda r: r["cpu_sys"]),
        "maxrss_mib": max(r["maxrss_mib"] for r in runs),
        "proc_maxrss_mib": [max(r["procs"][i]["maxrss_mib"] for r in runs)
                            for i in range(len(runs[0]["procs"]))],
        "payload": runs[0]["payload"],
        "secondary_in_bytes": median(runs, osd("secondary", "op_in_bytes")),
        "secondary_write_ops": median(runs, osd("secondary", "op_w")),
        "primary_out_bytes": median(runs, osd("primary", "op_out_bytes")),
        "secondary_osd_cpu": median(runs, osd("secondary", "osd_cpu")),
        "primary_osd_cpu": median(runs, osd("primary", "osd_cpu")),
    }
    out["mib_per_s"] = out["payload"] / MiB / out["wall"]
    if runs[0].get("rbd_bench_bytes_per_s"):
        out["rbd_bench_mib_per_s"] = median(runs, lambda r: r["rbd_bench_bytes_per_s"]) / MiB
    if "file_bytes" in runs[0]:
        out["file_bytes"] = median(runs, lambda r: r["file_bytes"])
    return out


SCENARIO_TITLES = {
    "ceiling": "ceiling: rbd bench 4M x8 (read primary, write secondary)",
    "a": "a: full copy",
    "files": "incremental diff file (export-diff to a file)",
    "b": "b: incremental, 4 KiB random writes",
    "c cache": "c: incremental, 0-20 ms injected OSD latency, rbd cache on",
    "c no cache": "c: incremental, 0-20 ms injected OSD latency, rbd_cache = false",
    "d": "d: full copy of a sparse image",
}


def build_summary(bench):
    cfg, notes = bench.cfg, bench.notes
    summary = {name: {tool: summarize(runs) for tool, runs in tools.items()}
               for name, tools in bench.results.items()}
    targets = {}
    if "files" in summary:
        ratio = summary["files"]["ours"]["file_bytes"] / notes["incremental_bytes"]
        targets["b: ours diff file <= %.1fx bytes written" % FILE_RATIO_TARGET] = {
            "value": round(ratio, 4), "pass": ratio <= FILE_RATIO_TARGET}
        targets["b: (rbd export-diff file / bytes written)"] = {
            "value": round(summary["files"]["pipe"]["file_bytes"] / notes["incremental_bytes"],
                           4), "pass": None}
    if "c cache" in summary:
        s = summary["c cache"]
        targets["c: ours >= pipe with rbd cache (pipe/ours wall)"] = {
            "value": round(s["pipe"]["wall"] / s["ours"]["wall"], 2),
            "pass": s["ours"]["wall"] <= s["pipe"]["wall"]}
    if "c no cache" in summary:
        s = summary["c no cache"]
        speedup = s["pipe"]["wall"] / s["ours"]["wall"]
        targets["c: ours >= %dx pipe without rbd cache (pipe/ours wall)"
                % NOCACHE_SPEEDUP_TARGET] = {"value": round(speedup, 2),
                                             "pass": speedup >= NOCACHE_SPEEDUP_TARGET}
    for name, size in (("a", cfg["image"]), ("d", cfg["sparse_image"])):
        if name in summary:
            rss = summary[name]["ours"]["maxrss_mib"]
            targets["d: ours peak RSS < %d MiB, %s image" % (RSS_TARGET_MIB, human(size))] = {
                "value": round(rss, 1), "pass": rss < RSS_TARGET_MIB}
    return summary, targets


def machine_info():
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        mem_gib = round(int(mem) / (1 << 20), 1)
    except OSError:
        mem_gib = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib,
            "kernel": platform.release(), "python": platform.python_version(),
            "ceph": first(["ceph", "--version"]), "host": platform.node()}


def rows(summary):
    """(title, tool, cells...) rows for the tables."""
    out = []
    for name, title in SCENARIO_TITLES.items():
        if name not in summary:
            continue
        tools = summary[name]
        for tool, s in tools.items():
            rss = "+".join("%.0f" % r for r in s["proc_maxrss_mib"])
            extra = ""
            if "rbd_bench_mib_per_s" in s:
                extra = "rbd bench: %.0f MiB/s" % s["rbd_bench_mib_per_s"]
            if "file_bytes" in s:
                extra = "file %.2f MiB (%.3fx)" % (s["file_bytes"] / MiB,
                                                   s["file_bytes"] / s["payload"])
            out.append((title, tool, "%.2f" % s["wall"], "%.1f" % s["mib_per_s"],
                        "%.2f" % s["cpu"], rss, "%.1f" % (s["secondary_in_bytes"] / MiB),
                        "%.0f" % s["secondary_write_ops"], "%.2f" % s["secondary_osd_cpu"],
                        extra))
            title = ""
        if set(tools) == set(TOOLS):
            out.append(("", "pipe/ours", "%.2fx" % (tools["pipe"]["wall"] / tools["ours"]["wall"]),
                        "", "%.2fx" % (tools["pipe"]["cpu"] / max(tools["ours"]["cpu"], 1e-9)),
                        "", "", "", "", ""))
    return out


HEADER = ("scenario", "tool", "wall s", "MiB/s", "CPU s", "peak RSS MiB", "MiB to sec.",
          "sec. write ops", "sec. OSD CPU s", "")


def text_table(summary):
    table = [HEADER] + rows(summary)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) if j < 2 or j == 9 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown(report):
    cfg, machine, summary = report["config"], report["machine"], report["summary"]
    out = ["# Benchmarks", "",
           "`rbd-incremental` against `rbd export-diff | rbd import-diff`, on the two local "
           "sandbox clusters (`tools/sandbox up`, one BlueStore OSD each on a sparse file, "
           "loopback). Produced by `make bench` (`bench/run.py --write-doc`); "
           "`make bench-quick` runs smaller sizes.", "",
           "## Machine", "",
           "| | |", "|---|---|"]
    for key in ("nproc", "cpu", "mem_gib", "kernel", "python", "ceph"):
        out.append("| %s | %s |" % (key, machine[key]))
    out += ["", "Run %s, mode `%s`, median of %d runs per cell (ours and the pipe "
            "alternating), %.0f s in all." % (report["date"], report["mode"], report["runs"],
                                              report["notes"].get("bench_seconds", 0)), "",
            "## Method", "",
            "* **ceiling**: `rbd bench --io-size 4M --io-threads 8 --io-total %s` "
            "(`--io-type read` on the primary, `write` on a fresh image on the secondary)."
            % human(cfg["ceiling_total"]),
            "* **a**: full copy of a %s image holding %s of random data (4 MiB objects at "
            "random offsets): `rbd-incremental sync volumes/src@s1 backups/dest` vs "
            "`rbd export-diff volumes/src@s1 - | rbd import-diff - backups/dest` "
            "(the pipe's destination is created beforehand, untimed, with `rbd create -s 1M`)."
            % (human(cfg["image"]), human(cfg["data"])),
            "* **files / b**: %d random 4 KiB writes (%s) at distinct 4 KiB-aligned offsets "
            "over the whole image between s1 and s2; the diff file sizes "
            "(`export-diff --from-snap s1`), then each tool applies s1..s2 to its own copy "
            "(made by that tool; before each run, untimed: s2 removed, HEAD rolled back to "
            "s1 and s1 snapshotted anew)."
            % (cfg["small_writes"], human(cfg["small_writes"] * SMALL_WRITE)),
            "* **c**: b with `ms_inject_delay_type = osd`, `ms_inject_delay_max = 0.02`, "
            "`ms_inject_delay_probability = 1` in the `[client]` section of a copy of the "
            "secondary's ceph.conf (`--dest-conf` for ours, `-c` for `rbd import-diff`): "
            "every OSD reply to the writing client is delayed 0-20 ms. Once with the "
            "default rbd cache, once with `rbd_cache = false`.",
            "* **d**: full copy of a %s image holding %s of random data in 1 MiB writes "
            "spread over it; the target is ours' peak RSS (a gives it for the %s image)."
            % (human(cfg["sparse_image"]), human(cfg["sparse_data"]), human(cfg["image"])),
            "",
            "CPU is user+system of every client process (from `wait4`); peak RSS is per "
            "process (`export+import` for the pipe); *MiB to sec.* is the secondary OSD's "
            "`op_in_bytes` delta, *sec. write ops* its `op_w`, *sec. OSD CPU* the secondary "
            "OSD process' CPU. *MiB/s* is payload over wall time, process start included "
            "(the ceiling rows also give what `rbd bench` itself reports). *pipe/ours* above "
            "1 means ours is faster or uses less CPU. Cluster-side numbers include anything "
            "else running at the same time. Both tools create one snapshot on the "
            "destination; on the sandbox that costs 0-1 s at random (the mon batches map "
            "changes, `paxos_propose_interval` = 1 s, and the tests running alongside "
            "make their own), so small cells move in steps of up to a second: compare "
            "medians, and use `--runs 5` or more for small differences. Each measurement "
            "starts after %.1f s of quiet."
            % report["settle"], "",
            "## Results", "",
            "| " + " | ".join(HEADER[:-1]) + " | notes |",
            "|" + "---|" * len(HEADER)]
    for row in rows(summary):
        out.append("| " + " | ".join(row) + " |")
    out += ["", "## Targets", "", "| target | value | |", "|---|---|---|"]
    for name, t in report["targets"].items():
        verdict = "" if t["pass"] is None else ("met" if t["pass"] else "**missed**")
        out.append("| %s | %s | %s |" % (name, t["value"], verdict))
    out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated subset of %s" % ",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--settle", type=float, default=1.2, metavar="SECONDS",
                        help="idle time before each measurement (default 1.2)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the (untimed) byte-for-byte checks of the copies")
    parser.add_argument("--write-doc", action="store_true",
                        help="also write %s" % DOC.relative_to(ROOT))
    args = parser.parse_args(argv)
    args.only = set(filter(None, args.only.split(",")))
    if args.only - set(SCENARIOS) or args.runs < 1:
        parser.error("--only takes %s; --runs >= 1" % ",".join(SCENARIOS))
    for cluster in CLUSTERS:
        if not os.path.exists(cluster.conf):
            parser.error("%s not found: run tools/sandbox up (make sandbox)" % cluster.conf)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    bench = Bench(args)
    try:
        bench.run()
    except BenchError as exc:
        log("error: %s" % exc)
        return 1
    summary, targets = build_summary(bench)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "mode": bench.mode, "runs": args.runs, "settle": args.settle, "config": bench.cfg,
              "machine": machine_info(), "tool": TOOL, "notes": bench.notes,
              "summary": summary, "targets": targets, "raw": bench.results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")

    print(text_table(summary))
    print()
    for name, t in targets.items():
        verdict = "" if t["pass"] is None else ("met" if t["pass"] else "MISSED")
        print("%-62s %8s  %s" % (name, t["value"], verdict))
    print("\nresults: %s" % (RESULTS / "latest.json").relative_to(ROOT))
    if args.write_doc:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(markdown(report))
        print("wrote %s" % DOC.relative_to(ROOT))
    return 0


def has_snap(cluster, name, snap):
    if name not in cluster.list(PREFIX):
        return False
    with cluster.image(name, read_only=True) as img:
        return any(s["name"] == snap for s in img.list_snaps())


if __name__ == "__main__":
    sys.exit(main())
