"""profile's pure logic, without a kernel: the hertz parameter, the perf_event hook in the catalog,
the rate that is known without measuring and its price, the listing's wording, and the hints."""

import pytest

from kit import catalog, guard
from kit.catalog import params
from kit.guard import costs, rate
from kit.host import perfevent
from kit.output import stacks
from kit.engine.contract import Context
from kit.errors import BadInput, CatalogError
from kit.recipes import profile

HOOK = """\
apiVersion: kit/v1
kind: RecipeCatalog
recipes:
  - name: profile
    summary: s
    example: kit run profile
    hooks:
      - type: perf_event
        target: {target}
        {frequency}
        attach:
          - {{fn: on_sample}}
    params:
      hz: {{type: {hz_type}, default: 49, min: 1, max: 999, help: h}}
    duration: {{default: 10s, max: 5m}}
    guard: {{hot_path: false, cost_class: perf_sample_stack, scope_required: false}}
    output: stacks
    fields:
      - {{name: samples, help: h}}
    runbook: r
    module: kit/recipes/profile.py
"""


def _catalog(target="cpu-clock", frequency="frequency: hz", hz_type="hertz"):
    return catalog.parse(HOOK.format(target=target, frequency=frequency, hz_type=hz_type), "cat.yaml")


def test_the_perf_event_hook_names_its_event_and_its_frequency_parameter():
    hook = _catalog()["profile"].hooks[0]
    assert (hook.type, hook.target, hook.frequency, hook.attach[0].fn) == ("perf_event", "cpu-clock", "hz", "on_sample")
    with pytest.raises(CatalogError, match="unknown perf event 'cycles'"):
        _catalog(target="cycles")
    with pytest.raises(CatalogError, match="frequency: naming a hertz parameter"):
        _catalog(frequency="")
    with pytest.raises(CatalogError, match="frequency: naming a hertz parameter"):
        _catalog(hz_type="int")


@pytest.mark.parametrize("text, want", [("49", 49), ("99Hz", 99), (" 999 hz ", 999), ("1", 1)])
def test_hertz_takes_a_rate_in_range(text, want):
    spec = catalog.load()["profile"].params["hz"]
    assert params.TYPES["hertz"].parse(text, spec) == want


@pytest.mark.parametrize("text", ["0", "1000", "fast", "-5", "49.5", "1e3"])
def test_hertz_refuses_what_is_not_a_rate_in_range(text):
    spec = catalog.load()["profile"].params["hz"]
    with pytest.raises(BadInput, match="--hz"):
        params.TYPES["hertz"].parse(text, spec)


def _ctx(values):
    r = catalog.load()["profile"]
    vals = {p: None for p in r.params}
    vals.update(values)
    return Context(recipe=r, hook=r.hooks[0], values=vals)


def test_the_rate_is_hz_on_every_cpu_and_every_sample_is_priced_as_in_scope():
    ctx = _ctx({"hz": 199, "pid": 1})
    r = rate.for_run(ctx)
    ncpu = len(perfevent.online_cpus())
    assert r.hook.label == "perf_event cpu-clock at 199 Hz per CPU"
    assert r.total == r.in_scope == 199 * ncpu and r.window_s == 0 and r.scoped
    c = costs.for_class("perf_sample_stack", "perf_event")
    assert set(c.terms) == {"tracepoint_hash", "stack", "tracepoint_filter"}
    est = guard.priced(guard.Estimate(budget_pct=2.0, ncpu=ncpu, scoped=True), r, c, cpus=ncpu)
    assert est["cpu_pct"] == pytest.approx(100.0 * 199 * ncpu * c.in_ns / (ncpu * 1e9), rel=1e-3)
    assert "not measured" in guard.format_estimate({"recipe": "profile", "hook": "perf_event", "estimate": est})


ROWS = [
    {"comm": "app", "pid": 10, "tid": 10, "samples": 70, "kernel_stack": [], "user_stack": ["hot_a", "main"]},
    {"comm": "app", "pid": 10, "tid": 11, "samples": 20, "kernel_stack": ["copy_user", "__x64_sys_read"],
     "user_stack": ["read", "main"]},
    {"comm": "app", "pid": 10, "tid": 10, "samples": 10, "kernel_stack": [], "user_stack": ["hot_b", "main"]},
]


def test_top_functions_are_where_each_sample_was():
    top = profile.top_functions(ROWS)
    assert [(f["function"], f["samples"]) for f in top] == [("hot_a", 70), ("copy_user", 20), ("hot_b", 10)]
    assert top[0]["share"] == 0.7


def _summary(rows, samples, idle, ncpu=2):
    in_scope = sum(r["samples"] for r in rows)
    per_cpu = samples / ncpu
    procs = [{"pid": 10, "comm": "app", "samples": in_scope,
              "kernel_samples": sum(r["samples"] for r in rows if r["kernel_stack"]), "cpus": in_scope / per_cpu}]
    return {"samples": samples, "in_scope": in_scope, "idle_share": idle / samples, "in_scope_cpus": in_scope / per_cpu,
            "processes": procs, "top_functions": profile.top_functions(rows)}


def test_a_scope_that_mostly_waits_is_sent_to_offcpu():
    hints = profile.hints(_ctx({"pid": 10}), ROWS, _summary(ROWS, samples=1000, idle=800))
    assert hints[0]["text"] == "hot_a was on CPU in 70% of the samples in scope"
    assert {"text": "the scope ran only 0.20 CPUs' worth of the time: it mostly waits; see where",
            "command": "kit run offcpu --pid 10 --for 20s"} in hints


def test_a_busy_unscoped_box_is_sent_to_runqlat_and_a_kernel_heavy_process_to_syscalls():
    rows = [dict(ROWS[1], samples=900)]
    hints = profile.hints(_ctx({}), rows, _summary(rows, samples=960, idle=30))
    commands = [h["command"] for h in hints]
    assert "kit run runqlat --for 10s" in commands and "kit run syscalls --pid 10 --for 10s" in commands
    assert not any("offcpu" in c for c in commands)


def test_the_listing_counts_samples_not_blocks():
    text = stacks.human_text({"rows": ROWS}, value="samples")
    assert text.startswith("on-CPU samples by thread (100 samples in all):")
    assert "blocks" not in text and "#1 70 samples (70.0%)" in text
    assert "kernel: copy_user < __x64_sys_read" in text
    assert stacks.human_text({"rows": []}, value="samples").startswith("(no samples in scope")
    assert stacks.folded_lines(ROWS, "samples")[0] == "app;main;hot_a 70"
