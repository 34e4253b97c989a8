"""How the guardrail prices an offcpu block, without a kernel: by how often blocks come on a CPU (warm or
cold caches), by the blocks' stack depths and the hidden-caller walk, from the calibration's two
measurements; the block shape read from perf callchains. The kernel behaviour, against
the kernel's own run time of the program, is in test_guard_kernel.py and test_calibrate_kernel.py."""

import io
import os

import pytest

from kit.guard import model
from kit.guard import blockshape, calibrate_offcpu, costs, rate

REF = costs.OFFCPU_REF
PRIM = {k: costs.DEFAULT_BODY_NS[k] for k in ("offcpu_block", "offcpu_block_cold", "offcpu_kernel_frame",
                                             "offcpu_user_frame", "offcpu_walk", "offcpu_filtered",
                                             "offcpu_filtered_cold")}


def shape(kernel=REF["kernel_depth"], user=REF["user_depth"], walk=REF["walk_share"]):
    return blockshape.Shape(kernel_depth=kernel, user_depth=user, walk_share=walk, samples=100)


def test_a_block_costs_its_hot_and_cold_measurements_at_their_own_rates():
    assert costs.offcpu_block_body(REF["hot_rate"], None, PRIM, REF) == pytest.approx(PRIM["offcpu_block"])
    assert costs.offcpu_block_body(REF["cold_rate"], None, PRIM, REF) == pytest.approx(PRIM["offcpu_block_cold"])
    # the calibration ping-pong's own shape changes nothing
    assert costs.offcpu_block_body(REF["cold_rate"], shape(), PRIM, REF) == pytest.approx(PRIM["offcpu_block_cold"])


def test_blocks_cost_less_the_faster_they_come_on_a_cpu():
    prices = [costs.offcpu_block_body(r, None, PRIM, REF) for r in (10, 300, 1500, 5000, 20000, 300000)]
    assert prices == sorted(prices, reverse=True)
    assert prices[-1] >= 0.5 * PRIM["offcpu_block"]


def test_blocks_rarer_or_faster_than_the_calibrations_are_priced_as_its_cold_or_hot_one():
    # what a paced ping-pong costs below the cold rate is its idle CPU's; a service's CPUs work in between
    assert costs.offcpu_block_body(REF["cold_rate"] / 10, None, PRIM, REF) == pytest.approx(PRIM["offcpu_block_cold"])
    assert costs.offcpu_block_body(REF["hot_rate"] * 10, None, PRIM, REF) == pytest.approx(PRIM["offcpu_block"])


def test_a_filtered_switch_costs_less_on_a_cpu_where_the_program_runs_often():
    hot, cold = PRIM["offcpu_filtered"], PRIM["offcpu_filtered_cold"]
    fr, fc = REF["filtered_hot_rate"], REF["filtered_cold_rate"]
    assert costs.offcpu_filtered_body({0: fc}, {}, PRIM, REF) == pytest.approx(cold)
    assert costs.offcpu_filtered_body({0: fr}, {}, PRIM, REF) == pytest.approx(hot)
    mid = costs.offcpu_filtered_body({0: 20 * fc}, {}, PRIM, REF)
    assert hot < mid < cold
    # weighed by the switches each CPU filters (its runs less the in-scope ones): the busy CPU's price
    both = costs.offcpu_filtered_body({0: fr, 1: fc}, {0: 0.0, 1: fc - 1}, PRIM, REF)
    assert both == pytest.approx((fr * hot + 1 * cold) / (fr + 1))
    assert costs.offcpu_filtered_body(None, {}, PRIM, REF) == cold  # not known: cold


def test_deeper_stacks_and_the_walk_cost_more_scaled_by_warmth():
    cold, hot = REF["cold_rate"], REF["hot_rate"]
    base = costs.offcpu_block_body(cold, shape(), PRIM, REF)
    deep = costs.offcpu_block_body(cold, shape(user=REF["user_depth"] + 100), PRIM, REF)
    assert deep - base == pytest.approx(100 * PRIM["offcpu_user_frame"])
    kdeep = costs.offcpu_block_body(cold, shape(kernel=REF["kernel_depth"] + 10), PRIM, REF)
    assert kdeep - base == pytest.approx(10 * PRIM["offcpu_kernel_frame"])
    nowalk = costs.offcpu_block_body(cold, shape(walk=0.0), PRIM, REF)
    assert base - nowalk == pytest.approx(PRIM["offcpu_walk"] * REF["walk_share"])
    # the same 100 frames cost less where the caches stay warm
    hot_extra = costs.offcpu_block_body(hot, shape(user=REF["user_depth"] + 100), PRIM, REF) - \
        costs.offcpu_block_body(hot, shape(), PRIM, REF)
    assert 0 < hot_extra < deep - base


