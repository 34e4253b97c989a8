"""What is benchmarked: for each recipe, its workload, kit's command and the
peers doing the same job. Sizes come from the mode (full, or --quick for the
smoke test). Tools are factories of the workload's target (t.pid, t.comm,
t.binary), since some attach to one process."""

import dataclasses
import os

from bench import peers, workloads
from bench.cases import FootprintCase, GuardCase, HookCase, StartCase


@dataclasses.dataclass
class Mode:
    reps: int = 7
    start_reps: int = 7
    footprint_reps: int = 3
    footprint_s: float = 20.0
    pingpong_rounds: int = 100_000
    bulk_bytes: int = 48 << 20
    lock_pairs: int = 50_000
    gai_calls: int = 10_000
    execs: int = 2_000            # processes started per round (execsnoop)
    oom_kills: int = 5            # OOM kills per round (oomkill)
    burn_iterations: int = 1_000_000_000   # ~1 s of one CPU here: ~1000 samples at 999 Hz
    dio_ios: int = 4_000          # per round; a tool run is 4 rounds
    udp_sends: int = 100_000
    conns: int = 2_000            # 4 rounds stay within kit's and bpftrace's 10240-entry maps
    opens: int = 100_000
    warm: bool = True
    wall_runs: int = 3
    extras: bool = True           # kit variants beyond the one compared (attribution of its costs)
    settle_s: float = 0.5
    guard_reps: int = 3
    guard_s: float = 10.0
    footprint_bpftrace: bool = True  # the quick mode leaves bpftrace out of the footprint runs (time)


FULL = Mode()
QUICK = Mode(reps=1, start_reps=1, footprint_reps=1, footprint_s=0.5, pingpong_rounds=10_000, bulk_bytes=4 << 20,
             lock_pairs=5_000, gai_calls=500, execs=200, oom_kills=2, burn_iterations=100_000_000, dio_ios=400, udp_sends=5_000, conns=200,
             opens=5_000, warm=False, wall_runs=1, extras=False, settle_s=0.2,
             guard_reps=1, guard_s=1.0, footprint_bpftrace=False)


def kit_rung(recipe_name):
    """The hook kit picks here for a recipe (the empty program goes on the same one)."""
    from kit import catalog
    from kit.host import features
    recipe = catalog.load(catalog.DEFAULT_CATALOG)[recipe_name]
    return features.choose_hook(recipe, None)


def _empty_on(hook):
    return lambda t: peers.empty("empty program", hook.type, hook.target)


@dataclasses.dataclass
class Recipe:
    """One recipe's cases (its start-up is timed at every tool start of the hook case)."""
    hook: HookCase
    footprint: FootprintCase
    guard: GuardCase
    more_guards: tuple = ()       # the guardrail on other loads of the same recipe (the bundled demo)

    def guards(self):
        return [self.guard, *self.more_guards]


def _kit(name, kit_args):
    """kit as compared with the peers: `kit run NAME` with the workload's scope."""
    return lambda t: peers.kit("kit", name, *kit_args(t))


def _extras(mode, extras):
    return extras if mode.extras else {}


