"""``rbd-incremental``: rbd's diff commands, in process, parallel and safe.

Exit codes:

* 0  success
* 1  error (one line on stderr says what and where)
* 2  usage error
* 3  nothing to do: the target already has the end snapshot
* 4  refused: the target is not in the state the diff starts from
* 5  verify: the images differ; scrub: a restore point is damaged
* 130 interrupted
"""

import argparse
import contextlib
import json
import logging
import os
import signal
import stat
import sys

from cinder_rbd_incremental import (
    catalog,
    checksums,
    cluster,
    diffstream,
    engine,
    naming,
    ratelimit,
)
from cinder_rbd_incremental import scrub as scrubbing
from cinder_rbd_incremental.targets import file as file_target
from cinder_rbd_incremental.targets import rbd as rbd_target

EXIT_ERROR, EXIT_USAGE, EXIT_ALREADY, EXIT_REFUSED, EXIT_DIFFERENT = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
LOG = logging.getLogger("rbd-incremental")


class CommandError(Exception):
    """A failure reported as one line with an exit code."""

    def __init__(self, message, code=EXIT_ERROR):
        super().__init__(message)
        self.code = code


# --- argument parsing -------------------------------------------------------

def _add_cluster_args(parser, prefix="", label=""):
    dest = prefix.replace("-", "_")
    parser.add_argument("--%sconf" % prefix, dest=dest + "conf", metavar="FILE",
                        help="ceph.conf of the %scluster" % label)
    parser.add_argument("--%sid" % prefix, dest=dest + "id", metavar="USER",
                        help="cephx user (without client.) on the %scluster" % label)
    parser.add_argument("--%skeyring" % prefix, dest=dest + "keyring", metavar="FILE",
                        help="keyring for that user")


def positive_int(text):
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError("%r is not a positive integer" % text)
    return value


def rate(text):
    """argparse type: bytes per second, e.g. 50M."""
    try:
        return ratelimit.parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def percent(text):
    """argparse type: a percentage in (0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("%r is not a percentage in (0, 100]" % text)
    return value


def _add_limit_rate(parser):
    parser.add_argument("--limit-rate", type=rate, metavar="RATE",
                        help="send at most RATE bytes per second (K, M, G: KiB, MiB, GiB; "
                             "shared by all the command's parallel writes)")


def _add_engine_args(parser):
    parser.add_argument("--whole-object", action="store_true",
                        help="compare whole objects (fast with fast-diff, coarser)")
    parser.add_argument("--zero-granularity", type=positive_int, default=engine.DEFAULT_GRANULARITY,
                        metavar="BYTES", help="zero-run detection block size (default 4096)")
    default = engine.TransferOptions.max_in_flight_ops
    parser.add_argument("--max-in-flight", type=positive_int, default=default, metavar="N",
                        help="concurrent librbd requests per direction (default %d)" % default)


def _common_args(default):
    """Options accepted before and after the command, like rbd's."""
    common = argparse.ArgumentParser(add_help=False, argument_default=default)
    common.add_argument("-c", "--conf", help="ceph.conf (default: librados' search path)")
    common.add_argument("--id", help="cephx user, without the client. prefix")
    common.add_argument("--keyring", help="keyring file")
    common.add_argument("--connect-timeout", type=positive_int, metavar="SECONDS",
                        help="give up connecting after SECONDS (default: ceph.conf's "
                             "client_mount_timeout)")
    common.add_argument("--op-timeout", type=positive_int, metavar="SECONDS",
                        help="fail a RADOS operation after SECONDS, e.g. when an OSD is down "
                             "(default: ceph.conf's rados_osd_op_timeout and "
                             "rados_mon_op_timeout, %d s where it sets none)"
                        % cluster.DEFAULT_OP_TIMEOUT)
    common.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    common.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    return common


