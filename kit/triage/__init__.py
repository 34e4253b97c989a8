"""kit triage: the first look, then each next step chosen from what the last one measured.

1. First look: the FIRST_LOOK recipes the catalog has (offcpu, and profile where it exists) side by side
   on the user's scope, for a share of the time box: on-CPU against off-CPU time per thread, and where
   the threads wait (kit/triage/evidence.py).
2. Follow the evidence: each wait site worth a look (FOLLOW_SHARE of its threads' time) leads to the
   recipes FOLLOW names for its kind, scoped to the process that waited, with the arguments the site
   gives (a lock's functions, the resolver it may call); a step's result can lead further (AFTER:
   lockhold saw a resolver called inside the lock -> getaddrinfo). Only recipes the catalog has and this
   kernel can run; each planned once.
3. Every step runs through kit's engine as `kit run RECIPE ARGS` would (the same parser and typed layer,
   the guardrail's estimate, refusal and breaker) inside one time box (--for) and one overhead budget
   (--budget: steps side by side share it). A step the guardrail refuses, or that cannot run, is kept
   with its reason; steps the time box leaves no room for are kept with their commands.

The chain's decisions are data (FOLLOW, AFTER, the thresholds in kit/triage/evidence.py); the engine is
injected (Runner), so they are tested without a kernel.
"""

import dataclasses
import shlex
import threading
import time

from kit.triage import evidence
from kit.errors import ExitCode, KitError, Refused, Unsupported

FIRST_LOOK = ("offcpu", "profile")   # side by side; they share the budget by what each is estimated to need
FOLLOW = {            # evidence kind -> the recipes that measure it next
    "lock": ("lockhold",),
    "resolver": ("getaddrinfo",),
    "tcp": ("tcpretrans", "tcplife"),
    "disk": ("biolatency",),
    "runqueue": ("runqlat",),
}
AFTER = {             # a step's recipe -> the evidence its result can give (evidence.after_<recipe>)
    "lockhold": "resolver",
}
WHY = {
    "lock": "{comm} threads wait {share} of their time for a lock taken in {where}",
    "resolver": "{comm} threads wait {share} of their time in {where} (a name lookup)",
    "resolver_inside": "the lock's holder called {fn} inside the lock in {holds_with_calls} of {holds} holds",
    "tcp": "{comm} threads wait {share} of their time on a TCP socket, in {where}",
    "disk": "{comm} threads wait {share} of their time for disk I/O, in {where}",
    "runqueue": "{comm} threads wait {share} of their time for a CPU (runnable, preempted)",
}

DEFAULT_TIME_BOX_S = 60.0
MAX_TIME_BOX_S = 600.0
FIRST_LOOK_SHARE = 0.25   # of the time box
FIRST_LOOK_MIN_S, FIRST_LOOK_MAX_S = 5.0, 30.0
STEP_S = 10.0             # a step's time box, when the triage's leaves room for it
MIN_STEP_S = 3.0          # less than this left: the step is not run (its command is kept)
STARTUP_S = 2.0           # what a step spends before its probes attach (estimate, compile)
REPORT_S = 2.0            # kept for the report (doctor's host facts, writing the files)
MAX_STEPS = 8


@dataclasses.dataclass
class Step:
    recipe: str
    args: list                  # as `kit run RECIPE` takes them, without --for and --budget
    why: str                    # the evidence that chose it
    kind: str = "first look"    # the evidence kind, or "first look"
    evidence: dict = None       # the site or result that led here
    duration_s: float = 0.0
    budget_pct: float = None
    status: str = "planned"     # ran, stopped (breaker, signal), refused, unsupported, failed, not run
    reason: str = ""            # why it did not run, or how it stopped
    details: list = dataclasses.field(default_factory=list)  # a refusal's ways out
    result: dict = None
    code: int = None

    def command(self):
        """The exact `kit run` line that reproduces the step."""
        words = ["kit", "run", self.recipe, *self.args]
        if self.duration_s:
            words += ["--for", f"{self.duration_s:g}s"]
        if self.budget_pct is not None:
            words += ["--budget", f"{self.budget_pct:g}"]
        return shlex.join(str(w) for w in words)

    def as_dict(self):
        return {"recipe": self.recipe, "command": self.command(), "why": self.why, "kind": self.kind,
                "status": self.status, "reason": self.reason, "details": self.details,
                "duration_s": self.duration_s, "budget_pct": self.budget_pct, "exit_code": self.code,
                "evidence": _plain(self.evidence), "result": self.result}


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_plain(x) for x in v]
    return v


