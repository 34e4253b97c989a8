"""The kernel's own account of what a BPF program costs: run_time_ns and
run_cnt per program, kept while run-time statistics are enabled.

Statistics are enabled with BPF_ENABLE_STATS, which holds them on for as long
as the returned file descriptor is open. Unlike writing the
kernel.bpf_stats_enabled sysctl it is reference-counted, so it neither
disturbs nor is disturbed by anyone else on the box turning the sysctl on and
off, and it goes away with this process even on SIGKILL.

The figure times the program body only: not the tracepoint dispatch around
it, nor a uprobe's trap (see /work/shared/NOTES.md); the workload's slowdown
is measured separately for the whole cost.
"""

import contextlib
import ctypes
import json
import os
import subprocess

SYS_BPF = 321           # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def enabled():
    attr = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_uint32) * 2)
    ctypes.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    fd = _libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"BPF_ENABLE_STATS: {os.strerror(e)}")
    try:
        yield
    finally:
        os.close(fd)


def sysctl_on():
    """Whether someone left the global sysctl on (then every probe pays for timing, in every run)."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def prog_ids(pid):
    """Programs the process holds a file descriptor for (prog fds and BPF links both name them)."""
    ids = set()
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            with open(os.path.join(d, fd)) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def snapshot(ids):
    """{prog id: (run_time_ns, run_cnt, name)} for the given ids."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    snap = {}
    for p in json.loads(out or "[]"):
        if p["id"] in ids:
            snap[p["id"]] = (p.get("run_time_ns", 0), p.get("run_cnt", 0), p.get("name", ""))
    return snap


def delta(before, after):
    """(run_time_ns, run_cnt) summed over the programs, between two snapshots."""
    ns = cnt = 0
    for pid, (t, c, _name) in after.items():
        t0, c0, _ = before.get(pid, (0, 0, ""))
        ns += t - t0
        cnt += c - c0
    return ns, cnt
