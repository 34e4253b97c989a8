"""runqlat's pure logic, without a kernel: its price, the C it renders on each rung, the histograms'
names and summaries, and the hints."""

import re
import types

import pytest

from kit import catalog
from kit.engine import prelude, render
from kit.guard import costs
from kit.engine.contract import Context
from kit.recipes import runqlat


def _ctx(values=None, hook_type="raw_tracepoint"):
    r = catalog.load()["runqlat"]
    vals = {p: None for p in r.params}
    vals.update(values or {})
    return Context(recipe=r, hook=next(h for h in r.hooks if h.type == hook_type), values=vals)


def test_a_wait_is_priced_per_sched_switch_as_a_wakeup_and_a_switch_in():
    r = catalog.load()["runqlat"]
    assert r.guard.rate_hook == "sched:sched_switch" and r.guard.hot_path and not r.guard.scope_required
    raw = costs.for_class("runq_pair", "raw_tracepoint")
    assert raw.progs_per_event == 2 and set(raw.terms) == {"raw_tracepoint_pair", "raw_tracepoint_pair_filter"}
    tp = costs.for_class("runq_pair", "tracepoint")
    assert set(tp.terms) == {"tracepoint_pair", "tracepoint_pair_filter"}


@pytest.mark.parametrize("per, cgroup", [("process", None), ("thread", None), ("cgroup", None), ("process", 12345)])
def test_the_raw_rung_reads_the_woken_task_at_btf_offsets_and_the_cgroup_chain_only_when_asked(per, cgroup):
    ctx = _ctx({"per": per, "cgroup": cgroup})
    offs = runqlat.extra(ctx)
    assert offs["task_pid_off"] and offs["task_tgid_off"] == offs["task_pid_off"] + 4 and offs["task_comm_off"]
    wants_cgroup = per == "cgroup" or cgroup is not None
    assert bool(offs["kn_id_off"] and offs["task_cgroups_off"]) == wants_cgroup
    text = render.render(ctx.recipe, ctx.hook, ctx.values, offs)
    assert f"#define KIT_PER {['process', 'thread', 'cgroup'].index(per)} " in text
    assert "RAW_TRACEPOINT_PROBE(sched_wakeup)" in text and "{{" not in text


def test_the_tracepoint_rung_reads_no_kernel_struct_of_its_own():
    # (under --comm the prelude reads the current task's process name at switch-out, as everywhere)
    ctx = _ctx({"comm": "ticker"}, hook_type="tracepoint")
    offs = runqlat.extra(ctx)
    assert set(offs.values()) == {0}
    text = render.render(ctx.recipe, ctx.hook, ctx.values, offs)
    assert "TRACEPOINT_PROBE(sched, sched_wakeup)" in text and re.search(r"#define KIT_SCOPE_COMM_ON +1\n", text)


def test_quantiles_are_the_upper_bounds_of_their_log2_buckets():
    counts = {prelude.slot_of(5): 50, prelude.slot_of(600): 49, prelude.slot_of(20000): 1}
    assert runqlat.quantile_high(counts, 0.5) == 7          # 4..7 us
    assert runqlat.quantile_high(counts, 0.99) == 1023      # 512..1023 us
    s = runqlat.summarize("all", counts)
    assert s == {"group": "all", "waits": 100, "p50_us_under": 7, "p99_us_under": 1023, "max_us_under": 32767}
    assert runqlat.quantile_high({}, 0.5) is None


def test_groups_are_named_by_process_thread_or_cgroup():
    key = types.SimpleNamespace(tgid=4242424, tid=4242425, cgroup=1)
    names = runqlat._names([{"pid": 4242424, "tid": 4242425, "comm": "ticker"},
                            {"pid": 4242424, "tid": 4242424, "comm": "app"}])
    assert runqlat.group_label("process", key, names, None) == "pid=4242424 comm=app"
    assert runqlat.group_label("thread", key, names, None) == "pid=4242424 tid=4242425 comm=ticker"
    assert runqlat.group_label("cgroup", key, names, lambda i: {1: "/"}[i]) == "cgroup=/"


def _summary(counts):
    return {"all": runqlat.summarize("all", counts)}


def test_a_millisecond_tail_points_at_the_task_that_had_the_cpu():
    rows = [{"pid": 10, "tid": 11, "comm": "api", "max_us": 8000.0, "ran_instead": "batch", "ran_instead_pid": 77}]
    hints = runqlat.hints(_ctx(), rows, _summary({prelude.slot_of(10): 90, prelude.slot_of(5000): 10}))
    assert hints == [{"text": "1% of the waits for a CPU took over 4096 us: the CPUs are contended; during the "
                              "worst wait (8000 us) batch (pid 77) had the CPU",
                      "command": "kit run profile --pid 77 --for 10s"}]


def test_microsecond_waits_point_off_cpu():
    rows = [{"pid": 10, "tid": 11, "comm": "api", "max_us": 40.0, "ran_instead": "x", "ran_instead_pid": 3}]
    hints = runqlat.hints(_ctx({"pid": 10}), rows, _summary({prelude.slot_of(10): 100}))
    assert hints[0]["command"] == "kit run offcpu --pid 10 --for 20s"
    assert hints[0]["text"].startswith("99% of the waits for a CPU were under 16 us")
    assert runqlat.hints(_ctx(), [], {}) == []
