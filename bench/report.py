"""Summaries, targets, tables and the chart of bench/run.py."""

import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

from benchlib import ROOT, MiB

DOC = ROOT / "doc" / "source" / "benchmarks.md"
STATIC = ROOT / "doc" / "source" / "_static"
DOC_JSON = STATIC / "bench.json"
DOC_PNG = STATIC / "bench.png"
RSS_TARGET_MIB = 256
FILE_RATIO_TARGET = 1.2
THIN_RATIO_TARGET = 2.0
NOCACHE_SPEEDUP_TARGET = 10
CEILING_TARGET = 0.9
INPLACE_TARGET = 0.10
SCALE_RATIO_TARGET = 1.2
SCALE_STOCK_TARGET = 5
TOOL_ORDER = ("read primary", "write secondary", "pipe", "ours", "ours driver",
              "stock driver", "ours API", "stock API")
BULK = ("1 ", "5 ", "7 ", "sparse")


def scenario_key(name):
    wan = name.startswith("WAN ")
    base = name[4:] if wan else name
    if name == "ceiling":
        return (0, 0, name)
    match = re.match(r"(\d+) ", base)
    if match:
        return (2 if wan else 1, int(match.group(1)), name)
    match = re.match(r"scale (\d+) GiB", name)
    if match:  # by the volume's size
        return (4, int(match.group(1)), name)
    return (3, 0, name)


def summarize(runs):
    def med(key):
        return statistics.median(key(r) for r in runs)

    out = {
        "runs": len(runs),
        "wall": med(lambda r: r["wall"]),
        "wall_min": min(r["wall"] for r in runs),
        "wall_max": max(r["wall"] for r in runs),
        "cpu": med(lambda r: r["cpu"]),
        "maxrss_mib": max(r["maxrss_mib"] for r in runs),
        "proc_maxrss_mib": [max(r["procs"][i]["maxrss_mib"] for r in runs
                                if i < len(r["procs"]))
                            for i in range(max(len(r["procs"]) for r in runs))],
        "payload": runs[0]["payload"],
        "received": med(lambda r: r["received"]),
        "receiver": runs[0]["receiver"],
        "cache": runs[0]["cache"],
        "secondary_osd_cpu": med(lambda r: r["osd"]["secondary"]["osd_cpu"]),
    }
    out["mib_per_s"] = out["payload"] / MiB / out["wall"]
    if runs[0].get("rbd_bench_bytes_per_s"):
        out["rbd_bench_mib_per_s"] = med(lambda r: r["rbd_bench_bytes_per_s"]) / MiB
    if "file_bytes" in runs[0]:
        out["file_bytes"] = med(lambda r: r["file_bytes"])
    return out


def stock_of(tool):
    return "stock API" if tool.endswith("API") else "stock driver"


SHARED_CEILING = "read + write at once"


def add_ratios(summary):
    """Ratios to the pipe, the stock driver and the ceiling: the slower of
    the separate read and write rows, as the issue defines it. The row with
    both at once (the machine's cores serve both clusters) gets its ratio as
    ``of_shared_ceiling``."""
    ceiling = shared = None
    if "ceiling" in summary:
        rows = summary["ceiling"]
        ceiling = min(s.get("rbd_bench_mib_per_s") or s["mib_per_s"]
                      for tool, s in rows.items() if tool != SHARED_CEILING)
        if SHARED_CEILING in rows:
            shared = rows[SHARED_CEILING]["mib_per_s"]
    for name, tools in summary.items():
        for tool, s in tools.items():
            if "pipe" in tools and tool != "pipe":
                s["x_pipe"] = tools["pipe"]["wall"] / s["wall"]
            if stock_of(tool) in tools and tool != stock_of(tool) and tool != "pipe":
                s["x_stock"] = tools[stock_of(tool)]["wall"] / s["wall"]
            if ceiling and name.startswith(BULK) and name != "ceiling":
                s["of_ceiling"] = s["mib_per_s"] / ceiling
                if shared:
                    s["of_shared_ceiling"] = s["mib_per_s"] / shared
    return ceiling


