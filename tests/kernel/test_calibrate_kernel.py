"""`kit calibrate` on the real kernel, checked against what the kernel itself reports.

Calibration is a measurement, so its numbers are not compared with constants. What can be checked:
programs that do more work per event cost more, and the kernel's own timing of their bodies (bpf_stats)
says so too; the per-kind uprobe costs split into the two groups the kernel's emulation decides
(kit/binaries/insn.py); and the guardrail uses the result.
"""

import json
import os

import pytest

from calibration import calibrate
from conftest import run_kit
from kit.binaries import insn
from kit.guard import costs

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


@pytest.fixture(scope="module")
def calibration(kernel):
    return calibrate()


def test_calibrate_writes_a_calibration_for_this_host(kernel, calibration):
    p, path = calibration
    assert p.returncode == 0, p.stderr
    cal = json.loads(p.stdout)
    assert cal["path"] == path and os.path.isfile(path)
    loaded, note = costs.load_calibration(path)
    assert loaded is not None and loaded["host"] == costs.host_key(), note
    for name in costs.DEFAULT_NS:
        if name.startswith("uprobe_") or name == "kprobe_traps":  # no kprobes to measure on this host
            continue
        assert loaded["ns"][name] > 0, name
    assert set(loaded["uprobe"]) == set(insn.KINDS)


def test_the_kernels_body_times_are_recorded_for_every_program(kernel, calibration):
    cal = json.loads(calibration[0].stdout)
    for name in ("tracepoint_hash", "raw_tracepoint_pair", "raw_tracepoint_pair_filter", "stack"):
        assert cal["body_ns"][name] > 0, name
    assert set(cal["uprobe_body"]) == set(insn.KINDS)
    # A pair runs two programs per event, one of them four map operations: the kernel times more work.
    assert cal["body_ns"]["raw_tracepoint_pair"] > cal["body_ns"]["raw_tracepoint_hash"]
    # A stream record (a scope check, a 256-byte copy into the ring) is more work than an empty program.
    for f in ("tracepoint", "raw_tracepoint"):
        assert cal["body_ns"][f"{f}_output"] > cal["body_ns"][f"{f}_empty"], cal["body_ns"]


def test_more_work_per_event_costs_more(kernel, calibration):
    ns = json.loads(calibration[0].stdout)["ns"]
    for f in ("tracepoint", "raw_tracepoint"):
        assert ns[f"{f}_pair"] > ns[f"{f}_hash"], ns        # a latency pair runs two programs and four map ops
        assert ns[f"{f}_pair"] > ns[f"{f}_pair_filter"], ns  # ...and filtered out, one compare and one lookup
    assert ns["stack"] > ns["tracepoint_hash"], ns           # walking two stacks is more than one map update


def test_single_stepped_first_instructions_cost_more_than_emulated_ones(kernel, calibration):
    up = json.loads(calibration[0].stdout)["uprobe"]
    cheapest_stepped = min(v for k, v in up.items() if not insn.emulated(k))
    dearest_emulated = max(v for k, v in up.items() if insn.emulated(k))
    # The groups are an order of magnitude apart on this kernel; a factor of 3 leaves room for a busy box.
    assert cheapest_stepped > 3 * dearest_emulated, up


def test_estimate_uses_the_calibration(kernel, calibration):
    _, path = calibration
    p = run_kit("estimate", "syscalls", "--comm", "nobody-here", "--budget", "100", "--json",
                env=dict(os.environ, KIT_CALIBRATION=path))
    assert p.returncode == 0, p.stderr
    est = json.loads(p.stdout)["estimate"]
    cal = json.load(open(path))
    assert est["cost"]["source"] == "calibration"
    assert est["cost"]["in_ns"] == round(cal["ns"]["raw_tracepoint_pair"])
    assert est["cost"]["out_ns"] == round(cal["ns"]["raw_tracepoint_pair_filter"])


def test_offcpu_blocks_cost_more_paced_than_back_to_back_and_are_priced_against_the_ping_pongs_shape(
        kernel, calibration):
    cal = json.loads(calibration[0].stdout)
    body, ref = cal["body_ns"], cal["offcpu"]
    # The kernel's own timing of offcpu's program: back to back the caches stay warm; paced they do not.
    assert 0 < body["offcpu_block"] <= body["offcpu_block_cold"], body
    assert ref["hot_rate"] > 10 * ref["cold_rate"] > 0, ref
    # The ping-pong's blocks, sampled by perf: a pipe read in the kernel, Python's short user stack, a libc
    # syscall wrapper at the top (the hidden-caller walk runs).
    assert ref["kernel_depth"] >= 3 and ref["user_depth"] >= 1 and ref["walk_share"] > 0.5, ref
    # A switch it filters out: cheaper on a CPU where the program runs back to back than on the box's own
    # switches, and dearer than nothing (measured unless the box filtered under 50 switches meanwhile).
    if "offcpu_filtered" in body:
        assert 0 < body["offcpu_filtered"] <= body["offcpu_filtered_cold"] < body["offcpu_block"], body
        assert ref["filtered_hot_rate"] > ref["filtered_cold_rate"] > 0, ref


def _calib_pingpongs():
    """Processes still named like the calibration ping-pong."""
    from kit.guard import calibrate_offcpu
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in (calibrate_offcpu.COMM, calibrate_offcpu.COMM_OUT):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_first_offcpu_run_on_an_uncalibrated_host_measures_a_block_once_and_caches_it(
        kernel, no_leftovers, tmp_path):
    path = str(tmp_path / "calibration.json")
    env = dict(os.environ, KIT_CALIBRATION=path)
    first = run_kit("run", "offcpu", "--comm", "kit-nobody-cal", "--for", "1s", "--budget", "100", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert "first offcpu run on this host" in first.stderr
    cal, note = costs.load_calibration(path)
    assert cal is not None and cal["partial"] == ["offcpu"], note
    assert 0 < cal["body_ns"]["offcpu_block"] <= cal["body_ns"]["offcpu_block_cold"]
    assert not _calib_pingpongs(), "the calibration ping-pong outlived the run"
    # the next run prices with it, and measures nothing
    again = run_kit("estimate", "offcpu", "--comm", "kit-nobody-cal", "--budget", "100", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert "first offcpu run" not in again.stderr
    assert json.loads(again.stdout)["estimate"]["cost"]["source"].startswith("calibration")
    second = run_kit("run", "offcpu", "--comm", "kit-nobody-cal", "--for", "1s", "--budget", "100", env=env)
    assert second.returncode == 0 and "first offcpu run" not in second.stderr, second.stderr
