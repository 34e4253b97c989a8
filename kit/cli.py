"""Command line: kit list | show | run | doctor.

Global options are parsed first; a recipe's own parameters become options of
its own parser, built from the catalog, so `kit run X --help` lists exactly
what X accepts.
"""

import argparse
import sys
import traceback

from kit import catalog as catalog_mod
from kit.errors import BadInput, ExitCode, KitError, Unsupported, printable
from kit.runargs import (HelpShown, _Parser, _options, _stack_outputs, parse_values,  # noqa: F401 (cli's interface)
                         recipe_parser, scope_aliases)

EPILOG = """examples:
  kit list                                   what kit can run here
  kit run offcpu --comm pay-svc --for 20s    where pay-svc waits
  kit run tcpretrans --port 443 --json       retransmits as JSON
  kit triage --comm pay-svc                  where pay-svc's time goes, the next steps, one report
  kit show tcpretrans --port 443             the exact C that would be compiled
  kit doctor                                 what this kernel supports
"""


VERBS = {
    "run": ("run a recipe", "attach a recipe's probes inside the guardrail's budget, for a bounded time, and print "
            "what they saw; everything is detached on every exit"),
    "show": ("print the C text `run` would compile", "print the exact C text `kit run` would compile for these "
             "arguments, attaching nothing (a pasted `kit run` line works: its run-only options are ignored)"),
    "estimate": ("print the guardrail's estimate without attaching", "measure the hook's rate now and print what "
                 "a run would cost and whether the guardrail would let it attach; nothing is attached"),
}


