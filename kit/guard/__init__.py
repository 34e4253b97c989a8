"""The guardrail: price a run before attaching it, refuse what would hurt the
box, and stop a running probe whose measured overhead stays over budget.

Before attaching (check_before):
  projected CPU % = (events/s in scope x ns per event in scope
                     + events/s filtered out x ns per filtered event) / (CPUs x 1e9) x 100
with the rates measured on this box just now (kit/guard/rate.py: perf counting and
sampling on the recipe's rate hook, no BPF) and the costs from this host's
calibration or the recipe's cost class (kit/guard/costs.py). The sum runs per
thread: a CPU-bound thread cannot pay on top of a whole CPU, it slows down,
and is priced that way (thread_cost). A run is refused when
the projection exceeds the budget, or when a hot-path recipe has no scope;
the refusal names the busiest comms on that hook as ready-to-paste commands
(kit/guard/suggest.py).
--force overrides a refusal (a warning, and `forced` in the result); it does
not switch off the breaker: --budget says what the user will pay.

While running (Meter): kit's own per-CPU counters (events in scope,
events filtered) priced with the same costs, every second. From attach until
STATS_S and STATS_MIN_EVENTS have passed, the kernel's own run count and run
time (BPF_ENABLE_STATS, released afterwards) check those counters and that
price: more program runs than the counters explain, or a body slower than
calibrated, raise the price for the rest of the run. Over budget for
BREAKER_S seconds in a row trips the breaker.
"""

import dataclasses
import time
import weakref

from kit.engine import prelude
from kit.guard import blockshape, bpfstats, calibrate_offcpu, costs, rate
from kit.host import perfevent
from kit.errors import Refused, Unsupported
from kit.guard.model import _fmt_rate, _pct, cpu_pct, ncpu, project, run_costs

DEFAULT_BUDGET = 2.0   # percent of the machine's CPU (all CPUs together)
BREAKER_S = 3.0        # measured overhead must stay over budget this long to trip
STATS_S = 1.0          # the kernel's run-time statistics stay on this long once events flow...
STATS_MIN_EVENTS = 5000  # ...and until this many events were counted (a quiet window says nothing),
STATS_MIN_IN_SCOPE = 200  # in-scope events enough to put the body time beyond the filter's on them
STATS_MAX_S = 10.0     # but never longer than this: while on, every BPF program on the box pays for them
RUN_SCALE_SLACK = 1.25  # kernel runs / counted runs above this: kit's counters undercount


def budget_of(opts):
    return opts.budget if getattr(opts, "budget", None) is not None else DEFAULT_BUDGET


def is_scoped(ctx):
    return any(ctx.values.get(p.name) is not None for p in ctx.recipe.scope_params())


def attached_per_process(ctx):
    """True when every uprobe goes into the scoped processes only (kit/engine/uprobes.py plans a hot-path
    recipe per process): the kernel installs the breakpoint in those processes, so the others'
    calls never trap and cost nothing to filter."""
    planned = ctx.planned_uprobes
    return bool(planned) and all(p.pid > 0 for p in planned)


class Estimate(dict):
    """The pre-attach estimate: a JSON-able dict, plus the objects the meter needs."""
    costs = None
    rate = None


def estimate(ctx, opts):
    """Measure the rate, price it, and compare with the budget. Never raises for budget reasons."""
    budget = budget_of(opts)
    est = Estimate(budget_pct=budget, ncpu=ncpu(), scoped=is_scoped(ctx))
    try:
        hook = rate.rate_hook(ctx)
        c = run_costs(ctx, hook)
        if attached_per_process(ctx):
            c = dataclasses.replace(c, out_ns=0.0, body_out_ns=0.0)
        r = rate.for_run(ctx, measure_ns=c.measure_ns)
    except (perfevent.PerfError, Unsupported) as e:
        c = run_costs(ctx)
        est.costs = c
        est.update(cost=c.as_dict(), cost_note=c.note, rate_error=str(e))
        return est
    return priced(est, r, block_priced(ctx, c, r))


