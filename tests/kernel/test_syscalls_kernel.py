"""syscalls on the real kernel, against the workload's own counts and timings and strace on the same
process."""

import os
import re
import subprocess
import time

import pytest

from conftest import KitProc
from workloads.load import Load

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

CALLS, SLEEPS, SLEEP_US = 20000, 30, 2000
BUDGET = ("--budget", "50")  # these tests are about counting; the guardrail has its own tests


def _comm(tag):
    return f"kit-sc{tag}-{os.getpid() % 100000}"[:15]


def _rows_by_syscall(res, pid):
    rows = {}
    for r in res["rows"]:
        if r["pid"] == pid:
            assert r["syscall"] not in rows or r["comm"] != rows[r["syscall"]]["comm"], r
            rows[r["syscall"]] = r
    return rows


def _run_mixed(*scope, hook=None, duration="60s"):
    """Starts the mixed load, attaches kit with `scope` (filled with the load's pid/comm), runs the load to the
    end (well under a second); with --pid kit ends by itself when the process exits, with --comm at the end of
    `duration`. Returns (kit result, load's own counters, load)."""
    comm = _comm("m")
    with Load("mixed", comm, calls=CALLS, sleeps=SLEEPS, sleep_us=SLEEP_US) as load:
        args = [a.format(pid=load.pid, comm=comm) for a in scope]
        extra = ["--hook", hook] if hook else []
        kit = KitProc("run", "syscalls", *args, *extra, "--for", duration, "--json", *BUDGET)
        kit.wait_attached()
        load.go()
        done = load.finish(stop=False)
        kit.finish()
    assert kit.code == 0, kit.stderr
    return kit.json(), done, load


def _check_against_workload(res, done, load):
    assert done["calls"] == CALLS
    rows = _rows_by_syscall(res, load.pid)
    assert rows["getppid"]["count"] == CALLS and rows["getppid"]["errors"] == 0
    assert rows["close"]["count"] == CALLS and rows["close"]["errors"] == CALLS  # close(-1): EBADF each time
    sleeps = rows["clock_nanosleep"]
    assert sleeps["count"] == SLEEPS and sleeps["errors"] == 0
    # Time inside the syscall: at least what was asked for, at most what the process measured around it.
    assert SLEEPS * SLEEP_US / 1e3 <= sleeps["total_ms"] <= done["slept_ns"] / 1e6
    assert sleeps["max_us"] >= SLEEP_US
    assert {r["pid"] for r in res["rows"]} == {load.pid}
    assert res["lost_events"] == 0


def test_counts_errors_and_latency_match_the_workload_with_pid_scope(kernel, no_leftovers):
    res, done, load = _run_mixed("--pid", "{pid}")
    _check_against_workload(res, done, load)
    assert res["stopped_by"] == "target_exit" and res["hook"].startswith("raw_tracepoint")


def test_comm_scope_on_the_tracepoint_rung_gives_the_same_counts(kernel, no_leftovers):
    res, done, load = _run_mixed("--comm", "{comm}", hook="tracepoint", duration="6s")
    _check_against_workload(res, done, load)
    assert res["hook"] == "tracepoint raw_syscalls:sys_enter"


def _strace_counts(text):
    """{syscall: (calls, errors)} from `strace -c` output."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*([a-z_0-9]+)$", line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def test_every_syscall_of_the_process_matches_strace(kernel, no_leftovers):
    """Peer: strace -c counts calls and errors per syscall through ptrace, no BPF at all."""
    comm = _comm("s")
    with Load("mixed", comm, calls=CALLS, sleeps=SLEEPS, sleep_us=SLEEP_US) as load:
        st = subprocess.Popen(["strace", "-c", "-p", str(load.pid)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        try:
            line = st.stderr.readline()
            assert "attached" in line, line
            kit = KitProc("run", "syscalls", "--pid", str(load.pid), "--for", "60s", "--json", *BUDGET)
            kit.wait_attached()
            load.go()
            load.finish(stop=False)
            kit.finish()
            _, summary = st.communicate(timeout=120)  # strace prints its table when the process exits
        finally:
            if st.poll() is None:
                st.kill()
    assert kit.code == 0, kit.stderr
    peer = _strace_counts(summary)
    ours = {r["syscall"]: (r["count"], r["errors"]) for r in kit.json()["rows"]}
    assert peer["getppid"] == (CALLS, 0) and peer["close"] == (CALLS, CALLS), summary
    # The read blocked on stdin when both attached returns after `go`: strace counts it, kit never saw its
    # entry. exit_group never returns, so there is no exit for kit to count. Everything else agrees.
    assert abs(peer.pop("read", (0, 0))[0] - ours.pop("read", (0, 0))[0]) <= 1
    peer.pop("exit_group", None)
    assert ours == peer
