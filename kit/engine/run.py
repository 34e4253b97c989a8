"""The run engine: choose a hook, render, guard, compile, attach, wait inside
the time box, collect, and always detach.

Signals only set a flag; the loop notices within a tick, collects what the
maps hold and tears down through the same `finally` as every other exit.
SIGKILL cannot be caught, which is why kit attaches only through file
descriptors (perf events and BPF links die with the process) and never
leaves a named probe in tracefs.
"""

import dataclasses
import signal
import sys
import time

from kit import __version__, guard
from kit.catalog import scope
from kit.engine import prelude, teardown, uprobes
from kit.guard import bpfstats
from kit.host import features, perfevent, procfs
from kit.output import hints
from kit.engine.contract import default_collect, hooks_of
from kit.engine.program import compile_program, prepare  # noqa: F401 (run.prepare: the engine's interface)
from kit.errors import BadInput, ExitCode, Unsupported

TICK = 0.25


@dataclasses.dataclass
class Options:
    duration: float
    json: bool = False
    debug: bool = False
    dry_run: bool = False
    force: bool = False          # override a guardrail refusal (recorded in the output)
    budget: float = None         # overhead budget, percent of the machine's CPU
    hook: str = None             # force a rung of the ladder (tests, comparisons)
    progress: bool = None        # None: when stderr is a terminal
    limit: int = None            # output: stream: lines shown per second (None: the catalog's; 0: all)
    out: object = None           # output: stream: where event lines go as they arrive (default stdout)


