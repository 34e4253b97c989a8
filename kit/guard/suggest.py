"""Ways out of a guardrail refusal, as commands kit itself accepts, each priced.

A refusal names the busiest processes on the hook as `kit run` lines. Each
line must run as pasted: its scope value passes the same typed layer the
user's own would (kit/catalog/params.py), so a kernel thread (which kit does not
probe), a comm the kernel would not match as shown (a kworker's /proc name
is longer than the 15 bytes it compares) or a comm kit itself runs under
becomes a --pid or no command at all. A line that costs more than the budget
carries the --budget it needs, so it is never refused on arrival. When no
scope fits the budget, kit prices what would: a narrower scope (--pid,
--tid), another rung of the hook ladder, and a short look at the budget it
needs. render() turns an estimate into the lines both a refusal and
`kit estimate` print.

The same rules write the next steps after a run (kit/output/hints.py): next_step()
for a kit line of any recipe of the catalog, value_ok() for the typed words
of another tool's command, shell_line() to quote either.
"""

import dataclasses
import math
import os
import shlex

from kit.guard import model
from kit.host import procfs
from kit.host.procfs import is_kthread
from kit.catalog import params as ptypes
from kit.errors import KitError
from kit.guard.model import _fmt_rate, _pct

SUGGESTIONS = 3
HEADROOM = 1.25   # a suggestion must fit with this much to spare: the rate moves between estimate and run
SHORT_S = 3.0     # a short look, when only a raised budget fits
def _arg_text(spec, v):
    if spec.type == "flag":
        return [f"--{spec.flag}"] if v else []
    if spec.type == "duration":
        return [f"--{spec.flag}", f"{v:g}s"]
    return [f"--{spec.flag}", str(v)]


def shell_line(words):
    """Words as one line a shell gives back as the same words (every suggestion kit prints)."""
    return " ".join(shlex.quote(str(w)) for w in words)


def _line(recipe, args, duration, budget=None, hook=None, json=False, limit=None):
    """`kit run RECIPE [--stream] ARGS`, then the run's options where they differ from the default."""
    words = ["kit", "run", recipe.name] + ([f"--{recipe.form}"] if getattr(recipe, "form", None) else []) + list(args)
    if duration is not None and duration != recipe.duration_default:
        words += ["--for", f"{duration:g}s"]
    if budget is not None:
        words += ["--budget", f"{budget:g}"]
    if hook:
        words += ["--hook", hook]
    if limit is not None:
        words += ["--limit", str(limit)]
    if json:
        words.append("--json")
    return shell_line(words)


def command(ctx, opts, scope_flag, scope_value, duration=None, budget=None, hook=None):
    """A ready-to-paste `kit run` line: the user's own arguments, with the scope (and what else the way
    out changes) replaced."""
    args = []
    for spec in ctx.recipe.params.values():
        v = ctx.values.get(spec.name)
        if v is None or (spec.scope and scope_flag is not None):
            continue
        args += _arg_text(spec, v)
    if scope_flag is not None:
        args += [f"--{scope_flag}", str(scope_value)]
    duration = opts.duration if duration is None else duration
    budget = getattr(opts, "budget", None) if budget is None else budget
    return _line(ctx.recipe, args, duration, budget, hook or getattr(opts, "hook", None), getattr(opts, "json", False),
                 getattr(opts, "limit", None))


def parses(spec, value):
    """Does kit's own typed layer accept this value for this parameter right now?"""
    try:
        ptypes.TYPES[spec.type].parse(str(value), spec)
    except KitError:
        return False
    return True


def _valid(ctx, flag, value):
    spec = next((p for p in ctx.recipe.params.values() if p.flag == flag), None)
    return spec is not None and parses(spec, value)


def usable(spec, value, me=None):
    """A value a suggestion may carry: kit's typed layer accepts it now, and it does not name kit itself
    (a pid or tid of this run ends with it; a comm kit runs under would trace kit). Kernel threads,
    processes gone and names --comm would not match as shown fail the typed layer."""
    me = os.getpid() if me is None else me
    if spec.type in ("pid", "tid") and str(value) == str(me):
        return False
    if spec.type == "comm" and str(value) in _own_comms(me):
        return False
    return parses(spec, value)


def value_ok(type_name, value, me=None):
    """usable() for an argument of another tool's command (ip, getent, strace): the same type's rule."""
    from kit.catalog import ParamSpec
    return usable(ParamSpec(name="value", type=type_name), value, me)


def next_step(recipes, name, values, duration=None, me=None):
    """A paste-ready `kit run NAME ...` for a next step (kit/output/hints.py), by the rules of a refusal's ways
    out: values {parameter name: value} in the recipe's own parameter order, each usable() now, the
    duration within the recipe's maximum. None when the catalog has no such recipe or parameter, or a
    value fails: a step kit could not run as printed is not printed as a command."""
    recipe = (recipes or {}).get(name)
    if recipe is None or not set(values) <= set(recipe.params):
        return None
    args = []
    for spec in recipe.params.values():
        v = values.get(spec.name)
        if v is None or v is False:
            continue
        if spec.type != "flag" and not usable(spec, v, me):
            return None
        args += _arg_text(spec, v)
    if duration is not None:
        duration = min(duration, recipe.duration_max)
    return _line(recipe, args, duration)