def block_priced(ctx, c, r):
    """offcpu: what a block costs depends on how often blocks come on a CPU (how warm the caches stay)
    and on how deep the blocked threads' stacks are (kit/guard/costs.py offcpu_priced); both known only now."""
    if ctx.recipe.guard.cost_class != "offcpu_block":
        return c
    threads = [(t.pid, t.tid) for t in sorted(r.threads, key=lambda t: -t.rate) if t.in_scope and t.pid]
    try:
        shape = blockshape.sample(threads) if threads else None
    except (OSError, Unsupported):
        shape = None  # priced as the calibration's own ping-pong
    cal, _ = costs.load_calibration()
    return costs.offcpu_priced(c, r.in_scope_by_cpu or {}, shape, cal, totals=r.by_cpu)


def priced(est, r, c, cpus=None):
    """Fills the estimate with the rate r priced at costs c."""
    est.costs, est.rate = c, r
    p_in, p_out = project(r, c, cpus=cpus)
    est.update(r.as_dict())
    est.update(cost=c.as_dict(), cost_note=c.note, cpu_pct=round(p_in + p_out, 4),
               in_scope_pct=round(p_in, 4), filtered_pct=round(p_out, 4),
               linear_cpu_pct=round(cpu_pct(r.in_scope, max(r.total - r.in_scope, 0.0), c, cpus), 4))
    return est


def _why(ctx, est):
    c = est.costs
    if est.rate is None:
        return f"its event rate could not be measured ({est.get('rate_error')})"
    r = est.rate
    scope = f", {_fmt_rate(r.in_scope)} in scope" if est["scoped"] else ""
    return (f"{r.hook.label} fires {_fmt_rate(r.total)} box-wide{scope}; "
            f"at {c.in_ns:.0f} ns per event and {c.out_ns:.0f} ns per filtered event ({c.source}) "
            f"that is ~{_pct(est['cpu_pct'])} of {est['ncpu']} CPUs, budget {est['budget_pct']:g}%")


def verdict(ctx, est):
    """None when the run may attach, else the reason it may not."""
    g = ctx.recipe.guard
    if g.scope_required and not est["scoped"]:
        scopes = ", ".join("--" + p.flag for p in ctx.recipe.scope_params())
        return f"{ctx.recipe.name} hooks a hot path and needs a scope ({scopes}): " + _why(ctx, est)
    if "cpu_pct" in est and est["cpu_pct"] > est["budget_pct"]:
        return f"{ctx.recipe.name} would cost more than its budget: " + _why(ctx, est)
    return None


def check_before(ctx, opts, err):
    """The pre-attach estimate; raises Refused unless --force (or --dry-run, which reports the verdict)."""
    if ctx.recipe.guard.cost_class == "offcpu_block" and not getattr(opts, "dry_run", False):
        note = calibrate_offcpu.first_use(err)  # a host never calibrated: measure a block here, once
        if note:
            ctx.notes.append(note)
    est = estimate(ctx, opts)
    why = verdict(ctx, est)
    if est.get("rate_error"):
        err.write(f"kit: warning: the guardrail could not measure the event rate ({est['rate_error']}); "
                  "only the scope rule applies\n")
    if why is None:
        est["verdict"] = "accept"
        return est
    from kit.guard import suggest
    sugg, kthreads = suggest.suggestions(ctx, opts, est)
    est.update(verdict="refuse", reason=why, suggestions=sugg, kernel_threads=kthreads)
    if getattr(opts, "dry_run", False):
        return est
    if not opts.force:
        raise Refused(why, details=suggest.render(est))
    est["verdict"] = "forced"
    err.write(f"kit: warning: running despite the guardrail because of --force: {why}\n")
    return est


