"""How often a recipe's hook fires on this box right now, box-wide and inside
the requested scope, measured without running the recipe.

Two short phases on per-CPU perf events (kit/perfevent.py), no BPF:
1. count hits for COUNT_S, to learn each CPU's rate;
2. count again for SAMPLE_S while sampling every Nth hit's pid and tid, N
   chosen per CPU so each ring holds about TARGET_SAMPLES records.
Counts are exact; samples, weighted by their CPU's count, say who the events
belong to: the share in scope (matched the way kit_prelude.h matches: pid
is the tgid, comm the thread's name, cgroup the thread's cgroup id) and the
busiest comms and processes for the guardrail's suggestions.
3. read the busiest threads' CPU time (/proc/PID/task/TID/schedstat) over
   UTIL_S, the event still enabled: a thread already using a whole CPU cannot
   pay for a probe on top, it slows down instead, and the guardrail prices it
   that way. Such a thread was also slowed by the perf event itself while it
   was counted; knowing what the event costs per hit (kit calibrate), its
   rate without the event is recovered (unperturbed()).

Which hook is counted: the recipe's `guard.rate_hook`, else the chosen
rung's target. A tracepoint or raw tracepoint is counted as the tracepoint
`category:name` (a raw tracepoint fires exactly when its tracepoint does);
a uprobe is counted with the perf uprobe PMU on the resolved binary and
offset of the attach point named by rate_hook (its `fn`, or its symbol), or
the first attach point.
"""

import collections
import dataclasses
import math
import os
import time

from kit import features, perfevent
from kit.errors import Unsupported

COUNT_S = 0.05
SAMPLE_S = 0.2
TARGET_SAMPLES = 500  # per CPU; the ring holds about 2000
UTIL_S = 0.1          # how long the busiest threads' CPU use is measured, after the sampling window
MAX_THREADS = 256     # threads the samples are attributed to (the rest is priced as one lump)
MAX_UTIL = 32         # threads whose CPU use is measured
BUSY = 0.9            # a thread using this much of a CPU is taken to be CPU-bound


@dataclasses.dataclass
class RateHook:
    kind: str      # "tracepoint" or "uprobe"
    target: str    # category:name, or binary:symbol
    path: str = ""
    offset: int = 0

    @property
    def label(self):
        return f"{self.kind} {self.target}"

    def attr(self):
        if self.kind == "tracepoint":
            return perfevent.tracepoint_attr(self.target)
        return perfevent.uprobe_attr(self.path, self.offset)


@dataclasses.dataclass
class Thread:
    pid: int
    tid: int
    comm: str
    rate: float               # events/s this thread triggers
    in_scope: bool
    util: float = None        # share of one CPU it uses (None: not measured)
    measured_rate: float = None  # before undoing the measurement's own slowdown


@dataclasses.dataclass
class Task:
    comm: str
    rate: float
    pids: list


@dataclasses.dataclass
class Rate:
    hook: RateHook
    window_s: float
    total: float              # events/s, box-wide
    in_scope: float           # events/s the scope admits (== total when unscoped)
    scope_measured: bool      # False: the scope is not a task property, so all events count as in scope
    scoped: bool
    threads: list             # [Thread], busiest first (at most MAX_THREADS)
    samples: int
    lost: int

    @property
    def unattributed(self):
        """Events/s not attributed to a listed thread (too few samples each)."""
        return max(self.total - sum(t.rate for t in self.threads), 0.0)

    @property
    def by_comm(self):
        comms = {}
        for t in self.threads:
            if t.pid == 0:
                continue  # the idle task: nothing to scope to
            task = comms.setdefault(t.comm, Task(t.comm, 0.0, []))
            task.rate += t.rate
            if t.pid not in task.pids:
                task.pids.append(t.pid)
        return sorted(comms.values(), key=lambda t: -t.rate)

    @property
    def by_pid(self):
        pids = {}
        for t in self.threads:
            if t.pid:
                e = pids.setdefault(t.pid, [t.pid, _thread_comm(t.pid, t.pid), 0.0])
                e[2] += t.rate
        return sorted((tuple(v) for v in pids.values()), key=lambda v: -v[2])

    def as_dict(self, top=5):
        return {
            "hook": self.hook.label, "window_s": round(self.window_s, 3),
            "events_per_s": round(self.total, 1), "in_scope_per_s": round(self.in_scope, 1),
            "scope_measured": self.scope_measured, "samples": self.samples,
            "busiest_comms": [{"comm": t.comm, "events_per_s": round(t.rate, 1), "pids": t.pids[:5]}
                              for t in self.by_comm[:top]],
            "busiest_threads": [{"pid": t.pid, "tid": t.tid, "comm": t.comm, "events_per_s": round(t.rate, 1),
                                 "while_counted_per_s": None if t.measured_rate is None else round(t.measured_rate, 1),
                                 "cpu_util": None if t.util is None else round(t.util, 3), "in_scope": t.in_scope}
                                for t in self.threads[:top]],
        }


