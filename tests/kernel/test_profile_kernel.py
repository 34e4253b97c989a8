"""profile on the real kernel, against the workload's own CPU clock (tests/support/workloads/profile_work.c)
and bcc's profile as a second opinion."""

import dataclasses
import io
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import ACCURACY_BUDGET, TIME_SCALE, KitProc
from harness import Workload
import leaks
from workloads.build import build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

COMM = "profile_work"
HZ = "499"         # enough samples in a few seconds for a share within a point or two
SHARE_POINTS = 5   # the bound on kit's share against the workload's clock


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return build(COMM, str(tmp_path_factory.mktemp("profile")))


def _samples(rows, tid, leaf):
    return sum(r["samples"] for r in rows if r["tid"] == tid and r["user_stack"][:1] == [leaf])


def test_shares_of_two_functions_match_the_workloads_own_cpu_clock_and_a_sleeper_gets_none(
        kernel, no_leftovers, binary):
    # started first, so its sleeper has gone from fork() to pause() before kit samples: CI once saw a
    # sleeper sample outside its exit, and those first microseconds are its only other time on a CPU
    w = Workload(binary, "3")
    kit = KitProc("run", "profile", *ACCURACY_BUDGET, "--comm", COMM, "--hz", HZ, "--for", "7s", "--json")
    kit.wait_attached()
    truth = json.loads(w.go())
    w.end()                      # the process exits well before the run ends
    res = kit.finish().json()
    assert kit.code == 0, kit.stderr
    assert res["hook"] == "perf_event cpu-clock" and res["stopped_by"] == "timeout"
    rows = res["rows"]
    a, b = _samples(rows, truth["tid"], "hot_a"), _samples(rows, truth["tid"], "hot_b")
    mine = sum(r["samples"] for r in rows if r["pid"] == truth["pid"])
    want = truth["hot_a_us"] / (truth["hot_a_us"] + truth["hot_b_us"])
    assert abs(a / (a + b) - want) * 100 <= SHARE_POINTS, (a, b, truth)
    assert a + b >= 0.95 * mine, "the samples of the burning thread are in its two functions"
    # every sample stands for 1/hz s of a CPU: the process's samples against its own CPU time
    cpu_s = (truth["hot_a_us"] + truth["hot_b_us"]) / 1e6
    assert 0.85 * cpu_s * int(HZ) <= mine <= 1.15 * cpu_s * int(HZ) + 5, (mine, cpu_s)
    # in scope (same comm) but asleep the whole time: no sample while it sleeps. The SIGKILL at the end
    # wakes it to die while kit still samples: a sample may land in its exit (1 run in 25 here, loaded)
    sleeper = [r for r in rows if r["pid"] == truth["sleeper"]]
    assert all({"do_exit", "do_group_exit"} & set(r["kernel_stack"]) for r in sleeper), sleeper
    assert {r["pid"] for r in rows} - {truth["sleeper"]} == {truth["pid"]}
    # named after the process exited, with the caller the leaf frame pointer keeps
    top = next(r for r in rows if r["user_stack"][:1] == ["hot_a"])
    assert top["user_stack"][:3] == ["hot_a", "spend", "main"], top
    assert res["profile"]["in_scope"] == mine + sum(r["samples"] for r in sleeper) == res["events"]
    f = res["profile"]["top_functions"][0]
    assert f["function"] == "hot_a" and 0.95 * a <= f["samples"] <= a
    assert res["hints"][0]["text"].startswith("hot_a was on CPU in")


def test_default_rate_is_hz_on_every_cpu_and_folded_and_svg_come_out(kernel, no_leftovers, binary, tmp_path):
    from kit.host import perfevent
    ncpu = len(perfevent.online_cpus())
    sleeper = subprocess.Popen(["sleep", "30"])
    # a CPU burner outside the scope, so that some samples are filtered on a box otherwise idle (the guest)
    burner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        svg = tmp_path / "p.svg"
        t0 = time.monotonic()
        kit = KitProc("run", "profile", *ACCURACY_BUDGET, "--pid", str(sleeper.pid), "--for", "3s", "--json",
                      "--svg", str(svg))
        kit.wait_attached()
        res = kit.finish().json()
        wall = time.monotonic() - t0
    finally:
        for p in (sleeper, burner):
            p.kill()
            p.wait()
    assert kit.code == 0, kit.stderr
    s = res["profile"]
    assert s["hz"] == 49 and s["ncpu"] == ncpu
    # every CPU took 49 samples a second, on whatever ran (idle included), while the run lasted
    taken = s["samples"] + s["missed"]
    assert 0.9 * 49 * ncpu * res["duration_s"] <= taken <= 49 * ncpu * wall + ncpu, (s, res["duration_s"])
    assert res["rows"] == [] and s["in_scope"] == 0 and res["events"] == 0
    # the counters were read for the cost line a moment before the samples were collected
    assert s["out_of_scope"] + s["idle"] == s["samples"] >= res["filtered"] > 0
    assert any("offcpu --pid" in h["command"] for h in res["hints"]), res["hints"]
    assert ET.parse(svg).getroot().tag.endswith("svg")
    est = res["overhead"]["estimate"]
    assert est["events_per_s"] == 49 * ncpu and est["verdict"] == "accept"


