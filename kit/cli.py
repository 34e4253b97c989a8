"""Command line: kit list | show | run | doctor.

Global options are parsed first; a recipe's own parameters become options of
its own parser, built from the catalog, so `kit run X --help` lists exactly
what X accepts.
"""

import argparse
import re
import sys
import traceback

from kit import catalog as catalog_mod
from kit import params as ptypes
from kit.errors import BadInput, ExitCode, KitError, Unsupported, printable

EPILOG = """examples:
  kit list                                   what kit can run here
  kit run offcpu --comm pay-svc --for 20s    where pay-svc waits
  kit run tcpretrans --port 443 --json       retransmits as JSON
  kit show tcpretrans --port 443             the exact C that would be compiled
  kit doctor                                 what this kernel supports
"""


class HelpShown(Exception):
    """--help was printed: main() returns 0 instead of argparse exiting the process."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadInput (one line, exit 2) instead of printing usage. No abbreviations:
    on a privileged tool `--p 5` must not silently mean --pid (or, after a new option, --port).
    Help goes to the stream main() writes to."""

    def __init__(self, *a, out=None, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)
        self.out = out

    def error(self, message):
        raise BadInput(f"{self.prog}: {message}", _did_you_mean(self, message) or f"see `{self.prog} --help`")

    def print_help(self, file=None):
        super().print_help(file or self.out)

    def exit(self, status=0, message=None):
        if status == 0 and message is None:
            raise HelpShown()
        super().exit(status, message)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(_glue_dash_values(self, args), namespace)


def _glue_dash_values(parser, args):
    """`--for -5s` as `--for=-5s`: a value that starts with '-' and is no option of ours reaches the
    option's own type check (one line saying what a duration looks like), not argparse's
    "expected one argument"."""
    if args is None:
        return None
    takes = {o for a in parser._actions if a.nargs is None and a.option_strings for o in a.option_strings}
    known = {o for a in parser._actions for o in a.option_strings}
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in takes and i + 1 < len(args) and args[i + 1].startswith("-") and args[i + 1] not in known \
                and not args[i + 1].startswith("--"):
            out.append(f"{a}={args[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _did_you_mean(parser, message):
    import difflib
    m = re.match(r"unrecognized arguments: (--?[\w-]+)", message)
    if not m:
        return None
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1, cutoff=0.75)
    return f"did you mean {close[0]}? (see `{parser.prog} --help`)" if close else None


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


def recipe_parser(recipe, cmd, out=None):
    """The options of `kit run RECIPE` (also `show` and `estimate`, so a pasted run line works there)."""
    p = _Parser(prog=f"kit {cmd} {recipe.name}", description=recipe.summary,
                epilog=f"example: {recipe.example}\nrunbook: {recipe.runbook}",
                formatter_class=argparse.RawDescriptionHelpFormatter, out=out)
    for spec in recipe.params.values():
        if spec.type == "flag":
            p.add_argument(f"--{spec.flag}", dest=spec.name, action="store_const", const="true", default=None,
                           help=spec.help)
        else:
            p.add_argument(f"--{spec.flag}", dest=spec.name, metavar=spec.type.upper(), default=None, help=spec.help)
    if cmd in ("run", "estimate", "show"):
        p.add_argument("--for", dest="duration", default=None,
                       help=f"how long (default {recipe.duration_default:g}s, at most {recipe.duration_max:g}s)")
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.add_argument("--budget", default=None, help="overhead budget, percent of the machine's CPU")
        p.add_argument("--force", action="store_true", help="run even if the guardrail refuses (recorded)")
        p.add_argument("--dry-run", action="store_true", help="estimate only, attach nothing")
        p.add_argument("--hook", default=None, choices=[h.type for h in recipe.hooks],
                       help="use this rung of the hook ladder")
        p.add_argument("--progress", action="store_true", default=None, help="progress line even when not a tty")
    if recipe.output == "stacks":
        _stack_output_options(p)
    return p


def _stack_output_options(p):
    p.add_argument("--folded", action="store_true",
                   help="folded stacks on stdout (comm;frame;frame VALUE), for flamegraph.pl, speedscope, inferno")
    p.add_argument("--svg", metavar="FILE", default=None, help="also write a flame graph to FILE (open it in a browser)")


def _stack_outputs(recipe, ns, values):
    """Checks --svg before anything is attached; returns the path or None."""
    svg = getattr(ns, "svg", None)
    if svg is None:
        return None
    from kit.catalog import ParamSpec
    return ptypes.TYPES["outpath"].parse(svg, ParamSpec(name="svg", type="outpath"))