def _tracepoint_for_raw(name):
    d = features.need_tracefs()
    events = os.path.join(d, "events")
    for cat in sorted(os.listdir(events)):
        if os.path.isfile(os.path.join(events, cat, name, "id")):
            return f"{cat}:{name}"
    raise Unsupported(f"no tracepoint named {name} to count the raw tracepoint's rate",
                      "set guard.rate_hook to its category:name in the catalog")


def rate_hook(ctx):
    """The RateHook the guardrail counts for this run."""
    hook, rh = ctx.hook, ctx.recipe.guard.rate_hook
    if hook.type in ("tracepoint", "raw_tracepoint"):
        if ":" in rh:
            return RateHook("tracepoint", rh)
        target = hook.target or rh
        if ":" in target:
            return RateHook("tracepoint", target)
        return RateHook("tracepoint", _tracepoint_for_raw(target))
    if hook.type in ("uprobe", "uretprobe"):
        return _uprobe_hook(ctx, rh)
    raise Unsupported(f"the guardrail cannot count {hook.type} hooks", "this is a catalog/guard gap: report it")


def uprobe_target(ctx, attach):
    """(binary path, symbol) of one uprobe attach point, from the run's values."""
    binary = ctx.state.get("binary") or ctx.value(ctx.hook.binary)
    sym = attach.symbol
    symbol = sym[1:] if sym.startswith("=") else ctx.value(sym)
    return binary, symbol


def resolve(binary, symbol):
    """(path, file offset) of a symbol, as BCC resolves it for attach_uprobe."""
    from bcc import BPF
    try:
        path, offset = BPF._check_path_symbol(binary, symbol, None, -1)
    except Exception:
        raise Unsupported(f"cannot find symbol {symbol} in {binary}",
                          "check it with `nm -D BINARY | grep SYMBOL` (stripped binaries need a symbol table)") from None
    return os.fsdecode(path), int(offset)


def _uprobe_hook(ctx, rh):
    points = ctx.hook.attach
    chosen = points[0]
    for a in points:
        if rh and (a.fn == rh or a.symbol.lstrip("=") == rh or ctx.value(a.symbol.lstrip("=")) == rh):
            chosen = a
            break
    binary, symbol = uprobe_target(ctx, chosen)
    if not binary or not symbol:
        raise Unsupported("the guardrail could not tell which binary and symbol to count",
                          "give the recipe's binary and symbol parameters")
    path, offset = resolve(binary, symbol)
    return RateHook("uprobe", f"{path}:{symbol}", path=path, offset=offset)


def scope_matcher(recipe, values):
    """(match(pid, tid) -> bool, measurable) for the run's task scopes; None when unscoped."""
    set_scopes = {p.name: values.get(p.name) for p in recipe.scope_params() if values.get(p.name) is not None}
    if not set_scopes:
        return None, True
    if any(not recipe.params[n].task_scope for n in set_scopes):
        return None, False  # e.g. a port or a netns: not knowable from who triggered the event
    comm, pid, tid, cgroup = (set_scopes.get(k) for k in ("comm", "pid", "tid", "cgroup"))
    want_comm = comm.encode("utf-8", "surrogateescape")[:15] if comm is not None else None

    def match(p, t):
        if pid is not None and p != pid:
            return False
        if tid is not None and t != tid:
            return False
        if want_comm is not None and _thread_comm(p, t).encode("utf-8", "surrogateescape") != want_comm:
            return False
        if cgroup is not None and _thread_cgroup_id(p, t) != cgroup:
            return False
        return True
    return match, True


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _thread_comm(pid, tid):
    c = _read(f"/proc/{pid}/task/{tid}/comm") or _read(f"/proc/{tid}/comm")
    return c.rstrip("\n") if c is not None else ("swapper" if tid == 0 else "?")


