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


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadInput (one line, exit 2) instead of printing usage. No abbreviations:
    on a privileged tool `--p 5` must not silently mean --pid (or, after a new option, --port)."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message):
        raise BadInput(f"{self.prog}: {message}", _did_you_mean(self, message) or f"see `{self.prog} --help`")


def _did_you_mean(parser, message):
    import difflib
    m = re.match(r"unrecognized arguments: (--?[\w-]+)", message)
    if not m:
        return None
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1, cutoff=0.75)
    return f"did you mean {close[0]}? (see `{parser.prog} --help`)" if close else None


def _base_parser():
    p = _Parser(prog="kit", description="Scoped, time-boxed eBPF probes for incidents.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=catalog_mod.DEFAULT_CATALOG, help="recipe catalog (YAML)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and compiler output")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("list", help="recipes and whether each can run here")
    for name, hlp in (("show", "print the C text `run` would compile"), ("run", "run a recipe"),
                      ("estimate", "print the guardrail's estimate without attaching")):
        s = sub.add_parser(name, help=hlp, add_help=False)
        s.add_argument("recipe", nargs="?")
        s.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("doctor", help="what this kernel and these privileges support")
    c = sub.add_parser("calibrate", help="measure this host's per-event probe costs")
    c.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement (median kept)")
    c.add_argument("--json", action="store_true", help="the calibration as JSON on stdout")
    return p


def recipe_parser(recipe, cmd):
    p = _Parser(prog=f"kit {cmd} {recipe.name}", description=recipe.summary,
                epilog=f"example: {recipe.example}\nrunbook: {recipe.runbook}",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in recipe.params.values():
        if spec.type == "flag":
            p.add_argument(f"--{spec.flag}", dest=spec.name, action="store_const", const="true", default=None,
                           help=spec.help)
        else:
            p.add_argument(f"--{spec.flag}", dest=spec.name, metavar=spec.type.upper(), default=None, help=spec.help)
    if cmd in ("run", "estimate"):
        p.add_argument("--for", dest="duration", default=None,
                       help=f"how long (default {recipe.duration_default:g}s, at most {recipe.duration_max:g}s)")
        p.add_argument("--json", action="store_true",
                       help="JSON Lines on stdout: an object per event as it happens, then the summary"
                       if recipe.output == "stream" else "one JSON object on stdout")
        p.add_argument("--budget", default=None, help="overhead budget, percent of the machine's CPU")
        p.add_argument("--force", action="store_true", help="run even if the guardrail refuses (recorded)")
        p.add_argument("--dry-run", action="store_true", help="estimate only, attach nothing")
        p.add_argument("--hook", default=None, choices=[h.type for h in recipe.hooks],
                       help="use this rung of the hook ladder")
        p.add_argument("--progress", action="store_true", default=None, help="progress line even when not a tty")
    if cmd == "run" and recipe.output == "stacks":
        _stack_output_options(p)
    if cmd in ("run", "estimate") and recipe.output == "stream":
        p.add_argument("--limit", default=None, metavar="N",
                       help=f"show at most N events a second (default {recipe.stream.limit}; 0: all); the rest "
                            "are counted in the summary")
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


def cmd_list(args, out):
    from tabulate import tabulate
    from kit import features
    rows = []
    for r in _load(args).values():
        why = features.why_not(r)  # every rung's reason: one may be fixable (mount tracefs), another not
        hook = None if why else next(h for h in r.hooks if features.hook_supported(h) is None)
        scopes = ",".join(p.name for p in r.scope_params()) or "-"
        need = "scope required" if r.guard.scope_required else ""
        rows.append([r.name, r.summary, scopes, need, f"yes ({hook.type})" if why is None else f"no: {why}"])
    out.write(tabulate(rows, headers=["recipe", "what it shows", "scopes", "guardrail", "runs here"]) + "\n")
    return ExitCode.OK


def _recipe_args(args, cmd):
    recipes = _load(args)
    recipe = _recipe(recipes, args.recipe)
    ns = recipe_parser(recipe, cmd).parse_args(args.rest)
    return recipe, ns, parse_values(recipe, ns)


def cmd_show(args, out):
    from kit import run
    recipe, ns, values = _recipe_args(args, "show")
    _ctx, text = run.prepare(recipe, values)
    out.write(text)
    return ExitCode.OK


def _options(recipe, ns, args, dry_run=False):
    from kit.run import Options
    duration = recipe.duration_default if ns.duration is None else ptypes.Duration.seconds(ns.duration)
    budget = None
    if ns.budget is not None:
        try:
            budget = float(str(ns.budget).rstrip("%"))
        except ValueError:
            raise BadInput(f"--budget {ns.budget!r} is not a number", "give a percentage like 2 or 0.5") from None
        if not 0 < budget <= 100:
            raise BadInput(f"--budget {budget:g} is out of range", "give a percentage above 0 and at most 100")
    limit = None
    if getattr(ns, "limit", None) is not None:
        from kit.catalog import ParamSpec
        limit = ptypes.TYPES["int"].parse(ns.limit, ParamSpec(name="limit", type="int", max=10_000_000))
    return Options(duration=duration, json=ns.json, debug=args.debug, dry_run=dry_run or ns.dry_run,
                   force=ns.force, budget=budget, hook=ns.hook, progress=ns.progress, limit=limit)


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
    recipe, ns, values = _recipe_args(args, "run")
    opts = _options(recipe, ns, args, dry_run)
    opts.out = out  # a stream's lines go out as they arrive
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
    if (result.get("stream") or {}).get("stopped") == "output_closed":
        return code  # the reader went away (| head): there is no one to give the summary to
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
        args = _base_parser().parse_args(argv)
        if args.cmd in (None,):
            _base_parser().print_help(out)
            return ExitCode.BAD_INPUT
        if args.cmd == "list":
            return cmd_list(args, out)
        if args.cmd == "show":
            return cmd_show(args, out)
        if args.cmd in ("run", "estimate"):
            return cmd_run(args, out, err, dry_run=args.cmd == "estimate")
        if args.cmd == "doctor":
            from kit import doctor
            return doctor.main(out, catalog_path=args.catalog)
        if args.cmd == "calibrate":
            from kit import calibrate
            return calibrate.main(args, out, err)
    except KitError as e:
        if args is not None and args.debug:
            traceback.print_exc(file=err)
        err.write(f"kit: error: {e.line()}\n")
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