def needed_budget(pct, budget):
    """The --budget a run costing pct needs, with headroom: two significant digits, rounded up."""
    want = max(pct * HEADROOM, budget)
    if want <= 0:
        return budget
    step = 10 ** (math.floor(math.log10(want)) - 1)
    return min(100.0, round(math.ceil(want / step - 1e-9) * step, 10))


@dataclasses.dataclass
class _Scope:
    flag: str
    value: object
    rate: float
    inside: object        # thread -> in scope?
    label: str = ""       # what the command scopes to, when the command alone does not say it


def _groups(r, me):
    """{comm: [threads]} of the measured threads, without the idle task and kit itself: each thread under
    its own name and its process's, as --comm takes it (kit_prelude.h)."""
    out = {}
    for t in r.threads:
        if t.pid in (0, me) or t.comm == "?":
            continue
        for name in dict.fromkeys((t.comm, getattr(t, "pcomm", None) or t.comm)):
            out.setdefault(name, []).append(t)
    return out


def _own_comms(me):
    return set(procfs.thread_names(me).values())


def scopes(ctx, r, me=None):
    """(user-space scopes busiest first, [kernel threads busy on the hook]).
    A comm is suggested as --comm only when kit accepts it and it means what it says; else the
    busiest of its processes as --pid."""
    me = os.getpid() if me is None else me
    params = {p.flag for p in ctx.recipe.params.values()}
    own = _own_comms(me)
    found, kthreads = [], []
    for comm, threads in _groups(r, me).items():
        kern = [t for t in threads if is_kthread(t.pid)]
        user = [t for t in threads if t not in kern]
        for t in kern:
            kthreads.append({"comm": comm, "pid": t.pid, "events_per_s": round(t.rate, 1)})
        if not user:
            continue
        rate = sum(t.rate for t in user)
        if "comm" in params and not kern and comm not in own and _valid(ctx, "comm", comm):
            found.append(_Scope("comm", comm, rate, lambda th, c=comm: th.named(c)))
            continue
        if "pid" not in params:
            continue
        why = ("kit runs under that name too" if comm in own else
               "a kernel thread has that name too" if kern else "--comm cannot name it as shown")
        per_pid = {}
        for t in user:
            per_pid[t.pid] = per_pid.get(t.pid, 0.0) + t.rate
        pid, prate = max(per_pid.items(), key=lambda kv: kv[1])
        if _valid(ctx, "pid", pid):
            found.append(_Scope("pid", pid, prate, lambda th, p=pid: th.pid == p, label=f"{comm}: {why}"))
    found.sort(key=lambda s: -s.rate)
    kthreads.sort(key=lambda k: -k["events_per_s"])
    return found, kthreads


def _price(r, c, inside, cpus):
    return sum(model.project(r, c, in_scope=inside, cpus=cpus))


def _entry(ctx, opts, est, scope, c=None, hook=None, duration=None, kind="scope", label=None):
    budget = est["budget_pct"]
    pct = _price(est.rate, c or est.costs, scope.inside if scope else None, est.get("ncpu"))
    fits = pct * HEADROOM <= budget
    raised = None if fits else needed_budget(pct, budget)
    cmd = command(ctx, opts, scope.flag if scope else None, scope.value if scope else None,
                  duration=duration, budget=raised, hook=hook)
    e = {"command": cmd, "events_per_s": round(scope.rate if scope else est.rate.in_scope, 1),
         "cpu_pct": round(pct, 3), "fits": fits, "kind": kind}
    if raised is not None:
        e["budget"] = raised
    if label or (scope and scope.label):
        e["label"] = label or scope.label
    if duration is not None:
        e["duration_s"] = duration
        e["cpu_s"] = round(pct / 100.0 * est["ncpu"] * duration, 2)
    return e


def suggestions(ctx, opts, est, me=None):
    """Scopes for the busiest processes on the hook, then, when none fits the budget, what would."""
    if est.rate is None:
        return [], []
    found, kthreads = scopes(ctx, est.rate, me)
    out = [_entry(ctx, opts, est, s) for s in found[:SUGGESTIONS]]
    if not any(e["fits"] for e in out):
        out += ways_out(ctx, opts, est, found)
    return out, kthreads[:SUGGESTIONS]


