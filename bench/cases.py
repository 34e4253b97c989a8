"""The three kinds of case the bench runs, each alternating kit and its peers
inside every repetition (the order rotates from one repetition to the next):

  HookCase       per-event cost on one workload: the program body from
                 bpf_stats, and the workload's wall-clock slowdown against a
                 bare run in the same repetition; plus kit with a scope that
                 rejects every event, against an empty program on that hook
  StartCase      seconds from exec to the tool's "attached" line, warm
  FootprintCase  the tool's own CPU and peak memory over an aggregating run
                 on a busy workload
"""

import dataclasses
import time

from bench import bpfstats
from bench.procs import ToolFailed
from bench.stats import Figure


def rotate(items, rep):
    k = rep % len(items)
    return items[k:] + items[:k]


def log(msg):
    import sys
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def _kit_json(tool):
    """kit's own --json result (it prints it when stopped by SIGINT), or None."""
    import json
    for line in reversed(tool.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


@dataclasses.dataclass
class HookCase:
    name: str
    workload: object
    hook: str                     # kit's rung here, e.g. "raw_tracepoint sched_switch"
    kit: object                   # () -> Tool: kit recording every workload event
    peers: dict                   # label -> () -> Tool doing the same job
    filtered: dict                # label -> () -> Tool: kit scoped so that it rejects every workload event
    empty: object                 # () -> Tool: an empty program on kit's hook
    kit_label: str = "kit"
    empty_label: str = "empty program"
    wall_runs: int = 3            # the wall clock is the fastest of these: interference only ever adds

    def variants(self):
        v = {self.kit_label: self.kit, **self.peers, **self.filtered, self.empty_label: self.empty}
        return v

    def run(self, reps, warm=True):
        variants = self.variants()
        failed = {}
        if warm:  # caches warm, and a peer that cannot run here is found once, before the timed runs
            for label, make in variants.items():
                try:
                    t = make()
                    t.start()
                    t.stop()
                except ToolFailed as e:
                    failed[label] = str(e)
                    log(f"{self.name}: {label} cannot run here: {e}")
        labels = ["bare"] + [v for v in variants if v not in failed]
        rows = {label: [] for label in labels}
        for rep in range(reps):
            for label in rotate(labels, rep):
                log(f"{self.name} rep {rep + 1}/{reps}: {label}")
                if label == "bare":
                    sec, ev, cpu, _all = self._wall()
                    rows[label].append({"seconds": sec, "events": ev, "cpu_per_event": cpu})
                    continue
                try:
                    rows[label].append(self._measure(variants[label]))
                except ToolFailed as e:
                    failed.setdefault(label, str(e))
                    rows[label].append(None)
                    log(f"{self.name}: {label} failed: {e}")
        return HookResult(self, rows, failed)

    def _wall(self):
        """Over `wall_runs` runs (interference only ever adds, so the least is the best estimate):
        the fastest run's (seconds, events), the least CPU seconds per event, and all runs' events."""
        runs = [self.workload.run() for _ in range(self.wall_runs)]
        sec, ev, _cpu = min(runs)
        cpu = min(c / e for _s, e, c in runs if e) if any(e for _s, e, _c in runs) else None
        return sec, ev, cpu, sum(e for _s, e, _c in runs)

    def _measure(self, make):
        tool = make()
        tool.start()
        try:
            sec, ev, cpu, wall_events = self._wall()  # run-time statistics off, as in production
            ids = bpfstats.prog_ids(tool.pid)
            sysctl = bpfstats.sysctl_on()
            with bpfstats.enabled():
                before = bpfstats.snapshot(ids)
                _sec2, ev2, _cpu2 = self.workload.run()
                after = bpfstats.snapshot(ids)
        finally:
            tool.stop()
        ns, cnt = bpfstats.delta(before, after)
        kit = _kit_json(tool)
        return {"seconds": sec, "events": ev, "cpu_per_event": cpu, "body_ns": ns / cnt if cnt else None, "runs": cnt,
                "stats_events": ev2, "progs": sorted(n for _t, _c, n in after.values()),
                "sysctl_on": sysctl, "all_events": wall_events + ev2,
                "kit_events": kit.get("events") if kit else None,
                "kit_filtered": kit.get("filtered") if kit else None,
                "kit_stopped_by": kit.get("stopped_by") if kit else None}


class HookResult:
    def __init__(self, case, rows, failed):
        self.case, self.rows, self.failed = case, rows, failed

    def _per_rep(self, label, fn):
        out = []
        for i, r in enumerate(self.rows.get(label, [])):
            bare = self.rows["bare"][i] if i < len(self.rows["bare"]) else None
            out.append(fn(r, bare) if r is not None and bare is not None else None)
        return out

    def body_ns(self, label):
        return Figure(self._per_rep(label, lambda r, b: r["body_ns"]), "ns")

    def added_ns(self, label):
        """CPU time the tool added to the workload, per workload event (against the same repetition's bare run)."""
        return Figure(self._per_rep(label, lambda r, b: (r["cpu_per_event"] - b["cpu_per_event"]) * 1e9
                                    if r["cpu_per_event"] is not None and b["cpu_per_event"] is not None
                                    else None), "ns")

    def slowdown_pct(self, label):
        return Figure(self._per_rep(label, lambda r, b: 100.0 * (r["seconds"] / b["seconds"] - 1)), "%")

    def bare_seconds(self):
        return Figure([r["seconds"] for r in self.rows["bare"]], "s")

    def events(self):
        return Figure([r["events"] for r in self.rows["bare"]])

    def runs_per_event(self, label):
        """Program runs per workload event while statistics were on: ≥ 1 when the program saw the workload."""
        return Figure(self._per_rep(label, lambda r, b: r["runs"] / r["stats_events"] if r["stats_events"] else None))

    def kit_seen(self, label, key="kit_events"):
        """kit's own count (recorded or filtered) over the workload's events in the same runs."""
        return Figure(self._per_rep(label, lambda r, b: r[key] / r["all_events"]
                                    if r.get(key) is not None and r["all_events"] else None))

    def labels(self):
        return [k for k in self.rows if k != "bare"]

    def to_json(self):
        return {"rows": self.rows, "failed": self.failed}


@dataclasses.dataclass
class StartCase:
    name: str
    tools: dict          # label -> () -> Tool
    kit_label: str

    def run(self, reps, warm=True):
        labels = list(self.tools)
        failed = {}
        if warm:
            for label in labels:
                try:
                    t = self.tools[label]()
                    t.start()
                    t.stop()
                except ToolFailed as e:
                    failed[label] = str(e)
                    log(f"start-up: {label} cannot run here: {e}")
        ok = [x for x in labels if x not in failed]
        samples = {x: [] for x in ok}
        for rep in range(reps):
            for label in rotate(ok, rep):
                t = self.tools[label]()
                try:
                    samples[label].append(t.start())
                except ToolFailed as e:
                    failed.setdefault(label, str(e))
                    samples[label].append(None)
                finally:
                    t.stop() if t.p else None
        return {"figures": {x: Figure(s, "s") for x, s in samples.items()}, "failed": failed}


@dataclasses.dataclass
class FootprintCase:
    name: str
    workload: object
    tools: dict          # label -> () -> Tool
    kit_label: str
    seconds: float

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
        busy = self.workload.busy()
        tool = self.tools[label]()
        try:
            time.sleep(0.5)
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
            _stop_busy(busy)
        kit = _kit_json(tool)
        return {"steady_cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "total_cpu_s": tool.total_cpu_s(),
                "peak_mb": tool.peak_rss_mb(), "ready_s": tool.ready_s, "seconds": w1 - w0,
                "kit_events": kit.get("events") if kit else None}


def _stop_busy(p):
    """Stops a background load we started (its own process group: the shell loop and its child)."""
    import os
    import signal
    try:
        os.killpg(p.pid, signal.SIGKILL) if _own_group(p) else p.kill()
    except ProcessLookupError:
        pass
    p.wait()


def _own_group(p):
    import os
    try:
        return os.getpgid(p.pid) == p.pid
    except ProcessLookupError:
        return False


class FootprintResult:
    def __init__(self, case, rows, failed):
        self.case, self.rows, self.failed = case, rows, failed

    def fig(self, label, key, unit):
        return Figure([r[key] if r else None for r in self.rows[label]], unit)

    def to_json(self):
        return {"rows": self.rows, "failed": self.failed}
