"""The guardrail on the real kernel, under loads the tests create.

Each recipe on a hot path gets one row in CASES: the load that makes its rate
hook hot (as fast as it goes) and a steady, moderate one. Every test runs for
every row, so a new hot-path recipe is covered by adding its row.

Ground truth is the load itself: its own comm for the suggestions, and its own
thread CPU time per call, before and while kit is attached, for what the probe
really costs it. Estimate and measurement are compared on the same load in
the same test; nothing is compared with a constant.
"""

import dataclasses
import json
import os

import pytest

from calibration import calibrated_env
from kit import catalog
from conftest import KitProc, run_kit
from workloads.load import Load

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


@dataclasses.dataclass
class Case:
    recipe: str
    hot: tuple          # (load kind, options): the rate hook as hot as this load can make it
    steady: tuple       # (load kind, options): a moderate, steady rate on the same hook
    args: tuple = ()    # what else the recipe needs (a binary, a symbol)
    # Whether the probe's cost shows in the load's own CPU time inside its calls: not for a probe in the
    # scheduler (offcpu), which runs on whichever task switches in or out, often not inside a call.
    own_cpu_truth: bool = True

    def __str__(self):
        return self.recipe


CASES = [
    Case("syscalls", hot=("syscalls", {"seconds": 120}), steady=("syscalls", {"seconds": 120, "pace": 20000})),
    # The steady pace must keep filtering everybody's events under the tests' 5% budget (a single-stepped
    # uprobe costs ~11 us per hit) and still give the kernel's run-count check its 5000 events in a run.
    Case("offcpu", hot=("pingpong", {"seconds": 120}), steady=("pingpong", {"seconds": 120, "pace": 2000}),
         own_cpu_truth=False),
    Case("lockhold", hot=("mutex", {"seconds": 120}), steady=("mutex", {"seconds": 120, "pace": 2000})),
    Case("getaddrinfo", hot=("resolve", {"seconds": 120}), steady=("resolve", {"seconds": 120, "pace": 2000})),
]


@pytest.fixture(scope="module", autouse=True)
def calibrated(kernel):
    """This host's costs, from one `kit calibrate` per session, for every kit this module starts."""
    saved = os.environ.get("KIT_CALIBRATION")
    cal = calibrated_env(os.environ)
    yield cal
    if saved is None:
        os.environ.pop("KIT_CALIBRATION", None)
    else:
        os.environ["KIT_CALIBRATION"] = saved


def _comm(tag):
    return f"kit-g{tag}{os.getpid() % 100000}"[:15]


def _load(spec, tag, **more):
    kind, opts = spec
    return Load(kind, _comm(tag), **{**opts, **more})


def _bpf_stats_sysctl():
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        return f.read().strip()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_refuses_unscoped_hot_hook_and_suggests_the_busiest_comm(case, kernel, no_leftovers):
    with _load(case.hot, "h") as hot:
        hot.go()
        p = run_kit("run", case.recipe, *case.args, "--for", "5s")
        est = run_kit("estimate", case.recipe, *case.args, "--json")
        hot.finish()
    assert p.returncode == 4, p.stderr
    assert f"kit run {case.recipe} --comm {hot.comm}" in p.stderr, p.stderr
    # A hot-path recipe is refused for having no scope; any other for what the measured rate would cost.
    reason = "needs a scope" if catalog.load()[case.recipe].guard.hot_path else "would cost more than its budget"
    for words in (reason, "box-wide", "ns per event", "% of 2 CPUs", "budget 2%", "--force"):
        assert words in p.stderr, (words, p.stderr)
    assert p.stdout == ""
    # `kit estimate` says the same without attaching, as data.
    assert est.returncode == 4, est.stderr
    e = json.loads(est.stdout)["estimate"]
    assert e["verdict"] == "refuse" and e["busiest_comms"][0]["comm"] == hot.comm
    # the hot load's own line: its scope, the --budget it needs if it is over the default, the user's --json
    first = e["suggestions"][0]["command"]
    assert f"--comm {hot.comm}" in first and first.endswith("--json"), first
    assert e["events_per_s"] >= e["busiest_comms"][0]["events_per_s"] > 0


@pytest.mark.parametrize("case", CASES, ids=str)
def test_accepts_a_quiet_scope_and_refuses_a_scope_over_budget(case, kernel, no_leftovers):
    with _load(case.steady, "s") as load, Load("idle", _comm("q")) as quiet:
        load.go()
        quiet.go()
        over = run_kit("run", case.recipe, *case.args, "--comm", load.comm, "--budget", "0.05", "--for", "3s")
        # Other tests on this box run syscall storms of their own, and any scope pays to filter those out:
        # the budget leaves room for three times what that costs right now (and at least 5%); a storm that
        # starts in between is told apart by the refusal itself ("no scope fits"), and waited out.
        for _ in range(5):
            budget = _budget_above_others(case, quiet.comm)
            ok = run_kit("run", case.recipe, *case.args, "--comm", quiet.comm, "--for", "3s", "--budget", budget)
            if not (ok.returncode == 4 and "no scope fits" in ok.stderr):
                break
        load.finish()
        quiet.finish()
    assert over.returncode == 4, over.stderr
    assert "would cost more than its budget" in over.stderr and "budget 0.05%" in over.stderr
    assert ok.returncode == 0, ok.stderr
    # The human result ends with what the run cost, the pre-attach estimate beside it.
    last = ok.stdout.rstrip("\n").splitlines()[-1]
    assert last.startswith("cost: ") and "estimated" in last and f"budget {budget}%" in last, ok.stdout


