"""What is benchmarked: for each recipe, its workload, kit's command and the
peers doing the same job. Sizes come from the mode (full, or --quick for the
smoke test)."""

import dataclasses

from bench import peers
from bench.cases import FootprintCase, HookCase, StartCase
from bench.workloads import PingPong, Retrans


@dataclasses.dataclass
class Mode:
    reps: int = 7
    start_reps: int = 7
    footprint_reps: int = 3
    footprint_s: float = 20.0
    pingpong_rounds: int = 100_000
    bulk_bytes: int = 48 << 20
    warm: bool = True
    wall_runs: int = 3


FULL = Mode()
QUICK = Mode(reps=1, start_reps=1, footprint_reps=1, footprint_s=1.0, pingpong_rounds=10_000, bulk_bytes=4 << 20,
             warm=False, wall_runs=1)


def kit_rung(recipe_name):
    """The hook kit picks here for a recipe (the empty program goes on the same one)."""
    from kit import catalog, features
    recipe = catalog.load(catalog.DEFAULT_CATALOG)[recipe_name]
    return features.choose_hook(recipe, None)


def _empty_for(hook):
    return lambda: peers.empty("empty program", hook.type, hook.target)


def offcpu(outdir, mode):
    w = PingPong(outdir, mode.pingpong_rounds)
    hook = kit_rung("offcpu")
    kit = lambda: peers.kit("kit", "offcpu", "--comm", w.comm)  # noqa: E731
    bpftrace = lambda: peers.bpftrace("bpftrace", peers.bpftrace_offcpu(w.comm))  # noqa: E731
    bcc = lambda: peers.bcc("bcc offcputime", "offcputime", ready="Tracing off-CPU")  # noqa: E731
    hook_case = HookCase(
        name="offcpu", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
        peers={"bpftrace": bpftrace, "bcc offcputime": bcc},
        filtered={"kit, --comm of another process": lambda: peers.kit("kit", "offcpu", "--comm", "kit-nomatch"),
                  "kit, --pid of another process": lambda: peers.kit("kit", "offcpu", "--pid", "1")},
        empty=_empty_for(hook), wall_runs=mode.wall_runs)
    start = {"kit": kit, "bcc offcputime": bcc, "bpftrace": bpftrace}
    footprint = FootprintCase("offcpu", w, {"kit": kit, "bpftrace": bpftrace}, "kit", mode.footprint_s)
    return hook_case, start, footprint


def tcpretrans(outdir, mode):
    w = Retrans(mode.bulk_bytes)
    hook = kit_rung("tcpretrans")
    kit = lambda: peers.kit("kit", "tcpretrans")  # noqa: E731
    bpftrace = lambda: peers.bpftrace("bpftrace", peers.bpftrace_tcpretrans())  # noqa: E731
    bcc = lambda: peers.bcc("bcc tcpretrans -c", "tcpretrans", "-c", ready="Tracing retransmits")  # noqa: E731
    hook_case = HookCase(
        name="tcpretrans", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
        peers={"bpftrace": bpftrace, "bcc tcpretrans -c": bcc},
        filtered={"kit, --port of another flow": lambda: peers.kit("kit", "tcpretrans", "--port", "9")},
        empty=_empty_for(hook), wall_runs=mode.wall_runs)
    start = {"kit": kit, "bcc tcpretrans -c": bcc, "bpftrace": bpftrace}
    footprint = FootprintCase("tcpretrans", w, {"kit": kit, "bcc tcpretrans -c": bcc, "bpftrace": bpftrace}, "kit",
                              mode.footprint_s)
    return hook_case, start, footprint


def references():
    """The smallest start-ups there are, for scale: an empty BCC program, a one-probe bpftrace."""
    return {"minimal BCC program": lambda: peers.empty("minimal BCC program", "tracepoint", "sched:sched_switch"),
            "minimal bpftrace program": lambda: peers.bpftrace("minimal bpftrace program",
                                                               "tracepoint:sched:sched_switch { }")}


RECIPES = {"offcpu": offcpu, "tcpretrans": tcpretrans}
