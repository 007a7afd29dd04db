"""Run one backup, restore or CLI operation in a process the test may SIGKILL.

``crash_worker.py --serve --db FILE`` imports Cinder and the driver once,
then reads one JSON request per line on stdin and forks a child per request:
the child builds its Cinder environment on the shared sqlite file, reports
``start`` just before the operation, runs it and reports ``done`` (or
``error``); the server reports the child's ``pid`` and its ``exit`` status.
Every report is one JSON line on stdout. Forking from a process that already
imported Cinder (3 s on a busy two-core machine) makes a kill point cost the
operation only; the child is a separate process, so SIGKILL hits it exactly
as it would hit cinder-backup or rbd-incremental.

Requests: ``{"op": "backup", "backup_id", "options"}``,
``{"op": "restore", "backup_id", "volume_id", "volume_is_new", "options"}``,
``{"op": "cli", "argv"}``.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


REQUEST_ID = None


def emit(event, **fields):
    line = json.dumps(dict(fields, event=event, rid=REQUEST_ID, t=time.monotonic())) + "\n"
    os.write(1, line.encode())


def run_child(request, db):
    """The forked child: one operation, then os._exit."""
    from tests.reliability import cinder_env
    code = 0
    try:
        op = request["op"]
        if op == "cli":
            from cinder_rbd_incremental import cli
            emit("start", pid=os.getpid())
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                rc = cli.main(request["argv"])
            sys.stderr.write(stderr.getvalue())
            emit("done", pid=os.getpid(), rc=rc, stderr=stderr.getvalue())
            code = rc or 0
        else:
            env = cinder_env.Env.get(db, create=False)
            options = dict(request.get("options") or {})
            primary_conf = options.pop("primary_conf", None)
            if primary_conf:
                env.primary_conf = primary_conf
            env.set_options(**options)
            drv = env.driver()
            backup = env.backup(request["backup_id"])
            if op == "backup":
                emit("start", pid=os.getpid())
                env.run_backup(drv, backup)
            elif op == "restore":
                volume = env.volume(request["volume_id"])
                emit("start", pid=os.getpid())
                env.run_restore(drv, backup, volume, request["volume_is_new"])
            else:
                raise ValueError("unknown op %r" % op)
            emit("done", pid=os.getpid(), rc=0)
    except BaseException as exc:  # reported to the test, which decides
        emit("error", pid=os.getpid(), type=type(exc).__name__, error=str(exc),
             traceback=traceback.format_exc())
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve(db):
    global REQUEST_ID
    # Import everything heavy before the first fork.
    from cinder import objects

    from cinder_rbd_incremental import cli, driver  # noqa: F401
    from tests.reliability import cinder_env  # noqa: F401
    objects.register_all()
    emit("ready", pid=os.getpid())
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        REQUEST_ID = request.get("rid")
        pid = os.fork()
        if pid == 0:
            run_child(request, db)
        emit("pid", pid=pid)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            emit("exit", pid=pid, signal=os.WTERMSIG(status), rc=None)
        else:
            emit("exit", pid=pid, signal=None, rc=os.WEXITSTATUS(status))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    serve(args.db)


if __name__ == "__main__":
    main()