def offcpu(outdir, mode):
    w = workloads.PingPong(outdir, mode.pingpong_rounds)
    hook = kit_rung("offcpu")
    args = lambda t: ["--comm", t.comm]  # noqa: E731
    kit = _kit("offcpu", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_offcpu(t.comm))  # noqa: E731
    bcc = lambda t: peers.bcc("bcc offcputime", "offcputime", ready="Tracing off-CPU")  # noqa: E731
    return Recipe(
        HookCase(name="offcpu", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc offcputime": bcc},
                 extras=_extras(mode, {"kit without the hidden-caller unwinding": lambda t: peers.kit_patched(
                     "kit without the hidden-caller unwinding",
                     "from kit.recipes import offcpu; offcpu.unwind_supported = lambda: False",
                     "offcpu", "--comm", t.comm)}),
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "offcpu", "--comm",
                                                                                 "kit-nomatch"),
                           "kit, --pid of another process": lambda t: peers.kit("kit", "offcpu", "--pid", "1")},
                 empty=_empty_on(hook), wall_runs=mode.wall_runs),
        _footprint("offcpu", w, {"kit": kit, "bcc offcputime": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("offcpu", w, args, mode.guard_s, settle_s=mode.settle_s),
        # the README's demo, `kit run offcpu --comm pay-svc`: a service that blocks ~1400 times a second
        (GuardCase("offcpu", workloads.PaySvc(outdir), args, mode.guard_s, settle_s=mode.settle_s,
                   label="offcpu on the demo (pay-svc)", measured_by="run time"),))


def tcpretrans(outdir, mode):
    w = workloads.Retrans(mode.bulk_bytes)
    hook = kit_rung("tcpretrans")
    args = lambda t: []  # noqa: E731
    kit = _kit("tcpretrans", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_tcpretrans())  # noqa: E731
    bcc = lambda t: peers.bcc("bcc tcpretrans -c", "tcpretrans", "-c", ready="Tracing retransmits")  # noqa: E731
    return Recipe(
        HookCase(name="tcpretrans", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc tcpretrans -c": bcc},
                 filtered={"kit, --port of another flow": lambda t: peers.kit("kit", "tcpretrans", "--port", "9")},
                 empty=_empty_on(hook), wall_runs=mode.wall_runs),
        _footprint("tcpretrans", w, {"kit": kit, "bcc tcpretrans -c": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("tcpretrans", w, args, mode.guard_s, settle_s=mode.settle_s))


NO_BCC_LOCKHOLD = ("bcc has no user-space lock-hold tool (klockstat times kernel mutexes through kprobes, which "
                   "this kernel lacks)")


def lockhold(outdir, mode):
    w = workloads.lockloop(outdir, mode.lock_pairs)
    idle = workloads.Resident(outdir, "lockloop.c", "kit-lockidle", 1, "", "", flags=("-pthread",))
    app = ["--lock", "pool_lock", "--unlock", "pool_unlock"]
    args = lambda t: ["--pid", str(t.pid), *app]  # noqa: E731
    kit = _kit("lockhold", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_lockhold(t.binary, t.pid))  # noqa: E731
    return Recipe(
        HookCase(name="lockhold", workload=w, hook="uprobe pool_lock, uretprobe pool_lock, uprobe pool_unlock",
                 kit=kit, peers={"bpftrace": bpftrace},
                 extras=_extras(mode, {
                     "kit --stacks": lambda t: peers.kit("kit", "lockhold", "--pid", str(t.pid), *app, "--stacks"),
                     "kit, pthread pair (the default)": lambda t: peers.kit("kit", "lockhold", "--pid", str(t.pid))}),
                 filtered={"kit, --comm of another process": _OtherProcess(idle, app)},
                 empty=lambda t: peers.empty("empty program", "uprobe", f"{t.binary}:pool_lock", "uretprobe",
                                             f"{t.binary}:pool_lock", "uprobe", f"{t.binary}:pool_unlock"),
                 unavailable={"bcc": NO_BCC_LOCKHOLD}, wall_runs=mode.wall_runs),
        _footprint("lockhold", w, {"kit": kit, "bpftrace": bpftrace}, mode, unavailable={"bcc": NO_BCC_LOCKHOLD}),
        GuardCase("lockhold", w, args, mode.guard_s, settle_s=mode.settle_s))


class _OtherProcess:
    """kit lockhold scoped to another, idle process of the same code (--comm): lockhold is a
    hot path, so kit puts its breakpoints only in the processes in scope and the workload pays
    nothing at all. The idle process lives as long as the tool."""

    def __init__(self, idle, app):
        self.idle, self.app = idle, app

    def __call__(self, target):
        session = self.idle.session()
        proc = session.__enter__()
        tool = peers.kit("kit", "lockhold", "--comm", proc.comm, *self.app)
        tool.cleanups.append(lambda: session.__exit__(None, None, None))
        return tool


def getaddrinfo(outdir, mode):
    w = workloads.gai(outdir, mode.gai_calls)
    args = lambda t: ["--pid", str(t.pid)]  # noqa: E731
    kit = _kit("getaddrinfo", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_getaddrinfo(t.pid))  # noqa: E731
    bcc = lambda t: peers.bcc("bcc gethostlatency", "gethostlatency", "-p", str(t.pid), ready=r"TIME\s+PID")  # noqa
    return Recipe(
        HookCase(name="getaddrinfo", workload=w, hook="uprobe + uretprobe on libc's getaddrinfo (and gethostbyname*)",
                 kit=kit, peers={"bpftrace": bpftrace, "bcc gethostlatency": bcc},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "getaddrinfo", "--comm",
                                                                                 "kit-nomatch")},
                 empty=lambda t: peers.empty("empty program", "uprobe", f"{peers.LIBC}:getaddrinfo", "uretprobe",
                                             f"{peers.LIBC}:getaddrinfo"),
                 wall_runs=mode.wall_runs),
        _footprint("getaddrinfo", w, {"kit": kit, "bcc gethostlatency": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("getaddrinfo", w, args, mode.guard_s, settle_s=mode.settle_s))


class _IdlePid:
    """kit scoped by --pid to an idle process the bench starts (pid 1 wakes now and then, and would be in
    scope); it lives as long as the tool."""

    def __init__(self, recipe, *args):
        self.recipe, self.args = recipe, args

    def __call__(self, target):
        import subprocess
        idle = subprocess.Popen(["sleep", "100000"])
        tool = peers.kit("kit", self.recipe, "--pid", str(idle.pid), *self.args)
        tool.cleanups.append(lambda: (idle.kill(), idle.wait()))
        return tool


NO_BCC_RUNQLAT_SCOPE = ("bcc's runqlat -p reads the task's tgid at the 6.1 headers' offset (no 6.18 headers here), "
                        "so it runs box-wide")


def profile(outdir, mode):
    w = workloads.burn(outdir, mode.burn_iterations)
    hz = str(workloads.BURN_HZ)
    hook = kit_rung("profile")
    args = lambda t: ["--pid", str(t.pid), "--hz", hz]  # noqa: E731
    kit = _kit("profile", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_profile(t.pid, hz))  # noqa: E731
    bcc = lambda t: peers.bcc_sampling("bcc profile", "profile", "-F", hz, "-p", str(t.pid),  # noqa: E731
                                       ready="Sampling at")  # its banner comes before it attaches
    return Recipe(
        HookCase(name="profile", workload=w, hook=f"{hook.type} {hook.target} at {hz} Hz", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc profile": bcc},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "profile", "--comm",
                                                                                 "kit-nomatch", "--hz", hz),
                           "kit, --pid of another process": _IdlePid("profile", "--hz", hz)},
                 empty=lambda t: peers.empty("empty program", "perf_event", f"{hook.target}:{hz}"),
                 wall_runs=mode.wall_runs),
        _footprint("profile", w, {"kit": kit, "bcc profile": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("profile", w, args, mode.guard_s, settle_s=mode.settle_s))


def runqlat(outdir, mode):
    w = workloads.PingPong(outdir, mode.pingpong_rounds)
    hook = kit_rung("runqlat")
    args = lambda t: ["--comm", t.comm]  # noqa: E731
    kit = _kit("runqlat", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_runqlat(t.comm))  # noqa: E731
    bcc = lambda t: peers.bcc("bcc runqlat (box-wide)", "runqlat", ready="Tracing run queue latency")  # noqa: E731
    return Recipe(
        HookCase(name="runqlat", workload=w, hook=f"{hook.type} sched_wakeup, sched_wakeup_new, sched_switch",
                 kit=kit, peers={"bpftrace": bpftrace, "bcc runqlat (box-wide)": bcc},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "runqlat", "--comm",
                                                                                 "kit-nomatch"),
                           "kit, --pid of another process": _IdlePid("runqlat")},
                 empty=lambda t: peers.empty("empty program", "raw_tracepoint", "sched_wakeup", "raw_tracepoint",
                                             "sched_wakeup_new", "raw_tracepoint", "sched_switch"),
                 unavailable={"bcc runqlat -p": NO_BCC_RUNQLAT_SCOPE}, wall_runs=mode.wall_runs),
        _footprint("runqlat", w, {"kit": kit, "bcc runqlat (box-wide)": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("runqlat", w, args, mode.guard_s, settle_s=mode.settle_s))
# bcc's tools for these jobs that cannot run on this kernel (each tried here: python3-bpfcc 0.26, kernel 6.18)
NO_KPROBES = "BCC fails reading /sys/kernel/debug/kprobes/blacklist: this kernel has kprobes compiled out"
NO_BCC_BIOLATENCY = f"biolatency-bpfcc needs kprobes (on blk_mq_start_request and __blk_account_io_done); {NO_KPROBES}"
NO_BCC_TCPDROP = (f"tcpdrop-bpfcc needs a kprobe on tcp_drop; {NO_KPROBES} (and it follows TCP drops only: the "
                  "workload's are UDP)")
NO_BCC_OPENSNOOP = ("opensnoop-bpfcc attaches fentry/fexit to do_sys_openat2 (BCC sees BTF and chooses them), "
                    "which cannot load on this kernel (bpf() refuses: \"Need super-user privileges to run\", as "
                    "root); its kprobe fallback needs kprobes, compiled out here")


def biolatency(outdir, mode):
    w = workloads.LoopDisk(outdir, mode.dio_ios)
    args = lambda t: ["--disk", os.path.basename(w.dev)]  # noqa: E731
    kit = _kit("biolatency", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_biolatency(w.devno),  # noqa: E731
                                        env=peers.BPFTRACE_KIT_MAPS)
    no_bcc = {"bcc biolatency": NO_BCC_BIOLATENCY}
    return Recipe(
        HookCase(name="biolatency", workload=w,
                 hook="tracepoint block:block_getrq + block:block_rq_issue + block:block_rq_complete",
                 kit=kit, peers={"bpftrace": bpftrace},
                 extras=_extras(mode, {"kit --queued": lambda t: peers.kit("kit", "biolatency", *args(t),
                                                                           "--queued")}),
                 filtered={"kit, --disk of another device": lambda t: peers.kit("kit", "biolatency", "--disk",
                                                                                "7:1048575"),
                           "kit, --comm of another process": lambda t: peers.kit("kit", "biolatency", "--comm",
                                                                                 "kit-nomatch")},
                 empty=lambda t: peers.empty("empty program", "tracepoint", "block:block_getrq", "tracepoint",
                                             "block:block_rq_issue", "tracepoint", "block:block_rq_complete"),
                 unavailable=no_bcc, wall_runs=mode.wall_runs),
        _footprint("biolatency", w, {"kit": kit, "bpftrace": bpftrace}, mode, unavailable=no_bcc),
        GuardCase("biolatency", w, args, mode.guard_s, settle_s=mode.settle_s))


def drops(outdir, mode):
    w = workloads.UdpDrops(outdir, mode.udp_sends)
    hook = kit_rung("drops")
    args = lambda t: ["--netns", w.ns]  # noqa: E731
    kit = _kit("drops", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_drops(w.netns_inum()))  # noqa: E731
    no_bcc = {"bcc tcpdrop": NO_BCC_TCPDROP}
    return Recipe(
        HookCase(name="drops", workload=w, hook=f"{hook.type} {hook.target}", kit=kit, peers={"bpftrace": bpftrace},
                 filtered={"kit, --port of another flow": lambda t: peers.kit("kit", "drops", "--port", "9")},
                 empty=_empty_on(hook), unavailable=no_bcc, wall_runs=mode.wall_runs),
        _footprint("drops", w, {"kit": kit, "bpftrace": bpftrace}, mode, unavailable=no_bcc),
        GuardCase("drops", w, args, mode.guard_s, settle_s=mode.settle_s))


def tcplife(outdir, mode):
    w = workloads.Conns(outdir, mode.conns)
    hook = kit_rung("tcplife")
    args = lambda t: ["--netns", w.ns]  # noqa: E731
    kit = _kit("tcplife", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_tcplife(w.netns_inum()),  # noqa: E731
                                        env=peers.BPFTRACE_KIT_MAPS)
    # bcc's tcplife prints each connection as it closes; -p is its narrowest scope that holds the workload
    bcc = lambda t: peers.bcc("bcc tcplife -p", "tcplife", "-p", str(t.pid), ready=r"^PID\s+COMM")  # noqa: E731
    return Recipe(
        HookCase(name="tcplife", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc tcplife -p": bcc},
                 filtered={"kit, --port of another flow": lambda t: peers.kit("kit", "tcplife", "--port", "9")},
                 empty=_empty_on(hook), wall_runs=mode.wall_runs),
        _footprint("tcplife", w, {"kit": kit, "bcc tcplife -p": bcc, "bpftrace": bpftrace}, mode),
        GuardCase("tcplife", w, args, mode.guard_s, settle_s=mode.settle_s))


def opensnoop(outdir, mode):
    w = workloads.Opens(outdir, mode.opens)
    args = lambda t: ["--pid", str(t.pid)]  # noqa: E731
    kit = _kit("opensnoop", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_opensnoop(t.pid))  # noqa: E731
    no_bcc = {"bcc opensnoop": NO_BCC_OPENSNOOP}
    return Recipe(
        HookCase(name="opensnoop", workload=w, hook="tracepoint syscalls:sys_enter_openat + sys_exit_openat",
                 kit=kit, peers={"bpftrace": bpftrace},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "opensnoop", "--comm",
                                                                                 "kit-nomatch"),
                           "kit, --pid of another process": lambda t: peers.kit("kit", "opensnoop", "--pid", "1")},
                 empty=lambda t: peers.empty("empty program", "tracepoint", "syscalls:sys_enter_openat",
                                             "tracepoint", "syscalls:sys_exit_openat"),
                 unavailable=no_bcc, wall_runs=mode.wall_runs),
        _footprint("opensnoop", w, {"kit": kit, "bpftrace": bpftrace}, mode, unavailable=no_bcc),
        GuardCase("opensnoop", w, args, mode.guard_s, settle_s=mode.settle_s))
def execsnoop(outdir, mode):
    w = workloads.execloop(outdir, mode.execs)
    hook = kit_rung("execsnoop")
    args = lambda t: ["--pid", str(t.pid), "--limit", "0"]  # noqa: E731  (every line shown, as bpftrace prints all)
    kit = _kit("execsnoop", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_execsnoop(t.pid))  # noqa: E731
    bcc = lambda t: peers.bcc("bcc execsnoop", "execsnoop", ready="PCOMM")  # noqa: E731
    return Recipe(
        HookCase(name="execsnoop", workload=w, hook=f"{hook.type} {hook.target} + sched_process_exit", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc execsnoop": bcc},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "execsnoop", "--comm",
                                                                                 "kit-nomatch")},
                 empty=lambda t: peers.empty("empty program", hook.type, hook.target, hook.type,
                                             "sched_process_exit" if hook.type == "raw_tracepoint"
                                             else "sched:sched_process_exit"),
                 wall_runs=mode.wall_runs),
        _footprint("execsnoop", w, {"kit": kit, "bpftrace": bpftrace}, mode),
        GuardCase("execsnoop", w, args, mode.guard_s, settle_s=mode.settle_s))