def test_priced_costs_weigh_cpus_by_their_blocks_and_say_what_they_were_made_of():
    c = costs.for_class("offcpu_block", "raw_tracepoint")
    assert c.in_ns == costs.DEFAULT_NS["offcpu_block_cold"]  # no rate yet: priced cold
    one_cold = costs.offcpu_priced(c, {0: 500.0}, None)
    one_hot = costs.offcpu_priced(c, {0: 200000.0}, None)
    mixed = costs.offcpu_priced(c, {0: 500.0, 1: 200000.0}, None)
    assert one_hot.in_ns < mixed.in_ns < one_cold.in_ns
    # 400x more blocks on the hot CPU: the mean block is nearly a hot one
    assert mixed.in_ns == pytest.approx((500 * one_cold.in_ns + 200000 * one_hot.in_ns) / 200500)
    d = one_cold.as_dict()
    assert d["in_ns"] == round(one_cold.in_ns) and d["offcpu"]["warmth"] > 0.5
    # no switch rate known: a filtered switch priced cold, plus the filter primitive's dispatch
    assert one_cold.body_out_ns == costs.DEFAULT_BODY_NS["offcpu_filtered_cold"]
    assert one_cold.out_ns == pytest.approx(one_cold.body_out_ns + c.out_ns - c.body_out_ns)
    assert one_cold.body_in_ns < one_cold.in_ns
    assert one_cold.source == "cost class defaults"


def test_a_calibration_prices_with_its_own_measurements_and_reference():
    c = costs.for_class("offcpu_block", "raw_tracepoint")
    ref = dict(REF, hot_rate=100000, cold_rate=1000, user_depth=1.0)
    cal = {**costs.offcpu_calibration(3000.0, 9000.0, ref, filtered=(80.0, 200.0)),
           "version": costs.CALIBRATION_VERSION}
    priced = costs.offcpu_priced(c, {0: 1000.0}, shape(user=1.0), cal)
    assert priced.body_in_ns == pytest.approx(9000.0)
    assert priced.in_ns == pytest.approx(9000.0 * costs.OFFCPU_OVERHEAD)
    assert priced.source == "calibration + cost class defaults"  # the filter's price is still the default
    cal["ns"]["raw_tracepoint_filter"] = 90.0
    assert costs.offcpu_priced(c, {0: 1000.0}, None, cal).source == "calibration"
    # a host whose cold block costs twice the development VM's pays twice as much per frame too
    cal2 = costs.offcpu_calibration(3000.0, 2 * costs.OFFCPU_COLD_BODY, ref)
    assert cal2["body_ns"]["offcpu_user_frame"] == pytest.approx(2 * costs.DEFAULT_BODY_NS["offcpu_user_frame"])


def test_callchains_are_split_at_perfs_context_markers():
    k, u = blockshape.CONTEXT_KERNEL, blockshape.CONTEXT_USER
    assert blockshape.parse_callchain([k, 1, 2, 3, u, 0x401000, 0x402000]) == (3, 2, 0x401000)
    assert blockshape.parse_callchain([k, 1, 2]) == (2, 0, None)


def test_shape_is_the_mean_over_samples_and_the_walk_runs_after_a_syscall_instruction():
    code = {0x1000: b"\x0f\x05", 0x2000: b"\x90\x90"}
    chains = [(7, 10, 4, 0x1002), (7, 12, 6, 0x2002), (7, 8, 2, None)]
    s = blockshape.summarize(chains, read=lambda pid, addr, n: code.get(addr))
    assert (s.kernel_depth, s.user_depth, s.samples) == (10, 4, 3)
    assert s.walk_share == pytest.approx(1 / 3)
    assert blockshape.summarize([]) is None