def _pct(share):
    return f"{100.0 * share:.0f}%"


# --- planning -------------------------------------------------------------------------------------

def first_look_steps(recipes, scope_args, duration_s, budget_pct):
    """The first look's steps: FIRST_LOOK's recipes the catalog has, side by side (budgets: share_budget)."""
    return [Step(n, list(scope_args), why="the first look: where the threads' time goes", duration_s=duration_s,
                 budget_pct=budget_pct) for n in FIRST_LOOK if n in recipes]


HEADROOM = 1.25  # a step's share of a shared budget: its estimate with room to spare (kit/guard/suggest.py's)


def share_budget(budget, needs):
    """Budgets for steps side by side, from their estimated cost (None: not known). When all fit, each
    gets what it needs with HEADROOM and an equal part of the rest; otherwise the cheapest known get what
    they need with HEADROOM, while that leaves something for the rest, and the others split what is left.
    They add up to the budget."""
    known = [n * HEADROOM for n in needs if n is not None]
    if needs and sum(known) <= budget:
        # All fit: each gets its need with room, plus an equal part of what is left. A rate measured
        # before the step starts can grow by the time it does (a step estimated at 0.004% once met 0.07%
        # at its start, and its bare 0.0055% refused it).
        spare = (budget - sum(known)) / len(needs)
        return [_floor3((n * HEADROOM if n is not None else 0.0) + spare) for n in needs]
    shares = [None] * len(needs)
    left = budget
    order = sorted((i for i, n in enumerate(needs) if n is not None), key=lambda i: needs[i])
    rest = [i for i, n in enumerate(needs) if n is None]
    for k, i in enumerate(order):
        others = len(order) - k - 1 + len(rest)
        want = needs[i] * HEADROOM
        if others == 0:
            shares[i] = left
        elif want < left:
            shares[i] = want
        else:  # it would leave nothing: it and the dearer ones share what is left
            rest += order[k:]
            break
        left -= shares[i]
    for i in rest:
        shares[i] = left / len(rest)
    return [_floor3(x) for x in shares]


def _floor3(x):
    """x rounded down to three significant digits: shares that read well and never add up past the budget."""
    import math
    if x <= 0:
        return 0.0
    step = 10 ** (math.floor(math.log10(x)) - 2)
    return round(math.floor(x / step + 1e-9) * step, 10)


def _lockhold_args(site, pid, system):
    s = site["site"]
    args = ["--pid", str(pid)]
    if (s["lock"], s["unlock"]) != ("pthread_mutex_lock", "pthread_mutex_unlock"):
        args += ["--lock", s["lock"], "--unlock", s["unlock"]]
    resolvers = system.imports(pid, evidence.PROBED_RESOLVERS)
    inside = next((f for f in evidence.PROBED_RESOLVERS if f in resolvers), None)
    if inside:  # the program can call the resolver: does it, while it holds the lock?
        args += ["--inside", inside]
    return args + ["--stacks"]


def _pid_args(site, pid, system):
    return ["--pid", str(pid)]


def _tcpretrans_args(site, pid, system):
    port = system.busiest_tcp_port(pid)  # tcpretrans scopes by flow: the port most of its sockets use
    return ["--port", str(port)] if port else []


ARGS = {              # recipe -> its arguments for an evidence site (None: the site says too little)
    "lockhold": lambda site, pid, system: _lockhold_args(site, pid, system) if site.get("site") else None,
    "getaddrinfo": _pid_args,
    "tcpretrans": _tcpretrans_args,
    "tcplife": _pid_args,
    "biolatency": _pid_args,
    "runqlat": _pid_args,
}


def why_text(site):
    where = site.get("frame") or site.get("kernel_frame") or "?"
    text = WHY[site["kind"]].format(comm=site["comm"], share=_pct(site["share"]), where=where)
    if len(site.get("tids") or ()) == 1:
        text = text.replace(" threads wait ", " thread waits ").replace(" their time", " its time")
    return text


def follow(sites, recipes, runs_here, system):
    """(steps, notes): the steps the wait sites lead to, biggest site first, and what could not be followed."""
    steps, notes = [], []
    for site in sites:
        if site["share"] < evidence.FOLLOW_SHARE or site["kind"] not in FOLLOW:
            continue
        for name in FOLLOW[site["kind"]]:
            if name not in recipes:
                notes.append(f"{why_text(site)}: no {name} recipe in this catalog to measure it")
                continue
            if not runs_here(name):
                notes.append(f"{why_text(site)}: {name} cannot run here")
                continue
            args = ARGS[name](site, site["pid"], system)
            if args is None:
                notes.append(f"{why_text(site)}: no lock function there that lockhold can pair")
                continue
            steps.append(Step(name, args, why=why_text(site), kind=site["kind"], evidence=site))
    return steps, notes


