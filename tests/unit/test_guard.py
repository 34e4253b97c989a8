"""The guardrail's logic without a kernel: pricing, projection, refusal text, suggestions, the breaker's
timing and the instruction classifier. Rates here are hand-made inputs to pure functions; the kernel
behaviour is in test_guard_kernel.py."""

import io
import json

import pytest

from kit import catalog, guard, output
from kit.guard import model
from kit.binaries import insn
from kit.guard import costs, rate, suggest
from kit.errors import ExitCode, Refused
from kit.engine.contract import Context
from kit.engine.run import Options


def recipe(name="syscalls"):
    return catalog.load()[name]


def ctx(values=None, name="syscalls", hook_type=None):
    r = recipe(name)
    hook = next(h for h in r.hooks if hook_type in (None, h.type))
    vals = {p: None for p in r.params}
    vals.update(values or {})
    return Context(recipe=r, hook=hook, values=vals)


def thread(comm, r, pid, util=None, in_scope=True, tid=None, busy=False):
    return rate.Thread(pid=pid, tid=tid or pid, comm=comm, rate=r, in_scope=in_scope, util=util, busy=busy)


def a_rate(threads, total=None, scoped=False):
    hook = rate.RateHook("tracepoint", "raw_syscalls:sys_enter")
    total = sum(t.rate for t in threads) if total is None else total
    ins = sum(t.rate for t in threads if t.in_scope)
    return rate.Rate(hook=hook, window_s=0.2, total=total, in_scope=ins, scope_measured=True, scoped=scoped,
                     threads=threads, samples=500, lost=0)


@pytest.fixture(autouse=True)
def _made_up_pids_are_user_processes(monkeypatch):
    """The pids in these hand-made rates are inventions: whatever they are on this box, not kernel threads."""
    monkeypatch.setattr(suggest, "is_kthread", lambda pid: False)


FLAT = costs.Costs(in_ns=500, out_ns=200, progs_per_event=2, body_in_ns=400, body_out_ns=150,
                   source="test", terms={})


# -- pricing ------------------------------------------------------------------

def test_cost_class_defaults_price_a_raw_tracepoint_pair_from_its_primitives():
    c = costs.for_class("tracepoint_pair", "raw_tracepoint")
    assert c.in_ns == costs.DEFAULT_NS["raw_tracepoint_pair"]
    assert c.out_ns == costs.DEFAULT_NS["raw_tracepoint_pair_filter"]
    assert c.progs_per_event == 2 and c.source == "cost class defaults"


def test_a_kprobe_rung_pays_its_traps_in_scope_and_out_on_top_of_the_tracepoint_body():
    c = costs.for_class("tracepoint_hash", "kprobe")
    assert c.in_ns == costs.DEFAULT_NS["tracepoint_hash"] + costs.DEFAULT_NS["kprobe_traps"]
    assert c.out_ns == costs.DEFAULT_NS["tracepoint_filter"] + costs.DEFAULT_NS["kprobe_traps"]
    assert "kprobe_traps" in c.terms and c.source == "cost class defaults"


def test_calibration_replaces_defaults_term_by_term():
    cal = {"ns": {"tracepoint_hash": 99.0}, "body_ns": {"tracepoint_hash": 40.0}}
    c = costs.for_class("tracepoint_stack", "tracepoint", cal=cal)
    assert c.in_ns == 99.0 + costs.DEFAULT_NS["stack"]
    assert c.source == "calibration + cost class defaults"


@pytest.mark.parametrize("kind, default", [("push", "uprobe_emulated"), ("endbr64", "uprobe_stepped"),
                                           ("other", "uprobe_stepped"), ("nop", "uprobe_emulated")])
def test_uprobe_is_priced_by_the_kind_of_its_first_instruction(kind, default):
    c = costs.for_class("uprobe_count", "uprobe", kind=kind)
    assert c.in_ns == c.out_ns == costs.DEFAULT_NS[default]
    cal = {"uprobe": {"push": 600.0, "other": 11000.0}}
    c = costs.for_class("uprobe_pair", "uprobe", kind=kind, cal=cal)
    measured = 600.0 if kind == "push" else 11000.0  # a kind not calibrated is priced as single-stepped
    assert c.in_ns == measured + costs.DEFAULT_NS["uretprobe_extra"]


