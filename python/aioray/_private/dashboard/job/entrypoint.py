"""Runs a job's entrypoint (a shell command) and takes it down with the job manager.

``python -m aioray._private.dashboard.job.entrypoint GRACE_S COMMAND``: the job manager starts this in
a new process group (a stop signals the whole group, which this process sits out: the entrypoint's
exit is what ends the job). The kernel tells it when the manager's process dies
(``PR_SET_PDEATHSIG``), SIGKILLed or not: then it signals the group SIGTERM, and SIGKILL after
GRACE_S, so that no entrypoint outlives the dashboard that ran it (the job is marked FAILED by the
next manager). Its exit code is the entrypoint's (128 + N for a signal N, as a shell reports it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
ORPHANED = signal.SIGHUP  # what the kernel sends when the manager dies


def _take_down_group(grace_s: float, child: subprocess.Popen[bytes]) -> None:
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # this process too: nobody waits for its exit code any more


def main(argv: list[str]) -> int:
    grace_s, command = float(argv[0]), argv[1]
    orphaned = False

    def on_orphaned(signum: int, frame: object) -> None:
        nonlocal orphaned
        orphaned = True

    signal.signal(ORPHANED, on_orphaned)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop is for the entrypoint; we report its end
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(ORPHANED), 0, 0, 0) != 0:
        print(f"cannot watch the job manager: errno {ctypes.get_errno()}", file=sys.stderr)
    child = subprocess.Popen(
        ["/bin/sh", "-c", command],
        # The entrypoint gets the default handlers back (ignored signals are inherited).
        preexec_fn=lambda: (
            signal.signal(signal.SIGTERM, signal.SIG_DFL),
            signal.signal(signal.SIGINT, signal.SIG_DFL),
        ),
    )
    if os.getppid() == 1:  # the manager died before the watch was set
        orphaned = True
    while True:
        if orphaned:
            _take_down_group(grace_s, child)
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