def targets_of(summary, notes):
    t = {}

    def get(scenario, tool):
        return summary.get(scenario, {}).get(tool)

    def put(name, value, ok):
        t[name] = {"value": round(value, 3), "pass": ok}

    full, pipe = get("1 full backup", "ours"), get("1 full backup", "pipe")
    if full and "of_ceiling" in full:
        put("1 full: ours >= 90% of the ceiling", full["of_ceiling"],
            full["of_ceiling"] >= CEILING_TARGET)
    for tool, s in (("ours", full), ("pipe", pipe)):
        if s and "of_shared_ceiling" in s:
            put("1 full: (%s, of the shared ceiling: read and write at once)" % tool,
                s["of_shared_ceiling"], None)
    if full and pipe:
        put("1 full: ours at least as fast as the pipe (pipe/ours wall)",
            pipe["wall"] / full["wall"], full["wall"] <= pipe["wall"])
        put("1 full: ours less CPU than the pipe (pipe/ours CPU)", pipe["cpu"] / full["cpu"],
            full["cpu"] < pipe["cpu"])
    for prefix in ("", "WAN "):
        name = prefix + "3 incr. 4K scattered"
        for tool, ref in (("ours", "pipe"), ("ours driver", "pipe"),
                          ("ours driver", "stock driver"), ("ours API", "stock API")):
            s, r = get(name, tool), get(name, ref)
            if s and r:
                put("%s: %s >= %s (%s/%s wall; aim 2)" % (name, tool, ref, ref, tool),
                    r["wall"] / s["wall"], s["wall"] <= r["wall"])
        s = get(name, "ours")
        if s:
            put("%s: bytes received <= %.1fx bytes written (ours)" % (name, FILE_RATIO_TARGET),
                s["received"] / s["payload"], s["received"] <= FILE_RATIO_TARGET * s["payload"])
        for tool in ("pipe", "stock driver"):
            s = get(name, tool)
            if s:
                put("%s: (bytes received / bytes written, %s)" % (name, tool),
                    s["received"] / s["payload"], None)
    for prefix in ("", "WAN "):
        name = prefix + "4 thin volume, full"
        for tool in ("ours", "ours driver", "pipe", "stock driver"):
            s = get(name, tool)
            if s:
                ours = tool.startswith("ours")
                put("%s: bytes received <= %dx bytes written (%s)" % (
                    name, THIN_RATIO_TARGET, tool) if ours else
                    "%s: (bytes received / bytes written, %s)" % (name, tool),
                    s["received"] / s["payload"],
                    s["received"] <= THIN_RATIO_TARGET * s["payload"] if ours else None)
    for prefix in ("", "WAN "):
        inplace = get(prefix + "6 restore in place, 1% changed", "ours driver")
        full_restore = get(prefix + "5 restore to new volume", "ours driver")
        if inplace and full_restore:
            ratio = inplace["wall"] / full_restore["wall"]
            put("%s6 in-place restore <= 10%% of a full restore (ours driver, 6/5 wall)"
                % prefix, ratio, ratio <= INPLACE_TARGET)
    for name, s in summary.items():
        if (name == "1 full backup" or name.startswith("sparse")) and "ours" in s:
            rss = s["ours"]["maxrss_mib"]
            put("%s: ours peak RSS < %d MiB" % (name, RSS_TARGET_MIB), rss,
                rss < RSS_TARGET_MIB)
    scale_targets(summary, put)
    s = summary.get("WAN 3 incr. 4K scattered, no cache")
    if s and "ours" in s and "pipe" in s:
        speedup = s["pipe"]["wall"] / s["ours"]["wall"]
        put("WAN 3 without rbd cache: ours >= %dx pipe (pipe/ours wall)"
            % NOCACHE_SPEEDUP_TARGET, speedup, speedup >= NOCACHE_SPEEDUP_TARGET)
    s = summary.get("diff file")
    if s and "ours" in s:
        put("diff file: ours <= %.1fx bytes written" % FILE_RATIO_TARGET,
            s["ours"]["file_bytes"] / s["ours"]["payload"],
            s["ours"]["file_bytes"] <= FILE_RATIO_TARGET * s["ours"]["payload"])
        if "pipe" in s:
            put("diff file: (rbd export-diff / bytes written)",
                s["pipe"]["file_bytes"] / s["pipe"]["payload"], None)
    return t


