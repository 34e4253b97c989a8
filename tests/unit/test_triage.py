"""The triage chain's decisions, without a kernel: what the first look's numbers say (busy, waiting,
idle), which evidence leads to which recipe with which arguments, what a step's result leads to, the
time box, the budget, and steps that are refused or cannot run kept with their reasons."""

import os

import pytest

from kit import catalog, triage
from kit.triage import evidence, verdict
from kit.errors import ExitCode, Refused, Unsupported

RECIPES = catalog.load(catalog.DEFAULT_CATALOG)
FUTEX = ["__schedule", "schedule", "futex_do_wait", "__futex_wait", "futex_wait", "do_futex", "__x64_sys_futex",
         "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]
SLEEP = ["__schedule", "schedule", "do_nanosleep", "hrtimer_nanosleep", "common_nsleep", "do_syscall_64"]
UNIX_READ = ["__schedule", "schedule", "schedule_timeout", "unix_stream_read_generic", "unix_stream_recvmsg"]
TCP_READ = ["__schedule", "schedule", "schedule_timeout", "sk_wait_data", "tcp_recvmsg_locked", "tcp_recvmsg"]
DISK = ["__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "filemap_read"]
PREEMPT = ["__schedule", "preempt_schedule_irq", "irqentry_exit_to_user_mode"]
POOL = ["__lll_lock_wait", "pthread_mutex_lock", "pool_lock", "checkout_conn", "handle_request", "worker"]
LEDGER = ["__lll_lock_wait", "pthread_mutex_lock", "ledger_append", "charge_card", "handle_request", "worker"]


class FakeSystem:
    """The box as the rules see it: which files define which functions, what the program imports."""

    def __init__(self, defines=None, imports=(), port=None):
        self.defs = defines if defines is not None else {"/srv/pay-svc": {"pool_lock", "pool_unlock", "ledger_append",
                                                                           "checkout_conn", "handle_request"}}
        self.imp = set(imports)
        self.port = port

    def defining_file(self, pid, name):
        for path, names in self.defs.items():
            if name in names:
                return path, True, path
        return None

    def defines(self, path, name):
        return name in self.defs.get(path, ())

    def imports(self, pid, names):
        return self.imp & set(names)

    def busiest_tcp_port(self, pid):
        return self.port


def row(tid, us, count, kstack, ustack, pid=100, comm="pay-svc"):
    return {"pid": pid, "tid": tid, "comm": comm, "total_us": us, "count": count, "kernel_stack": kstack,
            "user_stack": ustack}


def offcpu(rows, seconds=10.0):
    return {"recipe": "offcpu", "duration_s": seconds, "rows": rows}


def profile(rows, seconds=10.0, hz=49):
    return {"recipe": "profile", "duration_s": seconds, "params": {"hz": hz}, "rows": rows}


def waiting_service():
    """4 workers: 45% on the pool lock, 30% in a sleep, the rest reading the database's socket;
    the main thread asleep, waking once a second."""
    rows = []
    for tid in (101, 102, 103, 104):
        rows += [row(tid, 4_500_000, 200, FUTEX, POOL), row(tid, 3_000_000, 900, SLEEP,
                                                            ["clock_nanosleep", "nanosleep", "usleep", "rate_limit"]),
                 row(tid, 2_400_000, 900, UNIX_READ, ["read", "query_db", "handle_request", "worker"]),
                 row(tid, 300_000, 100, FUTEX, LEDGER)]
    rows.append(row(100, 9_990_000, 10, SLEEP, ["clock_nanosleep", "nanosleep", "sleep", "main"]))
    return offcpu(rows)


# --- what one stack says -----------------------------------------------------------------------------

@pytest.mark.parametrize("kstack, kind", [
    (FUTEX, "lock"), (SLEEP, "sleep"), (UNIX_READ, "peer"), (TCP_READ, "tcp"), (DISK, "disk"),
    (PREEMPT, "runqueue"), ([], "unknown"), (["__schedule", "schedule", "kthread_worker_fn"], "other"),
    # a thread preempted inside pipe_read waited for a CPU, not for the peer: the innermost frame decides
    (["__schedule", "preempt_schedule_common", "__cond_resched", "pipe_read"], "runqueue"),
])
def test_the_innermost_known_kernel_frame_says_why_a_thread_waited(kstack, kind):
    assert evidence.kernel_kind(kstack)[0] == kind


@pytest.mark.parametrize("fn, unlocks", [
    ("pool_lock", ["pool_unlock"]), ("lock_pool", ["unlock_pool"]), ("PoolLock", ["PoolUnlock"]),
    ("acquire_slot", ["release_slot"]), ("_ZN4Pool4lockEv", ["_ZN4Pool6unlockEv"]),
    ("pool_unlock", []), ("release_slot", []), ("checkout_conn", []),
])
def test_an_application_lock_function_pairs_with_its_unlock_by_name(fn, unlocks):
    assert evidence.unlock_names(fn) == unlocks


def test_a_wait_under_an_argument_less_wrapper_names_the_wrapper_pair():
    site = evidence.lock_site(row(1, 1, 1, FUTEX, POOL), 100, FakeSystem())
    assert (site["lock"], site["unlock"], site["wrapper"], site["call"]) == \
        ("pool_lock", "pool_unlock", True, "pthread_mutex_lock")
    assert site["callers"][:2] == ["pool_lock", "checkout_conn"] and site["file"] == "/srv/pay-svc"


def test_a_wait_in_a_function_without_an_unlock_names_the_libc_pair():
    site = evidence.lock_site(row(1, 1, 1, FUTEX, LEDGER), 100, FakeSystem())
    assert (site["lock"], site["unlock"], site["wrapper"], site["frame"]) == \
        ("pthread_mutex_lock", "pthread_mutex_unlock", False, "ledger_append")


def test_a_wrapper_pair_counts_only_in_the_programs_own_files():
    libc_pair = FakeSystem(defines={})  # pool_lock is nowhere the process maps of its own
    assert evidence.lock_site(row(1, 1, 1, FUTEX, POOL), 100, libc_pair)["wrapper"] is False


def test_a_futex_wait_with_no_lock_call_and_no_pair_names_nothing_lockhold_can_probe():
    assert evidence.lock_site(row(1, 1, 1, FUTEX, ["syscall", "spin_wait", "run"]), 100, FakeSystem()) is None


def test_a_resolver_frame_decides_over_the_kernel_frames():
    look = evidence.first_look(offcpu([row(1, 5_000_000, 10, ["__schedule", "schedule", "do_sys_poll"],
                                           ["poll", "__res_context_send", "getaddrinfo", "refresh", "main"])]),
                               None, FakeSystem())
    assert look["sites"][0]["kind"] == "resolver" and look["sites"][0]["frame"] == "getaddrinfo"


# --- busy, waiting, idle -------------------------------------------------------------------------------

def test_threads_that_wait_most_of_their_time_are_waiting_and_their_biggest_wait_leads():
    look = evidence.first_look(waiting_service(), None, FakeSystem())
    assert look["state"] == "waiting"
    states = {t["tid"]: t["state"] for t in look["threads"]}
    assert states == {100: "idle", 101: "waiting", 102: "waiting", 103: "waiting", 104: "waiting"}
    top = look["sites"][0]
    assert (top["kind"], top["frame"], top["tids"]) == ("lock", "pool_lock", [101, 102, 103, 104])
    assert top["share"] == pytest.approx(0.45)
    assert all(s["pid"] == 100 and 100 not in s["tids"] for s in look["sites"])  # the idle thread is no site


def test_a_thread_on_cpu_most_of_the_look_is_busy_and_its_hottest_function_is_named():
    prof = profile([row(7, 0, 0, [], ["hot_a", "burn", "main"], pid=7) | {"samples": 343},
                    row(7, 0, 0, [], ["hot_b", "burn", "main"], pid=7) | {"samples": 98},
                    row(7, 0, 0, ["__x64_sys_getpid"], ["getpid", "burn"], pid=7) | {"samples": 49}])
    look = evidence.first_look(offcpu([row(7, 200_000, 40, PREEMPT, ["hot_a", "burn"], pid=7)]), prof, FakeSystem())
    assert look["state"] == "busy" and look["on_cpu_from"] == "profile"
    t = look["threads"][0]
    assert t["on_share"] == pytest.approx(490 / 49 / 10.0) and t["state"] == "busy"
    assert [h["function"] for h in look["hot"]][:2] == ["hot_a", "hot_b"]
    assert look["hot"][0]["share"] == pytest.approx(343 / 490)
    assert look["hot"][2]["function"] == "__x64_sys_getpid (kernel)"


def test_a_thread_that_wants_a_cpu_it_does_not_get_is_busy():
    # on CPU 45% and runnable the other 55%: another process has the CPU it wants
    prof = profile([row(7, 0, 0, [], ["hot_a", "burn"], pid=7) | {"samples": 220}])
    look = evidence.first_look(offcpu([row(7, 5_500_000, 900, PREEMPT, ["hot_a", "burn"], pid=7)]), prof,
                               FakeSystem())
    assert look["state"] == "busy" and look["threads"][0]["runq_share"] == pytest.approx(0.55)
    assert "and runnable, waiting for a CPU, 55% more" in verdict.look_lines(look, "--pid 7")[0]
    # ...but a thread that barely runs and mostly waits for a CPU is not busy: it waits
    prof = profile([row(7, 0, 0, [], ["hot_a", "burn"], pid=7) | {"samples": 49}])
    look = evidence.first_look(offcpu([row(7, 6_000_000, 900, PREEMPT, ["hot_a"], pid=7)]), prof, FakeSystem())
    assert look["state"] == "waiting"


def test_without_profile_on_cpu_time_is_what_the_window_leaves():
    look = evidence.first_look(offcpu([row(7, 1_000_000, 500, PREEMPT, ["hot_a"], pid=7)]), None, FakeSystem())
    assert look["state"] == "busy" and look["on_cpu_from"] == "offcpu"
    assert look["threads"][0]["on_share"] == pytest.approx(0.9)


def test_a_scope_whose_threads_neither_run_nor_wake_is_idle():
    # one wakeup a second, on CPU 0.1%: the main loop of a service with nothing to do
    off = offcpu([row(100, 9_990_000, 10, SLEEP, ["clock_nanosleep", "nanosleep", "sleep", "main"])])
    prof = profile([row(100, 0, 0, [], ["main"]) | {"samples": 0}])
    look = evidence.first_look(off, prof, FakeSystem(), scope_threads={100: (100, "idle"), 105: (100, "idle")})
    assert look["state"] == "idle" and look["sites"] == []
    assert {t["tid"] for t in look["threads"]} == {100, 105}  # 105 blocked all along: offcpu saw no block end


def test_threads_stuck_on_a_lock_are_waiting_not_idle():
    # on CPU 0% and one wakeup in ten seconds, as an idle thread would; but blocked on a lock
    off = offcpu([row(101, 10_000_000, 1, FUTEX, POOL), row(102, 10_000_000, 1, FUTEX, POOL)])
    look = evidence.first_look(off, None, FakeSystem())
    assert look["state"] == "waiting" and {t["state"] for t in look["threads"]} == {"waiting"}
    assert look["sites"][0]["kind"] == "lock" and look["sites"][0]["share"] == pytest.approx(1.0)


# --- which evidence leads where ----------------------------------------------------------------------------

def plan_from(look, system, recipes=RECIPES, runs_here=lambda n: True):
    return triage.follow(look["sites"], recipes, runs_here, system)


def test_a_lock_wait_leads_to_lockhold_on_its_wrapper_pair_with_the_resolver_it_may_call_inside():
    system = FakeSystem(imports={"getaddrinfo", "pthread_mutex_lock"})
    steps, notes = plan_from(evidence.first_look(waiting_service(), None, system), system)
    s = steps[0]
    assert (s.recipe, s.kind) == ("lockhold", "lock")
    assert s.args == ["--pid", "100", "--lock", "pool_lock", "--unlock", "pool_unlock", "--inside", "getaddrinfo",
                      "--stacks"]
    assert "44%" in s.why or "45%" in s.why


def test_a_libc_lock_leads_to_lockhold_with_its_defaults_and_no_resolver_when_the_program_calls_none():
    off = offcpu([row(t, 3_000_000, 100, FUTEX, LEDGER) for t in (1, 2)])
    steps, _ = plan_from(evidence.first_look(off, None, FakeSystem()), FakeSystem())
    assert [(s.recipe, s.args) for s in steps] == [("lockhold", ["--pid", "100", "--stacks"])]


def test_waits_under_the_follow_share_lead_nowhere():
    off = offcpu([row(1, 9_000_000, 9000, SLEEP, ["clock_nanosleep", "nanosleep", "usleep", "rate_limit"]),
                  row(1, 400_000, 10, FUTEX, POOL)])  # 4% on the lock
    steps, _ = plan_from(evidence.first_look(off, None, FakeSystem()), FakeSystem())
    assert steps == []


@pytest.mark.parametrize("kstack, ustack, expect", [
    (TCP_READ, ["recv", "fetch", "main"], [("tcpretrans", ["--port", "5432"]), ("tcplife", ["--pid", "100"])]),
    (DISK, ["read", "load", "main"], [("biolatency", ["--pid", "100"])]),
    (PREEMPT, ["crunch", "main"], [("runqlat", ["--pid", "100"])]),
    (["__schedule", "schedule", "do_sys_poll"], ["poll", "__res_context_send", "getaddrinfo", "main"],
     [("getaddrinfo", ["--pid", "100"])]),
    (UNIX_READ, ["read", "query_db", "main"], []),   # a local peer: no recipe measures it next
    (SLEEP, ["nanosleep", "usleep", "main"], []),
])
def test_each_kind_of_wait_leads_to_the_recipes_follow_names(kstack, ustack, expect):
    off = offcpu([row(1, 6_000_000, 3000, kstack, ustack)])
    steps, _ = plan_from(evidence.first_look(off, None, FakeSystem(port=5432)), FakeSystem(port=5432))
    assert [(s.recipe, s.args) for s in steps] == expect


def test_tcp_waits_without_a_port_run_tcpretrans_unscoped():
    off = offcpu([row(1, 6_000_000, 3000, TCP_READ, ["recv", "main"])])
    steps, _ = plan_from(evidence.first_look(off, None, FakeSystem()), FakeSystem())
    assert steps[0].recipe == "tcpretrans" and steps[0].args == []


def test_recipes_the_catalog_lacks_or_this_kernel_cannot_run_are_said_not_planned():
    off = offcpu([row(1, 6_000_000, 3000, PREEMPT, ["crunch", "main"]),
                  row(2, 6_000_000, 3000, DISK, ["read", "main"])])
    recipes = {k: v for k, v in RECIPES.items() if k != "runqlat"}
    steps, notes = plan_from(evidence.first_look(off, None, FakeSystem()), FakeSystem(), recipes,
                             runs_here=lambda n: n != "biolatency")
    assert steps == []
    assert any("no runqlat recipe in this catalog" in n for n in notes)
    assert any("biolatency cannot run here" in n for n in notes)


def lockhold_result(inside_calls, holds=300, with_calls=10, outside=0, fn="getaddrinfo"):
    return {"recipe": "lockhold", "duration_s": 10.0,
            "totals": {"hold": {"count": holds, "total_us": holds * 2000.0, "max_us": 41000.0},
                       "wait": {"count": holds, "total_us": holds * 9000.0, "max_us": 40000.0}},
            "inside": {"function": fn, "attached": True, "holds": holds, "holds_with_calls": with_calls,
                       "inside": {"count": inside_calls, "total_us": inside_calls * 40.0, "avg_us": 40.0,
                                  "max_us": 90.0},
                       "outside": {"count": outside, "total_us": 0.0, "avg_us": 0.0, "max_us": 0.0}},
            "histograms": {"hold_us": [{"low": 64, "high": 127, "count": holds - with_calls},
                                       {"low": 32768, "high": 65535, "count": with_calls}]},
            "rows": []}


def test_a_resolver_called_inside_the_lock_leads_to_getaddrinfo_on_that_process():
    step = triage.Step("lockhold", ["--pid", "100", "--lock", "pool_lock", "--unlock", "pool_unlock",
                                    "--inside", "getaddrinfo", "--stacks"], why="", result=lockhold_result(10))
    nxt = triage.after(step, RECIPES, lambda n: True)
    assert [(s.recipe, s.args, s.kind) for s in nxt] == [("getaddrinfo", ["--pid", "100"], "resolver")]
    assert "inside the lock in 10 of 300 holds" in nxt[0].why


def test_a_resolver_only_called_outside_the_lock_leads_nowhere():
    step = triage.Step("lockhold", ["--pid", "100"], why="", result=lockhold_result(0, with_calls=0, outside=7))
    assert triage.after(step, RECIPES, lambda n: True) == []


# --- the chain --------------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeRunner:
    """Results by recipe; a step's duration passes on the fake clock. raises: recipe -> exception."""

    def __init__(self, clock, results, raises=None, compile_s=1.0, costs=None):
        self.clock, self.results, self.raises, self.compile_s = clock, results, raises or {}, compile_s
        self.costs = {"offcpu": 0.3, "profile": 0.02} if costs is None else costs
        self.ran = []

    def estimate(self, step):
        return self.costs.get(step.recipe)

    def run(self, step, progress=None):
        self.ran.append((step.recipe, list(step.args), step.duration_s, step.budget_pct))
        if step.recipe in self.raises:
            raise self.raises[step.recipe]
        if step.kind == "first look":  # side by side: the look takes as long as one of them
            self.look_start = getattr(self, "look_start", self.clock.t)
            self.clock.t = max(self.clock.t, self.look_start + step.duration_s + self.compile_s)
        else:
            self.clock.t += step.duration_s + self.compile_s
        res = dict(self.results[step.recipe])
        res.setdefault("duration_s", step.duration_s)
        return res, ExitCode.OK


def plan(box=60.0, budget=2.0):
    return triage.Plan(["--comm", "pay-svc"], "--comm pay-svc", time_box_s=box, budget_pct=budget)


def test_the_chain_follows_the_lock_to_the_resolver_inside_it_in_one_time_box_and_budget():
    clock = Clock()
    system = FakeSystem(imports={"getaddrinfo"})
    runner = FakeRunner(clock, {"offcpu": waiting_service(), "profile": profile([]),
                                "lockhold": lockhold_result(10), "getaddrinfo": {"rows": [], "duration_s": 10.0}})
    out = triage.chain(plan(), RECIPES, runner, system, clock=clock)
    assert [r[0] for r in runner.ran] == ["offcpu", "profile", "lockhold", "getaddrinfo"]
    first, second = runner.ran[0], runner.ran[1]
    assert first[2] == second[2] == triage.first_look_s(60.0) == 15.0
    # side by side, they share the budget: each what it needs with headroom (profile 0.02%, offcpu 0.3%)
    # and an equal part of the rest
    assert (first[3], second[3]) == (1.17, 0.825) and first[3] + second[3] <= 2.0
    assert all(r[3] == 2.0 for r in runner.ran[2:])     # one after another, each has it all
    assert out["state"] == "waiting" and all(s.status == "ran" for s in out["steps"])
    assert clock.t - 1000.0 <= 60.0
    lines = verdict.verdict(out, "--comm pay-svc")
    assert any("spend 45% of their time waiting for the lock taken through pool_lock()/pool_unlock()" in ln
               for ln in lines), lines
    assert any("getaddrinfo inside the lock in 10 of 300 holds" in ln for ln in lines), lines


def test_an_idle_scope_stops_after_the_first_look():
    clock = Clock()
    idle = offcpu([row(100, 9_990_000, 10, SLEEP, ["clock_nanosleep", "nanosleep", "sleep", "main"])])
    runner = FakeRunner(clock, {"offcpu": idle, "profile": profile([])})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(), clock=clock)
    assert out["state"] == "idle" and [s.recipe for s in out["steps"]] == ["offcpu", "profile"]
    assert clock.t - 1000.0 < 30.0  # well inside the 60 s time box
    assert "is idle" in verdict.verdict(out, "--comm pay-svc")[0]


def test_a_refused_step_is_kept_with_its_reason_and_the_chain_goes_on():
    clock = Clock()
    off = waiting_service()
    off["rows"] += [row(t, 2_000_000, 900, TCP_READ, ["recv", "fetch", "worker"]) for t in (101, 102)]
    refusal = Refused("lockhold would cost more than its budget: ...", details=["  kit run lockhold --pid 100 "
                                                                                "--for 3s --budget 9  # a 3s look"])
    runner = FakeRunner(clock, {"offcpu": off, "profile": profile([]), "tcpretrans": {"rows": []},
                                "tcplife": {"rows": []}}, raises={"lockhold": refusal})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(port=5432), clock=clock)
    by = {s.recipe: s for s in out["steps"]}
    assert by["lockhold"].status == "refused" and "more than its budget" in by["lockhold"].reason
    assert by["lockhold"].details and by["lockhold"].code == ExitCode.REFUSED
    assert by["tcpretrans"].status == "ran" and by["tcplife"].status == "ran"
    lines = verdict.verdict(out, "--comm pay-svc")
    assert any(ln.startswith("Not measured: lockhold (refused by the guardrail: lockhold would cost") for ln in lines)
    assert triage.exit_code(out) == ExitCode.OK


