"""kit's benchmarks against bpftrace and bcc's tools: `sudo ./bench/run`.

    python -m bench [--quick] [--only RECIPE,...] [--kinds hook,footprint,guard] [--out FILE] [--reps N]
                    [--from-json RAW] [--into RESULTS.md]

Builds the workloads into bench/out/, runs each case alternating kit and its
peers, and writes RESULTS.md (bench/RESULTS.md by default; --quick writes
bench/out/RESULTS.quick.md) plus the raw samples as JSON next to it.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

from bench import bpfstats, report, suite
from bench.cases import log

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("hook", "footprint", "guard")  # the start-up is timed at every tool start of the hook cases


def parse(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repetition, tiny workloads (the smoke test)")
    p.add_argument("--only", "--recipes", dest="only", default=",".join(suite.RECIPES),
                   help="recipes to bench, comma-separated")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="which kinds of case: hook (per-event cost, and start-up), footprint, guard")
    p.add_argument("--out", default=None, help="where to write the results (markdown)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 7; 1 with --quick)")
    p.add_argument("--from-json", metavar="RAW", default=None,
                   help="measure nothing: write the results again from a run's raw samples (its .json)")
    p.add_argument("--into", metavar="RESULTS", default=None,
                   help="also put the results in RESULTS (e.g. bench/RESULTS.md) as a section of these recipes, "
                        "keeping its other rows (an earlier section of the same recipes is replaced)")
    a = p.parse_args(argv)
    a.only = [x for x in a.only.split(",") if x]
    a.kinds = [x for x in a.kinds.split(",") if x]
    for r in a.only:
        if r not in suite.RECIPES:
            p.error(f"unknown recipe {r!r}; pick from {', '.join(suite.RECIPES)}")
    for k in a.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}; pick from {', '.join(KINDS)}")
    return a


def main(argv=None):
    a = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: needs root (it loads BPF programs and creates a network namespace): "
                         "sudo ./bench/run\n")
        return 2
    mode = suite.QUICK if a.quick else suite.FULL
    if a.reps:
        mode = dataclasses.replace(mode, reps=a.reps, start_reps=a.reps)
    outdir = os.path.join(HERE, "out")
    os.makedirs(outdir, exist_ok=True)
    out = a.out or (os.path.join(outdir, "RESULTS.quick.md") if a.quick else os.path.join(HERE, "RESULTS.md"))
    if a.from_json:
        return rerender(a.from_json, out, outdir, mode, a.into)
    t0 = time.monotonic()
    meta = {"date": report.now(), "machine": report.machine(), "load_start": report.loadavg(), "quick": a.quick,
            "command": " ".join([*([f"KIT_CALIBRATION={os.environ['KIT_CALIBRATION']}"]
                                   if os.environ.get("KIT_CALIBRATION") else []),
                                 "sudo ./bench/run", *(argv if argv is not None else sys.argv[1:])])}
    hooks, starts, footprints, guards = {}, {}, {}, {}
    raw = os.path.splitext(out)[0] + ".json" if a.out else os.path.join(
        outdir, "results.quick.json" if a.quick else "results.json")

    def save():  # after every case, so that a crash late in a long run keeps what was measured
        meta["load_end"] = report.loadavg()
        meta["minutes"] = (time.monotonic() - t0) / 60
        meta["sysctl_on"] = bpfstats.sysctl_on()
        with open(raw, "w") as f:
            json.dump({"meta": meta, **report.as_json(hooks, starts, footprints, guards)}, f, indent=1,
                      default=str)

    built = {name: suite.RECIPES[name](outdir, mode) for name in a.only}
    if "hook" in a.kinds:
        for name, r in built.items():
            with _prepared(r.hook.workload):
                hooks[name] = r.hook.run(mode.reps, warm=mode.warm)
            save()
        log("start-up: reference programs")
        starts["(reference)"] = suite.references().run(mode.start_reps, warm=mode.warm)
        save()
    if "footprint" in a.kinds:
        for name, r in built.items():
            with _prepared(r.footprint.workload):
                footprints[name] = r.footprint.run(mode.footprint_reps)
            save()
    if "guard" in a.kinds:
        for name, r in built.items():
            for g in r.guards():
                with _prepared(g.workload):
                    guards[g.key] = g.run(mode.guard_reps)
                save()
    save()  # first, so that the samples survive a bug in the report
    text = report.render(meta, hooks, starts, footprints, guards, mode)
    with open(out, "w") as f:
        f.write(text)
    log(f"wrote {out} and {raw} in {meta['minutes']:.1f} min")
    if a.into:
        into(a.into, meta, hooks, starts, footprints, guards, mode)
    return 0


def into(path, meta, hooks, starts, footprints, guards, mode):
    """The run as a section of an existing RESULTS.md, the rest of which is kept."""
    names = list(hooks or footprints or guards)
    section = report.render(meta, hooks, starts, footprints, guards, mode, section=True)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(report.merge_section(text, names, section))
    log(f"put the section of {', '.join(names)} into {path}")


def rerender(raw_path, out, outdir, mode, into_path=None):
    """The report again from a run's raw samples (for its wording; nothing is measured)."""
    from bench.cases import FootprintResult, GuardResult, HookResult
    from bench.stats import Figure
    with open(raw_path) as f:
        raw = json.load(f)
    names = list(raw["hooks"] or raw["footprints"] or raw.get("guards") or {})
    built = {name: suite.RECIPES[name](outdir, mode) for name in names}
    hooks = {n: HookResult(built[n].hook, r["rows"], r["failed"]) for n, r in raw["hooks"].items()}
    footprints = {n: FootprintResult(built[n].footprint, r["rows"], r["failed"]) for n, r in raw["footprints"].items()}
    cases = {g.key: g for b in built.values() for g in b.guards()}
    guards = {n: GuardResult(cases[n], r["rows"]) for n, r in raw.get("guards", {}).items() if n in cases}
    starts = {n: {"figures": {lab: Figure(fig["samples"], fig["unit"]) for lab, fig in r["figures"].items()},
                  "failed": r["failed"]} for n, r in raw["starts"].items()}
    if into_path:
        into(into_path, raw["meta"], hooks, starts, footprints, guards, mode)
        return 0
    with open(out, "w") as f:
        f.write(report.render(raw["meta"], hooks, starts, footprints, guards, mode))
    log(f"wrote {out} from {raw_path}")
    return 0


def _prepared(workload):
    return workload.prepared()


if __name__ == "__main__":
    sys.exit(main())