def build_parser():
    parser = argparse.ArgumentParser(
        prog="rbd-incremental", parents=[_common_args(None)],
        description="Incremental RBD transfers: export, import, inspect, merge, sync and "
                    "verify RBD diffs, checking that a diff lands on the right state.")
    parser.set_defaults(no_progress=False, debug=False, connect_timeout=None, op_timeout=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_args(argparse.SUPPRESS)

    def add(name, help):
        return sub.add_parser(name, help=help, parents=[common])

    cmd = add("export-diff", "write the changes of an image to a diff file")
    cmd.add_argument("--from-snap", metavar="SNAP", help="start snapshot (default: full)")
    cmd.add_argument("--export-format", type=int, choices=(1, 2), default=1,
                     help="diff format: 1 (rbd import-diff) or 2 (adds lineage)")
    _add_engine_args(cmd)
    _add_limit_rate(cmd)
    cmd.add_argument("image", metavar="POOL/IMAGE@SNAP", help="the image at its end snapshot")
    cmd.add_argument("path", metavar="FILE|-",
                     help="the diff file to write (appears only when complete); - for stdout")
    cmd.set_defaults(func=cmd_export_diff)

    cmd = add("import-diff", "apply a diff file to an image, safely")
    cmd.add_argument("--force", action="store_true", help="skip the state checks")
    cmd.add_argument("--rollback", action="store_true",
                     help="roll a HEAD changed since the start snapshot back to it first")
    cmd.add_argument("--zero-granularity", type=positive_int, default=engine.DEFAULT_GRANULARITY,
                     metavar="BYTES", help="zero-run detection block size (default 4096)")
    _add_limit_rate(cmd)
    cmd.add_argument("path", metavar="FILE|-", help="the diff file to apply; - for stdin")
    cmd.add_argument("image", metavar="POOL/IMAGE",
                     help="the image to apply it to: it must hold the diff's start snapshot "
                          "(an empty image for a full diff); it gets the end snapshot")
    cmd.set_defaults(func=cmd_import_diff)

    cmd = add("diff", "list changed extents (like rbd diff)")
    cmd.add_argument("--from-snap", metavar="SNAP",
                     help="list what changed since this snapshot (default: every "
                          "allocated extent)")
    cmd.add_argument("--whole-object", action="store_true",
                     help="whole objects instead of extents (fast with fast-diff, coarser)")
    cmd.add_argument("--format", choices=("plain", "json", "xml"), default="plain",
                     help="output format, as rbd diff's (default plain)")
    cmd.add_argument("image", metavar="POOL/IMAGE[@SNAP]",
                     help="the image, at a snapshot or at its HEAD")
    cmd.set_defaults(func=cmd_diff)

    cmd = add("inspect", "describe a diff file (ours or rbd's)")
    cmd.add_argument("--format", choices=("plain", "json"), default="plain",
                     help="output format (default plain)")
    cmd.add_argument("path", metavar="FILE|-", help="the diff file to read; - for stdin")
    cmd.set_defaults(func=cmd_inspect)

    cmd = add("merge-diff", "merge two consecutive diffs into one")
    cmd.add_argument("first", metavar="FIRST", help="the earlier diff (A to B); - for stdin")
    cmd.add_argument("second", metavar="SECOND", help="the later diff (B to C); - for stdin")
    cmd.add_argument("path", metavar="OUT|-", help="the merged diff (A to C); - for stdout")
    cmd.set_defaults(func=cmd_merge_diff)

    cmd = add("sync", "copy an image's changes to another cluster, no file")
    cmd.add_argument("--from-snap", metavar="SNAP", help="start snapshot (default: full)")
    cmd.add_argument("--force", action="store_true", help="skip the state checks")
    cmd.add_argument("--rollback", action="store_true",
                     help="roll a destination HEAD changed since the start snapshot back")
    cmd.add_argument("--no-checksums", action="store_true",
                     help="do not record the checksums scrub checks the copy with")
    _add_cluster_args(cmd, "src-", "source ")
    _add_cluster_args(cmd, "dest-", "destination ")
    _add_engine_args(cmd)
    _add_limit_rate(cmd)
    cmd.add_argument("source", metavar="POOL/IMAGE@SNAP",
                     help="the source image at its end snapshot (on --src-conf)")
    cmd.add_argument("dest", metavar="POOL/IMAGE",
                     help="the destination (on --dest-conf): created like the source if "
                          "missing; it gets the end snapshot")
    cmd.set_defaults(func=cmd_sync)

    cmd = add("scrub", "check restore points against their checksums, without the source")
    cmd.add_argument("--sample", type=percent, metavar="PERCENT",
                     help="read only PERCENT of each restore point's objects, at random")
    cmd.add_argument("--format", choices=("plain", "json"), default="plain")
    cmd.add_argument("--no-mark", action="store_true",
                     help="do not record damage in the image's metadata for the driver")
    cmd.add_argument("target", metavar="POOL[/IMAGE[@SNAP]]")
    cmd.set_defaults(func=cmd_scrub)

    cmd = add("verify", "compare two images at snapshots, byte for byte")
    _add_cluster_args(cmd, "src-", "first image's ")
    _add_cluster_args(cmd, "dest-", "second image's ")
    cmd.add_argument("first", metavar="POOL/IMAGE@SNAP", help="the first image (on --src-conf)")
    cmd.add_argument("second", metavar="POOL/IMAGE@SNAP",
                     help="the second image (on --dest-conf)")
    cmd.set_defaults(func=cmd_verify)

    cmd = add("catalog", "list the backups in a pool without Cinder, and their import records")
    cmd.add_argument("--format", choices=("plain", "json"), default="plain",
                     help="output format (default plain); json adds each backup's lineage "
                          "and volume metadata")
    cmd.add_argument("--records", action="store_true",
                     help="print instead one line per complete backup, parents first: "
                          "BACKUP_SERVICE BACKUP_URL, the two arguments of `openstack "
                          "volume backup record import`")
    cmd.add_argument("--backup-service", default=catalog.DRIVER_CLASS, metavar="CLASS",
                     help="the backup_service of the records: Cinder's backup_driver "
                          "setting (default %(default)s)")
    cmd.add_argument("pool", metavar="POOL",
                     help="the pool of chain images on the backup cluster (backup_ceph_pool)")
    cmd.set_defaults(func=cmd_catalog)
    return parser


# --- helpers ----------------------------------------------------------------

def cluster_spec(args, prefix=""):
    """A ClusterSpec from ``--PREFIXconf/id/keyring``, defaulting to -c/--id/--keyring.

    Timeouts not given on the command line stay what ceph.conf says.
    """
    def pick(name):
        return getattr(args, prefix + name, None) or getattr(args, name)
    return cluster.ClusterSpec(conf=pick("conf"), user=pick("id"), keyring=pick("keyring"),
                               connect_timeout=getattr(args, "connect_timeout", None),
                               op_timeout=getattr(args, "op_timeout", None))


def engine_options(args):
    try:
        return engine.TransferOptions(zero_granularity=args.zero_granularity,
                                      max_in_flight_ops=args.max_in_flight,
                                      whole_object=args.whole_object)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


@contextlib.contextmanager
def progress_bar(args, what):
    """A ``progress(done, total)`` callback drawing on stderr when it is a terminal."""
    if args.no_progress or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    import tqdm  # here: its import and monitor thread cost a scripted run 50 ms

    bar = tqdm.tqdm(desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, leave=False)

    def update(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


@contextlib.contextmanager
def open_input(path):
    if path == "-":
        yield sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb", buffering=1 << 20)
        except OSError as exc:
            raise CommandError("cannot open %s: %s" % (path, exc.strerror)) from None
        with stream:
            yield stream


def output_sink(path, version):
    """Standard output, a FIFO or device written in place (replacing it with
    a regular file would break a pipeline), else a file that appears only
    complete."""
    if path == "-":
        return file_target.DiffStreamSink(sys.stdout.buffer, version=version)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        return file_target.SpecialFileSink(path, version=version)
    return file_target.DiffFileSink(path, version=version)


@contextlib.contextmanager
def source_image(spec, image_spec, need_snap=True):
    """Open ``POOL/IMAGE@SNAP`` read-only; yields (client, image, snap)."""
    pool, name, snap = naming.parse_image_spec(image_spec, need_snap=need_snap)
    with cluster.cluster(spec) as client, cluster.ioctx(client, pool) as ctx:
        with cluster.image(ctx, name, snapshot=snap, read_only=True) as img:
            yield client, img, snap


def make_plan(client, img, to_snap, from_snap):
    if from_snap and from_snap not in rbd_target.snapshot_names(img):
        raise CommandError("%s has no snapshot %s" % (img.get_name(), from_snap))
    return engine.Plan(
        to_snap=to_snap, size=img.size(), from_snap=from_snap,
        identity_from=cluster.snapshot_identity(client, img, from_snap) if from_snap else None,
        identity_to=cluster.snapshot_identity(client, img, to_snap))


def limited(args, sink):
    """``sink`` under the process's ``--limit-rate`` bucket, if one was asked for."""
    return ratelimit.throttled(sink, ratelimit.shared(getattr(args, "limit_rate", None)))


def report(stats, **extra):
    fields = dict(stats.as_dict(), **extra)
    print(" ".join("%s=%s" % (k, round(v, 3) if isinstance(v, float) else v)
                   for k, v in fields.items()), file=sys.stderr)


# --- commands ---------------------------------------------------------------

def cmd_export_diff(args):
    options = engine_options(args)
    with source_image(cluster_spec(args), args.image) as (client, img, snap):
        plan = make_plan(client, img, snap, args.from_snap)
        sink = output_sink(args.path, args.export_format)
        with progress_bar(args, "export-diff") as progress:
            stats = engine.transfer(img, limited(args, sink), plan, options, progress)
    report(stats, stream_bytes=sink.bytes_written)


def cmd_import_diff(args):
    pool, name, _ = naming.parse_image_spec(args.image, allow_snap=False)
    with open_input(args.path) as stream:
        reader = diffstream.DiffReader(stream)
        header = reader.header
        if header.size is None:
            raise CommandError("%s: the diff has no image size record" % args.path)
        for snap in (header.from_snap, header.to_snap):
            if snap is not None:  # the end snapshot is created under this name
                naming.check_name(snap, "%s: snapshot name in the diff" % args.path)
        lineage = header.lineage or {}
        plan = engine.Plan(to_snap=header.to_snap, size=header.size, from_snap=header.from_snap,
                           identity_from=lineage.get("from"), identity_to=lineage.get("to"))
        who = cluster.user_name(cluster_spec(args))
        with cluster.cluster(cluster_spec(args)) as client, \
                cluster.ioctx(client, pool) as ctx, cluster.image(ctx, name, who=who) as img:
            sink = rbd_target.ImageSink(img, force=args.force, rollback=args.rollback,
                                        ioctx=ctx, who=who)
            with progress_bar(args, "import-diff") as progress:
                stats = engine.apply_records(reader, limited(args, sink), plan,
                                             args.zero_granularity, progress)
    report(stats)


def cmd_diff(args):
    with source_image(cluster_spec(args), args.image, need_snap=False) as (_, img, snap):
        extents = list(engine.changed_extents(img, args.from_snap, args.whole_object,
                                              at_snap=snap))
    rows = [(offset, length, "data" if exists else "zero") for offset, length, exists in extents]
    if args.format == "json":
        print(json.dumps([{"offset": o, "length": n, "exists": str(t == "data").lower()}
                          for o, n, t in rows]))
    elif args.format == "xml":
        items = "".join("<extent><offset>%d</offset><length>%d</length><exists>%s</exists>"
                        "</extent>" % (o, n, str(t == "data").lower()) for o, n, t in rows)
        print("<rbd_diff>%s</rbd_diff>" % items)
    else:
        width = max([len(str(o)) for o, _, _ in rows] + [6])
        lwidth = max([len(str(n)) for _, n, _ in rows] + [6])
        print("%-*s  %-*s  %s" % (width, "Offset", lwidth, "Length", "Type"))
        for offset, length, kind in rows:
            print("%-*d  %-*d  %s" % (width, offset, lwidth, length, kind))


def cmd_inspect(args):
    with open_input(args.path) as stream:
        summary = diffstream.summarize(diffstream.DiffReader(stream))
    if args.format == "json":
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    for key in ("version", "from_snap", "to_snap", "size", "data_records", "data_bytes",
                "zero_records", "zero_bytes", "extents", "covered_bytes", "first_offset",
                "end_offset", "end_seen"):
        print("%-14s %s" % (key + ":", summary[key]))
    lineage = summary["lineage"]
    print("%-14s %s" % ("lineage:", json.dumps(lineage, sort_keys=True) if lineage else "none"))


def cmd_catalog(args):
    pool = naming.check_name(args.pool, "pool")
    with cluster.cluster(cluster_spec(args)) as client, cluster.ioctx(client, pool) as ctx:
        chains = catalog.scan(ctx)
    if args.records:
        for service, url in catalog.records(chains, args.backup_service):
            print(service, url)
    elif args.format == "json":
        print(json.dumps(chains, indent=2, sort_keys=True))
    else:
        for chain in chains:
            print("\n".join(catalog.describe(chain)))


def cmd_merge_diff(args):
    if args.first == "-" and args.second == "-":
        raise CommandError("only one input can be stdin")
    with open_input(args.first) as one, open_input(args.second) as two:
        sink = output_sink(args.path, version=1)
        try:
            diffstream.merge(diffstream.DiffReader(one), diffstream.DiffReader(two), sink.writer)
        except BaseException:
            sink.abort()
            raise
        sink.commit()


def cmd_sync(args):
    dest_pool, dest_name, _ = naming.parse_image_spec(args.dest, allow_snap=False)
    options = engine_options(args)
    with source_image(cluster_spec(args, "src_"), args.source) as (client, img, snap):
        plan = make_plan(client, img, snap, args.from_snap)
        dest_spec = cluster_spec(args, "dest_")
        who = cluster.user_name(dest_spec)
        with cluster.cluster(dest_spec) as dest, cluster.ioctx(dest, dest_pool) as ctx:
            _create_if_missing(ctx, dest_name, img, args.from_snap, who)
            with cluster.image(ctx, dest_name, who=who) as dest_img:
                rbd_target.repair_object_map(ctx, dest_img)  # before anything reads it
                sink = rbd_target.ImageSink(dest_img, fresh=_reads_as_zeros(dest_img),
                                            force=args.force, rollback=args.rollback,
                                            max_in_flight_ops=options.max_in_flight_ops,
                                            max_in_flight_bytes=options.max_in_flight_bytes,
                                            ioctx=ctx, who=who)
                recorder = None
                if not (args.no_checksums or args.force):
                    recorder = checksums.Recorder(plan.size, parent=args.from_snap)
                with progress_bar(args, "sync") as progress:
                    stats = engine.transfer(img, limited(args, sink), plan, options, progress,
                                            digests=recorder)
                if recorder is not None:  # before the copy counts as done: see checksums.py
                    checksums.save(ctx, dest_img.id(), plan.dest_to, recorder.record)
    report(stats)


def _create_if_missing(ctx, name, src_img, from_snap, who=None):
    """Create the destination like the source (format 2, size, object size).

    An image left half created by an interrupted sync (listed with no header,
    or without its object map; holding nothing) is removed and created again.
    """
    if rbd_target.surely_whole(ctx, name):  # the usual case, without opening it
        return
    if rbd_target.creation_interrupted(ctx, name):
        LOG.warning("destination %s/%s was left half created by an interrupted sync: "
                    "creating it again", ctx.get_pool_name(), name)
        rbd_target.remove_image(ctx, name)
    try:
        with cluster.image(ctx, name, read_only=True):
            return
    except cluster.ClusterError:
        if from_snap:
            raise CommandError("destination %s does not exist; an incremental sync needs "
                               "the image holding snapshot %s" % (name, from_snap)) from None
    cluster.create_image_like(ctx, name, src_img.size(), order=src_img.stat()["order"],
                              who=who)


def _reads_as_zeros(img):
    """True when the destination holds no snapshot and no data, e.g. just created
    (also by an earlier, interrupted run): zero runs need not be written."""
    return not rbd_target.snapshot_names(img) and not rbd_target.has_extents(img)


def cmd_verify(args):
    spec_a, spec_b = cluster_spec(args, "src_"), cluster_spec(args, "dest_")
    with source_image(spec_a, args.first) as (_, img_a, _s), \
            source_image(spec_b, args.second) as (_, img_b, _t):
        offset = engine.first_difference(img_a, img_b)
    if offset is not None:
        raise CommandError("images differ at offset %d" % offset, EXIT_DIFFERENT)
    print("identical", file=sys.stderr)


def cmd_scrub(args):
    pool, _, rest = args.target.partition("/")
    image, _, snap = rest.partition("@")
    for name, what in ((pool, "pool"), (image, "image"), (snap, "snapshot")):
        if name:
            naming.check_name(name, what)
    if snap and not image:
        raise CommandError("%s: a snapshot needs an image (POOL/IMAGE@SNAP)" % args.target,
                           EXIT_USAGE)
    with cluster.cluster(cluster_spec(args)) as client, cluster.ioctx(client, pool) as ctx:
        with progress_bar(args, "scrub") as progress:
            results = scrubbing.scrub_pool(ctx, image or None, snap or None, args.sample,
                                           progress, mark=not args.no_mark)
    _print_scrub(args, results)
    if image and results and all(r.status == "unchecked" for r in results):
        raise CommandError("%s: %s" % (args.target, results[0].reason))
    damaged = [r for r in results if r.status == "damaged"]
    if damaged:
        raise CommandError("%d restore point(s) damaged, first %s at offset %d"
                           % (len(damaged), damaged[0].where, damaged[0].offsets[0]),
                           EXIT_DIFFERENT)


def _print_scrub(args, results):
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in results], indent=2, sort_keys=True))
        return
    for r in results:
        if r.status == "damaged":
            print("damaged    %s at offset %s (%d damaged blocks of %d KiB)"
                  % (r.where, ", ".join(map(str, r.offsets[:10])), r.damaged_blocks,
                     checksums.BLOCK >> 10))
        elif r.status == "unchecked":
            print("unchecked  %s: %s" % (r.where, r.reason))
        else:
            print("ok         %s (%d bytes read%s)" % (
                r.where, r.checked_bytes,
                ", %g%% sample" % r.sample_percent if r.sample_percent else ""))