def test_a_step_that_cannot_run_here_is_kept_with_the_kernels_reason():
    clock = Clock()
    runner = FakeRunner(clock, {"offcpu": waiting_service(), "profile": profile([])},
                        raises={"lockhold": Unsupported("the kernel has no uprobe PMU", "use a kernel >= 4.17")})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(), clock=clock)
    step = next(s for s in out["steps"] if s.recipe == "lockhold")
    assert step.status == "unsupported" and "no uprobe PMU" in step.reason


def test_steps_the_time_box_has_no_room_for_are_kept_with_their_commands():
    clock = Clock()
    off = waiting_service()
    off["rows"] += [row(t, 2_000_000, 900, DISK, ["read", "load", "worker"]) for t in (101, 102)]
    runner = FakeRunner(clock, {"offcpu": off, "profile": profile([]), "lockhold": lockhold_result(0, with_calls=0)},
                        compile_s=1.0)
    out = triage.chain(plan(box=20.0), RECIPES, runner, FakeSystem(), clock=clock)
    ran = [s.recipe for s in out["steps"] if s.status == "ran"]
    left = [s for s in out["steps"] if s.status == "not run"]
    assert ran[:2] == ["offcpu", "profile"] and "biolatency" in [s.recipe for s in left]
    assert all("time box" in s.reason and s.command().startswith("kit run ") for s in left)
    assert clock.t - 1000.0 <= 20.0