def format_estimate(result):
    """Text for `kit estimate` / `kit run --dry-run`."""
    est = result.get("estimate") or {}
    lines = [f"{result['recipe']} via {result['hook']}: estimate only, nothing attached"]
    if "events_per_s" in est:
        lines.append(f"  rate:   {est['hook']}: {_fmt_rate(est['events_per_s'])} box-wide, "
                     f"{_fmt_rate(est['in_scope_per_s'])} in scope"
                     + ("" if est.get("scope_measured", True) else " (scope not measurable from the task: all counted)")
                     + (f" (measured {est['window_s']:.2f}s, {est['samples']} samples)" if est.get("window_s")
                        else " (set by the sampling frequency: not measured)"))
    else:
        lines.append(f"  rate:   not measured ({est.get('rate_error')})")
    c = est.get("cost", {})
    lines.append(f"  cost:   {c.get('in_ns')} ns per event in scope, {c.get('out_ns')} ns per filtered event "
                 f"({c.get('source')}" + (f"; uprobe first instruction: {c['uprobe_first_insn']}"
                                          if c.get("uprobe_first_insn") else "") + ")")
    if est.get("cost_note"):
        lines.append(f"          {est['cost_note']}")
    if "cpu_pct" in est:
        lines.append(f"  total:  ~{est['cpu_pct']:.3f}% of {est['ncpu']} CPUs "
                     f"(in scope {est['in_scope_pct']:.3f}%, filtered {est['filtered_pct']:.3f}%), "
                     f"budget {est['budget_pct']:g}%")
    if est.get("busiest_comms"):
        from kit.guard import suggest
        lines.append("  busiest: " + suggest.busiest_text(est["busiest_comms"]))
    if est.get("verdict") == "refuse":
        lines.append(f"  verdict: refused: {est['reason']}")
        from kit.guard import suggest
        lines += ["  " + line for line in suggest.render(est)]
    else:
        lines.append("  verdict: would attach")
    return "\n".join(lines) + "\n"