# --- entry point --------------------------------------------------------------

ERRORS = (CommandError, cluster.ClusterError, diffstream.DiffFormatError, naming.InvalidName,
          engine.TransferError, engine.StateError, OSError)


def exit_code(exc):
    if isinstance(exc, engine.AlreadyApplied):
        return EXIT_ALREADY
    if isinstance(exc, engine.StateError):
        return EXIT_REFUSED
    return getattr(exc, "code", EXIT_ERROR)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="rbd-incremental: %(message)s")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("rbd-incremental: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug or not isinstance(exc, ERRORS + (_rbd_errors())):
            raise
        print("rbd-incremental: %s: %s%s" % (args.command, exc, _capability_hint(exc)),
              file=sys.stderr)
        return exit_code(exc)
    return 0


def _capability_hint(exc):
    """A bare EPERM/EACCES from librados or librbd: say which capabilities to check."""
    import rados
    import rbd
    if isinstance(exc, (rbd.PermissionError, rados.PermissionError,
                        rados.PermissionDeniedError)):
        return (" (the cephx user lacks a capability: reading needs osd 'profile "
                "rbd-read-only pool=POOL', writing osd 'profile rbd pool=POOL')")
    return ""


def _rbd_errors():
    import rados
    import rbd
    return (rbd.Error, rados.Error)


if __name__ == "__main__":
    sys.exit(main())
