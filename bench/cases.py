"""The three kinds of case the bench runs, each alternating kit and its peers
inside every repetition (the order rotates from one repetition to the next):

  HookCase       per-event cost on one workload: the program body from
                 bpf_stats, and the workload's CPU time and wall clock against
                 a bare run in the same repetition; plus kit with a scope that
                 rejects every event, against an empty program on that hook
  StartCase      seconds from exec to the "attached" line of tools that need no
                 workload (the reference programs); every HookCase tool start
                 is timed the same way
  FootprintCase  the tool's own CPU and peak memory over an aggregating run
                 on a busy workload
  GuardCase      the guardrail's estimate against the run's measured cost

A tool is built by a factory from the workload's target (its pid, comm,
binary), since some tools attach to one process.
"""

import dataclasses
import json
import sys
import time

from bench import bpfstats
from bench.procs import ToolFailed
from bench.stats import Figure


def rotate(items, rep):
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


_T0 = time.monotonic()


def log(msg):
    sys.stderr.write(f"bench: {time.monotonic() - _T0:6.1f}s {msg}\n")
    sys.stderr.flush()


def kit_json(tool):
    """kit's own --json result (it prints it when stopped by SIGINT), or None."""
    for line in reversed(tool.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _try_once(workload, label, make, failed, context):
    """Starts and stops a tool once, untimed: warms caches, and finds a tool that cannot run here."""
    try:
        with workload.session() as target:
            t = make(target)
            t.start()
            t.stop()
    except ToolFailed as e:
        failed[label] = str(e)
        log(f"{context}: {label} cannot run here: {e}")


@dataclasses.dataclass
class HookCase:
    name: str
    workload: object
    hook: str                     # kit's rung here, e.g. "raw_tracepoint sched_switch"
    kit: object                   # target -> Tool: kit recording every workload event
    peers: dict                   # label -> (target -> Tool) doing the same job
    filtered: dict                # label -> (target -> Tool): kit scoped so that it rejects every workload event
    empty: object                 # target -> Tool: an empty program on kit's hook
    extras: dict = dataclasses.field(default_factory=dict)       # other kit variants, reported without a target
    unavailable: dict = dataclasses.field(default_factory=dict)  # peer label -> why there is none to run
    kit_label: str = "kit"
    empty_label: str = "empty program"
    wall_runs: int = 3            # timed rounds per tool start; the least is kept (interference only adds)

    def variants(self):
        return {self.kit_label: self.kit, **self.peers, **self.extras, **self.filtered, self.empty_label: self.empty}

    def run(self, reps, warm=True):
        variants = self.variants()
        failed = {}
        if warm:
            for label, make in variants.items():
                _try_once(self.workload, label, make, failed, self.name)
        labels = [v for v in variants if v not in failed]
        rows = {label: [] for label in labels}
        for rep in range(reps):
            for label in rotate(labels, rep):
                log(f"{self.name} rep {rep + 1}/{reps}: {label}")
                try:
                    rows[label].append(self._measure(variants.get(label)))
                except ToolFailed as e:
                    failed.setdefault(label, str(e))
                    rows[label].append(None)
                    log(f"{self.name}: {label} failed: {e}")
        return HookResult(self, rows, failed)

    def _rounds(self, target):
        """Over `wall_runs` rounds: the fastest round's (seconds, events), the least CPU seconds
        per event, and all rounds' events."""
        runs = [target.run() for _ in range(self.wall_runs)]
        sec, ev, _cpu = min(runs)
        per = [c / e for _s, e, c in runs if e]
        return sec, ev, (min(per) if per else None), sum(e for _s, e, _c in runs)

    def _measure(self, make):
        """One variant in one repetition: bare rounds, then the tool's, on the same target
        seconds apart, so that the difference is not the machine's drift between the two."""
        with self.workload.session() as target:
            bare_sec, _bare_ev, bare_cpu, _n = self._rounds(target)
            tool = make(target)
            tool.start()
            try:
                sec, ev, cpu, round_events = self._rounds(target)  # run-time statistics off, as in production
                ids = bpfstats.prog_ids(tool.pid)
                sysctl = bpfstats.sysctl_on()
                with bpfstats.enabled():
                    before = bpfstats.snapshot(ids)
                    _sec2, ev2, _cpu2 = target.run()
                    after = bpfstats.snapshot(ids)
            finally:
                tool.stop()
        ns, cnt = bpfstats.delta(before, after)
        kit = kit_json(tool)
        return {"seconds": sec, "events": ev, "cpu_per_event": cpu, "bare_seconds": bare_sec,
                "bare_cpu_per_event": bare_cpu, "body_ns": ns / ev2 if ev2 else None,
                "body_ns_per_run": ns / cnt if cnt else None, "runs": cnt, "stats_events": ev2,
                "progs": sorted(n for _t, _c, n in after.values()), "sysctl_on": sysctl,
                "all_events": round_events + ev2,
                "kit_events": kit.get("events") if kit else None,
                "kit_filtered": kit.get("filtered") if kit else None,
                "kit_stopped_by": kit.get("stopped_by") if kit else None, "ready_s": tool.ready_s}


class HookResult:
    def __init__(self, case, rows, failed):
        self.case, self.rows, self.failed = case, rows, failed

    def _per_rep(self, label, fn):
        return [fn(r) if r is not None else None for r in self.rows.get(label, [])]

    def body_ns(self, label):
        """Program run time per workload event (all the tool's programs: some hook several probes per event)."""
        return Figure(self._per_rep(label, lambda r: r["body_ns"]), "ns")

    def added_ns(self, label):
        """CPU time the tool added to the workload per workload event, against the bare rounds just before."""
        return Figure(self._per_rep(label, lambda r: (r["cpu_per_event"] - r["bare_cpu_per_event"]) * 1e9
                                    if r["cpu_per_event"] is not None and r["bare_cpu_per_event"] is not None
                                    else None), "ns")

    def slowdown_pct(self, label):
        return Figure(self._per_rep(label, lambda r: 100.0 * (r["seconds"] / r["bare_seconds"] - 1)), "%")

    def ready_s(self, label):
        """Seconds from exec to the tool's "attached" line, at each start in the repetitions."""
        return Figure([r["ready_s"] if r else None for r in self.rows.get(label, [])], "s")

    def bare_seconds(self):
        """The bare rounds' time (those before kit's own runs)."""
        return Figure(self._per_rep(self.case.kit_label, lambda r: r["bare_seconds"]), "s")

    def events(self):
        return Figure(self._per_rep(self.case.kit_label, lambda r: r["events"]))

    def runs_per_event(self, label):
        """Program runs per workload event while timed: the probes per event, or more when the
        program also saw other processes' events."""
        return Figure(self._per_rep(label, lambda r: r["runs"] / r["stats_events"] if r["stats_events"] else None))

    def kit_seen(self, label, key="kit_events"):
        """kit's own count (recorded or filtered) over the workload's events in the same rounds."""
        return Figure(self._per_rep(label, lambda r: r[key] / r["all_events"]
                                    if r.get(key) is not None and r["all_events"] else None))

    def labels(self):
        return list(self.rows)

    def never_ran(self, label):
        """True when the tool's programs never ran for the workload (kit put no probe in it)."""
        rows = [r for r in self.rows.get(label, []) if r is not None]
        return bool(rows) and all(r["runs"] == 0 for r in rows)

    def to_json(self):
        return {"rows": self.rows, "failed": self.failed}


@dataclasses.dataclass
class StartCase:
    name: str
    workload: object
    tools: dict          # label -> (target -> Tool)
    unavailable: dict = dataclasses.field(default_factory=dict)

    def run(self, reps, warm=True):
        labels = list(self.tools)
        failed = {}
        if warm:
            for label in labels:
                _try_once(self.workload, label, self.tools[label], failed, f"start-up {self.name}")
        ok = [x for x in labels if x not in failed]
        samples = {x: [] for x in ok}
        for rep in range(reps):
            for label in rotate(ok, rep):
                with self.workload.session() as target:
                    t = self.tools[label](target)
                    try:
                        samples[label].append(t.start())
                    except ToolFailed as e:
                        failed.setdefault(label, str(e))
                        samples[label].append(None)
                    finally:
                        if t.p is not None:
                            t.stop()
        return {"figures": {x: Figure(s, "s") for x, s in samples.items()}, "failed": failed,
                "unavailable": self.unavailable}


@dataclasses.dataclass
class FootprintCase:
    name: str
    workload: object
    tools: dict          # label -> (target -> Tool)
    seconds: float
    unavailable: dict = dataclasses.field(default_factory=dict)
    settle_s: float = 0.5

    def run(self, reps):
        labels = list(self.tools)
        rows = {x: [] for x in labels}
        failed = {}
        for rep in range(reps):
            for label in rotate(labels, rep):
                if label in failed:
                    rows[label].append(None)
                    continue
                log(f"footprint {self.name} rep {rep + 1}/{reps}: {label} for {self.seconds:g}s")
                rows[label].append(self._measure(label, failed))
        return FootprintResult(self, rows, failed)

    def _measure(self, label, failed):
        with self.workload.busy() as target:
            tool = self.tools[label](target)
            try:
                time.sleep(self.settle_s)  # the load is up before the tool starts
                tool.start()
                c0, w0 = tool.cpu_s(), time.monotonic()
                time.sleep(self.seconds)
                c1, w1 = tool.cpu_s(), time.monotonic()
                tool.stop()
            except ToolFailed as e:
                failed[label] = str(e)
                return None
            finally:
                if tool.p is not None:
                    tool.stop()
        kit = kit_json(tool)
        return {"steady_cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "total_cpu_s": tool.total_cpu_s(),
                "peak_mb": tool.peak_rss_mb(), "ready_s": tool.ready_s, "seconds": w1 - w0,
                "kit_events": kit.get("events") if kit else None}


class FootprintResult:
    def __init__(self, case, rows, failed):
        self.case, self.rows, self.failed = case, rows, failed

    def fig(self, label, key, unit):  # noqa: D102
        return Figure([r[key] if r else None for r in self.rows[label]], unit)

    def to_json(self):
        return {"rows": self.rows, "failed": self.failed}


@dataclasses.dataclass
class GuardCase:
    """The guardrail's pre-attach estimate (the run's own, made just before it attached) against what
    the run cost, on the busy workload: kit's own meter, the kernel's run time of kit's programs
    (bpf_stats, a lower bound: no dispatch, no trap), and the bench's own price (the events kit counted,
    at the CPU per event the hook case measured on the workload; or, for a workload with no hook case,
    measured_by="run time": the programs' run time itself)."""
    name: str
    workload: object
    kit_args: object     # target -> [kit run arguments after the recipe name]
    seconds: float
    settle_s: float = 0.5
    label: str = ""      # the row's name when it is not the recipe's own load
    measured_by: str = "hook case"

    @property
    def key(self):
        return self.label or self.name

    def run(self, reps):
        rows = []
        for rep in range(reps):
            log(f"guardrail {self.key} rep {rep + 1}/{reps}")
            rows.append(self._measure())
        return GuardResult(self, rows)

    def _measure(self):
        from bench import peers
        with self.workload.busy() as target:
            time.sleep(self.settle_s)
            tool = peers.kit("kit", self.name, *self.kit_args(target))
            try:
                tool.start()
                time.sleep(max(self.seconds - 2.0, self.seconds / 2))
                ids = bpfstats.prog_ids(tool.pid)
                with bpfstats.enabled():
                    t0, before = time.monotonic(), bpfstats.snapshot(ids)
                    time.sleep(min(2.0, self.seconds / 2))
                    t1, after = time.monotonic(), bpfstats.snapshot(ids)
            finally:
                tool.stop()
        ns, cnt = bpfstats.delta(before, after)
        res = kit_json(tool) or {}
        ov = res.get("overhead") or {}
        return {"estimate": ov.get("estimate") or {"error": tool.stderr.strip()[-300:]},
                "overhead": {k: v for k, v in ov.items() if k != "estimate"},
                "events": res.get("events"), "filtered": res.get("filtered"), "seconds": res.get("duration_s"),
                "stats_body_ns_per_s": ns / (t1 - t0), "stats_runs_per_s": cnt / (t1 - t0),
                "stopped_by": res.get("stopped_by")}


class GuardResult:
    def __init__(self, case, rows):
        self.case, self.rows = case, rows

    def has_estimate(self):
        """The guardrail prices a run (cpu_pct) only in kits that have its rate measurement."""
        return any(r and "cpu_pct" in r["estimate"] for r in self.rows)

    def fig(self, fn, unit=""):
        vals = []
        for r in self.rows:
            try:
                vals.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append(None)
        return Figure(vals, unit)

    def to_json(self):
        return {"rows": self.rows}