def test_a_refused_first_look_measures_nothing_and_exits_as_refused():
    clock = Clock()
    no = Refused("offcpu would cost more than its budget")
    runner = FakeRunner(clock, {}, raises={"offcpu": no, "profile": Refused("profile would cost more")})
    out = triage.chain(plan(budget=0.001), RECIPES, runner, FakeSystem(), clock=clock)
    assert out["state"] == "refused" and out["look"] is None
    assert triage.exit_code(out) == ExitCode.REFUSED
    assert [s.status for s in out["steps"]] == ["refused", "refused"]


def test_an_interrupted_chain_keeps_what_it_would_have_run_next():
    clock = Clock()
    flag = {"stop": False}

    class Stopping(FakeRunner):
        def run(self, step, progress=None):
            res = super().run(step, progress)
            flag["stop"] = True  # Ctrl-C during the first look
            return res

    off = waiting_service()
    runner = Stopping(clock, {"offcpu": off, "profile": profile([])})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(), clock=clock, stopped=lambda: flag["stop"])
    assert out["state"] == "interrupted"
    assert [(s.recipe, s.status) for s in out["steps"][2:]] == [("lockhold", "not run")]


def test_a_step_is_run_exactly_as_its_printed_command_parses():
    """The engine gets what `kit run` would make of the step's command line: the same parser and types."""
    step = triage.Step("lockhold", ["--pid", str(os.getpid()), "--lock", "pool_lock", "--unlock", "pool_unlock",
                                    "--inside", "getaddrinfo", "--stacks"], why="", duration_s=8, budget_pct=1.5)
    assert step.command() == (f"kit run lockhold --pid {os.getpid()} --lock pool_lock --unlock pool_unlock "
                              "--inside getaddrinfo --stacks --for 8s --budget 1.5")
    recipe, values, opts = triage.Runner(RECIPES, None).options(step)
    assert (values["pid"], values["lock"], values["inside"], values["stacks"]) == \
        (os.getpid(), "pool_lock", "getaddrinfo", True)
    assert (opts.duration, opts.budget) == (8.0, 1.5)


