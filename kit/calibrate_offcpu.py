"""Calibrates what offcpu costs per block on this host, by running offcpu itself.

offcpu's in-scope path is more than a stack capture: at switch-out both stack
ids, the walk that recovers callers libc's missing frame pointers hide, and
the start entry; at switch-in the lookup, the delete and the aggregation. No
primitive measured under `dd` prices that, so `kit calibrate` runs the real
recipe (`kit run offcpu --comm <ping-pong>`) around a pipe ping-pong pinned to
one CPU (every round trip is two blocks) and divides the CPU time it added to
the ping-pong by the blocks kit counted. Bare and probed runs alternate, as
for the other primitives; the median of the pairs is kept.
"""

import json
import os
import signal
import statistics
import subprocess
import sys

COMM = "kit-calib-pp"
ROUND_TRIPS = 20_000
PINGPONG = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME: the comm kit is scoped to
n = int(sys.argv[1]); a, b = os.pipe(), os.pipe()
if os.fork() == 0:
    for _ in range(n):
        os.read(a[0], 1); os.write(b[1], b"x")
    os._exit(0)
for _ in range(n):
    os.write(a[1], b"x"); os.read(b[0], 1)
os.wait()
"""


def pingpong_cpu_ns(n=ROUND_TRIPS):
    """CPU time (user+sys, ns) of both sides of an n-round-trip ping-pong on CPU 0."""
    p = subprocess.Popen([sys.executable, "-c", PINGPONG, str(n), COMM], stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    _pid, _status, ru = os.wait4(p.pid, 0)  # includes the forked side, which the parent waited for
    return (ru.ru_utime + ru.ru_stime) * 1e9


class _Kit:
    """`kit run offcpu --comm COMM` in the background, until stop() returns its events in scope."""

    def __init__(self):
        env = dict(os.environ, KIT_CALIBRATION=os.devnull)  # no stale calibration; the guard is not the point
        self.p = subprocess.Popen([sys.executable, "-m", "kit", "run", "offcpu", "--comm", COMM, "--for", "120s",
                                   "--budget", "100", "--force", "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        for line in self.p.stderr:
            if " attached to " in line:
                return
        self.p.wait()
        raise RuntimeError(f"offcpu did not attach for calibration: {self.p.stderr.read()[-300:]}")

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        out, _err = self.p.communicate(timeout=60)
        return json.loads(out)["events"]


def _probed():
    """(CPU ns of a ping-pong with offcpu attached to it, blocks offcpu counted)."""
    kit = _Kit()
    try:
        cpu = pingpong_cpu_ns()
        return cpu, kit.stop()
    finally:
        if kit.p.poll() is None:
            kit.p.kill()
            kit.p.wait()


def measure(pairs, log):
    """ns offcpu adds per in-scope block, median over bare/probed pairs in alternating order; None if
    offcpu could not count any block."""
    log(f"offcpu: the recipe itself around a {ROUND_TRIPS}-round-trip ping-pong, {pairs} pairs")
    per = []
    for i in range(pairs):
        if i % 2:
            (probed, events), bare = _probed(), pingpong_cpu_ns()
        else:
            bare, (probed, events) = pingpong_cpu_ns(), _probed()
        if events:
            per.append((probed - bare) / events)
    return statistics.median(per) if per else None
