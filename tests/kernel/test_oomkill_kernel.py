"""oomkill on the real kernel: a memory cgroup the test makes with a 32 MiB limit and no swap, and
processes moved into it that touch far more. Oracles kit does not produce: the cgroup's own OOM-kill
counter (cgroup v2 memory.events `oom_kill`, or v1's memory.oom_control where the memory controller
is on a v1 hierarchy, as on the development box), the pids the test started, and the kernel log's
`oom-kill:... oom_memcg=PATH ... pid=PID` line. The cgroup is removed afterwards."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ACCURACY_BUDGET, KitProc
from kit.engine import stream

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

LIMIT = 32 << 20
# Names itself, moves itself into the cgroup, then touches 256 MiB: the cgroup's OOM killer picks it.
HOG = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); "
       "open(sys.argv[2], 'w').write(str(__import__('os').getpid())); x = b'x' * (256 << 20)")


class MemCgroup:
    """A memory cgroup under the memory controller's hierarchy (v2, or v1's memory)."""

    def __init__(self, tag):
        self.root = stream.memory_root()
        assert self.root, "no memory cgroup hierarchy is mounted"
        self.v2 = os.path.exists(os.path.join(self.root, "cgroup.controllers"))
        if self.v2:
            with open(os.path.join(self.root, "cgroup.subtree_control")) as f:
                assert "memory" in f.read().split(), "the memory controller is not enabled for the root's children"
        self.name = f"kit-test-oom-{tag}-{os.getpid()}"
        self.dir = os.path.join(self.root, self.name)
        os.mkdir(self.dir)
        if self.v2:
            self._write("memory.max", LIMIT)
            self._write("memory.swap.max", 0)
        else:
            self._write("memory.limit_in_bytes", LIMIT)
            if os.path.exists(os.path.join(self.dir, "memory.memsw.limit_in_bytes")):
                self._write("memory.memsw.limit_in_bytes", LIMIT)

    def _write(self, name, v):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(str(v))

    @property
    def path(self):
        return "/" + self.name

    def oom_kills(self):
        name = "memory.events" if self.v2 else "memory.oom_control"
        with open(os.path.join(self.dir, name)) as f:
            return int(re.search(r"^oom_kill (\d+)$", f.read(), re.M).group(1))

    def hog(self, comm):
        """Runs one process into the limit; returns (its pid, its wait status)."""
        p = subprocess.Popen([sys.executable, "-c", HOG, comm, os.path.join(self.dir, "cgroup.procs")])
        _pid, status = os.waitpid(p.pid, 0)
        p.returncode = 0
        return p.pid, status

    def remove(self):
        for _ in range(100):  # a killed task leaves the cgroup when it is reaped; rmdir may race it
            try:
                os.rmdir(self.dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"could not remove {self.dir}")


@contextlib.contextmanager
def memcg(tag):
    cg = MemCgroup(tag)
    try:
        yield cg
    finally:
        cg.remove()


KILLED = re.compile(r"Killed process (\d+) \((.*?)\) total-vm:(\d+)kB, anon-rss:(\d+)kB, file-rss:(\d+)kB, "
                    r"shmem-rss:(\d+)kB, UID:(\d+) pgtables:(\d+)kB oom_score_adj:(-?\d+)")


def _kernel_log():
    """({pid: oom_memcg}, {pid: what the kernel printed of the victim}) from the kernel log."""
    text = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    memcg = {int(m.group(2)): m.group(1) for m in re.finditer(r"oom-kill:\S*oom_memcg=([^,]+),\S*?,pid=(\d+),", text)}
    killed = {}
    for m in KILLED.finditer(text):
        killed[int(m.group(1))] = {"comm": m.group(2), "total_vm_kb": int(m.group(3)), "anon_rss_kb": int(m.group(4)),
                                   "file_rss_kb": int(m.group(5)), "shmem_rss_kb": int(m.group(6)),
                                   "uid": int(m.group(7)), "pgtables_kb": int(m.group(8)),
                                   "oom_score_adj": int(m.group(9))}
    return memcg, killed


def _lines(stdout):
    objs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert objs and objs[-1]["type"] == "summary", stdout[-2000:]
    return objs[:-1], objs[-1]


def _run(cg, victims, *args):
    """kit scoped by --comm to the first victim's name; each victim name hogs once, in order."""
    kit = KitProc("run", "oomkill", "--comm", victims[0], *args, "--for", "300s", "--json", *ACCURACY_BUDGET)
    kit.wait_attached()
    before = cg.oom_kills()
    hogs = [(comm, *cg.hog(comm)) for comm in victims]
    kills = cg.oom_kills() - before
    kit.stop()
    assert kit.code == 130, kit.stderr
    events, summary = _lines(kit.stdout)
    return events, summary, hogs, kills


def _check(events, summary, hogs, kills, cg, in_scope):
    assert all(os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL for _c, _p, st in hogs), hogs
    assert kills == len(hogs)  # the cgroup's own count: every hog was OOM-killed there
    mine = [p for c, p, _st in hogs if c == in_scope]
    # kit's kills are the cgroup's, those in scope: the same pids, once each
    assert sorted(e["pid"] for e in events) == sorted(mine)
    log_memcg, log_killed = _kernel_log()
    for e in events:
        assert e["comm"] == in_scope and e["trigger_pid"] == e["pid"] and e["trigger_comm"] == in_scope
        assert e["limit"] == cg.path and e["limit_bytes"] == LIMIT
        assert log_memcg.get(e["pid"]) == cg.path  # the kernel's own account of which memcg was out of memory
        # the victim's memory as the kernel printed it when it killed it (the same counters, read then)
        assert {k: e[k] for k in log_killed[e["pid"]]} == log_killed[e["pid"]]
        assert e["anon_rss_kb"] * 1024 >= LIMIT // 2  # it grew into the limit
    assert summary["stream"]["received"] == summary["events"] == len(mine) and summary["lost_events"] == 0
    assert summary["filtered"] == len(hogs) - len(mine)
    assert any(cg.name in h["command"] for h in summary["hints"])


def test_kills_equal_the_cgroups_oom_kill_count_with_victim_and_limit_on_the_raw_tracepoint(kernel, no_leftovers):
    comm = f"kit-oom{os.getpid() % 10000}"
    with memcg("raw") as cg:
        events, summary, hogs, kills = _run(cg, [comm, comm])
    assert summary["hook"] == "raw_tracepoint mark_victim"
    _check(events, summary, hogs, kills, cg, comm)
    for e in events:
        assert e["memcg"] == cg.path  # the victim's own memory cgroup (this rung reads it)
    assert not os.path.exists(cg.dir)


def test_the_tracepoint_rung_agrees_and_a_victim_out_of_scope_is_filtered(kernel, no_leftovers):
    comm, other = f"kit-oom{os.getpid() % 10000}", f"kit-oth{os.getpid() % 10000}"
    with memcg("tp") as cg:
        events, summary, hogs, kills = _run(cg, [comm, other, comm], "--hook", "tracepoint")
    assert summary["hook"] == "tracepoint oom:mark_victim"
    _check(events, summary, hogs, kills, cg, comm)
    for e in events:
        assert e["memcg"] is None and e["trigger_memcg"] == cg.path