class Meter:
    """The run's measured overhead, from kit's counters x the estimate's costs, checked by the kernel."""

    def __init__(self, ctx, opts, bpf, est, clock=time.monotonic, read=None, kernel_check=True):
        if read is None:
            read = lambda: prelude.read_stats(bpf)  # noqa: E731
        self._read = read
        self.ctx, self.bpf, self.est, self.clock = ctx, bpf, est, clock
        self.budget = budget_of(opts)
        self.forced = bool(opts.force)
        self.costs = getattr(est, "costs", None) or run_costs(ctx)
        self.t0 = clock()
        self.last = (0.0, 0, 0)   # (elapsed, events, filtered) at the last interval
        self.pct = 0.0
        self.peak = 0.0
        self.over_since = None
        self.excess_ns = 0.0      # per counted event, from the kernel's body time
        self.excess_in_ns = 0.0   # per in-scope event, from the kernel's body time beyond the filter's
        self.run_scale = 1.0      # kernel runs / runs kit's counters explain
        self.stats = None
        self.stats_result = None if kernel_check else {"skipped": True}
        self._stats_at = None
        self._stats_since = 0.0
        self._finalizer = None

    # -- the kernel's check -------------------------------------------------
    def _stats_start(self, elapsed):
        fds = bpfstats.program_fds(self.bpf)
        w = bpfstats.Window(fds)
        self._stats_at = (elapsed, self._read())
        if w.start(elapsed):
            self.stats = w
            self._finalizer = weakref.finalize(self, w.close)
        else:
            self.stats_result = {"error": "BPF_ENABLE_STATS refused by this kernel"}

    def _stats_stop(self, elapsed):
        w, self.stats = self.stats, None
        w.stop(elapsed)
        s1 = self._read()
        _, s0 = self._stats_at
        res = w.result()
        events, filtered = s1["events"] - s0["events"], s1["filtered"] - s0["filtered"]
        counted = events + filtered
        c = self.costs
        res.update(events=events, filtered=filtered, programs=len(w.fds))
        if res["run_cnt"]:
            res["ns_per_run"] = round(res["run_time_ns"] / res["run_cnt"], 1)
        if counted < STATS_MIN_EVENTS:
            res["note"] = f"only {counted} events while statistics were on: too few to check the price"
        elif counted:
            expected_body = (events * c.body_in_ns + filtered * c.body_out_ns) / counted
            body = res["run_time_ns"] / counted
            ratio = res["run_cnt"] / (counted * c.progs_per_event)
            excess = max(0.0, res["run_time_ns"] - events * c.body_in_ns - filtered * c.body_out_ns)
            if events >= STATS_MIN_IN_SCOPE:
                # The filter's body is a compare, calibrated; what the kernel timed beyond it is the
                # in-scope work the cost class did not foresee (offcpu's unwind, lockhold's extra probe).
                self.excess_in_ns = excess / events
            else:
                self.excess_ns = excess / counted
            self.run_scale = ratio if ratio > RUN_SCALE_SLACK else 1.0
            res.update(runs_per_event=round(res["run_cnt"] / counted, 3), expected_runs_per_event=c.progs_per_event,
                       body_ns_per_event=round(body, 1), expected_body_ns_per_event=round(expected_body, 1),
                       correction_ns_per_event=round(self.excess_ns, 1),
                       correction_ns_per_event_in_scope=round(self.excess_in_ns, 1), run_scale=round(self.run_scale, 3))
        if not counted and res["run_cnt"] >= STATS_MIN_EVENTS:
            res["warning"] = (f"the kernel ran kit's programs {res['run_cnt']} times but kit's counters saw no "
                              "event: the template does not count its events, so the meter reads low")
        self.stats_result = res

    def close(self):
        if self.stats is not None:
            self._stats_stop(self.clock() - self.t0)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    # -- pricing ----------------------------------------------------------
    def _ns(self, events, filtered):
        c = self.costs
        return ((events * c.in_ns + filtered * c.out_ns) * self.run_scale + (events + filtered) * self.excess_ns
                + events * self.excess_in_ns)

    def _pct(self, events, filtered, seconds):
        if seconds <= 0:
            return 0.0
        return 100.0 * self._ns(events, filtered) / (seconds * 1e9 * ncpu())

    def tick(self, elapsed):
        """Called every loop tick; returns a reason string when the breaker trips, else None."""
        if self.stats is None and self.stats_result is None:
            self._stats_start(elapsed)
            self._stats_since = elapsed
        elif self.stats is not None and elapsed - self._stats_at[0] >= STATS_S:
            s = self._read()
            _, s0 = self._stats_at
            counted = s["events"] + s["filtered"] - s0["events"] - s0["filtered"]
            if counted >= STATS_MIN_EVENTS or elapsed - self._stats_since >= STATS_MAX_S:
                self._stats_stop(elapsed)
            elif counted == 0:  # nothing flows yet: start the window again from here
                self.stats.restart(elapsed)
                self._stats_at = (elapsed, s)
            # else: events flow, but too few yet; keep collecting
        t0, e0, f0 = self.last
        if elapsed - t0 < 1.0:
            return None
        s = self._read()
        self.pct = self._pct(s["events"] - e0, s["filtered"] - f0, elapsed - t0)
        self.peak = max(self.peak, self.pct)
        self.last = (elapsed, s["events"], s["filtered"])
        if self.pct > self.budget:
            if self.over_since is None:
                self.over_since = t0
            if elapsed - self.over_since >= BREAKER_S:
                return (f"stopped by the guardrail: measured overhead {self.pct:.2f}% of {ncpu()} CPUs stayed over "
                        f"the budget {self.budget:g}% for {elapsed - self.over_since:.0f}s "
                        f"({_fmt_rate((s['events'] - e0) / (elapsed - t0))} events in scope, "
                        f"{_fmt_rate((s['filtered'] - f0) / (elapsed - t0))} filtered); "
                        "narrow the scope or raise --budget")
        else:
            self.over_since = None
        return None

    def progress(self):
        return f"overhead {self.pct:.2f}% (budget {self.budget:g}%)"

    def summary(self, stats):
        """The result's `overhead`: what the run cost, with the pre-attach estimate beside it."""
        self.close()
        seconds = max(self.clock() - self.t0, 1e-9)
        c = self.costs
        events, filtered = stats["events"], stats["filtered"]
        est = {k: v for k, v in self.est.items() if k not in ("suggestions",)}
        return {
            "events": events,
            "filtered": filtered,
            "seconds": round(seconds, 3),
            "events_per_s": round((events + filtered) / seconds, 1),
            "ns_per_event": round(c.in_ns * self.run_scale + self.excess_ns + self.excess_in_ns),
            "ns_per_filtered": round(c.out_ns * self.run_scale + self.excess_ns),
            "cost_source": c.source,
            "cpu_pct": round(self._pct(events, filtered, seconds), 4),
            "calibrated_cpu_pct": round(cpu_pct(events / seconds, filtered / seconds, c), 4),  # before the check
            "peak_cpu_pct": round(self.peak, 4),
            "budget_pct": self.budget,
            "estimate_cpu_pct": self.est.get("cpu_pct"),
            "forced": self.forced,
            "bpf_stats": self.stats_result,
            "estimate": est,
        }