class Stopper:
    """Turns SIGINT/SIGTERM into a flag the loop reads; restores handlers on exit."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop collecting too, still detach in finally
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Borrowed:
    """Another's stop flag (a Stopper the caller holds in the main thread): runs in other threads read it
    and leave the signal handlers alone, which only the main thread may set."""

    def __init__(self, stopper):
        self._stopper = stopper

    @property
    def signal(self):
        return self._stopper.signal

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def execute(recipe, values, opts, err=sys.stderr, clock=time.monotonic, sleep=time.sleep, stop=None):
    """Runs a recipe; returns (result dict, ExitCode). Raises KitError before attaching.
    stop: a Stopper the caller holds (runs in threads side by side); default, this run's own."""
    if opts.duration > recipe.duration_max:
        raise BadInput(f"--for {opts.duration:g}s is over {recipe.name}'s maximum of {recipe.duration_max:g}s",
                       f"use --for {int(recipe.duration_max)}s or less, and run again if you need more")
    scope.check_compatible(values)  # scopes that exclude each other could see nothing: bad input, now
    rungs = [h for h in recipe.hooks if opts.hook in (None, h.type)]
    missing = features.missing_caps(tracefs_needed=all(h.type == "tracepoint" for h in rungs))
    if missing:
        raise Unsupported(f"kit needs {', '.join(missing[:-1]) + ' and ' if len(missing) > 1 else ''}{missing[-1]}"
                          " to load and attach probes",
                          "run as root, or grant them: capsh --caps='cap_bpf,cap_perfmon,cap_dac_read_search+eip' ...")
    # choose_hook (in prepare) refuses a tracepoint rung when tracefs is missing, unreadable or locked down
    ctx, text = prepare(recipe, values, opts.hook)
    if ctx.hook.type == "tracepoint":  # BCC reads the tracepoint's format from tracefs
        features.need_tracefs()
    estimate = guard.check_before(ctx, opts, err)
    if opts.dry_run:
        code = ExitCode.REFUSED if estimate.get("verdict") == "refuse" else ExitCode.OK
        return {"recipe": recipe.name, "dry_run": True, "hook": ctx.hook.type, "estimate": estimate}, code
    hooks = hooks_of(recipe)
    result = None
    code = ExitCode.OK
    bpf = None
    with (Stopper() if stop is None else Borrowed(stop)) as stopper:
        try:
            bpf = compile_program(text, opts.debug)
            # a sampling event is planned from the catalog and attached here, as BCC attaches tracepoints
            sampling = perfevent.attach_sampling(ctx, bpf) if ctx.hook.type == "perf_event" else None
            if hooks.attach:
                attached = hooks.attach(ctx, bpf) or sampling
            elif sampling:
                attached = sampling
            elif ctx.planned_uprobes:
                attached = uprobes.attach(ctx, bpf)
            else:
                attached = prelude.auto_attached(bpf)
            if recipe.output == "stream":
                from kit.engine import stream
                ctx.stream = stream.Streamer(ctx, bpf, opts, out=opts.out, err=err, clock=clock)
            if stopper.signal is None:
                meter = guard.Meter(ctx, opts, bpf, estimate, clock=clock)
                # What the scope matches is read once the probes are in, and said before the attach line,
                # which is what a caller waits for: a process it starts after that line is not "at start".
                at_start = _scope_now(ctx, err)
                err.write(f"kit: {recipe.name} attached to {attached} via {ctx.hook.type}; "
                          f"running for {opts.duration:g}s (Ctrl-C prints results now)\n")
                err.flush()
                started = clock()
                stopped_by = _wait(ctx, opts, bpf, meter, stopper, started, err, clock,
                                   ctx.stream.poll if ctx.stream else sleep)
                elapsed = clock() - started
            else:
                started, stopped_by, elapsed, meter, at_start = clock(), "signal", 0.0, None, None
            if ctx.stream:
                ctx.stream.finish()  # probes off, buffer drained: the counts below are final
            stats = prelude.read_stats(bpf)
            stats["skipped"] = bpfstats.skipped_runs(bpf)
            result = _result(ctx, opts, text, stats, elapsed, stopped_by, estimate, meter)
            if ctx.stream:
                result.update(ctx.stream.summary(stats))
            collected = (hooks.collect or default_collect)(ctx, bpf)
            collected_notes = collected.pop("notes", [])
            result.update(collected)
            _note_scope_seen(ctx, result, at_start)  # reads the rows, adds to ctx.notes
            result["notes"] = ctx.notes + result.get("notes", []) + collected_notes
            code = {"breaker": ExitCode.BREAKER, "SIGINT": ExitCode.INTERRUPTED,
                    "SIGTERM": ExitCode.TERMINATED, "SIGHUP": ExitCode.TERMINATED}.get(stopped_by, ExitCode.OK)
            if stopper.signal and stopped_by not in ("SIGINT", "SIGTERM", "SIGHUP"):
                code = ExitCode.INTERRUPTED if stopper.signal == signal.SIGINT else ExitCode.TERMINATED
        finally:
            try:
                if bpf is not None and hooks.detach:
                    hooks.detach(ctx, bpf)  # the recipe's own threads stop before BCC frees what they poll
            finally:  # a failing recipe hook must never keep the probes attached
                if bpf is not None:
                    problems = teardown.detach_all(bpf)
                    if result is not None:
                        result.setdefault("notes", []).extend(f"detach: {p}" for p in problems)
                if hooks.cleanup:
                    hooks.cleanup(ctx)
    if result is not None:  # after detaching: reading /proc and symbol tables costs the box nothing then
        try:
            # a recipe's collect may give its own (stream recipes: per limit hit, per failing command)
            own = result.get("hints") or []
            result["hints"] = own + hints.compute(result, steps=hints.Steps(lambda: _catalog_of(recipe)))
        except Exception as e:  # a hint is advice: a bug in one must not cost the results
            if opts.debug:
                raise
            result["hints"] = result.get("hints") or []
            result["notes"].append(f"next steps could not be computed ({type(e).__name__}: {e})")
    return result, code


def _catalog_of(recipe):
    """The catalog a recipe came from, for next steps that name its other recipes (just this one when
    it came from text rather than a file)."""
    from kit import catalog
    from kit.errors import KitError
    try:
        return catalog.load(recipe.source)
    except KitError:
        return {recipe.name: recipe}