def _budget_above_others(case, comm, times=3, floor=5.0):
    """A budget `times` what filtering everybody else's events on the hook costs right now, at least floor %."""
    p = run_kit("estimate", case.recipe, *case.args, "--comm", comm, "--budget", "100", "--json")
    assert p.returncode == 0, p.stderr
    return f"{max(floor, times * json.loads(p.stdout)['estimate']['filtered_pct']):.3g}"


def probe_cost_per_call(before, during, after):
    """What the probe added to each of the load's calls, from the load's own CPU time inside its calls:
    the median over its tenth-of-a-second samples with the probe, minus the median without it, before and
    after (so neither a drift nor a burst of other tests crowding the cores passes for the probe's cost)."""
    def per_call(s):
        return [(b["calls_ns"] - a["calls_ns"]) / (b["calls"] - a["calls"])
                for a, b in zip(s, s[1:]) if b["calls"] > a["calls"]]
    import statistics
    extra = statistics.median(per_call(during)) - statistics.median(per_call(before) + per_call(after))
    return extra, during[-1]["calls"] - during[0]["calls"]


@pytest.mark.parametrize("which", ["hot", "steady"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_estimate_and_meter_are_within_a_factor_of_two_of_each_other_and_of_the_loads_own_cpu(
        case, which, kernel, no_leftovers):
    # The load's own clock is the noisiest reading here (a few us per call, measured in CPU time that any
    # other activity on two cores disturbs): a disagreement with it is retaken once, both takes reported.
    takes = []
    for _take in range(2):
        meter_vs_truth = _estimate_meter_and_truth(case, which)
        if meter_vs_truth is None:
            return
        takes.append(meter_vs_truth)
        meter, truth = meter_vs_truth
        if truth > 0 and 0.5 <= meter / truth <= 2.0:
            return
    pytest.fail("meter (in scope) vs the load's own: " + ", ".join(f"{m:.3f}% vs {t:.3f}%" for m, t in takes))


def _estimate_meter_and_truth(case, which):
    """One run: checks the estimate against the meter and the kernel's counts; returns (meter's in-scope
    cost, the load's own extra CPU) in % of the machine, or None where the load's clock cannot see it."""
    import time
    stats_before = _bpf_stats_sysctl()
    with _load(getattr(case, which), "f") as load:
        load.go()
        time.sleep(2.5)  # a baseline of the load's CPU per call before anything is attached
        t_start = time.monotonic()
        kit = KitProc("run", case.recipe, *case.args, "--comm", load.comm, "--for", "6s", "--budget", "100",
                      "--json")
        kit.wait_attached()
        t_attached = time.monotonic()
        kit.finish()
        t_end = time.monotonic()
        time.sleep(2.0)  # the same, after
        load.finish()
    assert kit.code == 0, kit.stderr
    ov = kit.json()["overhead"]
    est, measured = ov["estimate_cpu_pct"], ov["cpu_pct"]
    assert est > 0 and measured > 0, ov

    # Ground truth: the load's own CPU time per call, without and with the probe.
    before = load.between(0, t_start)[1:]
    during = load.between(t_attached + 1.0, t_end - 0.5)
    after = load.between(t_end + 0.3, t_end + 2.0)
    assert min(len(before), len(during), len(after)) >= 3, (load.samples, t_start, t_attached, t_end)
    extra, calls = probe_cost_per_call(before, during, after)
    wall = during[-1]["mono"] - during[0]["mono"]

    # The estimate against the meter, both at the calibrated price (the kernel's check of the price, which
    # moves with how crowded the cores are, is compared with the load's own time below).
    # The load's part: what the estimate put in scope against what the meter counted in scope. A CPU-bound
    # load pays for the probe out of the CPU it gets, and the estimate assumes it gets the whole CPU it
    # wants; on a box other tests share it may get less, so compare per CPU it actually got.
    # Whether a load that blocks between its calls (ping-pong) pays on top or slows down depends on how
    # crowded the cores are, so for the hot loads both readings are allowed: per CPU got, or as is.
    got = (during[-1]["cpu_ns"] - during[0]["cpu_ns"]) / wall / 1e9 if which == "hot" else 1.0
    gots = {got, 1.0}
    ncpu = ov["estimate"]["ncpu"]
    price_in = ov["estimate"]["cost"]["in_ns"]
    est_in = ov["estimate"]["in_scope_pct"]
    counted_in = ov["events"] * price_in / ov["seconds"] / 1e9 / ncpu * 100
    detail = f"({got:.2f} CPU): {json.dumps(ov)[:2500]}"
    assert any(0.5 <= counted_in / g / est_in <= 2.0 for g in gots), \
        f"in scope: estimate {est_in}% vs counted {counted_in:.3f}% {detail}"
    # The whole: the same, plus filtering everybody else's events. Other tests on this box start and stop
    # syscall storms at will, so the whole is compared when the rest of the box kept the rate it had when
    # the estimate was made.
    others_then = ov["estimate"]["events_per_s"] - ov["estimate"]["in_scope_per_s"]
    others_now = ov["filtered"] / ov["seconds"]
    if 0.5 <= (others_now + 1000) / (others_then + 1000) <= 2.0:
        assert any(0.5 <= ov["calibrated_cpu_pct"] / g / est <= 2.0 for g in gots), \
            f"whole: estimate {est}% vs counted {ov['calibrated_cpu_pct']}% {detail}"

    # The meter's price, checked by the kernel, against what the load itself paid -- where the load's own
    # clock can see it: a probe adding ~1 us to a call whose CPU time wobbles by more between samples
    # (a resolver lookup from Python) is below what that ground truth resolves.
    import statistics
    call_ns = statistics.median((b["calls_ns"] - a["calls_ns"]) / (b["calls"] - a["calls"])
                                for a, b in zip(before, before[1:]) if b["calls"] > a["calls"])
    if case.own_cpu_truth and ov["ns_per_event"] >= 0.1 * call_ns:
        # % of the machine; at or below 0 when the load's clock missed the probe: a disagreement, retaken
        truth = extra * calls / wall / 1e9 / ncpu * 100
        in_scope = ov["events"] * ov["ns_per_event"] / ov["seconds"] / 1e9 / ncpu * 100

    # The kernel's run count agrees with kit's counters, and statistics were switched off again.
    st = ov["bpf_stats"]
    assert st["run_cnt"] > 0 and abs(st["runs_per_event"] - st["expected_runs_per_event"]) < 0.1 * \
        st["expected_runs_per_event"], st
    assert _bpf_stats_sysctl() == stats_before
    if case.own_cpu_truth and ov["ns_per_event"] >= 0.1 * call_ns:
        return in_scope, truth
    return None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_budget_exceeded_while_running_trips_the_breaker(case, kernel, no_leftovers):
    # Quiet when kit estimates, hot a few seconds after it attaches. --force: other tests' syscall storms
    # may start between the budget's choice and the estimate; this test is about the breaker.
    with _load(case.hot, "b", delay=6) as load:
        load.go()
        # Floor 2%: the hot ping-pong's offcpu blocks peak at ~5.5% of 2 CPUs here, too close to 5% for
        # a fresh machine's CI (it ran under 5% for the whole minute there).
        budget = _budget_above_others(case, load.comm, times=1.5, floor=2.0)
        kit = KitProc("run", case.recipe, *case.args, "--comm", load.comm, "--budget", budget, "--for", "60s",
                      "--json", "--force")
        kit.wait_attached()
        kit.finish()
        load.finish()
    assert kit.code == 7, kit.stderr
    res = kit.json()
    assert res["stopped_by"] == "breaker" and res["duration_s"] < 60
    assert any("stopped by the guardrail" in n and f"budget {budget}%" in n for n in res["notes"]), res["notes"]
    assert res["overhead"]["estimate"]["verdict"] in ("accept", "forced")
    assert res["overhead"]["peak_cpu_pct"] > float(budget)
    assert res["rows"] and all(r["comm"] == load.comm for r in res["rows"]), "partial results are printed"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_force_overrides_a_refusal_and_is_recorded(case, kernel, no_leftovers):
    with _load(case.steady, "o") as load:
        load.go()
        # unscoped: refused for its scope (hot path) or, with a budget nothing fits, for its cost
        budget = "100" if catalog.load()[case.recipe].guard.hot_path else "0.0001"
        p = run_kit("run", case.recipe, *case.args, "--force", "--budget", budget, "--for", "2s", "--json")
        load.finish()
    assert p.returncode == 0, p.stderr
    assert "warning: running despite the guardrail because of --force" in p.stderr
    res = json.loads(p.stdout)
    assert res["forced"] is True and res["overhead"]["forced"] is True
    assert res["overhead"]["estimate"]["verdict"] == "forced"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dry_run_prints_the_estimate_and_attaches_nothing(case, kernel, no_leftovers):
    with Load("idle", _comm("d")) as quiet:
        quiet.go()
        p = run_kit("run", case.recipe, *case.args, "--comm", quiet.comm, "--dry-run")
        quiet.finish()
    # Whether it would attach depends on what else runs on the box; either way it says so, and attaches nothing.
    assert p.returncode in (0, 4), p.stderr
    verdict = "verdict: would attach" if p.returncode == 0 else "verdict: refused"
    assert "estimate only, nothing attached" in p.stdout and verdict in p.stdout, p.stdout
    assert "ns per event in scope" in p.stdout and "box-wide" in p.stdout
    assert " attached to " not in p.stderr
