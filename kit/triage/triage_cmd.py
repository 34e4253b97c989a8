"""`kit triage`: the command around the chain (kit/triage/__init__.py): the user's scope checked through kit's
typed layer, the time box and budget, the bundle's directory checked before anything attaches, the
chain run under one stop flag (Ctrl-C and SIGTERM end the current steps with their partial results and
still write the report), the verdict (kit/triage/verdict.py) and the bundle (kit/triage/report.py).
"""

import os
import shlex

from kit.catalog import params as ptypes
from kit.errors import BadInput, ExitCode

SCOPES = (("comm", "comm", "threads whose own name or whose process's name is NAME (as `ps -o comm` shows it)"),
          ("pid", "pid", "one process, all its threads"),
          ("cgroup", "cgroup", "a cgroup v2 directory, e.g. system.slice/pay.service"),
          ("unit", None, "the cgroup of a systemd unit (NAME.service)"),
          ("container", None, "the cgroup of a container (its id, at least 12 hex characters)"))


def add_parser(sub, out):
    from kit import triage
    t = sub.add_parser("triage", help="where a process's time goes, then the next steps the evidence leads to, "
                       "as one incident report", out=out,
                       description="The first look (offcpu, and profile where the catalog has it) on the scope, "
                       "then each next step chosen from what the last one measured (lockhold, getaddrinfo, "
                       "tcpretrans, tcplife, biolatency, runqlat, where they exist), every step through the "
                       "guardrail, inside one time box and one overhead budget. Writes report.md, report.json, "
                       "flame graphs and the host's facts to --out.")
    for name, _type, hlp in SCOPES:
        t.add_argument(f"--{name}", default=None, metavar=name.upper(), help=hlp)
    t.add_argument("--for", dest="duration", default=None,
                   help=f"the whole triage's time box (default {triage.DEFAULT_TIME_BOX_S:g}s, at most "
                        f"{triage.MAX_TIME_BOX_S:g}s)")
    t.add_argument("--budget", default=None, help="overhead budget, percent of the machine's CPU (default 2): "
                   "steps side by side share it")
    t.add_argument("--out", metavar="DIR", default=None,
                   help="the report's directory (new or empty; default kit-report-DATE-TIME under the current one)")
    t.add_argument("--json", action="store_true", help="report.json on stdout instead of report.md")
    return t


def _spec(name, type_):
    from kit.catalog import ParamSpec
    return ParamSpec(name=name, type=type_)


def scope(ns):
    """(args for the first look, text, {tid: (pid, comm)} in scope now), through kit's typed layer."""
    from kit.host import cgroups, targets
    given = [(name, type_, getattr(ns, name)) for name, type_, _h in SCOPES if getattr(ns, name) is not None]
    if len(given) != 1:
        raise BadInput("kit triage needs one scope" if not given else
                       f"{' and '.join('--' + g[0] for g in given)}: give one scope",
                       "--comm NAME, --pid PID, --cgroup DIR, --unit NAME.service or --container ID")
    name, type_, raw = given[0]
    if name == "comm":
        comm = ptypes.TYPES["comm"].parse(raw, _spec("comm", "comm"))
        threads = {}
        for s in targets.pids_by_comm(comm):
            names = targets.thread_names(s.pid)
            for tid in (names if s.by_process else s.tids):
                threads[tid] = (s.pid, names.get(tid, comm))
        if not threads:
            raise BadInput(f"no running process is named {comm!r}, nor has a thread of that name",
                           "start it first, or check the name with `ps -eo pid,comm` (`ps -eL -o comm` for threads)")
        return ["--comm", comm], f"--comm {comm}", threads
    if name == "pid":
        pid = ptypes.TYPES["pid"].parse(raw, _spec("pid", "pid"))
        return ["--pid", str(pid)], f"--pid {pid}", _threads_of([pid])
    path = {"cgroup": lambda v: v, "unit": cgroups.unit, "container": cgroups.container}[name](raw)
    ptypes.TYPES["cgroup"].parse(path, _spec("cgroup", "cgroup"))  # the checks --cgroup makes
    pids = cgroups.processes(path if os.path.isabs(path) else os.path.join(ptypes.cgroup2_roots()[0], path))
    threads = _threads_of(pids)
    if not threads:
        raise BadInput(f"--{name} {raw}: no process runs in that cgroup ({path})",
                       "start it first; `cat DIR/cgroup.procs` lists what runs there")
    return [f"--{name}", str(raw)], f"--{name} {raw}", threads


def _threads_of(pids):
    from kit.host import targets
    out = {}
    for pid in pids:
        for tid, comm in targets.thread_names(pid).items():
            out[tid] = (pid, comm)
    return out


def _limits(ns):
    from kit import guard, triage
    box = triage.DEFAULT_TIME_BOX_S if ns.duration is None else ptypes.Duration.seconds(ns.duration)
    if box > triage.MAX_TIME_BOX_S:
        raise BadInput(f"--for {str(ns.duration).strip()[:20]} is over the triage's maximum of "
                       f"{triage.MAX_TIME_BOX_S:g}s", f"use --for {int(triage.MAX_TIME_BOX_S)}s or less")
    budget = guard.DEFAULT_BUDGET
    if ns.budget is not None:
        try:
            budget = float(str(ns.budget).rstrip("%"))
        except ValueError:
            raise BadInput(f"--budget {ns.budget!r} is not a number", "give a percentage like 2 or 0.5") from None
        if not 0 < budget <= 100:
            raise BadInput(f"--budget {budget:g} is out of range", "give a percentage above 0 and at most 100")
    return box, budget


def main(args, argv, out, err):
    """argv: the words after `kit triage`, for the report's command line."""
    from kit import catalog, triage
    from kit.engine import run
    from kit.host import features
    from kit.triage import report, verdict
    recipes = catalog.load(args.catalog)
    scope_args, scope_text, threads = scope(args)
    box, budget = _limits(args)
    d = report.check_dir(args.out if args.out is not None else report.default_dir())
    plan = triage.Plan(scope_args, scope_text, time_box_s=box, budget_pct=budget, scope_threads=threads)
    started = report.now_utc()
    with run.Stopper() as stopper:
        runner = triage.Runner(recipes, err, stop=stopper, debug=args.debug)
        outcome = triage.chain(plan, recipes, runner, runs_here=lambda n: features.why_not(recipes[n]) is None,
                               err=err, stopped=lambda: stopper.signal is not None)
        signum = stopper.signal
    lines = verdict.verdict(outcome, scope_text)
    rep = report.build("kit triage", shlex.join(["kit", "triage", *argv]), scope_text, outcome["steps"], lines,
                       outcome["notes"], report.host_facts(recipes), time_box_s=box, budget_pct=budget,
                       elapsed_s=outcome["elapsed_s"], state=outcome["state"], started=started,
                       look=outcome["look"])
    files = report.write(d, rep, recipes)
    if args.json:
        import json
        json.dump(rep, out, default=str)
        out.write("\n")
    else:
        out.write(report.markdown(rep, recipes))
    err.write(f"kit: triage report written to {d} ({', '.join(files)})\n")
    if signum is not None:
        import signal
        return ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED
    return triage.exit_code(outcome)