def test_busiest_port_is_a_listeners_own_else_the_peers():
    inodes = {11, 12, 13, 14}
    table = [(8080, 0, 0x0A, 11), (8080, 40001, 0x01, 12), (8080, 40002, 0x01, 13), (51000, 5432, 0x01, 14),
             (22, 50000, 0x01, 99)]  # the last is another process's
    assert evidence.busiest_port(inodes, table) == 8080
    assert evidence.busiest_port({14}, table) == 5432
    assert evidence.busiest_port(set(), table) is None


# --- the command's bad input: one line, its exit code, before anything attaches ---------------------------

def kit(*argv):
    import io
    from kit.cli import main
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, words", [
    ([], "kit triage needs one scope"),
    (["--comm", "a", "--pid", "1"], "--comm and --pid: give one scope"),
    (["--comm", "kit-no-such-x"], "no running process is named 'kit-no-such-x'"),
    (["--comm", "sixteen-bytes-xx"], "the kernel truncates comm to 15"),
    (["--pid", "{me}", "--for", "11m"], "over the triage's maximum of 600s"),
    (["--pid", "{me}", "--for", "soon"], "not a duration"),
    (["--pid", "{me}", "--budget", "lots"], "--budget 'lots' is not a number"),
    (["--pid", "{me}", "--budget", "0"], "--budget 0 is out of range"),
    (["--unit", "nosuch-kit.service"], "no cgroup named nosuch-kit.service"),
    (["--container", "0123456789abcdef"], "no cgroup of a container with that id"),
])
def test_triage_bad_input_is_one_line_with_a_fix(argv, words):
    code, out, err = kit("triage", *[a.replace("{me}", str(os.getpid())) for a in argv])
    assert code == ExitCode.BAD_INPUT, err
    assert words in err and err.count("\n") == 1 and " — " in err and out == ""


