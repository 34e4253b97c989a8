"""How a `kit run RECIPE ...` command line becomes checked values and run options: the recipe's own
parser (built from the catalog), every value through its type, --unit/--container as a cgroup, --for and
--budget checked. Shared by the command line (kit/cli.py) and the triage's steps (kit/triage/__init__.py), so a
step is parsed exactly as the command it prints."""

import argparse
import re

from kit.catalog import params as ptypes
from kit.errors import BadInput


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
        p.add_argument("--json", action="store_true",
                       help="JSON Lines on stdout: an object per event as it happens, then the summary"
                       if recipe.output == "stream" else "one JSON object on stdout" + (
                           " (with --stream: JSON Lines, an object per event, then the summary)"
                           if recipe.stream_form else ""))
        p.add_argument("--budget", default=None, help="overhead budget, percent of the machine's CPU")
        p.add_argument("--force", action="store_true", help="run even if the guardrail refuses (recorded)")
        p.add_argument("--dry-run", action="store_true", help="estimate only, attach nothing")
        p.add_argument("--hook", default=None, choices=[h.type for h in recipe.hooks],
                       help="use this rung of the hook ladder")
        p.add_argument("--progress", action="store_true", default=None, help="progress line even when not a tty")
        p.add_argument("--out", metavar="DIR", default=None,
                       help="also write an incident report bundle to DIR (report.md, report.json, flame graph, "
                            "host facts); DIR must be new or empty")
    if "cgroup" in recipe.params:
        _cgroup_aliases(p)
    if recipe.output == "stacks":
        _stack_output_options(p)
    if cmd in ("run", "estimate", "show") and recipe.stream_form is not None:
        p.add_argument("--stream", action="store_true",
                       help="a line per event as it happens, with the same scopes and options, instead of the "
                            "table at the end (then --limit applies)")
    if cmd in ("run", "estimate", "show") and (recipe.output == "stream" or recipe.stream_form is not None):
        spec = (recipe.stream or recipe.stream_form.stream)
        p.add_argument("--limit", default=None, metavar="N",
                       help=("with --stream: " if recipe.output != "stream" else "")
                       + f"show at most N events a second (default {spec.limit}; 0: all); the rest are counted "
                       "in the summary")
    return p


def _cgroup_aliases(p):
    p.add_argument("--unit", metavar="NAME", default=None,
                   help="the cgroup of this systemd unit (NAME.service; .service is assumed), as --cgroup")
    p.add_argument("--container", metavar="ID", default=None,
                   help="the cgroup of the container whose id starts with ID (docker, containerd, CRI-O, podman, "
                        "kubelet), as --cgroup")


def scope_aliases(recipe, ns, values):
    """--unit and --container: the cgroup they name, through --cgroup's own type, in values["cgroup"]."""
    from kit.host import cgroups
    given = [(flag, getattr(ns, dest, None)) for flag, dest in (("--cgroup", "cgroup"), ("--unit", "unit"),
                                                                 ("--container", "container"))]
    given = [(flag, v) for flag, v in given if v is not None]
    if len(given) > 1:
        raise BadInput(f"{' and '.join(f for f, _v in given)} both name a cgroup", "give one of them")
    if not given or given[0][0] == "--cgroup":
        return values
    flag, v = given[0]
    path = cgroups.unit(v) if flag == "--unit" else cgroups.container(v)
    values["cgroup"] = ptypes.TYPES["cgroup"].parse(path, recipe.params["cgroup"])
    return values


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


def _options(recipe, ns, args, dry_run=False):
    from kit.engine.run import Options
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
    limit = None
    if getattr(ns, "limit", None) is not None:
        from kit.catalog import ParamSpec
        limit = ptypes.TYPES["int"].parse(ns.limit, ParamSpec(name="limit", type="int", max=10_000_000))
    return Options(duration=duration, json=ns.json, debug=args.debug, dry_run=dry_run or ns.dry_run,
                   force=ns.force, budget=budget, hook=ns.hook, progress=ns.progress, limit=limit)