def _base_parser(out=None):
    p = _Parser(prog="kit", description="Scoped, time-boxed eBPF probes for incidents.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter, out=out)
    p.add_argument("--catalog", default=catalog_mod.DEFAULT_CATALOG, help="recipe catalog (YAML)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and compiler output")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    ls = sub.add_parser("list", help="recipes and whether each can run here", out=out)
    ls.add_argument("-v", "--verbose", action="store_true", help="every recipe in full: scopes, guardrail, hooks")
    for name, (hlp, _long) in VERBS.items():
        # -h before the recipe is the verb's help (it lists the recipes); after it, the recipe's own
        s = sub.add_parser(name, help=hlp, add_help=False, out=out)
        s.add_argument("-h", "--help", action="store_true", dest="verb_help")
        s.add_argument("recipe", nargs="?")
        s.add_argument("rest", nargs=argparse.REMAINDER)
    from kit.triage import triage_cmd
    triage_cmd.add_parser(sub, out)
    sub.add_parser("doctor", help="what this kernel and these privileges support", out=out)
    f = sub.add_parser("fleet", help="run a recipe on many hosts through Ansible (docs/fleet.md)", add_help=False,
                       out=out)
    f.add_argument("-h", "--help", action="store_true", dest="verb_help")
    f.add_argument("action", choices=["run"])
    f.add_argument("recipe", nargs="?")
    f.add_argument("rest", nargs=argparse.REMAINDER)
    m = sub.add_parser("merge", help="many hosts' results as one (kit run --json, kit fleet run)", out=out)
    m.add_argument("files", nargs="+", metavar="FILE", help="a host's `kit run --json`, or a fleet.json")
    m.add_argument("--json", action="store_true", help="the merged result as JSON on stdout")
    m.add_argument("--folded", action="store_true", help="stacks: folded lines of every host, merged")
    m.add_argument("--by-host", action="store_true", help="stacks: the host as the root frame")
    m.add_argument("--svg", metavar="FILE", default=None, help="stacks: a flame graph of the fleet to FILE")
    c = sub.add_parser("calibrate", help="measure this host's per-event probe costs", out=out)
    c.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement (median kept)")
    c.add_argument("--json", action="store_true", help="the calibration as JSON on stdout")
    return p


def verb_help(cmd, recipes, out):
    """`kit run --help`: what the verb does and every recipe it takes."""
    import textwrap
    width = max(len(n) for n in recipes) if recipes else 0
    lines = [f"usage: kit {cmd} RECIPE [options]", ""] + textwrap.wrap(VERBS[cmd][1], 100) + ["", "recipes:"]
    for name, r in recipes.items():
        lines += textwrap.wrap(r.summary, 100, initial_indent=f"  {name:<{width}}  ",
                               subsequent_indent=" " * (width + 4))
    example = next(iter(recipes.values())).example if recipes else "kit run offcpu --comm pay-svc --for 20s"
    lines += ["", f"`kit {cmd} RECIPE --help` lists that recipe's scopes and options.",
              f"example: {example.replace('kit run', f'kit {cmd}', 1)}"]
    out.write("\n".join(lines) + "\n")
    return ExitCode.OK


def _load(args):
    return catalog_mod.load(args.catalog)


def _recipe(recipes, name):
    if not name:
        raise BadInput("no recipe named", f"pick one of: {', '.join(recipes)}")
    if name not in recipes:
        import difflib
        close = difflib.get_close_matches(name, recipes, n=1)
        hint = f"did you mean {close[0]}?" if close else f"pick one of: {', '.join(recipes)}"
        raise BadInput(f"unknown recipe {name[:40]!r}", hint + " (`kit list` shows all)")
    return recipes[name]


LIST_WIDTH = 100  # `kit list` fits a 100-column terminal; `kit list -v` has the rest


def _scope_text(r):
    scopes = ", ".join(p.name for p in r.scope_params())
    if not scopes:
        return "none (the budget applies)"
    return ("required: " if r.guard.scope_required else "optional: ") + scopes


def _runs_here(r):
    from kit.host import features
    why = features.why_not(r)  # every rung's reason: one may be fixable (mount tracefs), another not
    if why is not None:
        return f"no: {why}"
    hook = next(h for h in r.hooks if features.hook_supported(h) is None)
    return f"yes ({hook.type})"


def list_text(recipes, width=LIST_WIDTH):
    """One row per recipe, wrapped to fit `width` columns."""
    import textwrap
    from tabulate import tabulate
    runs = {n: _runs_here(r) for n, r in recipes.items()}

    def longest_word(texts, at_least):
        return max([at_least] + [len(w) for t in texts for w in t.split()])
    name_w = longest_word(recipes, len("recipe"))
    runs_w = longest_word(runs.values(), 20)  # words are never broken: a reason stays searchable
    scope_w = longest_word([_scope_text(r) for r in recipes.values()], 22)
    what_w = max(width - name_w - runs_w - scope_w - 6, 20)

    def wrap(text, w):
        return "\n".join(textwrap.wrap(text, w, break_on_hyphens=False, break_long_words=False)) or "-"
    rows = [[r.name, wrap(r.summary, what_w), wrap(_scope_text(r), scope_w), wrap(runs[r.name], runs_w)]
            for r in recipes.values()]
    lines = tabulate(rows, headers=["recipe", "what it shows", "scope", "runs here"],
                     disable_numparse=True).splitlines()
    spaced = lines[:3]  # a blank line between recipes whose cells wrap, so each reads as one
    for line in lines[3:]:
        if not line.startswith(" "):
            spaced.append("")
        spaced.append(line)
    return ("\n".join(spaced) + "\n\n`kit list -v` for every recipe in full; "
            "`kit run RECIPE --help` for its options\n")


def list_verbose(recipes):
    """Every recipe in full: what `kit list` leaves out."""
    from kit.host import features
    out = []
    for r in recipes.values():
        flags = ", ".join("--" + p.flag for p in r.scope_params()) or "none"
        rule = ("one is required: it hooks a hot path" if r.guard.scope_required else "optional")
        hooks = "; ".join(f"{h.type} {h.target}".strip() + ("" if features.hook_supported(h) is None
                                                             else f" (not here: {features.hook_supported(h)})")
                          for h in r.hooks)
        other = [f"--{p.flag}" for p in r.params.values() if not p.scope] + (
            ["--stream (a line per event as it happens)"] if r.stream_form else [])
        out += [f"{r.name}: {r.summary}",
                f"  scopes:    {flags} ({rule})",
                f"  guardrail: {'hot path, ' if r.guard.hot_path else ''}cost class {r.guard.cost_class}, "
                f"budget {_default_budget()}% of the machine's CPU unless --budget",
                f"  duration:  {r.duration_default:g}s by default, at most {r.duration_max:g}s",
                f"  hooks:     {hooks}",
                f"  runs here: {_runs_here(r)}"]
        if other:
            out.append(f"  options:   {', '.join(other)}")
        out += [f"  example:   {r.example}", f"  runbook:   {r.runbook}", ""]
    return "\n".join(out)


def _default_budget():
    from kit.guard import DEFAULT_BUDGET
    return f"{DEFAULT_BUDGET:g}"


def cmd_list(args, out):
    recipes = _load(args)
    out.write(list_verbose(recipes) if getattr(args, "verbose", False) else list_text(recipes))
    return ExitCode.OK


def _recipe_args(args, cmd, out=None):
    recipes = _load(args)
    if args.verb_help and args.recipe is None:
        raise HelpShown(verb_help(cmd, recipes, out))
    recipe = _recipe(recipes, args.recipe)
    rest = (["--help"] if args.verb_help else []) + args.rest
    ns = recipe_parser(recipe, cmd, out=out).parse_args(rest)
    return _form(recipe, ns), ns, scope_aliases(recipe, ns, parse_values(recipe, ns))


def _form(recipe, ns):
    """The recipe as these options run it: its stream form under --stream."""
    if getattr(ns, "stream", False):
        return recipe.stream_form
    if recipe.output != "stream" and getattr(ns, "limit", None) is not None:
        raise BadInput(f"--limit is for the stream form of {recipe.name}", "add --stream, or leave --limit out")
    return recipe


RUN_ONLY = (("duration", "--for"), ("json", "--json"), ("budget", "--budget"), ("force", "--force"),
            ("dry_run", "--dry-run"), ("progress", "--progress"), ("folded", "--folded"), ("svg", "--svg"),
            ("limit", "--limit"), ("out", "--out"))


def cmd_show(args, out, err):
    """The C text for a recipe's arguments; a pasted `kit run` line works, its run-only options checked
    and ignored (--hook picks the rung whose text is shown)."""
    from kit.engine import run
    recipe, ns, values = _recipe_args(args, "show", out)
    _options(recipe, ns, args)  # the same checks `run` makes, so a line show accepts, run accepts
    ignored = [flag for dest, flag in RUN_ONLY if getattr(ns, dest, None) not in (None, False)]
    _ctx, text = run.prepare(recipe, values, ns.hook)
    if ignored:
        err.write(f"kit: show prints the C text only; only `kit run` uses {', '.join(ignored)}\n")
    out.write(text)
    return ExitCode.OK


def _with_alternatives(e, recipes):
    """An Unsupported error from the kernel's side, with the recipes that can still run here."""
    from kit.host import features
    if "CAP_" in e.message or getattr(e, "recipe_runs", False):
        return e
    ok = features.runnable(recipes)
    e.hint = (e.hint + "; " if e.hint else "") + (f"recipes that still work here: {', '.join(ok)}" if ok
                                                  else "no recipe in this catalog can run here")
    return e


def _check_stdout(out):
    """Results go to stdout: a closed or read-only one is bad input now, not a lost run later."""
    import fcntl
    import os
    if out is None:
        raise BadInput("stdout is closed, so kit could not print its results", "run kit with stdout open")
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's StringIO)
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise BadInput("stdout is closed, so kit could not print its results", "run kit with stdout open") from None
    if mode == os.O_RDONLY:
        raise BadInput("stdout is open for reading only, so kit could not print its results",
                       "redirect stdout to a file or a pipe kit can write")


def _print_results(result, recipe, ns, opts, out, err):
    """Writes the results to stdout; if that fails, to the terminal (stderr). Returns what failed, or None."""
    from kit import output
    try:
        if opts.json:
            output.to_json(result, out)
        elif getattr(ns, "folded", False):
            output.folded(result, out, err)
        else:
            output.human(result, recipe, out)
        out.flush()
        return None
    except OSError as e:
        _quiet_stdout(out)
        if isinstance(e, BrokenPipeError):  # a reader that went away wants nothing more
            return "the results to stdout (Broken pipe)"
        output.human(result, recipe, err)
        return f"the results to stdout ({e.strerror or type(e).__name__})"


def _quiet_stdout(out):
    """After a failed write, stdout's buffer would fail again at exit: point it at /dev/null."""
    import os
    try:
        fd = out.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass


def cmd_run(args, out, err, dry_run=False):
    from kit import output
    from kit.engine import run
    recipe, ns, values = _recipe_args(args, "estimate" if dry_run else "run", out)
    opts = _options(recipe, ns, args, dry_run)
    opts.out = out  # a stream's lines go out as they arrive
    if opts.json and getattr(ns, "folded", False):
        raise BadInput("--json and --folded both write to stdout", "pick one; add --svg FILE for a flame graph "
                       "file beside either")
    svg = _stack_outputs(recipe, ns, values)  # every output path is checked before anything is attached
    _check_stdout(out)
    bundle = None
    if getattr(ns, "out", None) is not None and not opts.dry_run:
        from kit.triage import report
        bundle = report.check_dir(ns.out)  # before anything is attached
    try:
        result, code = run.execute(recipe, values, opts, err=err)
    except Unsupported as e:
        raise _with_alternatives(e, _load(args)) from e
    if opts.dry_run:
        output.to_json(result, out) if opts.json else out.write(_estimate_text(result))
        return code
    failed = []
    if svg:
        try:
            output.write_flamegraph(result, recipe, svg, err)
        except (OSError, KitError) as e:  # checked before attaching, but the disk or directory can go since
            failed.append(f"the flame graph to {svg} ({getattr(e, 'strerror', None) or getattr(e, 'message', e)})")
    if bundle:
        _run_bundle(bundle, recipe, args, result, code, err)
    if (result.get("stream") or {}).get("stopped") == "output_closed":
        return code  # the reader went away (| head): there is no one to give the summary to
    problem = _print_results(result, recipe, ns, opts, out, err)
    if problem:
        failed.insert(0, problem)
        where = "above, on stderr" if "Broken pipe" not in problem else "nowhere (the reader of stdout went away)"
    else:
        where = "on stdout"
    if failed:
        err.write(printable(f"kit: error: could not write {' and '.join(failed)} — the results are {where}; "
                            "give a path that can be written and run again") + "\n")
        return ExitCode.OUTPUT if code == ExitCode.OK else code
    return code


def _run_bundle(d, recipe, args, result, code, err):
    """`kit run --out DIR`: the run as a one-step report (the command without --out reproduces it)."""
    import shlex
    from kit import triage
    from kit.triage import report
    words = _without(args.rest, "--out")
    step = triage.Step(recipe.name, words, why="", kind="run", status="ran" if code == ExitCode.OK else "stopped",
                       result=result, code=int(code))
    if code != ExitCode.OK:
        step.reason = f"stopped by {result.get('stopped_by')}"
    recipes = _load(args)
    command = shlex.join(["kit", "run", recipe.name, *words])
    rep = report.build("kit run", command, " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                     result.get("scope", {}).items()) or "no scope",
                       [step], [], [], report.host_facts(recipes), elapsed_s=result.get("duration_s"),
                       state=result.get("stopped_by"))
    files = report.write(d, rep, recipes)
    err.write(f"kit: report written to {d} ({', '.join(files)})\n")


def _without(words, flag):
    """words without `flag VALUE` (or flag=VALUE)."""
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w == flag:
            skip = True
            continue
        if w.startswith(flag + "="):
            continue
        out.append(w)
    return out


def _estimate_text(result):
    from kit.guard import format_estimate
    return format_estimate(result)


def main(argv=None, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        args = _base_parser(out).parse_args(argv)
        if args.cmd in (None,):
            _base_parser(out).print_help(out)
            return ExitCode.BAD_INPUT
        if args.cmd == "list":
            return cmd_list(args, out)
        if args.cmd == "show":
            return cmd_show(args, out, err)
        if args.cmd in ("run", "estimate"):
            return cmd_run(args, out, err, dry_run=args.cmd == "estimate")
        if args.cmd == "triage":
            from kit.triage import triage_cmd
            return triage_cmd.main(args, argv[argv.index("triage") + 1:], out, err)
        if args.cmd in ("fleet", "merge"):
            from kit import fleet
            return fleet.main(sys.modules[__name__], args, out, err) if args.cmd == "fleet" \
                else fleet.merge_main(args, out, err)
        if args.cmd == "doctor":
            from kit.host import doctor
            return doctor.main(out, catalog_path=args.catalog)
        if args.cmd == "calibrate":
            from kit.guard import calibrate
            return calibrate.main(args, out, err)
    except HelpShown:
        return ExitCode.OK
    except KitError as e:
        if args is not None and args.debug:
            traceback.print_exc(file=err)
        first, *more = e.lines()
        err.write(f"kit: error: {first}\n" + "".join(f"  {d}\n" for d in more))
        return e.code
    except KeyboardInterrupt:
        err.write("kit: interrupted\n")
        return ExitCode.INTERRUPTED
    except Exception as e:  # a bug: one line, traceback with --debug
        if args is not None and args.debug:
            traceback.print_exc(file=err)
        err.write(f"kit: internal error: {type(e).__name__}: {printable(e)} — rerun with --debug and report it\n")
        return ExitCode.INTERNAL
    return ExitCode.OK