def scale_targets(summary, put):
    """The scale rows: the smallest and the largest volume with the same change."""
    rows = sorted((name for name in summary if name.startswith("scale ")
                   and "every 8 KiB" not in name), key=scenario_key)
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        for tool in ("ours", "ours driver"):
            a, b = summary[small].get(tool), summary[large].get(tool)
            if a and b:
                ratio = b["wall"] / a["wall"]
                put("%s vs %s: within %.1fx (%s)" % (large, small.split(",")[0],
                                                     SCALE_RATIO_TARGET, tool),
                    ratio, ratio <= SCALE_RATIO_TARGET)
                put("%s vs %s: (CPU seconds ratio, %s)" % (large, small.split(",")[0], tool),
                    b["cpu"] / a["cpu"], None)
                # received includes the object map's upkeep: 2 bits per object
                put("%s: (bytes received / bytes written, %s; %s: %.3f)" % (
                    large, tool, small.split(",")[0], a["received"] / a["payload"]),
                    b["received"] / b["payload"], None)
        s = summary[large]
        if "ours driver" in s and "stock driver" in s:
            speedup = s["stock driver"]["wall"] / s["ours driver"]["wall"]
            put("%s: ours driver >= %dx stock driver (stock/ours wall)"
                % (large, SCALE_STOCK_TARGET), speedup, speedup >= SCALE_STOCK_TARGET)
    for name in summary:
        if name.startswith("scale ") and "ours" in summary[name]:
            rss = summary[name]["ours"]["maxrss_mib"]
            put("%s: ours peak RSS < %d MiB" % (name, RSS_TARGET_MIB), rss,
                rss < RSS_TARGET_MIB)


def machine_info():
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    cpu, mem_gib = "unknown", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    try:
        import cinder.version
        cinder_version = cinder.version.version_info.version_string()
    except Exception:  # noqa: BLE001 - only a label
        cinder_version = "unknown"
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib,
            "kernel": platform.release(), "python": platform.python_version(),
            "ceph": first(["ceph", "--version"]), "cinder": cinder_version,
            "host": platform.node()}


def build(bench, args, date):
    summary = {name: {tool: summarize(runs) for tool, runs in tools.items()}
               for name, tools in bench.results.items()}
    ceiling = add_ratios(summary)
    return {"date": date, "mode": bench.mode, "runs": args.runs, "settle": args.settle,
            "config": bench.cfg, "machine": machine_info(), "notes": bench.notes,
            "ceiling_mib_per_s": ceiling, "summary": summary,
            "targets": targets_of(summary, bench.notes)}


HEADER = ("workload", "tool", "s", "MiB/s", "CPU s", "MiB received", "x pipe", "x stock",
          "of ceiling", "peak RSS MiB", "librbd cache (secondary)")


def rows(summary):
    out = []
    for name in sorted(summary, key=scenario_key):
        tools = summary[name]
        title = name
        for tool in sorted(tools, key=lambda t: TOOL_ORDER.index(t) if t in TOOL_ORDER else 99):
            s = tools[tool]
            rss = "+".join("%.0f" % r for r in s["proc_maxrss_mib"])
            mibs = "%.1f" % s["mib_per_s"]
            if "rbd_bench_mib_per_s" in s:
                mibs += " (rbd bench %.0f)" % s["rbd_bench_mib_per_s"]
            received = "%.2f" % (s["received"] / MiB)
            if s["receiver"] == "primary" and name != "ceiling":
                received += " (primary)"
            if "file_bytes" in s:
                received = "file %.2f (%.2fx)" % (s["file_bytes"] / MiB,
                                                  s["file_bytes"] / s["payload"])
            out.append((title, tool, "%.2f" % s["wall"], mibs, "%.2f" % s["cpu"], received,
                        "%.2fx" % s["x_pipe"] if "x_pipe" in s else "",
                        "%.2fx" % s["x_stock"] if "x_stock" in s else "",
                        "%.0f%%" % (100 * s["of_ceiling"]) if "of_ceiling" in s else "",
                        rss, s["cache"]))
            title = ""
    return out


