"""Builds and drives tests/support/workloads/wrapwork.c: lock wrappers that take no
argument (flat holds, or A then B released B then A in one thread), with the
workload's own books. Runs under lockwork.under_kit like lockwork does."""

import json
import os
import subprocess

from workloads import lockwork

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "wrapwork.c")


def build(directory, name):
    """Compiles the workload as directory/name (name becomes its comm: at most 15 bytes)."""
    assert len(name) <= 15
    path = os.path.join(directory, name)
    subprocess.run(["gcc", *lockwork.CFLAGS, "-o", path, SOURCE], check=True, capture_output=True, text=True)
    return path


class Workload(lockwork.Workload):
    """One run of wrapwork: shape "flat" (threads, holds, slow, slow_ms) or "nested"
    (threads, rounds, pre_ms, inner_ms, post_ms); gate and hold_gate as for lockwork."""

    def __init__(self, binary, shape, threads, *numbers, gate=False, hold_gate=False):
        flags = (["--gate"] if gate else []) + (["--hold-gate"] if hold_gate else [])
        argv = [binary, *flags, shape, str(threads), *map(str, numbers)]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = json.loads(self.p.stdout.readline())["pid"]
        self.gate, self.hold_gate = gate, hold_gate
        self.report = None

