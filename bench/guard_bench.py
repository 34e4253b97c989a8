"""Guardrail bench: how long the pre-attach estimate takes, and how close estimate, meter and the load's
own extra CPU time come, under the loads of tests/support/workloads/load.py. Prints one JSON line per case.

Targets (not asserted in tests): `kit estimate` well under a second of wall time; estimate/measured and
measured/truth within 0.5..2. A CPU-bound load pays out of the CPU it gets and the estimate assumes the
whole CPU it wants: on a crowded box compare estimate with measured / load_cpu_share.

  sudo .venv/bin/python bench/guard_bench.py [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", d) for d in ("", "support", "kernel")]  # conftest, workloads, test_guard_kernel

from workloads.load import Load  # noqa: E402

KIT = [sys.executable, "-m", "kit"]
LOADS = {"hot": ("syscalls", {"seconds": 120}), "steady": ("syscalls", {"seconds": 120, "pace": 20000})}


def kit(*args):
    return subprocess.run(KIT + list(args), cwd=ROOT, capture_output=True, text=True)


def one(name, kind, opts):
    comm = f"kit-bench-{name}"[:15]
    with Load(kind, comm, **opts) as load:
        load.go()
        time.sleep(2.0)
        t0 = time.monotonic()
        est = kit("estimate", "syscalls", "--comm", comm, "--json")
        estimate_s = time.monotonic() - t0
        t_start = time.monotonic()
        run = kit("run", "syscalls", "--comm", comm, "--for", "6s", "--budget", "100", "--json")
        t_end = time.monotonic()
        time.sleep(2.0)
        load.finish()
    ov = json.loads(run.stdout)["overhead"]
    before = load.between(0, t_start)[1:]
    during = load.between(t_start + 3.0, t_end - 0.5)
    after = load.between(t_end + 0.3, t_end + 2.0)
    from test_guard_kernel import probe_cost_per_call  # the tests' reading of the load's own times
    extra, _ = probe_cost_per_call(before, during, after)
    wall = during[-1]["mono"] - during[0]["mono"]
    calls_s = (during[-1]["calls"] - during[0]["calls"]) / wall
    share = (during[-1]["cpu_ns"] - during[0]["cpu_ns"]) / wall / 1e9  # CPU the load got while probed
    ncpu = ov["estimate"]["ncpu"]
    truth = extra * calls_s / 1e9 / ncpu * 100
    in_scope = ov["events"] * ov["ns_per_event"] / ov["seconds"] / 1e9 / ncpu * 100
    return {"load": name, "estimate_wall_s": round(estimate_s, 3),
            "estimate_pct": json.loads(est.stdout)["estimate"]["cpu_pct"], "measured_pct": ov["cpu_pct"],
            "meter_in_scope_pct": round(in_scope, 4), "load_truth_pct": round(truth, 4),
            "load_cpu_share": round(share, 3)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    for name, (kind, opts) in LOADS.items():
        runs = [one(name, kind, opts) for _ in range(args.rounds)]
        summary = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "load"}
        summary["load"] = name
        summary["estimate/measured"] = round(summary["estimate_pct"] / summary["measured_pct"], 3)
        summary["meter/truth"] = round(summary["meter_in_scope_pct"] / summary["load_truth_pct"], 3)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