def test_a_report_directory_that_is_not_empty_is_refused_before_anything_attaches(tmp_path):
    (tmp_path / "old.md").write_text("x")
    for argv in (["triage", "--pid", str(os.getpid())], ["run", "offcpu", "--pid", str(os.getpid())]):
        code, out, err = kit(*argv, "--out", str(tmp_path))
        assert code == ExitCode.BAD_INPUT and "is not empty" in err
    assert os.listdir(tmp_path) == ["old.md"]


@pytest.mark.parametrize("budget, needs, shares", [
    (2.0, [0.3, 0.02], [1.175, 0.825]),       # both fit: each its need with headroom, and half the rest
    (2.0, [None, 0.02], [0.987, 1.01]),       # unknown: a part of the rest
    (2.0, [None, None], [1.0, 1.0]),
    (0.5, [3.0, 0.02], [0.475, 0.025]),       # not all fit: the cheap one gets its need, the dear one the rest
    (0.01, [0.3, 0.02], [0.005, 0.005]),      # nothing fits: an even split, both refused with their reasons
    (2.0, [0.5], [2.0]),
])
def test_steps_side_by_side_share_one_budget_by_what_each_needs(budget, needs, shares):
    got = triage.share_budget(budget, needs)
    assert got == pytest.approx(shares, rel=0.02) and sum(got) <= budget


