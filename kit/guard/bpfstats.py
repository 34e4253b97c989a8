"""The kernel's own account of what a BPF program costs: run_time_ns and
run_cnt per program, collected only while statistics are enabled.

BPF_ENABLE_STATS turns collection on for as long as the returned file
descriptor stays open and off again when it closes, so kit never touches the
global kernel.bpf_stats_enabled sysctl that other tools (or other kit runs)
may rely on. Collection adds roughly 100 ns per program run (two clock reads),
so kit holds it for a short window, never for a whole run on a hot hook.
The numbers cover the program body only: not the tracepoint dispatch, and
not the uprobe trap, which is why they check the calibrated cost rather than
replace it.
"""

import ctypes
import os
import platform

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def enable():
    """An fd that keeps run-time statistics on while it is open, or None when the kernel refuses."""
    attr = (ctypes.c_uint32 * 4)(BPF_STATS_RUN_TIME, 0, 0, 0)
    fd = _libc.syscall(NR_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return None if fd < 0 else int(fd)


def _fdinfo(fd, keys, pid="self"):
    vals = {}
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                key, _, v = line.partition(":")
                if key in keys:
                    vals[key] = int(v)
    except (OSError, ValueError):
        pass
    return vals


def prog_stats(fd, pid="self"):
    """(run_time_ns, run_cnt) of the program behind fd, from the kernel's fdinfo."""
    vals = _fdinfo(fd, ("run_time_ns", "run_cnt"), pid)
    return vals.get("run_time_ns", 0), vals.get("run_cnt", 0)


def skipped_runs(bpf):
    """Times the kernel did not run a program of this BCC object because that program was already
    running on the CPU (recursion_misses, counted whether statistics are on or not): each is an
    event kit never saw, and no counter inside the program can say so."""
    return sum(_fdinfo(fd, ("recursion_misses",)).get("recursion_misses", 0) for fd in program_fds(bpf).values())


def program_fds(bpf):
    """{function name: fd} of the programs a BCC object has loaded."""
    return {(k.decode() if isinstance(k, bytes) else k): fn.fd for k, fn in getattr(bpf, "funcs", {}).items()}


class Window:
    """Statistics on from start() to stop(); totals over the programs given as fds."""

    def __init__(self, fds):
        self.fds = dict(fds)
        self.fd = None
        self.before = self.after = None
        self.t0 = self.t1 = None

    def _sum(self):
        tot = [0, 0]
        for fd in self.fds.values():
            ns, cnt = prog_stats(fd)
            tot[0] += ns
            tot[1] += cnt
        return tuple(tot)

    def start(self, now):
        self.fd = enable()
        self.before, self.t0 = self._sum(), now
        return self.fd is not None

    def restart(self, now):
        """Forget what was collected so far; keep statistics on."""
        self.before, self.t0 = self._sum(), now

    def stop(self, now):
        self.after, self.t1 = self._sum(), now
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def active(self):
        return self.fd is not None

    def result(self):
        if self.before is None or self.after is None:
            return None
        return {"window_s": round(self.t1 - self.t0, 3), "run_time_ns": self.after[0] - self.before[0],
                "run_cnt": self.after[1] - self.before[1]}

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
