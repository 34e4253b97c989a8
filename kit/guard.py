"""The guardrail: refuse what would hurt the box before attaching, and stop a
run whose measured overhead stays over budget.

Cost per event comes from the recipe's cost class (measured on this kind of
box, see COST_NS); `kit calibrate` may replace it with this host's numbers.
"""

import os

from kit.errors import Refused

DEFAULT_BUDGET = 2.0   # percent of the machine's CPU
BREAKER_SECONDS = 3.0  # overhead must stay over budget this long to trip
# Wall-clock cost per recorded event, ns, measured on a 2-core 6.18 VM (see NOTES).
COST_NS = {
    "tracepoint_count": 220, "tracepoint_hash": 310, "tracepoint_stack": 3500,
    "uprobe_count": 1000, "uprobe_pair": 2400, "uprobe_pair_stack": 4000,
}
FILTER_NS = {"tracepoint": 290, "raw_tracepoint": 200, "uprobe": 950, "uretprobe": 1600}


def ncpu():
    return os.cpu_count() or 1


def is_scoped(ctx):
    return any(ctx.values.get(p.name) is not None for p in ctx.recipe.scope_params())


def suggest(ctx):
    return f"kit run {ctx.recipe.name} --comm NAME (or --pid PID)"


def check_before(ctx, opts, err):
    """Refuse a hot-path recipe without scope. Returns the pre-attach estimate."""
    g = ctx.recipe.guard
    budget = opts.budget if opts.budget is not None else DEFAULT_BUDGET
    estimate = {"budget_pct": budget, "cost_ns": COST_NS[g.cost_class], "source": "cost_class"}
    if g.scope_required and not is_scoped(ctx):
        scopes = ", ".join("--" + p.flag for p in ctx.recipe.scope_params())
        msg = (f"{ctx.recipe.name} hooks a hot path ({ctx.hook.target or ctx.hook.type}) and needs a scope "
               f"({scopes})")
        if not opts.force:
            raise Refused(msg, f"try: {suggest(ctx)}; or --force to run unscoped anyway")
        err.write(f"kit: warning: {msg}; running unscoped because of --force\n")
    return estimate


class Meter:
    """Measures the run's overhead from kit's own event counters × cost per event."""

    def __init__(self, ctx, opts, bpf, estimate):
        self.ctx, self.bpf = ctx, bpf
        self.budget = opts.budget if opts.budget is not None else DEFAULT_BUDGET
        self.cost_ns = estimate.get("cost_ns", COST_NS[ctx.recipe.guard.cost_class])
        self.filter_ns = FILTER_NS.get(ctx.hook.type, 300)
        self.estimate = estimate
        self.over_since = None
        self.last = (0.0, 0, 0)
        self.pct = 0.0

    def _pct(self, events, filtered, seconds):
        if seconds <= 0:
            return 0.0
        ns = events * self.cost_ns + filtered * self.filter_ns
        return 100.0 * ns / (seconds * 1e9 * ncpu())

    def tick(self, elapsed):
        """Returns a reason string when the breaker trips, else None."""
        from kit.run import read_stats
        t0, e0, f0 = self.last
        if elapsed - t0 < 1.0:
            return None
        s = read_stats(self.bpf)
        self.pct = self._pct(s["events"] - e0, s["filtered"] - f0, elapsed - t0)
        self.last = (elapsed, s["events"], s["filtered"])
        if self.pct > self.budget:
            self.over_since = self.over_since if self.over_since is not None else t0
            if elapsed - self.over_since >= BREAKER_SECONDS:
                return (f"stopped by the guardrail: overhead {self.pct:.2f}% of CPU stayed over the budget "
                        f"{self.budget:g}% for {elapsed - self.over_since:.0f}s")
        else:
            self.over_since = None
        return None

    def progress(self):
        return f"overhead {self.pct:.2f}% (budget {self.budget:g}%)"

    def summary(self, stats):
        seconds = max(self.last[0], 1e-9)
        return {
            "events": stats["events"],
            "filtered": stats["filtered"],
            "ns_per_event": self.cost_ns,
            "cpu_pct": round(self._pct(stats["events"], stats["filtered"], seconds), 4),
            "budget_pct": self.budget,
            "estimate": self.estimate,
        }