def oomkill(outdir, mode):
    w = workloads.MemcgOOM(outdir, mode.oom_kills)
    hook = kit_rung("oomkill")
    args = lambda t: ["--comm", t.comm]  # noqa: E731
    kit = _kit("oomkill", args)
    bpftrace = lambda t: peers.bpftrace("bpftrace", peers.bpftrace_oomkill(t.comm))  # noqa: E731
    bcc = lambda t: peers.bcc("bcc oomkill", "oomkill", ready="Tracing OOM kills")  # noqa: E731
    return Recipe(
        HookCase(name="oomkill", workload=w, hook=f"{hook.type} {hook.target}", kit=kit,
                 peers={"bpftrace": bpftrace, "bcc oomkill": bcc},
                 filtered={"kit, --comm of another process": lambda t: peers.kit("kit", "oomkill", "--comm",
                                                                                 "kit-nomatch")},
                 empty=_empty_on(hook), wall_runs=mode.wall_runs),
        _footprint("oomkill", w, {"kit": kit, "bpftrace": bpftrace}, mode),
        GuardCase("oomkill", w, args, mode.guard_s, settle_s=mode.settle_s))


def _footprint(name, w, tools, mode, **kw):
    if not mode.footprint_bpftrace:
        tools = {k: v for k, v in tools.items() if k != "bpftrace"}
    return FootprintCase(name, w, tools, mode.footprint_s, settle_s=mode.settle_s, **kw)


class _Nothing:
    """No workload: the reference start-ups need no target."""

    def session(self):
        import contextlib
        return contextlib.nullcontext(None)


def references():
    """The smallest start-ups there are, for scale: an empty BCC program, a one-probe bpftrace."""
    return StartCase("(reference)", _Nothing(), {
        "minimal BCC program": lambda t: peers.empty("minimal BCC program", "tracepoint", "sched:sched_switch"),
        "minimal bpftrace program": lambda t: peers.bpftrace("minimal bpftrace program",
                                                             "tracepoint:sched:sched_switch { }")})


RECIPES = {"offcpu": offcpu, "tcpretrans": tcpretrans, "lockhold": lockhold, "getaddrinfo": getaddrinfo,
           "execsnoop": execsnoop, "oomkill": oomkill, "biolatency": biolatency, "drops": drops, "tcplife": tcplife,
           "opensnoop": opensnoop, "profile": profile, "runqlat": runqlat}