def _thread_cgroup_id(pid, tid):
    text = _read(f"/proc/{pid}/task/{tid}/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            try:
                return os.stat("/sys/fs/cgroup" + line[3:]).st_ino
            except OSError:
                return None
    return None


def _runtime_ns(pid, tid):
    text = _read(f"/proc/{pid}/task/{tid}/schedstat")
    try:
        return int(text.split()[0])
    except (AttributeError, IndexError, ValueError):
        return None


def thread_utils(threads, seconds=UTIL_S, sleep=time.sleep):
    """Share of one CPU each (pid, tid) runs, over `seconds`, from /proc/.../schedstat."""
    before = {t: _runtime_ns(*t) for t in threads}
    t0 = time.monotonic()
    sleep(seconds)
    dt = max(time.monotonic() - t0, 1e-3)
    out = {}
    for t, b in before.items():
        a = _runtime_ns(*t)
        if a is not None and b is not None:
            out[t] = min(max((a - b) / (dt * 1e9), 0.0), 1.0)
    return out


def unperturbed(r, util, measure_ns):
    """(rate, CPU use) of a thread as they are without kit's perf event on the hook.
    The event costs each hit measure_ns: a thread with slack keeps its rate and pays in CPU; a thread
    already busy on a whole CPU pays in rate: 1/r = b + m, so its own rate is 1/b = r / (1 - r m)."""
    if util is None or not measure_ns:
        return r, util
    load = r * measure_ns * 1e-9
    if util >= BUSY and load < BUSY:
        return r / (1.0 - load), 1.0
    return r, max(util - load, 0.0)


def measure(hook, match=None, scope_measured=True, scoped=None, count_s=COUNT_S, sample_s=SAMPLE_S,
            measure_ns=0.0, sleep=time.sleep):
    """Rate of `hook`; `match(pid, tid)` says whether an event is in scope (None: all are).
    measure_ns: what the perf event itself costs per hit (kit/costs.py), to undo its slowdown."""
    attr, keep = hook.attr()
    with perfevent.CpuEvents(attr, keep) as ev:
        ev.enable()
        sleep(count_s)
        ev.disable()
        first = ev.counts()
    periods = {cpu: max(1, math.ceil(n * sample_s / count_s / TARGET_SAMPLES)) for cpu, n in first.items()}
    with perfevent.CpuEvents(attr, keep, periods=periods) as ev:
        t0 = time.monotonic()
        ev.enable()
        sleep(sample_s)
        ev.disable()
        window = max(time.monotonic() - t0, 1e-3)
        counts = ev.counts()
        samples = ev.samples()
        # The busiest threads' CPU use, with the event still costing them what it cost while sampling.
        busiest = _weights(samples, counts, window).most_common(MAX_THREADS)
        ev.enable()
        utils = thread_utils([pt for pt, _ in busiest[:MAX_UTIL] if pt[0]], sleep=sleep)
        ev.disable()
    total = sum(counts.values()) / window
    threads = []
    for (pid, tid), r in busiest:
        in_scope = match is None or (pid != 0 and match(pid, tid))
        own, util = unperturbed(r, utils.get((pid, tid)), measure_ns)
        total += own - r
        threads.append(Thread(pid=pid, tid=tid, comm=_thread_comm(pid, tid), rate=own, in_scope=in_scope,
                              util=util, measured_rate=r))
    attributed = sum(t.rate for t in threads)
    rest = max(total - attributed, 0.0)
    in_scope = sum(t.rate for t in threads if t.in_scope) + (rest if match is None else 0.0)
    n_samples = sum(len(got) for got, _ in samples.values())
    lost = sum(lost for _, lost in samples.values())
    return Rate(hook=hook, window_s=window, total=total, in_scope=in_scope, scope_measured=scope_measured,
                scoped=match is not None if scoped is None else scoped, threads=threads, samples=n_samples, lost=lost)


def _weights(samples, counts, window):
    """(pid, tid) -> events/s each sample stands for (its CPU's count spread over that CPU's samples)."""
    weight = collections.Counter()
    for cpu, (got, _lost) in samples.items():
        if got:
            w = counts[cpu] / len(got) / window
            for pid, tid in got:
                weight[(pid, tid)] += w
    return weight


def for_run(ctx, **kw):
    """Measure the rate of the run's hook, with the run's scope."""
    hook = rate_hook(ctx)
    match, measurable = scope_matcher(ctx.recipe, ctx.values)
    scoped = any(ctx.values.get(p.name) is not None for p in ctx.recipe.scope_params())
    return measure(hook, match=match, scope_measured=measurable, scoped=scoped, **kw)
