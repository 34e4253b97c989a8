"""The benchmark harness end to end in its tiny mode (bench/run --quick): it
runs every case, writes its results, and what it measured is checked against
the workloads' own counts. No time is asserted: speed targets live in
bench/RESULTS.md, never in tests."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

RECIPES = ("offcpu", "tcpretrans", "lockhold", "getaddrinfo", "execsnoop", "oomkill", "biolatency", "drops", "tcplife",
           "opensnoop", "profile", "runqlat")


def _netns():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _bench_leftovers():
    from kit.engine import stream
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return ({d for d in os.listdir(stream.memory_root()) if d.startswith("kit-bench-oom-")}
            | {line.split(":")[0] for line in loops.splitlines() if "kit-bench-disk" in line}
            | {f for f in os.listdir("/dev/shm") if f.startswith("kit-bench-")})


def test_quick_bench_runs_every_case_and_its_counts_match_the_workloads(kernel, no_leftovers, tmp_path):
    out = tmp_path / "RESULTS.md"
    # compared with what was there before: a run killed earlier (SIGKILL skips cleanup) is not this run's
    ns_before = set(_netns().split())
    left_before = _bench_leftovers()
    p = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=360)
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    raw = json.loads((tmp_path / "RESULTS.json").read_text())

    for section in ("## Machine", "## Targets", "## Start to attached", "## kit's own CPU and memory while it aggregates",
                    *(f"### {name}" for name in RECIPES)):
        assert section in text
    assert os.uname().release in text

    assert set(raw["hooks"]) == set(RECIPES)
    for name, case in raw["hooks"].items():
        rows = case["rows"]
        # only a bcc tool may be missing (kprobes); kit, bpftrace and the empty program run everywhere here
        assert not {"kit", "bpftrace", "empty program"} & set(case["failed"]), (name, case["failed"])
        kit = rows["kit"][0]
        assert kit["bare_seconds"] > 0 and kit["bare_cpu_per_event"] > 0 and kit["events"] > 0, (name, kit)
        assert kit["kit_stopped_by"] == "SIGINT", kit  # stopped by the bench, not by its breaker
        # bpf_stats saw kit's programs run for every workload event while timed (once per probe)
        assert kit["runs"] >= 0.95 * kit["stats_events"] > 0, (name, kit)
        assert kit["body_ns"] > 0 and kit["ready_s"] > 0
        # kit's own count of what it recorded, against the workload's (its loop count, nstat, an nft rule's
        # counter, the device's stat). tcplife counts every state change of a connection: as many as the
        # empty program on the same hook ran per connection (the kernel's count)
        per = 1.0
        if name == "tcplife":
            empty = rows["empty program"][0]
            per = empty["runs"] / empty["stats_events"]
            assert per >= 4, empty  # at least SYN_SENT, ESTABLISHED and a close on each side
        assert 0.95 * per * kit["all_events"] <= kit["kit_events"] <= 1.10 * per * kit["all_events"], (name, kit)
        # the same workload under a scope that excludes it: nothing recorded, and every event either
        # rejected in the kernel or never even trapped (lockhold puts breakpoints only in its scope)
        for label, r in rows.items():
            if label.startswith("kit, "):
                r = r[0]
                if name == "tcplife":
                    # a client's SYN_SENT comes before connect() assigns its port, so kit counts it as an
                    # event and rejects the connection later (reported in RESULTS.md): at most one a connection
                    assert r["kit_events"] <= r["all_events"], (name, label, r)
                else:
                    assert r["kit_events"] == 0, (name, label, r)
                if (name, label) == ("biolatency", "kit, --disk of another device"):
                    # the disk check rejects before kit counts a rejection (reported in RESULTS.md): its
                    # programs ran for every request and recorded none
                    assert r["runs"] >= 0.95 * r["stats_events"] > 0, (name, label, r)
                    continue
                assert r["kit_filtered"] >= 0.95 * r["all_events"] or r["runs"] == 0, (name, label, r)
        for peer in ("bpftrace", "empty program"):
            assert rows[peer][0]["runs"] >= 0.95 * rows[peer][0]["stats_events"], (name, peer, rows[peer])
    # a peer that cannot run on this kernel is reported, with the reason, rather than dropped
    assert "bcc offcputime" in raw["hooks"]["offcpu"]["failed"]
    assert "bcc execsnoop" in raw["hooks"]["execsnoop"]["failed"] and "bcc oomkill" in raw["hooks"]["oomkill"]["failed"]
    assert "needs kprobes" in text
    for tool in ("biolatency-bpfcc", "tcpdrop-bpfcc", "opensnoop-bpfcc"):  # known not to run here, said why
        assert f"none: {tool} " in text
    for peer, name in (("bcc tcpretrans -c", "tcpretrans"), ("bcc gethostlatency", "getaddrinfo"),
                       ("bcc tcplife -p", "tcplife"), ("bcc profile", "profile"), ("bcc runqlat (box-wide)", "runqlat")):
        assert raw["hooks"][name]["rows"][peer][0]["ready_s"] > 0

    for name in ("offcpu", "lockhold", "getaddrinfo", "execsnoop", "oomkill", "biolatency", "drops", "tcplife",
                 "opensnoop", "profile", "runqlat"):
        fp = raw["footprints"][name]["rows"]["kit"][0]
        assert fp["peak_mb"] > 0 and fp["kit_events"] > 0, (name, fp)
    assert raw["footprints"]["tcpretrans"]["rows"]["kit"][0]["peak_mb"] > 0
    assert raw["starts"]["(reference)"]["figures"]["minimal bpftrace program"]["median"] > 0
    for name in ("offcpu", "lockhold", "getaddrinfo", "execsnoop", "oomkill", "biolatency", "drops", "tcplife",
                 "opensnoop", "profile", "runqlat"):
        g = raw["guards"][name]["rows"][0]
        assert g["stopped_by"] == "SIGINT" and g["events"] > 0 and g["stats_runs_per_s"] > 0, (name, g)
    assert "## The guardrail's estimate against the measured cost" in text
    assert not [n for n in set(_netns().split()) - ns_before if n.startswith("kit-bench-")], \
        "the bench left its network namespace behind"
    assert not _bench_leftovers() - left_before, "the bench left its memory cgroup, loop device or backing file behind"