def _wait_sampling(pid, timeout=60):
    """Until the process holds a perf event per CPU (bcc's profile has attached its sampler)."""
    from bcc.utils import get_online_cpus
    deadline = time.time() + timeout * TIME_SCALE
    while time.time() < deadline:
        fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                fds += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
            except OSError:
                pass
        if fds >= len(get_online_cpus()):
            return
        time.sleep(0.1)
    raise AssertionError(f"bcc's profile (pid {pid}) opened no perf event per CPU in {timeout * TIME_SCALE:.0f} s")


def test_folded_output_agrees_with_bcc_profile_on_the_same_workload(kernel, no_leftovers, binary, tmp_path):
    w = Workload(binary, "3")
    kit = KitProc("run", "profile", *ACCURACY_BUDGET, "--pid", str(w.pid), "--hz", HZ, "--for", "120s", "--folded")
    kit.wait_attached()
    bcc = subprocess.Popen(["profile-bpfcc", "-p", str(w.pid), "-F", HZ, "-f", "5"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _wait_sampling(bcc.pid)      # bcc's start-up is slower than kit's: both attached before the work
    truth = json.loads(w.go())
    folded = kit.stop().stdout   # Ctrl-C once the work is done, however long bcc took to start
    bcc_out, bcc_err = bcc.communicate(timeout=60)
    w.end()  # after both: bcc names frames from /proc at the end, so only while the process lives
    assert kit.code == 130 and bcc.returncode == 0, (kit.stderr, bcc_err)
    want = truth["hot_a_us"] / (truth["hot_a_us"] + truth["hot_b_us"])

    def share(text, sep):
        n = {"hot_a": 0, "hot_b": 0}
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(sep)
            for fn in n:  # the innermost user frame (bcc puts a '-' between user and kernel frames)
                if fn in frames and frames.index(fn) == max(i for i, f in enumerate(frames) if f in n):
                    n[fn] += int(count)
        return n["hot_a"] / max(n["hot_a"] + n["hot_b"], 1), n["hot_a"] + n["hot_b"]
    kit_share, kit_n = share(folded, ";")
    bcc_share, bcc_n = share(bcc_out, ";")
    assert kit_n > 300 and bcc_n > 300, (kit_n, bcc_n, bcc_out[-500:])
    assert abs(kit_share - want) * 100 <= SHARE_POINTS and abs(bcc_share - want) * 100 <= SHARE_POINTS, \
        (kit_share, bcc_share, want)
    assert all(line.startswith(COMM + ";") for line in folded.splitlines())


def test_sampling_events_are_closed_even_when_collecting_fails(kernel, no_leftovers, monkeypatch):
    from kit import cli
    from kit.recipes import profile

    def boom(ctx, bpf):
        raise RuntimeError("injected failure in collect")

    before = leaks.held()
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["run", "profile", "--hz", "99", "--for", "0.5s", "--json"], out=out, err=err) == 0, \
        err.getvalue()
    assert json.loads(out.getvalue())["profile"]["samples"] > 0
    assert leaks.held() == before, "sampling events stayed open after a run"
    monkeypatch.setattr(profile, "HOOKS", dataclasses.replace(profile.HOOKS, collect=boom))
    code = cli.main(["run", "profile", "--for", "0.5s"], out=out, err=err)
    assert code == 1 and "injected failure in collect" in err.getvalue()
    assert leaks.held() == before, "sampling events stayed open after collect failed"


@pytest.fixture(scope="module")
def renamed_hog(tmp_path_factory):
    return build("runq_work", str(tmp_path_factory.mktemp("profile-renamed")))


def _cpu_s(pid):
    """The process's CPU time from /proc (its exited threads' included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --comm takes every thread of the process: the ticker (every 10 ms) and the main thread may take a few
# samples too (the 6.1 guest's emulated timers gave the ticker 3 and more); --thread-comm only the hog
@pytest.mark.parametrize("scope, allowed", [(["--comm", "runq_work"], {"hog-0", "ticker", "runq_work"}),
                                            (["--thread-comm", "hog-0"], {"hog-0"})])
def test_comm_takes_a_renamed_thread_by_its_process_name_and_thread_comm_by_its_own(
        kernel, no_leftovers, renamed_hog, scope, allowed):
    # runq_work's hog renames itself hog-0 and burns a CPU; the process keeps the name runq_work (its main
    # thread's), which the prelude reads from the thread-group leader at BTF offsets
    w = Workload(renamed_hog, "1", str(max(os.sched_getaffinity(0))), "2", "10000", "batch")
    try:
        kit = KitProc("run", "profile", *ACCURACY_BUDGET, *scope, "--hz", HZ, "--for", "20s", "--json")
        kit.wait_attached()
        truth = json.loads(w.go())
        cpu_s = _cpu_s(w.pid)    # its threads are done: all the CPU it will use
        res = kit.stop().json()
    finally:
        w.end()
    assert kit.code == 130, kit.stderr
    rows = res["rows"]
    assert {r["pid"] for r in rows} == {truth["pid"]}
    hog = sum(r["samples"] for r in rows if r["comm"] == "hog-0")
    mine = sum(r["samples"] for r in rows)
    assert {"hog-0"} <= {r["comm"] for r in rows if r["samples"] > 2} <= allowed, rows
    assert {r["comm"] for r in rows} <= allowed, rows
    # its samples against its own CPU clock (ticks of 10 ms: a little slack)
    assert 0.85 * (cpu_s - 0.02) * int(HZ) <= mine <= 1.15 * (cpu_s + 0.02) * int(HZ) + 5, (mine, cpu_s)
    assert hog >= 0.9 * mine, (hog, mine)
