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

from kit import __version__, features, guard, prelude, render, teardown, uprobes
from kit.contract import Context, default_collect, hooks_of
from kit.errors import BadInput, CompileError, ExitCode, Unsupported

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


def prepare(recipe, values, hook_type=None):
    """Everything up to (not including) compiling: returns (context, C text)."""
    hook = features.choose_hook(recipe, hook_type)
    ctx = Context(recipe=recipe, hook=hook, values=dict(values))
    hooks = hooks_of(recipe)
    if hooks.prepare:
        hooks.prepare(ctx)
    if hook.type in uprobes.HOOK_TYPES and not ctx.planned_uprobes:
        uprobes.plan(ctx)  # every symbol checked before anything attaches
    if hooks.extra:
        ctx.extra = hooks.extra(ctx)
    ctx.task_offsets = render.task_offsets(ctx.values, ctx.notes)  # what --comm's rule reads
    text = render.render(recipe, hook, ctx.values, ctx.extra, task=ctx.task_offsets)
    return ctx, text


def compile_program(text, debug=False):
    from bcc import BPF  # imported late so `kit list/show` work without bcc
    try:
        return BPF(text=text.encode(), cflags=["-Wno-unused-function", "-Wno-unused-variable"])
    except Exception as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CompileError(f"BCC could not compile or load the program: {msg}",
                           "run `kit doctor`; rerun with --debug to see the compiler output") from e


class _Stopper:
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


def execute(recipe, values, opts, err=sys.stderr, clock=time.monotonic, sleep=time.sleep):
    """Runs a recipe; returns (result dict, ExitCode). Raises KitError before attaching."""
    if opts.duration > recipe.duration_max:
        raise BadInput(f"--for {opts.duration:g}s is over {recipe.name}'s maximum of {recipe.duration_max:g}s",
                       f"use --for {int(recipe.duration_max)}s or less, and run again if you need more")
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
    with _Stopper() as stopper:
        try:
            bpf = compile_program(text, opts.debug)
            if hooks.attach:
                attached = hooks.attach(ctx, bpf)
            elif ctx.planned_uprobes:
                attached = uprobes.attach(ctx, bpf)
            else:
                attached = prelude.auto_attached(bpf)
            if stopper.signal is None:
                meter = guard.Meter(ctx, opts, bpf, estimate, clock=clock)
                err.write(f"kit: {recipe.name} attached to {attached} via {ctx.hook.type}; "
                          f"running for {opts.duration:g}s (Ctrl-C prints results now)\n")
                err.flush()
                started = clock()
                stopped_by = _wait(ctx, opts, bpf, meter, stopper, started, err, clock, sleep)
                elapsed = clock() - started
                _note_comm_gone(ctx)
            else:
                started, stopped_by, elapsed, meter = clock(), "signal", 0.0, None
            stats = prelude.read_stats(bpf)
            result = _result(ctx, opts, text, stats, elapsed, stopped_by, estimate, meter)
            result.update((hooks.collect or default_collect)(ctx, bpf))
            result["notes"] = ctx.notes + result.get("notes", [])
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
    return result, code


def _wait(ctx, opts, bpf, meter, stopper, started, err, clock, sleep):
    """Sleeps in ticks until the time box ends, a signal arrives, the guardrail trips or the target exits."""
    show = err.isatty() if opts.progress is None else opts.progress
    last_line = 0.0
    pid = ctx.values.get("pid") or ctx.values.get("tid")
    born = _start_time(pid) if pid else None
    try:
        while True:
            now = clock()
            left = opts.duration - (now - started)
            if stopper.signal is not None:
                return signal.Signals(stopper.signal).name
            if left <= 0:
                return "timeout"
            if pid and (born is None or _start_time(pid) != born):  # gone, a zombie, or its id reused
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


def _note_comm_gone(ctx):
    """A --comm run goes on when its processes exit (a new one may start); it says so at the end."""
    comm, thread_comm = ctx.values.get("comm"), ctx.values.get("thread_comm")
    if comm is None and thread_comm is None:
        return
    from kit import targets
    if not targets.pids_by_comm(comm, thread_comm):
        ctx.notes.append(f"no thread in scope of {targets.scope_text(comm, thread_comm)} is running any more "
                         "(the run went on for its whole time)")


def _start_time(pid):
    """The task's start time in clock ticks while it lives (not a zombie), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X", "x") else fields[19]


def catalog_version(path):
    """The catalog's apiVersion and content hash: results of two catalogs merge only when these agree
    (kit/merge.py), since a recipe's meaning can change with its entry or template."""
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
            "other": stats["lost_other"]}
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
