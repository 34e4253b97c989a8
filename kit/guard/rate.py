"""How often a recipe's hook fires on this box right now, box-wide and inside
the requested scope, measured without running the recipe.

Three short phases on per-CPU perf events (kit/host/perfevent.py), no BPF:
1. count hits for COUNT_S, to learn each CPU's rate (after PROBE_S, the
   windows shrink if measuring would cost the box more than MEASURE_CPU_S:
   a perf uprobe event pays the whole trap, 10 us when single-stepped);
2. count again for SAMPLE_S while sampling every Nth hit's pid and tid, N
   chosen per CPU so each ring holds about TARGET_SAMPLES records;
3. keep counting and sampling for UTIL_S while reading the busiest threads'
   CPU time and run-queue wait (/proc/PID/task/TID/schedstat) and polling
   their state.
Counts are exact; samples, weighted by their CPU's count, say who the events
belong to: the share in scope (matched the way kit_prelude.h matches: pid
is the tgid, --comm the thread's own name or its process's (main thread's)
name, --thread-comm the thread's own name, cgroup the thread's cgroup id) and
the busiest names and processes for the guardrail's suggestions. A CPU-bound
thread (one that wants a whole CPU, running or waiting) cannot pay for a
probe on top, it slows down instead, and the guardrail prices it that way.
Such a thread was also slowed by the perf event itself while it was
counted; knowing what the event costs per hit (kit calibrate), its rate
without the event is recovered from phase 3 (unperturbed()).

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

from kit.host import features, perfevent, procfs
from kit.host.procfs import read_text
from kit.errors import Unsupported

COUNT_S = 0.05
SAMPLE_S = 0.2
TARGET_SAMPLES = 500  # per CPU; the ring holds about 2000
UTIL_S = 0.1          # how long the busiest threads' CPU use is measured, after the sampling window
PROBE_S = 0.005       # a first look at the rate, to know what measuring it longer would cost
MEASURE_CPU_S = 0.1   # what the whole measurement may cost the box, CPU-seconds
MIN_WINDOW_S = 0.005
MIN_UTIL_S = 0.08     # schedstat moves at scheduler ticks and run-queue waits count when they end
MAX_THREADS = 256     # threads the samples are attributed to (the rest is priced as one lump)
MAX_UTIL = 32         # threads whose CPU use is measured
MAX_EXACT = 64        # threads in scope counted one by one (an event each); more: sampled only
BUSY = 0.9            # a thread wanting this much of a CPU (running or runnable) is taken to be CPU-bound...
BUSY_RAN = 0.2        # ...if it also ran this much of it
MIN_OWN_SHARE = 0.4   # of a CPU-bound thread's time per event, at least this much is taken to be its own


@dataclasses.dataclass
class RateHook:
    kind: str      # "tracepoint", "uprobe" or "perf_event"
    target: str    # category:name, binary:symbol, or a sampling event (cpu-clock)
    path: str = ""
    offset: int = 0
    hz: int = 0    # perf_event: samples per second on each CPU

    @property
    def label(self):
        if self.kind == "perf_event":
            return f"perf_event {self.target} at {self.hz} Hz per CPU"
        return f"{self.kind} {self.target}"

    def attr(self):
        if self.kind == "tracepoint":
            return perfevent.tracepoint_attr(features.tracepoint_id(self.target))
        return perfevent.uprobe_attr(self.path, self.offset)


@dataclasses.dataclass
class Thread:
    pid: int
    tid: int
    comm: str
    rate: float               # events/s this thread triggers
    in_scope: bool
    util: float = None        # share of one CPU it runs; for a CPU-bound one, wants (None: not measured)
    busy: bool = False        # CPU-bound: it wanted a whole CPU (running or waiting for one)
    measured_rate: float = None  # before undoing the measurement's own slowdown
    cpus: tuple = ()          # the CPUs its samples came from
    pcomm: str = None         # its process's (main thread's) name; None: the same as comm

    def named(self, name):
        """Does --comm NAME take this thread? (kit_prelude.h: its own name, or its process's)"""
        return name == self.comm or name == (self.pcomm or self.comm)


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
    in_scope_by_cpu: dict = None  # cpu -> in-scope events/s there, from the samples (as counted)
    by_cpu: dict = None           # cpu -> events/s there, counted
    counted_threads: int = None   # threads in scope counted one by one (None: the samples alone)

    @property
    def unattributed(self):
        """Events/s not attributed to a listed thread (too few samples each)."""
        return max(self.total - sum(t.rate for t in self.threads), 0.0)

    @property
    def by_comm(self):
        """[Task] per name, busiest first: the events/s `--comm NAME` would admit. A renamed thread counts
        under its own name and under its process's, so a process's name sums all its threads."""
        comms = {}
        for t in self.threads:
            if t.pid == 0:
                continue  # the idle task: nothing to scope to
            for name in dict.fromkeys((t.comm, t.pcomm or t.comm)):
                task = comms.setdefault(name, Task(name, 0.0, []))
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
            "in_scope_threads_counted": self.counted_threads,
            "busiest_comms": [{"comm": t.comm, "events_per_s": round(t.rate, 1), "pids": t.pids[:5]}
                              for t in self.by_comm[:top]],
            "busiest_threads": [{"pid": t.pid, "tid": t.tid, "comm": t.comm, "process_comm": t.pcomm or t.comm,
                                 "events_per_s": round(t.rate, 1),
                                 "while_counted_per_s": None if t.measured_rate is None else round(t.measured_rate, 1),
                                 "cpu_util": None if t.util is None else round(t.util, 3), "cpu_bound": t.busy,
                                 "in_scope": t.in_scope}
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
    if hook.type == "perf_event":
        return RateHook("perf_event", hook.target, hz=int(ctx.value(hook.frequency)))
    if hook.type in ("kprobe", "kretprobe") and ":" in rh:
        return RateHook("tracepoint", rh)  # the tracepoint in the probed function: the same events
    raise Unsupported(f"the guardrail cannot count {hook.type} hooks", "this is a catalog/guard gap: report it")


def uprobe_target(ctx, attach):
    """(binary path, symbol) of one uprobe attach point, from the run's values."""
    binary = ctx.value(ctx.hook.binary)
    sym = attach.symbol
    symbol = sym[1:] if sym.startswith("=") else ctx.value(sym)
    return binary, symbol


def resolve(binary, symbol):
    """(path, file offset) of a symbol, as BCC resolves it for attach_uprobe."""
    from bcc import BPF
    try:
        path, offset = BPF._check_path_symbol(os.fsencode(binary), symbol.encode(), None, -1)
    except Exception:
        raise Unsupported(f"cannot find symbol {symbol} in {binary}",
                          "check it with `nm -D BINARY | grep SYMBOL` (stripped binaries need a symbol table)") from None
    return os.fsdecode(path), int(offset)


def _uprobe_hook(ctx, rh):
    planned = ctx.planned_uprobes  # kit/uprobes.plan: every attach point resolved to a file and offset
    if planned:
        chosen = next((p for p in planned if rh in (p.fn, p.symbol)), planned[0])
        # The same file offset in every process (per-pid probes share it); a perf uprobe event
        # without a pid counts them all, and the samples say which are in scope.
        return RateHook("uprobe", f"{chosen.shown}:{chosen.symbol}", path=chosen.open_path, offset=chosen.offset)
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


def scope_matcher(recipe, values, process_names=True):
    """(match(pid, tid) -> bool, measurable) for the run's task scopes; None when unscoped.
    process_names: --comm also takes a thread by its process's name (False: the kernel reads no such name)."""
    set_scopes = {p.name: values.get(p.name) for p in recipe.scope_params() if values.get(p.name) is not None}
    if not set_scopes:
        return None, True
    if any(not recipe.params[n].task_scope for n in set_scopes):
        return None, False  # e.g. a port or a netns: not knowable from who triggered the event
    comm, thread_comm, pid, tid, cgroup = (set_scopes.get(k) for k in ("comm", "thread_comm", "pid", "tid", "cgroup"))

    def match(p, t):
        if pid is not None and p != pid:
            return False
        if tid is not None and t != tid:
            return False
        own = _thread_comm(p, t) if comm is not None or thread_comm is not None else None
        if thread_comm is not None and own != thread_comm:
            return False
        if cgroup is not None and _thread_cgroup_id(p, t) != cgroup:
            return False
        # kit_prelude.h's --comm: the thread's own name, else its process's (the main thread's);
        # process_names=False where the kernel cannot read the latter (render.task_offsets)
        if comm is not None and own != comm and not (process_names and _thread_comm(p, p) == comm):
            return False
        return True
    return match, True


def threads_in_scope(values, match):
    """[(pid, tid)] of the threads in scope now (read from /proc), or None where the scope names no process
    (a cgroup alone) or more than MAX_EXACT threads: then the rate's samples alone say which are in scope."""
    from kit.host import targets
    pid, tid, comm, thread_comm = (values.get(k) for k in ("pid", "tid", "comm", "thread_comm"))
    if tid is not None:
        status = read_text(f"/proc/{tid}/status") or ""
        pids = [int(line.split()[1]) for line in status.splitlines() if line.startswith("Tgid:")]
    elif pid is not None:
        pids = [pid]
    elif comm is not None or thread_comm is not None:
        pids = [s.pid for s in targets.pids_by_comm(comm, thread_comm)]
    else:
        return None
    out = []
    for p in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue  # gone
        out += [(p, t) for t in tids if match(p, t)]
        if len(out) > MAX_EXACT:
            return None
    return out


def _thread_comm(pid, tid):
    c = procfs.comm_of(pid, tid) or procfs.comm_of(tid)
    return c if c is not None else ("swapper" if tid == 0 else "?")


def _thread_cgroup_id(pid, tid):
    text = read_text(f"/proc/{pid}/task/{tid}/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            try:
                return os.stat("/sys/fs/cgroup" + line[3:]).st_ino
            except OSError:
                return None
    return None


def _sched(pid, tid):
    """(ns on CPU, ns waiting for a CPU) of a thread from /proc/.../schedstat, or None."""
    text = read_text(f"/proc/{pid}/task/{tid}/schedstat")
    try:
        f = text.split()
        return int(f[0]), int(f[1])
    except (AttributeError, IndexError, ValueError):
        return None


def thread_utils(threads, seconds=UTIL_S, sleep=time.sleep):
    """{(pid, tid): (share of a CPU it ran, share of the time it wanted one)} over `seconds`.
    The second counts time spent runnable but waiting, so a thread that is CPU-bound on a box busy
    with other work still shows it wants a whole CPU."""
    return _thread_utils(threads, seconds, sleep)


def _thread_utils(threads, seconds, sleep, polls=8):
    before = {t: _sched(*t) for t in threads}
    running = dict.fromkeys(threads, 0)
    t0 = time.monotonic()
    for _ in range(polls):
        sleep(seconds / polls)
        for t in threads:  # a CPU-bound thread is always running or waiting for a CPU (state R)
            running[t] += procfs.state(*t) == "R"
    dt = max(time.monotonic() - t0, 1e-3) * 1e9
    out = {}
    for t, b in before.items():
        a = _sched(*t)
        if a is not None and b is not None:
            ran, waited = a[0] - b[0], a[1] - b[1]
            # schedstat counts a run-queue wait only once it ends; the polls see one in progress.
            wanted = max((ran + waited) / dt, running[t] / polls)
            out[t] = (min(max(ran / dt, 0.0), 1.0), min(max(wanted, 0.0), 1.0))
    return out


def unperturbed(r, util, measure_ns):
    """(rate, share of a CPU, CPU-bound?) of a thread as they are without kit's perf event on the hook.
    util = (share it ran, share it wanted). The event costs each hit measure_ns: a thread with slack keeps
    its rate and pays in CPU; a CPU-bound thread pays in rate: each event took b + m of its CPU instead
    of b. A CPU-bound thread is described at the CPU it wants (its rate then is wanted / b)."""
    if util is None:
        return r, None, False
    ran, wanted = util
    m = measure_ns * 1e-9
    # Runnable all the time is not enough on a box so crowded that a thread waking every few ms waits
    # that long for a CPU: a CPU-bound thread also gets a fair part of one when it runs.
    if wanted >= BUSY and ran >= BUSY_RAN and r > 0:
        # ran and r must come from the same window: on a crowded box the CPU a thread gets moves fast.
        b = max(ran / r - m, MIN_OWN_SHARE * ran / r)  # never credit the event with most of the thread's time
        # Priced at the CPU it wants, not at the share a crowded box happened to give it just now.
        return wanted / b, wanted, True
    return r, max(ran - r * m, 0.0), False


def measure(hook, match=None, scope_measured=True, scoped=None, count_s=COUNT_S, sample_s=SAMPLE_S,
            measure_ns=0.0, sleep=time.sleep, scope_threads=None):
    """Rate of `hook`; `match(pid, tid)` says whether an event is in scope (None: all are).
    measure_ns: what the perf event itself costs per hit (kit/guard/costs.py), to undo its slowdown.
    scope_threads: [(pid, tid)] in scope now (threads_in_scope), counted one by one on a tracepoint."""
    attr, keep = hook.attr()
    util_s = UTIL_S
    with perfevent.CpuEvents(attr, keep) as ev:
        ev.enable()
        sleep(PROBE_S)
        probe = _per_s(ev.read())
        # Counting is not free (a uprobe event pays the whole trap): shorten the windows on a hook so hot
        # that measuring it for the usual third of a second would cost more than MEASURE_CPU_S.
        cost = probe * measure_ns * 1e-9 * (count_s + sample_s + util_s)
        if cost > MEASURE_CPU_S:
            scale = MEASURE_CPU_S / cost
            count_s, sample_s = (max(x * scale, MIN_WINDOW_S) for x in (count_s, sample_s))
            util_s = max(util_s * scale, MIN_UTIL_S)
        sleep(max(count_s - PROBE_S, 0.0))
        ev.disable()
        first = ev.read()
    periods = {cpu: max(1, math.ceil(n / max(on, 1e-3) * sample_s / TARGET_SAMPLES))
               for cpu, (n, on) in first.items()}
    # The threads in scope, counted one by one over the same window: on a box whose hook fires a hundred
    # times more often for others, the samples give the scope a handful of records (and +-50%).
    exact = perfevent.ThreadEvents(attr, scope_threads, keep) if scope_threads and hook.kind == "tracepoint" \
        else None
    exact_rates = {}
    with perfevent.CpuEvents(attr, keep, periods=periods) as ev:
        try:
            if exact:
                exact.enable()
                t_exact = time.monotonic()
            ev.enable()
            sleep(sample_s)
            ev.disable()
            if exact:
                exact.disable()
                # over the wall-clock window: a thread's event is "enabled" only while that thread runs
                on = max(time.monotonic() - t_exact, 1e-3)
                exact_rates = {pt: n / on for pt, (n, _) in exact.read().items()}
        finally:
            if exact:
                exact.close()
        sampled = ev.read()
        counts = {cpu: n for cpu, (n, _) in sampled.items()}
        windows = {cpu: max(on, 1e-3) for cpu, (_, on) in sampled.items()}
        samples = ev.samples()
        # The busiest threads' CPU use, with the event still costing them what it cost while sampling,
        # and their event rates over that same window (the ring keeps filling).
        busiest = _weights(samples, counts, windows).most_common(MAX_THREADS)
        ev.enable()
        utils = _thread_utils([pt for pt, _ in busiest[:MAX_UTIL] if pt[0]], util_s, sleep)
        ev.disable()
        later = ev.read()
        rates_then = _weights(ev.samples(), {cpu: later[cpu][0] - counts[cpu] for cpu in later},
                              {cpu: max(later[cpu][1] - sampled[cpu][1], 1e-3) for cpu in later})
    window = max(windows.values(), default=1e-3)
    total = sum(counts[cpu] / windows[cpu] for cpu in counts)
    threads = []
    where = collections.defaultdict(set)
    for cpu, (got, _lost) in samples.items():
        for pt in got:
            where[pt].add(cpu)
    for (pid, tid), r in busiest:
        in_scope = match is None or (pid != 0 and match(pid, tid))
        util = utils.get((pid, tid))
        own, util, busy = unperturbed(rates_then.get((pid, tid), 0.0) if util else r, util, measure_ns)
        if not busy:
            own = r
        total += own - r
        if not busy and in_scope and (pid, tid) in exact_rates:
            own = exact_rates[(pid, tid)]  # counted, not sampled (the box-wide total was counted too)
        comm = _thread_comm(pid, tid)
        pcomm = _thread_comm(pid, pid) if pid and pid != tid else None
        threads.append(Thread(pid=pid, tid=tid, comm=comm, rate=own, in_scope=in_scope, util=util, busy=busy,
                              measured_rate=r, pcomm=None if pcomm == comm else pcomm,
                              cpus=tuple(sorted(where[(pid, tid)]))))
    sampled_pts = {(t.pid, t.tid) for t in threads}
    for (pid, tid), r in sorted(exact_rates.items(), key=lambda x: -x[1]):
        if (pid, tid) not in sampled_pts and r > 0:  # in scope, and no sample fell on it
            threads.append(Thread(pid=pid, tid=tid, comm=_thread_comm(pid, tid), rate=r, in_scope=True,
                                  measured_rate=r))
    attributed = sum(t.rate for t in threads)
    total = max(total, attributed)  # the same events summed two ways: keep rounding from showing
    rest = total - attributed
    in_scope = min(sum(t.rate for t in threads if t.in_scope) + (rest if match is None else 0.0), total)
    n_samples = sum(len(got) for got, _ in samples.values())
    lost = sum(lost for _, lost in samples.values())
    inside = {(t.pid, t.tid) for t in threads if t.in_scope}
    by_cpu = {cpu: sum(w for pt, w in _weights({cpu: got}, counts, windows).items() if pt in inside)
              for cpu, got in samples.items()}
    if exact_rates:  # where the samples put the scope's events, scaled to the counted rate
        seen = sum(by_cpu.values())
        by_cpu = {cpu: (v / seen if seen else 1 / len(by_cpu)) * in_scope for cpu, v in by_cpu.items()}
    return Rate(hook=hook, window_s=window, total=total, in_scope=in_scope, scope_measured=scope_measured,
                scoped=match is not None if scoped is None else scoped, threads=threads, samples=n_samples, lost=lost,
                in_scope_by_cpu=by_cpu, by_cpu={cpu: counts[cpu] / windows[cpu] for cpu in counts},
                counted_threads=len(exact_rates) if exact else None)


def _weights(samples, counts, windows):
    """(pid, tid) -> events/s each sample stands for (its CPU's count over its CPU's window, spread over
    that CPU's samples)."""
    weight = collections.Counter()
    for cpu, (got, _lost) in samples.items():
        if got:
            w = counts[cpu] / len(got) / windows[cpu]
            for pid, tid in got:
                weight[(pid, tid)] += w
    return weight


def _per_s(readings):
    """Events per second summed over CPUs, each CPU's hits over the time its event was enabled."""
    return sum(n / on for n, on in readings.values() if on > 0)


def sampled(hook, scoped):
    """The rate of a sampling perf event, known without measuring: its frequency on every online CPU,
    whatever runs there. Who a sample lands on is not measured: every sample is priced as in scope
    (an upper bound: idle and out-of-scope samples cost only the filter)."""
    total = float(hook.hz * len(perfevent.online_cpus()))
    return Rate(hook=hook, window_s=0.0, total=total, in_scope=total, scope_measured=False, scoped=scoped,
                threads=[], samples=0, lost=0)


def for_run(ctx, **kw):
    """Measure the rate of the run's hook, with the run's scope."""
    hook = rate_hook(ctx)
    scoped = any(ctx.values.get(p.name) is not None for p in ctx.recipe.scope_params())
    if hook.kind == "perf_event":
        return sampled(hook, scoped)
    task = ctx.task_offsets or {}
    match, measurable = scope_matcher(ctx.recipe, ctx.values, process_names=task.get("task_read", 1) != 0)
    inside = threads_in_scope(ctx.values, match) if match is not None and measurable else None
    return measure(hook, match=match, scope_measured=measurable, scoped=scoped, scope_threads=inside, **kw)