def test_a_calibration_for_another_kernel_is_ignored(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"version": costs.CALIBRATION_VERSION, "host": {"kernel": "0.0"}, "ns": {}}))
    cal, note = costs.load_calibration(str(path))
    assert cal is None and "another kernel" in note
    good = {"version": costs.CALIBRATION_VERSION, "host": costs.host_key(), "created": "x", "ns": {}}
    costs.save_calibration(good, str(path))
    assert costs.load_calibration(str(path))[0] == good


# -- projection -----------------------------------------------------------------

def test_projection_is_rate_times_cost_over_the_machine():
    r = a_rate([thread("a", 1e6, 10, util=0.1), thread("b", 1e6, 11, util=0.1, in_scope=False)], scoped=True)
    p_in, p_out = guard.project(r, FLAT, cpus=2)
    assert p_in == pytest.approx(100 * 1e6 * 500e-9 / 2)
    assert p_out == pytest.approx(100 * 1e6 * 200e-9 / 2)


def test_a_thread_already_on_a_whole_cpu_slows_down_instead_of_paying_on_top():
    # 4M events/s at 500 ns would need 2 CPUs more; a CPU-bound thread gets 2/(1+2) of its CPU taken.
    assert model.saturated(2.0, 1.0) == pytest.approx(2 / 3)
    assert model.saturated(0.3, 0.5) == pytest.approx(0.3)
    assert model.saturated(0.3, None) == pytest.approx(0.3)
    r = a_rate([thread("loop", 4e6, 10, util=1.0)])
    assert sum(guard.project(r, FLAT, cpus=2)) == pytest.approx(100 * (2 / 3) / 2)


def test_a_cpu_bound_thread_spends_its_share_of_a_cpu_in_proportion():
    # 250 ns of its own per event plus 500 ns of probe: the probe gets 2/3 of whatever CPU it gets.
    assert model.thread_cost(thread("loop", 4e6, 10, util=1.0, busy=True), 500) == pytest.approx(2 / 3)
    assert model.thread_cost(thread("loop", 2e6, 10, util=0.5, busy=True), 500) == pytest.approx(1 / 3)


def test_the_counting_events_own_slowdown_is_undone_only_for_cpu_bound_threads():
    # Counted at 120 ns per hit, a CPU-bound thread made 1/(180+120 ns) events per CPU-second: it makes 1/180.
    r, util, busy = rate.unperturbed(1e9 / 300, (1.0, 1.0), 120)
    assert (r, util, busy) == (pytest.approx(1e9 / 180), 1.0, True)
    r, util, busy = rate.unperturbed(0.5e9 / 300, (0.5, 1.0), 120)  # half a CPU on a crowded box: wants one
    assert (r, util, busy) == (pytest.approx(1e9 / 180), 1.0, True)
    r, util, busy = rate.unperturbed(1e5, (0.2, 0.25), 120)  # slack: keeps its rate, paid 1.2% of a CPU
    assert (r, util, busy) == (1e5, pytest.approx(0.2 - 0.012), False)
    # Runnable all along on a crowded box but running 2% of the time: a paced thread waiting for a CPU.
    r, util, busy = rate.unperturbed(2000, (0.02, 0.97), 10_000)
    assert (r, busy) == (2000, False)


def test_events_not_attributed_to_a_thread_are_in_scope_only_when_unscoped():
    unscoped = a_rate([thread("a", 1000, 10)], total=11000)
    assert guard.project(unscoped, FLAT, cpus=1)[0] == pytest.approx(100 * 11000 * 500e-9)
    scoped = a_rate([thread("a", 1000, 10)], total=11000, scoped=True)
    assert guard.project(scoped, FLAT, cpus=1) == pytest.approx((100 * 1000 * 500e-9, 100 * 10000 * 200e-9))


# -- verdict, message, suggestions -----------------------------------------------

def _estimate(c, r, budget=2.0):
    est = guard.Estimate(budget_pct=budget, ncpu=2, scoped=guard.is_scoped(c))
    return guard.priced(est, r, FLAT, cpus=2)


