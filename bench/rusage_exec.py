"""Run a command and write its own CPU time and peak RSS (as JSON) to a file.

``python rusage_exec.py OUT -- CMD...``. bench/run.py starts measured commands
through this small process: a process started directly by the benchmark
would inherit the benchmark's memory high-water mark as the floor of its peak
RSS (fork + exec keep it in the process' accounting); a child of this small
launcher does not. stdin, stdout and stderr pass straight through.
"""

import json
import os
import sys


def main():
    out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    if sep != "--" or not cmd:
        sys.exit("usage: rusage_exec.py OUT -- CMD...")
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as f:
        json.dump({"user": usage.ru_utime, "sys": usage.ru_stime,
                   "maxrss_kib": usage.ru_maxrss}, f)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