def parse_values(recipe, ns):
    """Every parameter through its type: user text -> checked value."""
    values = {}
    for spec in recipe.params.values():
        raw = getattr(ns, spec.name)
        values[spec.name] = None if raw is None else ptypes.TYPES[spec.type].parse(raw, spec)
    return values


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
    from kit import features
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
    from kit import features
    out = []
    for r in recipes.values():
        flags = ", ".join("--" + p.flag for p in r.scope_params()) or "none"
        rule = ("one is required: it hooks a hot path" if r.guard.scope_required else "optional")
        hooks = "; ".join(f"{h.type} {h.target}".strip() + ("" if features.hook_supported(h) is None
                                                             else f" (not here: {features.hook_supported(h)})")
                          for h in r.hooks)
        other = [f"--{p.flag}" for p in r.params.values() if not p.scope]
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
    return recipe, ns, parse_values(recipe, ns)


RUN_ONLY = (("duration", "--for"), ("json", "--json"), ("budget", "--budget"), ("force", "--force"),
            ("dry_run", "--dry-run"), ("progress", "--progress"), ("folded", "--folded"), ("svg", "--svg"))


def cmd_show(args, out, err):
    """The C text for a recipe's arguments; a pasted `kit run` line works, its run-only options checked
    and ignored (--hook picks the rung whose text is shown)."""
    from kit import run
    recipe, ns, values = _recipe_args(args, "show", out)
    _options(recipe, ns, args)  # the same checks `run` makes, so a line show accepts, run accepts
    ignored = [flag for dest, flag in RUN_ONLY if getattr(ns, dest, None) not in (None, False)]
    _ctx, text = run.prepare(recipe, values, ns.hook)
    if ignored:
        err.write(f"kit: show prints the C text only; only `kit run` uses {', '.join(ignored)}\n")
    out.write(text)
    return ExitCode.OK


def _options(recipe, ns, args, dry_run=False):
    from kit.run import Options
    duration = recipe.duration_default if ns.duration is None else ptypes.Duration.seconds(ns.duration)
    if ns.duration is not None and duration > recipe.duration_max:  # echo what the user typed
        raise BadInput(f"--for {str(ns.duration).strip()[:20]} is over {recipe.name}'s maximum of "
                       f"{recipe.duration_max:g}s",
                       f"use --for {int(recipe.duration_max)}s or less, and run again if you need more")
    budget = None
    if ns.budget is not None:
        try:
            budget = float(str(ns.budget).rstrip("%"))
        except ValueError:
            raise BadInput(f"--budget {ns.budget!r} is not a number", "give a percentage like 2 or 0.5") from None
        if not 0 < budget <= 100:
            raise BadInput(f"--budget {budget:g} is out of range", "give a percentage above 0 and at most 100")
    return Options(duration=duration, json=ns.json, debug=args.debug, dry_run=dry_run or ns.dry_run,
                   force=ns.force, budget=budget, hook=ns.hook, progress=ns.progress)


def _with_alternatives(e, recipes):
    """An Unsupported error from the kernel's side, with the recipes that can still run here."""
    from kit import features
    if "CAP_" in e.message:
        return e
    ok = features.runnable(recipes)
    e.hint = (e.hint + "; " if e.hint else "") + (f"recipes that still work here: {', '.join(ok)}" if ok
                                                  else "no recipe in this catalog can run here")
    return e


def cmd_run(args, out, err, dry_run=False):
    from kit import output, run
    recipe, ns, values = _recipe_args(args, "estimate" if dry_run else "run", out)
    opts = _options(recipe, ns, args, dry_run)
    if opts.json and getattr(ns, "folded", False):
        raise BadInput("--json and --folded both write to stdout", "pick one; add --svg FILE for a flame graph "
                       "file beside either")
    svg = _stack_outputs(recipe, ns, values)
    try:
        result, code = run.execute(recipe, values, opts, err=err)
    except Unsupported as e:
        raise _with_alternatives(e, _load(args)) from e
    if opts.dry_run:
        output.to_json(result, out) if opts.json else out.write(_estimate_text(result))
        return code
    if svg:
        output.write_flamegraph(result, recipe, svg, err)
    if opts.json:
        output.to_json(result, out)
    elif getattr(ns, "folded", False):
        output.folded(result, out)
    else:
        output.human(result, recipe, out)
    return code


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
        if args.cmd in ("fleet", "merge"):
            from kit import fleet
            return fleet.main(sys.modules[__name__], args, out, err) if args.cmd == "fleet" \
                else fleet.merge_main(args, out, err)
        if args.cmd == "doctor":
            from kit import doctor
            return doctor.main(out, catalog_path=args.catalog)
        if args.cmd == "calibrate":
            from kit import calibrate
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