def ways_out(ctx, opts, est, found):
    """When every scope is over budget: a narrower scope, another rung, a short look at a raised budget."""
    r, budget = est.rate, est["budget_pct"]
    flags = {p.flag for p in ctx.recipe.params.values()}
    # what the refused run means: the user's own scope, else the busiest process
    own = None if est["scoped"] else (found[0] if found else None)
    if est["scoped"] is False and own is None:
        return []
    inside = (lambda t: t.in_scope) if own is None else own.inside
    out = []
    # narrower: one thread (or one process of a comm) inside it, the busiest that fits
    narrower = []
    me = os.getpid()
    threads = [t for t in r.threads if t.pid not in (0, me) and inside(t) and not is_kthread(t.pid)]
    if "pid" in flags and (own is None or own.flag == "comm") and len({t.pid for t in threads}) > 1:
        for pid in sorted({t.pid for t in threads}, key=lambda p: -sum(t.rate for t in threads if t.pid == p)):
            narrower.append(_Scope("pid", pid, sum(t.rate for t in threads if t.pid == pid),
                                   lambda th, p=pid: th.pid == p))
    if "tid" in flags and len(threads) > 1:
        for t in sorted(threads, key=lambda t: -t.rate):
            narrower.append(_Scope("tid", t.tid, t.rate, lambda th, tid=t.tid: th.tid == tid,
                                   label=f"one thread of {t.comm} (pid {t.pid})"))
    for s in narrower:
        if _price(r, est.costs, s.inside, est.get("ncpu")) * HEADROOM <= budget and _valid(ctx, s.flag, s.value):
            out.append(_entry(ctx, opts, est, s, kind="narrower"))
            break
    # another rung of the ladder, priced at its own cost
    from kit.host import features
    for h in ctx.recipe.hooks:
        if h.type == ctx.hook.type or features.hook_supported(h) is not None:
            continue
        c = model.run_costs(dataclasses.replace(ctx, hook=h))
        e = _entry(ctx, opts, est, own, c=c, hook=h.type, kind="rung",
                   label=f"the {h.type} rung costs {c.in_ns:.0f} ns per event, {c.out_ns:.0f} filtered")
        if e["cpu_pct"] < _price(r, est.costs, inside, est.get("ncpu")):
            out.append(e)
    # a short look at the budget it needs: the breaker holds the run to that
    if opts.duration > SHORT_S:
        out.append(_entry(ctx, opts, est, own, duration=SHORT_S, kind="short"))
    return out


def busiest_text(comms):
    """The busiest comms on the hook, kernel threads and tasks gone since named as such."""
    def one(t):
        pids = t.get("pids") or []
        what = (" (gone)" if t["comm"] == "?" else
                " (kernel thread)" if pids and all(is_kthread(p) for p in pids) else "")
        return f"{t['comm']}{what} {_fmt_rate(t['events_per_s'])}"
    return ", ".join(one(t) for t in comms)


def _comment(e, budget):
    raised = e.get("budget")
    if e["kind"] == "short":
        held = f", held to --budget {raised:g} by the breaker" if raised is not None else ""
        return f"a {e['duration_s']:g}s look at ~{_pct(e['cpu_pct'])} of CPU ({e['cpu_s']:g} CPU-seconds in all){held}"
    what = [e["label"]] if e.get("label") else []
    what.append(f"{_fmt_rate(e['events_per_s'])}, ~{_pct(e['cpu_pct'])} of CPU")
    if raised is not None:
        what.append(f"{'over' if e['cpu_pct'] > budget else 'close to'} the {budget:g}% budget: "
                    f"the command raises it to {raised:g}")
    return "; ".join(what)


def _commands(entries, budget):
    width = min(max((len(e["command"]) for e in entries), default=0), 64)
    return [f"  {e['command']:<{width}}  # {_comment(e, budget)}" for e in entries]


def render(est):
    """The lines under a refusal (and under `kit estimate`'s verdict): ways out, each paste-ready."""
    budget = est.get("budget_pct", 0)
    sugg = est.get("suggestions") or []
    scoped_list = [e for e in sugg if e.get("kind", "scope") == "scope"]
    others = [e for e in sugg if e.get("kind", "scope") != "scope"]
    lines = []
    floor = est.get("filtered_pct") if est.get("scoped") else None
    if floor is not None and floor > budget:
        busiest = busiest_text(est.get("busiest_comms", [])[:2])
        lines.append(f"even filtered out, this hook's events cost ~{_pct(floor)} ({busiest}): no scope fits a "
                     f"{budget:g}% budget while they last; raise --budget above {floor:.2g}, or wait for the hook "
                     "to quieten")
    if scoped_list:
        lines.append("scope it to one of the busiest on that hook:")
        lines += _commands(scoped_list, budget)
    kthreads = est.get("kernel_threads") or []
    if kthreads:
        lines.append("kernel threads busy on that hook (kit probes user-space processes only): "
                     + ", ".join(f"{k['comm']} (pid {k['pid']}) {_fmt_rate(k['events_per_s'])}" for k in kthreads))
    if others:
        lines.append(f"nothing above fits the {budget:g}% budget; what would:")
        lines += _commands(others, budget)
    if not sugg and not lines:
        lines.append("narrow the scope, or raise --budget")
    lines.append("or --force to run anyway (recorded in the result)")
    return lines
