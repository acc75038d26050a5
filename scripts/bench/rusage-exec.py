#!/usr/bin/env python3
"""Runs one command and writes its exact peak RSS and CPU time as JSON.

    rusage-exec.py OUT.json -- COMMAND [ARGS...]

Node cannot wait4() a child, and sampling /proc/PID/status misses whatever
happens after the last sample (the final flush of a mount ends with its exit).
wait4 returns the kernel's own figures for the child: ru_maxrss is the peak
resident set (VmHWM at exit) and ru_utime + ru_stime its CPU time, threads
included. SIGINT, SIGTERM and SIGHUP are passed on to the child, so the bench
can stop a mount through this wrapper; the wrapper exits with the child's status.
"""
import json
import os
import signal
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.stderr.write("usage: rusage-exec.py OUT.json -- COMMAND [ARGS...]\n")
        return 2
    out_path = sys.argv[1]
    command = sys.argv[3:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)

    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue

    result = {
        "pid": pid,
        "exitCode": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        # Linux reports ru_maxrss in KiB.
        "maxRssBytes": usage.ru_maxrss * 1024,
        "userCpuSeconds": usage.ru_utime,
        "systemCpuSeconds": usage.ru_stime,
    }
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(result, out)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