def test_unscoped_hot_path_is_refused_even_when_cheap_and_the_message_says_why():
    c = ctx()
    est = _estimate(c, a_rate([thread("bash", 50, 7)]))
    why = guard.verdict(c, est)
    assert why.startswith("syscalls hooks a hot path and needs a scope (--comm, --thread-comm, --pid, --tid, --cgroup)")
    for words in ("fires 50/s box-wide", "500 ns per event", "200 ns per filtered event", "budget 2%"):
        assert words in why


def test_scoped_run_over_budget_is_refused_and_under_budget_accepted():
    c = ctx({"comm": "quiet"})
    hot = a_rate([thread("loop", 1e6, 10, in_scope=False)], scoped=True)  # 10% of 2 CPUs filtered
    assert "would cost more than its budget" in guard.verdict(c, _estimate(c, hot))
    assert guard.verdict(c, _estimate(c, hot, budget=20)) is None


def test_suggestions_are_paste_ready_commands_for_the_busiest_comms_with_their_own_projection(monkeypatch):
    c = ctx({"tid": None})
    r = a_rate([thread("pay svc", 1e6, 10, util=0.2), thread("bash", 10, 11), thread("kit-me", 5, 12)])
    est = _estimate(c, r)
    opts = Options(duration=30.0, budget=5.0, json=True)
    sugg, kthreads = suggest.suggestions(c, opts, est, me=12)
    scopes = [s for s in sugg if s["kind"] == "scope"]
    # pay svc alone costs 25% of 2 CPUs: over the 5% budget, so its command carries the budget it needs
    assert scopes[0]["command"] == "kit run syscalls --comm 'pay svc' --for 30s --budget 32 --json"
    assert scopes[1]["command"] == "kit run syscalls --comm bash --for 30s --budget 13 --json"  # filtering pay svc: 10%
    assert scopes[0]["cpu_pct"] == pytest.approx(100 * (1e6 * 500e-9 + 15 * 200e-9) / 2, rel=1e-3)
    assert not scopes[0]["fits"] and scopes[1]["fits"] is False  # bash still pays the filter for pay svc
    assert len(scopes) == 2 and kthreads == []  # kit itself (pid 12) is never suggested


def test_check_before_raises_refused_with_suggestions_and_force_turns_it_into_a_warning(monkeypatch):
    c = ctx()
    est = _estimate(c, a_rate([thread("hot", 1e5, 10)]))
    monkeypatch.setattr(guard, "estimate", lambda ctx, opts: est)
    with pytest.raises(Refused) as e:
        guard.check_before(c, Options(duration=10.0), io.StringIO())
    assert e.value.code == ExitCode.REFUSED
    assert any(line.startswith("  kit run syscalls --comm hot") for line in e.value.details)
    err = io.StringIO()
    out = guard.check_before(c, Options(duration=10.0, force=True), err)
    assert out["verdict"] == "forced" and "because of --force" in err.getvalue()


def test_dry_run_reports_the_refusal_instead_of_raising(monkeypatch):
    c = ctx()
    est = _estimate(c, a_rate([thread("hot", 1e5, 10)]))
    monkeypatch.setattr(guard, "estimate", lambda ctx, opts: est)
    out = guard.check_before(c, Options(duration=10.0, dry_run=True), io.StringIO())
    assert out["verdict"] == "refuse" and out["suggestions"]
    text = guard.format_estimate({"recipe": "syscalls", "hook": "raw_tracepoint", "estimate": out})
    assert "verdict: refused" in text and "kit run syscalls --comm hot" in text


# -- the breaker ---------------------------------------------------------------

class FakeCounters:
    """kit_stats as the meter reads it, advanced by the test."""

    def __init__(self):
        self.events = self.filtered = 0

    def __call__(self):
        return {"events": self.events, "filtered": self.filtered, "map_full": 0, "stack_lost": 0, "lost_other": 0}


def meter(budget, counters):
    est = guard.Estimate(cpu_pct=0.1)
    est.costs = FLAT
    return guard.Meter(None, Options(duration=10.0, budget=budget), None, est, clock=lambda: 0.0, read=counters,
                       kernel_check=False)


