"""The guardrail's price model: what a hook's events cost this box per second, thread by thread (a
CPU-bound thread slows down instead of paying on top of a whole CPU), from the rates kit/guard/rate.py
measures and the per-event costs kit/guard/costs.py prices. The guard (kit/guard/__init__.py) decides with it; a
refusal's ways out (kit/guard/suggest.py) price their alternatives with it."""

import os

from kit.binaries import insn
from kit.guard import costs
from kit.host import perfevent


def ncpu():
    return len(perfevent.online_cpus()) or os.cpu_count() or 1


def cpu_pct(in_rate, out_rate, c, cpus=None):
    """Share of the machine's CPU that events at these rates cost, percent (what the meter uses)."""
    ns_per_s = in_rate * c.in_ns + out_rate * c.out_ns
    return 100.0 * ns_per_s / ((cpus or ncpu()) * 1e9)


def saturated(extra, util):
    """CPU-seconds per second a probe costs a thread that used `util` of a CPU and would need `extra` more.
    Past one CPU the thread cannot pay on top: it slows down, and the probe gets extra/(util+extra) of it."""
    if util is None or util + extra <= 1.0:
        return extra
    return extra / (util + extra)


def thread_cost(t, ns):
    """CPU-seconds per second a probe costing ns per event takes from thread t.
    A CPU-bound thread keeps the CPU share it gets and spends ns/(b + ns) of it on the probe, b being
    its own CPU time per event; any other thread pays rate x ns, up to a whole CPU."""
    if t.busy and t.rate > 0 and t.util:
        b = t.util / t.rate * 1e9
        return t.util * ns / (b + ns)
    return saturated(t.rate * ns * 1e-9, t.util)


def project(r, c, in_scope=None, cpus=None):
    """(in-scope %, filtered %) of the machine's CPU the rate r would cost at costs c.
    in_scope(thread) overrides the measured scope (for suggestions)."""
    cpu_in = cpu_out = 0.0
    for group, n_cpus in _sharing(r.threads):
        priced = [(t.in_scope if in_scope is None else in_scope(t), t) for t in group]
        if len(group) == 1:
            paid = [(inside, thread_cost(t, c.in_ns if inside else c.out_ns)) for inside, t in priced]
        else:  # threads on the same CPUs slow down together past them (a pinned ping-pong's two sides)
            paid = [(inside, t.rate * (c.in_ns if inside else c.out_ns) * 1e-9) for inside, t in priced]
            util = sum(t.util or 0.0 for t in group)
            extra = sum(x for _inside, x in paid)
            cap = min(n_cpus, len(group))
            if util + extra > cap and extra > 0:
                paid = [(inside, x * cap / (util + extra)) for inside, x in paid]
        for inside, x in paid:
            if inside:
                cpu_in += x
            else:
                cpu_out += x
    rest = r.unattributed
    if r.scoped and r.scope_measured or in_scope is not None:
        cpu_out += rest * c.out_ns * 1e-9
    else:
        cpu_in += rest * c.in_ns * 1e-9
    scale = 100.0 / (cpus or ncpu())
    return cpu_in * scale, cpu_out * scale


def _sharing(threads):
    """[(threads, CPUs they ran on)]: threads whose samples came from the same CPUs, together; a
    CPU-bound thread (thread_cost) or one whose CPUs are unknown is a group of its own."""
    groups = []  # [(cpus, [threads])]
    for t in threads:
        cpus = set(getattr(t, "cpus", None) or ())
        if not cpus or t.busy:
            groups.append((None, [t]))
            continue
        joined = [g for g in groups if g[0] and g[0] & cpus]
        for g in joined:
            groups.remove(g)
            cpus |= g[0]
        groups.append((cpus, [x for g in joined for x in g[1]] + [t]))
    return [(members, len(cpus or ())) for cpus, members in groups]


def run_costs(ctx, hook=None):
    """Costs for this run's hook, priced by this host's calibration when there is one."""
    cal, note = costs.load_calibration()
    kind = ""
    if ctx.hook.type in ("uprobe", "uretprobe") and hook is not None and hook.path:
        kind = insn.symbol_kind(hook.path, hook.offset) if insn.machine_supported() else "other"
    return costs.for_class(ctx.recipe.guard.cost_class, ctx.hook.type, kind=kind, cal=cal, note=note)


def _fmt_rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k/s"
    return f"{v:.0f}/s"


def _pct(v):
    return f"{v:.2f}%" if v >= 0.1 else f"{v:.3f}%"