def _wait(ctx, opts, bpf, meter, stopper, started, err, clock, sleep):
    """Sleeps in ticks until the time box ends, a signal arrives, the guardrail trips or the target exits."""
    show = err.isatty() if opts.progress is None else opts.progress
    if opts.progress is None and ctx.stream is not None and ctx.stream.interleaves(err):
        show = False  # the event lines are the progress; a status line would tear them
    last_line = 0.0
    pid = ctx.values.get("pid") or ctx.values.get("tid")
    born = procfs.start_time(pid) if pid else None
    try:
        while True:
            now = clock()
            left = opts.duration - (now - started)
            if stopper.signal is not None:
                return signal.Signals(stopper.signal).name
            if left <= 0:
                return "timeout"
            if ctx.stream is not None and ctx.stream.stopped:
                return ctx.stream.stopped
            if pid and (born is None or procfs.start_time(pid) != born):  # gone, a zombie, or its id reused
                what = "process" if ctx.values.get("pid") else "thread"
                ctx.notes.append(f"target {what} {pid} exited {now - started:.1f}s into the run; ended early")
                return "target_exit"
            trip = meter.tick(now - started)
            if trip:
                ctx.notes.append(trip)
                err.write(f"\nkit: {trip}; detaching, partial results follow\n" if show and err.isatty()
                          else f"kit: {trip}; detaching, partial results follow\n")
                return "breaker"
            if show and (now - last_line >= 1.0 or last_line == 0.0):
                stats = prelude.read_stats(bpf)
                lost = prelude.lost(stats)
                line = (f"kit: {ctx.recipe.name} {left:5.1f}s left | {stats['events']} events"
                        f" | {lost} lost | {meter.progress()}")
                err.write("\r" + line[:150] + "\033[K" if err.isatty() else line + "\n")
                err.flush()
                last_line = now
            sleep(min(TICK, max(left, 0.01)))
    finally:
        if show and err.isatty():
            err.write("\n")


def _scope_now(ctx, err):
    """Says what a --comm/--thread-comm/--cgroup scope matches as the run starts (a name nobody has yet is
    waited for, except where uprobes went into the running processes only)."""
    per_process = any(p.pid > 0 for p in ctx.attached_uprobes)
    now = scope.describe(ctx.values, waits=not per_process)
    if now is None:
        return None
    text, found = now
    err.write(f"kit: {text}\n")
    return found


def _note_scope_seen(ctx, result, at_start):
    """Says at the end whether anything in a --comm/--thread-comm/--cgroup scope was seen: events the
    probe counted in scope (KIT_EVENTS) or rows; and whether any thread in it still runs (the run goes
    on for its whole time when they exit: a new one may start)."""
    if at_start is None:
        return
    seen = result["events"] > 0 or bool(result.get("rows"))
    now = scope.matching(ctx.values)
    what = scope.label(ctx.values)
    result["scope_seen"] = {"at_start": sorted(at_start), "at_end": sorted(now), "events": result["events"],
                            "seen": seen}
    if not seen:
        ctx.notes.append(f"nothing in scope of {what} was seen during the run (0 events in scope"
                         f"{', and nothing matched when it started' if not at_start else ''})")
    elif not now:
        ctx.notes.append(f"no thread in scope of {what} is running any more (the run went on for its whole "
                         f"time; {result['events']} events in scope were seen)")


def catalog_version(path):
    """The catalog's apiVersion and content hash: results of two catalogs merge only when these agree
    (kit/fleet/merge.py), since a recipe's meaning can change with its entry or template."""
    import hashlib
    from kit.catalog import API_VERSION
    try:
        with open(path, "rb") as f:
            return f"{API_VERSION}+{hashlib.sha256(f.read()).hexdigest()[:12]}"
    except OSError:
        return f"{API_VERSION}+unknown"


def _result(ctx, opts, text, stats, elapsed, stopped_by, estimate, meter):
    recipe = ctx.recipe
    params = {k: (v if type(v) in (int, float, bool, str) else str(v))
              for k, v in ctx.values.items() if v is not None}
    scope = {p.name: params[p.name] for p in recipe.scope_params() if p.name in params}
    lost = {"map_full": stats["map_full"], "stack_lost": stats["stack_lost"], "buffer": stats["buffer_lost"],
            "other": stats["lost_other"], "skipped": stats.get("skipped", 0)}
    return {
        "recipe": recipe.name,
        "kit_version": __version__,
        "catalog_version": catalog_version(recipe.source),
        "hook": f"{ctx.hook.type} {ctx.hook.target}".strip(),
        "params": params,
        "scope": scope,
        "duration_s": round(elapsed, 3),
        "requested_s": opts.duration,
        "stopped_by": stopped_by,
        "events": stats["events"],
        "filtered": stats["filtered"],
        "lost_events": sum(lost.values()),
        "lost": lost,
        "overhead": meter.summary(stats) if meter else {"estimate": estimate},
        "forced": bool(opts.force),
        "rows": [],
        "histograms": {},
    }