def test_first_use_measures_only_where_no_calibration_file_exists(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(calibrate_offcpu, "measure", lambda rounds, log, **kw: calls.append(rounds) or None)
    existing = tmp_path / "cal.json"
    existing.write_text("{}")
    yes = lambda: True  # noqa: E731 - the kernel would time programs
    assert calibrate_offcpu.first_use(io.StringIO(), str(existing), yes) is None and calls == []
    assert calibrate_offcpu.first_use(io.StringIO(), os.devnull, yes) is None and calls == []
    assert calibrate_offcpu.first_use(io.StringIO(), str(tmp_path / "x.json"), lambda: False) is None
    assert calls == []  # no CAP_SYS_ADMIN for BPF_ENABLE_STATS: nothing to measure with
    err = io.StringIO()
    assert calibrate_offcpu.first_use(err, str(tmp_path / "none.json"), yes) is None  # measure found nothing
    assert calls == [1] and "using defaults" in err.getvalue()
    assert not (tmp_path / "none.json").exists()


def test_first_use_caches_a_partial_calibration_the_next_run_loads(tmp_path, monkeypatch):
    off = costs.offcpu_calibration(2500.0, 6000.0, dict(REF))
    monkeypatch.setattr(calibrate_offcpu, "measure", lambda rounds, log, **kw: off)
    path = str(tmp_path / "cal.json")
    note = calibrate_offcpu.first_use(io.StringIO(), path, lambda: True)
    assert note and "measured on this host" in note
    cal, why = costs.load_calibration(path)
    assert cal["partial"] == ["offcpu"] and "kit calibrate" in why
    assert cal["ns"]["offcpu_block_cold"] == off["ns"]["offcpu_block_cold"]
    c = costs.for_class("offcpu_block", "raw_tracepoint", cal=cal)
    assert c.in_ns == off["ns"]["offcpu_block_cold"] and c.source == "calibration + cost class defaults"


def test_threads_sharing_one_cpu_slow_down_together_instead_of_each_paying_a_whole_cpu():
    from kit import guard
    hook = rate.RateHook("tracepoint", "sched:sched_switch")

    def pair(cpus):
        th = [rate.Thread(pid=p, tid=p, comm="pp", rate=450e3, in_scope=True, util=0.45, cpus=cpu)
              for p, cpu in ((1, cpus[0]), (2, cpus[1]))]
        return rate.Rate(hook=hook, window_s=0.2, total=900e3, in_scope=900e3, scope_measured=True, scoped=True,
                         threads=th, samples=500, lost=0)
    c = costs.Costs(in_ns=2700, out_ns=120, progs_per_event=1, body_in_ns=2400, body_out_ns=100, source="t", terms={})
    # a pinned ping-pong: both sides on CPU 0 get that one CPU, the probe 1.215 / (0.9 + 2.43) of it
    pinned, _ = guard.project(pair([(0,), (0,)]), c, cpus=2)
    assert pinned == pytest.approx(100 * 2.43 / 3.33 / 2)
    # on a CPU each, each side slows down alone (saturated)
    apart, _ = guard.project(pair([(0,), (1,)]), c, cpus=2)
    assert apart == pytest.approx(2 * 100 * model.saturated(1.215, 0.45) / 2)
    assert pinned < apart


def test_a_calibration_whose_cold_block_is_a_crowded_moments_is_priced_at_the_bound():
    # a first use that once measured 30 us cold against 3.2 us hot (cached; the demo was refused with it)
    ref = dict(REF)
    cal = {**costs.offcpu_calibration(3226.0, 30134.0, ref), "version": costs.CALIBRATION_VERSION}
    c = costs.for_class("offcpu_block", "raw_tracepoint")
    priced = costs.offcpu_priced(c, {0: ref["cold_rate"]}, None, cal)
    assert priced.body_in_ns == pytest.approx(costs.OFFCPU_COLD_MAX * 3226.0)
    ok = {**costs.offcpu_calibration(3000.0, 9000.0, ref), "version": costs.CALIBRATION_VERSION}
    assert costs.offcpu_priced(c, {0: ref["cold_rate"]}, None, ok).body_in_ns == pytest.approx(9000.0)