def text_table(rep):
    table = [HEADER] + rows(rep["summary"])
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) if j < 2 or j == len(HEADER) - 1 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def chart(rep, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = rep["summary"]
    tools = [t for t in TOOL_ORDER[2:] if any(t in s for s in summary.values())]
    panels = [("LAN", [n for n in sorted(summary, key=scenario_key)
                       if scenario_key(n)[0] == 1]),
              ("WAN (0-20 ms injected on the secondary's OSD replies, smaller sizes)",
               [n for n in sorted(summary, key=scenario_key) if scenario_key(n)[0] == 2])]
    panels = [(t, names) for t, names in panels if names]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    width = 0.8 / max(len(tools), 1)
    for ax, (title, names) in zip(axes[:, 0], panels, strict=True):
        for i, tool in enumerate(tools):
            xs = [j + (i - (len(tools) - 1) / 2) * width for j in range(len(names))]
            ys = [summary[n][tool]["wall"] if tool in summary[n] else 0 for n in names]
            ax.bar(xs, ys, width, label=tool)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("WAN ", "").replace(", ", ",\n", 1) for n in names],
                           fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("seconds (median, log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(tools))
    fig.suptitle("cinder-rbd-incremental benchmark (%s, %s, %d cores): lower is better"
                 % (rep["mode"], rep["date"], rep["machine"]["nproc"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(rep):
    cfg, machine, notes = rep["config"], rep["machine"], rep["notes"]
    wan = cfg["wan"]

    def h(size):
        return "%d MiB" % (size // MiB) if size < (1 << 30) else "%d GiB" % (size >> 30)

    out = ["# Benchmarks", "",
           "`rbd-incremental` and this project's Cinder backup driver against "
           "`rbd export-diff | rbd import-diff` (*pipe*), Cinder's stock `CephBackupDriver` "
           "and the hardware ceiling, on the two local sandbox clusters (`tools/sandbox up`, "
           "one BlueStore OSD each on a sparse file, loopback). Produced by `make bench` "
           "(`bench/run.py --write-doc`, which also writes `_static/bench.json`); "
           "`make bench-quick` runs smaller sizes.", "",
           "![Median seconds per workload and tool](_static/bench.png)", "",
           "## Machine", "", "| | |", "|---|---|"]
    for key in ("nproc", "cpu", "mem_gib", "kernel", "python", "ceph", "cinder"):
        out.append("| %s | %s |" % (key, machine.get(key)))
    out += ["", "Run %s, mode `%s`, median of %d runs per cell (tools alternating, the "
            "order reversed every other run), %.0f s in all. The machine was shared with "
            "other Ceph workloads; OSD counters include whatever else ran."
            % (rep["date"], rep["mode"], rep["runs"], notes.get("bench_seconds", 0)), "",
            "## Tools", "",
            "* **pipe**: `rbd export-diff [--from-snap A] pool/img@B - | rbd import-diff - "
            "backups/copy`.",
            "* **ours**: `rbd-incremental sync [--from-snap A] pool/img@B backups/copy`.",
            "For a full copy (workloads 1, 4, 5, 7, sparse) both get an empty `backups/copy` "
            "made beforehand, untimed (`rbd create -s 1M`: import-diff needs one; sync "
            "resizes it and writes into it all the same); the drivers' rows include making "
            "their images.",
            "* **ours driver / stock driver**: this project's `RBDIncrementalBackupDriver` "
            "and Cinder %s's `CephBackupDriver`, in one process each "
            "(`bench/cinderworker.py`) with real Cinder objects on sqlite and os-brick's "
            "`RBDVolumeIOWrapper`, the way cinder-backup calls them; only the driver call is "
            "timed, and it includes taking the volume snapshot (pipe and ours get theirs "
            "made beforehand). Users `cinder` / `cinder-backup`; our driver with its "
            "defaults (verify = sample); the stock one with `backup_ceph_max_snapshots` = 0."
            % machine.get("cinder"),
            "* **ours API / stock API**: the same drivers in the real Cinder services of "
            "`tools/cinder-stack` (`--stock`), through python-cinderclient: timed from the "
            "request until Cinder shows the backup (or restored volume) available, polled "
            "every 0.1 s. CPU and peak RSS are those of the cinder-backup process tree. "
            "LAN workloads 1, 2, 3 and 5 only: the stack's backup cluster conf is fixed, so "
            "no WAN rows through it.",
            "* **ceiling**: `rbd bench --io-size 4M --io-threads 8 --io-total %s` "
            "(`--io-type read` on the primary, `write` on a fresh secondary image); "
            "nothing can beat the slower of the two. *read + write at once* runs both "
            "together (bytes over the wall time of both): the sandbox's two clusters share this "
            "machine's cores, so a copy, which reads and writes at the same time, gets "
            "what is left by both; *of ceiling* keeps the separate rows, the targets "
            "list also gives the full backup against this shared ceiling."
            % h(cfg["ceiling_total"]),
            "", "## Workloads", "",
            "Per tool and run, one journey on its own volume (%s LAN, %s WAN):"
            % (h(cfg["image"]), h(wan["image"])),
            "",
            "1. full backup of the volume holding %s (WAN: %s) of random data in whole "
            "4 MiB objects at random places;" % (h(cfg["data"]), h(wan["data"])),
            "2. incremental after 1% of the volume written sequentially;",
            "3. incremental after %d (WAN: %d) random 4 KiB writes at distinct offsets over "
            "the whole volume;" % (cfg["small_writes"], wan["small_writes"]),
            "4. full backup of a new thin volume holding one 4 KiB write in each of %d "
            "(WAN: %d) objects: bytes received by the secondary vs bytes written;"
            % (cfg["thin_writes"], wan["thin_writes"]),
            "5. restore of backup 3 (the third of the chain) to a new volume (pipe and "
            "ours: `backups/copy@b3` to a new image);",
            "6. restore of backup 3 onto the original volume after 1% of it changed since "
            "(drivers only: the pipe and `sync` cannot restore onto a changed image); the "
            "target compares it with 5;",
            "7. eight volumes of %s each holding %s (WAN: %s) backed up at once (8 "
            "pipelines, 8 `sync` processes, 8 driver calls in threads)."
            % (h(cfg["many_image"]), h(cfg["many_data"]), h(wan["many_data"])),
            "",
            "**WAN** rows run the same with `ms_inject_delay_type = osd`, "
            "`ms_inject_delay_max = 0.02`, `ms_inject_delay_probability = 1` in the "
            "`[client]` section of a copy of the secondary's ceph.conf (the `-c` / "
            "`--dest-conf` / `--src-conf` of the secondary side, the drivers' "
            "`backup_ceph_conf`): every OSD reply to that client is delayed 0-20 ms. "
            "The last column gives the librbd cache settings of that client as Ceph parses "
            "them for the pipe and the stock driver; ours always runs without the cache "
            "(it sets `rbd_cache = false` on its connections, so a stopped OSD fails a "
            "write instead of hanging a flush); *WAN 3 ... no cache* adds "
            "`rbd_cache = false` for every tool (%d writes)."
            % wan["small_writes"],
            "*diff file*: `export-diff --from-snap` of workload 3's change to a file, ours vs "
            "rbd's; *sparse*: full copy of a %s image holding %s in 1 MiB writes spread "
            "over it (peak RSS of a large volume)."
            % (h(cfg["sparse_image"]), h(cfg["sparse_data"])),
            "",
            "## Columns", "",
            "*s*: median wall seconds. *MiB/s*: payload (data of the workload) over *s*. "
            "*CPU s*: user+system of every client process (`wait4`; the drivers: the "
            "worker's threads plus the `rbd` children it reaped). *MiB received*: "
            "`op_in_bytes` of the receiving OSD (the secondary's, or the primary's for "
            "restores), read from its admin socket before and after: what crossed to it. "
            "*x pipe* / *x stock*: the pipe's / the stock driver's seconds over this row's "
            "(above 1: faster; API rows against stock API). *of ceiling*: MiB/s over the "
            "slower ceiling row (%.0f MiB/s), for bulk workloads. *peak RSS*: per process "
            "(`export+import` for the pipe; the drivers' high-water mark is reset before "
            "each call and includes Cinder itself, ~150 MiB). Each measurement starts after "
            "%.1f s of quiet; snapshots cost 0-1 s at random on the sandbox (the mon "
            "batches map changes every second), so small cells move in steps."
            % (rep.get("ceiling_mib_per_s") or 0, rep["settle"]),
            "", "## Results", "",
            "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += table(rep, lambda name: not name.startswith("scale "))
    out += ["", "## Targets", ""] + target_table(rep, lambda name: not name.startswith("scale "))
    scale = scale_markdown(rep)
    return "\n".join(out + ([""] + scale if scale else []) + [""])


def table(rep, keep):
    """The results table of the scenarios whose name ``keep`` accepts."""
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows({name: s for name, s in rep["summary"].items() if keep(name)}):
        out.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    return out


def target_table(rep, keep):
    out = ["| target | value | |", "|---|---|---|"]
    for name, t in rep["targets"].items():
        if keep(name):
            verdict = "" if t["pass"] is None else ("met" if t["pass"] else "**missed**")
            out.append("| %s | %s | %s |" % (name, t["value"], verdict))
    return out


def human_size(size):
    return "%d GiB" % (size >> 30) if size >= 1 << 30 else "%d MiB" % (size >> 20)


def extents_row(rep):
    """What the extents row measured, if it ran."""
    if not any("every 8 KiB" in name for name in rep["summary"]):
        return ""
    cfg = rep["config"]
    return (" The *every 8 KiB* row is an incremental `sync` of %d changed extents (4 KiB "
            "written every 8 KiB in the first %s of a %s thin volume whose objects all held "
            "data): its peak RSS is the memory bound of the extent list."
            % (cfg["extents_writes"], human_size(cfg["extents_span"]),
               human_size(cfg["extents_image"])))


def scale_markdown(rep):
    """The section of the scale rows (``--only scale,extents``), or []."""
    def scale(name):
        return name.startswith("scale ")
    if not any(scale(name) for name in rep["summary"]):
        return []
    cfg = rep["config"]
    sizes = ", ".join(human_size(size) for size in cfg["scale_images"])
    return [
        "## Scale: the cost follows the change, not the volume", "",
        "Thin volumes of %s, each holding %d MiB of random data in whole objects within "
        "its first %d GiB, backed up (untimed); then the same change on each, %d random "
        "4 KiB writes within those %d GiB, and the incremental is timed: `rbd-incremental "
        "sync --from-snap` (*ours*), this project's driver and Cinder's stock driver (both "
        "as in the journey, with the volume snapshot included). Images are created with "
        "Ceph's default features (object-map and fast-diff included).%s Run %s, median of "
        "%d run(s) per cell."
        % (sizes, cfg["scale_data"] >> 20, cfg["scale_span"] >> 30, cfg["scale_writes"],
           cfg["scale_span"] >> 30, extents_row(rep), rep["date"], rep["runs"]), ""] + table(
        rep, scale) + ["", "### Scale targets", ""] + target_table(rep, scale)


# Sections after this line in benchmarks.md come from partial runs (``--only``)
# and are kept when a full run rewrites the page.
KEPT_MARKER = "<!-- sections below: partial runs, kept by bench/report.py -->"


def write_doc(rep):
    STATIC.mkdir(parents=True, exist_ok=True)
    DOC_JSON.write_text(json.dumps(rep, indent=1, sort_keys=True, default=str) + "\n")
    chart(rep, DOC_PNG)
    old = DOC.read_text() if DOC.exists() else ""
    kept = old[old.index(KEPT_MARKER):] if KEPT_MARKER in old else ""
    DOC.write_text(markdown(rep) + ("\n" + kept if kept else ""))
    return [DOC, DOC_JSON, DOC_PNG]