def after(step, recipes, runs_here):
    """Steps a finished step's result leads to (AFTER)."""
    kind = AFTER.get(step.recipe)
    if kind is None or not step.result:
        return []
    found = getattr(evidence, f"after_{step.recipe}")(step.result)
    if not found:
        return []
    pid = _arg(step.args, "--pid")
    out = []
    for name in FOLLOW[kind]:
        if name in recipes and runs_here(name):
            out.append(Step(name, ["--pid", pid], why=WHY["resolver_inside"].format(**found), kind=kind,
                            evidence=found))
    return out


def _arg(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


# --- running ------------------------------------------------------------------------------------

class Runner:
    """Runs a step through kit's engine exactly as `kit run RECIPE ARGS --for D --budget B` would:
    the same parser and typed layer, the guardrail, the stop flag of the triage."""

    def __init__(self, recipes, err, stop=None, debug=False):
        self.recipes, self.err, self.stop, self.debug = recipes, err, stop, debug

    def options(self, step, progress=None):
        """(recipe, values, opts) for the step, checked as `kit run` checks them (raises KitError)."""
        import argparse
        from kit import runargs
        recipe = self.recipes[step.recipe]
        words = [*step.args, "--for", f"{step.duration_s:g}s"]
        if step.budget_pct is not None:
            words += ["--budget", f"{step.budget_pct:g}"]
        ns = runargs.recipe_parser(recipe, "run").parse_args(words)
        values = runargs.parse_values(recipe, ns)
        runargs.scope_aliases(recipe, ns, values)
        opts = runargs._options(recipe, ns, argparse.Namespace(debug=self.debug))
        opts.progress = progress
        return recipe, values, opts

    def run(self, step, progress=None):
        from kit.engine import run
        recipe, values, opts = self.options(step, progress)
        return run.execute(recipe, values, opts, err=self.err, stop=self.stop)

    def estimate(self, step):
        """The guardrail's estimate of the step (CPU %), nothing attached; None when it cannot be made
        (the step itself will say why)."""
        from kit import guard
        from kit.engine import run
        try:
            recipe, values, opts = self.options(step)
            ctx, _text = run.prepare(recipe, values, opts.hook)
            return guard.estimate(ctx, opts).get("cpu_pct")
        except KitError:
            return None


def run_step(runner, step, progress=None):
    """Runs one step; its status, reason, result and exit code are set, whatever happens."""
    try:
        step.result, code = runner.run(step, progress)
        step.code = int(code)
    except Refused as e:
        step.status, step.reason, step.details, step.code = "refused", e.message, list(e.details), int(e.code)
        return step
    except Unsupported as e:
        step.status, step.reason, step.code = "unsupported", e.line(), int(e.code)
        return step
    except KitError as e:
        step.status, step.reason, step.code = "failed", e.line(), int(e.code)
        return step
    except Exception as e:  # one step's bug must not lose the others' results
        step.status, step.reason, step.code = "failed", f"internal error: {type(e).__name__}: {e}", \
            int(ExitCode.INTERNAL)
        return step
    stopped = (step.result or {}).get("stopped_by")
    if code == ExitCode.OK:
        step.status = "ran"
        if stopped == "target_exit":
            step.reason = "the target process exited during the step"
    else:
        step.status = "stopped"
        step.reason = next((n for n in (step.result or {}).get("notes", []) if n.startswith("stopped by")),
                           f"stopped by {stopped}")
    return step


def run_group(runner, steps):
    """Steps side by side, each in its own thread (the engine reads the triage's stop flag)."""
    if len(steps) == 1:
        return [run_step(runner, steps[0])]
    threads = [threading.Thread(target=run_step, args=(runner, s, False), name=f"kit-triage-{s.recipe}",
                                daemon=True) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # a short join: the main thread takes the signals while it waits
    return steps


# --- the chain -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    """The triage's scope and limits, as the user gave them."""
    scope_args: list            # e.g. ["--comm", "pay-svc"]
    scope_text: str             # e.g. "--comm pay-svc"
    time_box_s: float = DEFAULT_TIME_BOX_S
    budget_pct: float = 2.0
    scope_threads: dict = None  # {tid: (pid, comm)} in scope when it began


def first_look_s(time_box_s):
    return max(FIRST_LOOK_MIN_S, min(FIRST_LOOK_MAX_S, time_box_s * FIRST_LOOK_SHARE))


def chain(plan, recipes, runner, system=None, runs_here=None, clock=time.monotonic, err=None, stopped=None):
    """Runs the triage; returns {"steps": [Step], "look": first look reading or None, "notes": [...],
    "state": busy|waiting|idle|refused|unmeasured|interrupted, "elapsed_s"}."""
    system = system or evidence.System()
    runs_here = runs_here or (lambda name: True)
    stopped = stopped or (lambda: False)
    t0 = clock()
    deadline = t0 + plan.time_box_s
    say = (lambda msg: (err.write(f"kit: triage: {msg}\n"), err.flush())) if err else (lambda msg: None)
    look_s = min(first_look_s(plan.time_box_s), max(plan.time_box_s - STARTUP_S - REPORT_S, MIN_STEP_S))
    notes = []
    steps = []
    for s in first_look_steps(recipes, plan.scope_args, look_s, plan.budget_pct):
        if runs_here(s.recipe):
            steps.append(s)
        else:
            notes.append(f"{s.recipe} cannot run here, so the first look is without it")
    if len(steps) > 1:
        for s, b in zip(steps, share_budget(plan.budget_pct, [runner.estimate(s) for s in steps])):
            s.budget_pct = b
    for s in steps:
        say(f"first look: {s.command()}")
    run_group(runner, steps)
    by_name = {s.recipe: s for s in steps}
    off, prof = by_name.get("offcpu"), by_name.get("profile")
    measured = [s for s in steps if s.result is not None]
    if not measured:
        state = "interrupted" if stopped() else ("refused" if any(s.status == "refused" for s in steps)
                                                 else "unmeasured")
        return {"steps": steps, "look": None, "notes": notes, "state": state, "elapsed_s": clock() - t0}
    if prof is not None and prof.result is None:
        notes.append(f"profile did not run ({prof.status}: {prof.reason}): on-CPU time is what the look's window "
                     "leaves after off-CPU time")
    look = evidence.first_look(off.result if off and off.result else None,
                               prof.result if prof and prof.result else None, system, plan.scope_threads)
    if off is not None and off.result is None:
        look["sites"] = []
        notes.append(f"offcpu did not run ({off.status}: {off.reason}): where the threads wait is not known")
    if look["state"] == "idle":
        say("the scope is idle; nothing to follow")
        return {"steps": steps, "look": look, "notes": notes, "state": "idle", "elapsed_s": clock() - t0}
    queue, more = follow(look["sites"], recipes, runs_here, system)
    notes += more
    done = {(s.recipe, tuple(s.args)) for s in steps}
    while queue and not stopped():
        step = queue.pop(0)
        key = (step.recipe, tuple(step.args))
        if key in done:
            continue
        done.add(key)
        if len(steps) >= MAX_STEPS:
            step.status, step.reason = "not run", f"the triage runs at most {MAX_STEPS} steps"
            steps.append(step)
            continue
        left = deadline - clock() - REPORT_S - STARTUP_S
        recipe = recipes[step.recipe]
        step.duration_s = float(int(min(STEP_S, recipe.duration_max, left)))
        step.budget_pct = plan.budget_pct
        if step.duration_s < MIN_STEP_S:
            step.status, step.reason = "not run", (f"the time box (--for {plan.time_box_s:g}s) had "
                                                   f"{max(left, 0):.0f}s left; run it alone")
            step.duration_s = STEP_S
            steps.append(step)
            continue
        say(f"next: {step.command()}   # {step.why}")
        run_step(runner, step)
        steps.append(step)
        queue += [s for s in after(step, recipes, runs_here) if (s.recipe, tuple(s.args)) not in done]
    for step in queue:  # interrupted: what would have come next, with its command
        if (step.recipe, tuple(step.args)) not in done:
            step.status, step.reason, step.duration_s = "not run", "the triage was interrupted", STEP_S
            steps.append(step)
    state = "interrupted" if stopped() else look["state"]
    return {"steps": steps, "look": look, "notes": notes, "state": state, "elapsed_s": clock() - t0}


def exit_code(outcome):
    """0 with a verdict; 4 when the first look was refused; 5/6 when it could not run; 130/143 on signals."""
    state = outcome["state"]
    if state == "refused":
        return ExitCode.REFUSED
    if state == "unmeasured":
        codes = [s.code for s in outcome["steps"] if s.code]
        return ExitCode(codes[0]) if codes else ExitCode.UNSUPPORTED  # no first-look recipe runs here
    return ExitCode.OK