def test_breaker_trips_only_after_the_overhead_stays_over_budget():
    ctr = FakeCounters()
    m = meter(1.0, ctr)  # 1% of 2 CPUs = 20 ms/s = 40k in-scope events/s at 500 ns
    trips = []
    for second in range(1, 8):
        ctr.events += 100_000 if second != 2 else 1_000  # over in [0,1], a dip in [1,2], over from 2 on
        trips.append(m.tick(float(second)))
    assert trips[:4] == [None] * 4
    assert trips[4] and "stayed over the budget 1%" in trips[4] and "for 3s" in trips[4]  # over since 2s
    assert m.peak == pytest.approx(100 * 100_000 * 500e-9 / 2)


def test_kernel_run_count_above_kits_counters_raises_the_price():
    ctr = FakeCounters()
    m = meter(50.0, ctr)
    m.run_scale = 1.5  # what _stats_stop sets when the kernel ran the programs 1.5x more than counted
    ctr.events = 10_000
    m.tick(1.0)
    assert m.pct == pytest.approx(1.5 * 100 * 10_000 * 500e-9 / 2)


def test_summary_line_gives_events_cost_cpu_and_the_estimate():
    ov = {"events": 10, "filtered": 5, "ns_per_event": 500, "ns_per_filtered": 200, "cpu_pct": 0.1234,
          "seconds": 2.0, "peak_cpu_pct": 0.2, "budget_pct": 2.0, "estimate_cpu_pct": 0.1, "forced": True}
    line = output.summary_line(ov)
    assert line.startswith("cost: 10 events x 500 ns + 5 filtered x 200 ns = 0.123% of CPU")
    assert "estimated 0.100% before attaching" in line and "--force" in line


# -- the instruction classifier ----------------------------------------------------

@pytest.mark.parametrize("code, kind", [
    ("55", "push"), ("4154", "push"), ("53", "push"),                      # push %rbp / %r12 / %rbx
    ("90", "nop"), ("6690", "nop"), ("0f1f4000", "nop"), ("0f1f440000", "nop"),
    ("eb00", "jmp"), ("e900000000", "jmp"), ("e800000000", "call"), ("7400", "jcc"), ("0f8400000000", "jcc"),
    ("f30f1efa", "endbr64"),
    ("b827000000", "other"),           # mov $0x27,%eax: libc getpid here
    ("8b4710", "other"),               # mov 0x10(%rdi),%eax: libc pthread_mutex_lock here
    ("803d3133", "other"),             # cmpb $0,..(%rip): libc read here
    ("4883ec08", "other"), ("4889f8", "other"), ("4190", "other"),  # sub, mov, xchg %eax,%r8d
    ("66e800000000", "other"),         # a 16-bit call override is single-stepped
    # the kernel's own rules (arch/x86/kernel/uprobes.c): prefixes + 0x90 and its x86_nops are emulated nops,
    # bnd-prefixed branches are emulated, a push takes no prefix but REX 0x41, other 0f 1f forms are stepped
    ("f390", "nop"), ("0f1f00", "nop"), ("0f1f8000000000", "nop"), ("660f1f440000", "nop"),
    ("f2e900000000", "jmp"), ("f2e800000000", "call"), ("f20f8400000000", "jcc"),
    ("4054", "other"), ("6650", "other"), ("4154", "push"), ("0f1f4400ff", "other"),
])
def test_first_instruction_kinds(code, kind):
    assert insn.kind(bytes.fromhex(code)) == kind


def test_every_sample_function_is_classified_as_its_own_kind():
    code, offsets = insn.sample_blob()
    assert set(offsets) == set(insn.KINDS)
    for k, off in offsets.items():
        assert insn.kind(code[off:off + 16]) == k


def test_when_filtering_alone_is_over_budget_the_hint_says_no_scope_fits(monkeypatch):
    c = ctx({"comm": "quiet"})
    est = _estimate(c, a_rate([thread("storm", 1e6, 10, in_scope=False)], scoped=True))  # 10% just filtering
    monkeypatch.setattr(guard, "estimate", lambda ctx, opts: est)
    with pytest.raises(Refused) as e:
        guard.check_before(c, Options(duration=10.0), io.StringIO())
    hint = "\n".join(e.value.details)
    assert "no scope fits a 2% budget" in hint and "storm 1.00M/s" in hint
    assert "raise --budget above 10" in hint