def test_a_look_without_offcpu_says_on_cpu_time_and_that_where_threads_wait_is_not_known():
    clock = Clock()
    prof = profile([row(101, 0, 0, [], ["busy_us", "checkout_conn"]) | {"samples": 4}])
    runner = FakeRunner(clock, {"profile": prof}, raises={"offcpu": Refused("offcpu would cost more than its "
                                                                            "budget: 342k/s box-wide")})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(), clock=clock)
    look = out["look"]
    assert look["state"] == "not busy" and look["sites"] == [] and not look["off_cpu_known"]
    assert look["threads"][0]["off_share"] is None and look["threads"][0]["on_share"] == pytest.approx(4 / 49 / 10, abs=1e-4)
    assert [s.recipe for s in out["steps"]] == ["offcpu", "profile"]  # nothing to follow without the waits
    lines = verdict.verdict(out, "--comm pay-svc")
    assert "is not busy" in lines[0] and "where they wait is not known" in lines[0]
    assert any(ln.startswith("Not measured: offcpu (refused by the guardrail: offcpu would cost") for ln in lines)


def test_a_first_look_recipe_this_kernel_cannot_run_is_left_out_and_said():
    clock = Clock()
    runner = FakeRunner(clock, {"offcpu": waiting_service()})
    out = triage.chain(plan(), RECIPES, runner, FakeSystem(), clock=clock, runs_here=lambda n: n != "profile")
    assert [s.recipe for s in out["steps"]][:1] == ["offcpu"] and "profile" not in [r[0] for r in runner.ran]
    assert "profile cannot run here, so the first look is without it" in out["notes"]
    assert out["look"]["on_cpu_from"] == "offcpu"
    none = triage.chain(plan(), RECIPES, FakeRunner(Clock(), {}), FakeSystem(), clock=Clock(),
                        runs_here=lambda n: False)
    assert none["state"] == "unmeasured" and triage.exit_code(none) == ExitCode.UNSUPPORTED
