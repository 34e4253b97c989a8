"""--comm and --thread-comm without a kernel: one rule (kit_prelude.h's) rendered, priced and resolved.

--comm NAME takes a thread whose own name or whose process's (main thread's) name is NAME; --thread-comm
NAME a thread whose own name is NAME. The kernel side is tested against a workload's own counts in
test_comm_scope_kernel.py; here the rendering, the guardrail's scope matcher and suggestions, and the
resolution of names to processes (on real /proc entries of a child process, no root needed)."""

import os
import re
import subprocess
import sys

import pytest

from kit import catalog, guard
from kit.catalog import params
from kit.engine import render
from kit.guard import costs, rate
from kit.host import procfs, targets
from kit.errors import BadInput, CatalogError
from kit.engine.contract import Context
from kit.engine.run import Options

RECIPES_WITH_COMM = ("offcpu", "lockhold", "getaddrinfo", "syscalls", "profile", "runqlat")
TASK = {"task_read": render.TASK_READ_BTF, "task_leader_off": 1328, "task_comm_off": 1752}


@pytest.fixture(scope="module")
def recipes():
    return catalog.load()


def comm(text, name="comm"):
    spec = catalog.ParamSpec(name=name, type="comm")
    return params.TYPES["comm"].parse(text, spec)


@pytest.mark.parametrize("name", RECIPES_WITH_COMM)
def test_every_recipe_with_a_comm_scope_has_thread_comm_with_the_same_meaning(recipes, name):
    r = recipes[name]
    assert r.params["comm"].task_scope and r.params["thread_comm"].task_scope
    assert r.params["comm"].help == catalog.TASK_SCOPES["comm"]["help"]
    assert "process's name" in r.params["comm"].help and "own name" in r.params["thread_comm"].help
    assert "comm" not in recipes["tcpretrans"].params and "thread_comm" not in recipes["tcpretrans"].params


def test_comm_renders_the_process_name_read_at_btf_offsets_and_says_which_names_match(recipes):
    r = recipes["syscalls"]
    lits = render.scope_literals(r, {"comm": comm("ho-renamed")}, TASK)
    assert (lits["scope_comm_on"], lits["scope_thread_comm_on"]) == ("1", "0")
    assert (lits["scope_task_read"], lits["scope_task_leader_off"], lits["scope_task_comm_off"]) == ("2", "1328", "1752")
    text = render.render(r, r.hooks[0], {"comm": comm("ho-renamed")}, task=TASK)
    assert "or whose process's name (its\n * main thread's" in text  # `kit show` says which names match
    assert re.search(r"#define KIT_TASK_READ +2\n#define KIT_TASK_LEADER_OFF 1328\n#define KIT_TASK_COMM_OFF +1752\n",
                     text)
    assert "ho-renamed" not in text  # the name is bytes, never text


def test_thread_comm_alone_never_reads_the_main_threads_name(recipes):
    r = recipes["offcpu"]
    lits = render.scope_literals(r, {"thread_comm": comm("rn-w0", "thread_comm")}, TASK)
    assert (lits["scope_comm_on"], lits["scope_thread_comm_on"], lits["scope_task_read"]) == ("0", "1", "0")
    assert lits["scope_thread_comm"].startswith("{114, 110, 45, 119, 48, 0")  # "rn-w0"


def test_without_the_offsets_comm_matches_the_threads_own_name_only(recipes):
    r = recipes["lockhold"]
    lits = render.scope_literals(r, {"comm": comm("x")}, dict(render.NO_TASK_OFFSETS))
    assert (lits["scope_comm_on"], lits["scope_task_read"], lits["scope_task_leader_off"]) == ("1", "0", "0")


@pytest.mark.parametrize("task", [{"task_read": 2, "task_leader_off": "1328; evil()", "task_comm_off": 1},
                                  {"task_read": 7, "task_leader_off": 1, "task_comm_off": 1},
                                  {"task_read": 2, "task_leader_off": 1},
                                  {"task_read": True, "task_leader_off": 1, "task_comm_off": 1}])
def test_task_offsets_reach_the_prelude_only_as_known_integers(recipes, task):
    with pytest.raises(CatalogError, match="task offsets"):
        render.scope_literals(recipes["syscalls"], {"comm": comm("x")}, task)


def test_task_offsets_are_read_only_for_comm_and_a_fallback_leaves_a_note():
    assert render.task_offsets({"comm": None}) == render.NO_TASK_OFFSETS
    notes = []
    task = render.task_offsets({"comm": "x"}, notes)
    if task["task_read"]:
        assert task["task_leader_off"] > 0 and task["task_comm_off"] > 0 and not notes
    else:
        assert "own name only" in notes[0]


def test_bad_thread_comm_names_its_own_flag():
    with pytest.raises(BadInput) as e:
        comm("x" * 16, "thread_comm")
    assert e.value.message.startswith("--thread-comm ") and "--thread-comm 'xxxxxxxxxxxxxxx'" in e.value.hint


# -- the guardrail's scope: the same rule, on /proc --------------------------------

CHILD = r"""
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)          # the main thread: the process's name
ready = threading.Event()
def worker():
    libc.prctl(15, sys.argv[2].encode(), 0, 0, 0)      # a renamed worker thread
    print(threading.get_native_id(), flush=True)
    ready.wait()
t = threading.Thread(target=worker)
t.start()
sys.stdin.readline()
ready.set()
t.join()
"""


@pytest.fixture
def renamed_process():
    """A child process named kit-cs-main with a thread renamed kit-cs-w0: (pid, worker tid)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, "kit-cs-main", "kit-cs-w0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        tid = int(p.stdout.readline())
        yield p.pid, tid
    finally:
        p.stdin.close()
        p.wait(timeout=10)


@pytest.mark.parametrize("values, main, worker", [
    ({"comm": "kit-cs-main"}, True, True),            # the process's name: every thread
    ({"comm": "kit-cs-w0"}, False, True),             # a thread's own name: that thread
    ({"thread_comm": "kit-cs-main"}, True, False),    # own names only
    ({"thread_comm": "kit-cs-w0"}, False, True),
    ({"comm": "kit-cs-main", "thread_comm": "kit-cs-w0"}, False, True),
    ({"comm": "kit-cs-other"}, False, False),
])
def test_rate_scope_matcher_applies_the_preludes_rule(recipes, renamed_process, values, main, worker):
    pid, tid = renamed_process
    match, measurable = rate.scope_matcher(recipes["syscalls"], values)
    assert measurable and (match(pid, pid), match(pid, tid)) == (main, worker)


def test_rate_scope_matcher_without_process_names_matches_own_names_only(recipes, renamed_process):
    pid, tid = renamed_process
    match, _ = rate.scope_matcher(recipes["syscalls"], {"comm": "kit-cs-main"}, process_names=False)
    assert (match(pid, pid), match(pid, tid)) == (True, False)


@pytest.mark.parametrize("comm_, thread_comm, by_process, tids", [
    ("kit-cs-main", None, True, ()),
    ("kit-cs-w0", None, False, "worker"),
    (None, "kit-cs-w0", False, "worker"),
    ("kit-cs-main", "kit-cs-w0", True, "worker"),
])
def test_names_resolve_to_the_process_by_its_main_thread_or_by_a_thread(renamed_process, comm_, thread_comm,
                                                                        by_process, tids):
    pid, tid = renamed_process
    found = [s for s in targets.pids_by_comm(comm_, thread_comm) if s.pid == pid]
    assert len(found) == 1 and found[0].by_process == by_process and found[0].name == "kit-cs-main"
    assert found[0].tids == ((tid,) if tids == "worker" else ())
    notes = targets.thread_only_notes(found, comm_)
    if comm_ is not None and not by_process:
        assert notes and f"pid {pid} (kit-cs-main)" in notes[0] and f"its thread {tid}" in notes[0]
    else:
        assert not notes


def test_a_thread_name_only_no_process_has_is_not_found(renamed_process):
    assert targets.pids_by_comm(None, "kit-cs-main") and not targets.pids_by_comm("kit-cs-w0", "kit-cs-main")


def test_by_comm_counts_a_renamed_thread_under_its_own_and_its_processes_name(monkeypatch):
    threads = [rate.Thread(pid=10, tid=11, comm="rn-w0", rate=300.0, in_scope=False, pcomm="ho-renamed"),
               rate.Thread(pid=10, tid=12, comm="rn-w1", rate=200.0, in_scope=False, pcomm="ho-renamed"),
               rate.Thread(pid=20, tid=20, comm="bash", rate=100.0, in_scope=False)]
    r = rate.Rate(hook=rate.RateHook("tracepoint", "raw_syscalls:sys_enter"), window_s=0.2, total=600.0,
                  in_scope=0.0, scope_measured=True, scoped=False, threads=threads, samples=100, lost=0)
    assert [(t.comm, t.rate) for t in r.by_comm] == [("ho-renamed", 500.0), ("rn-w0", 300.0), ("rn-w1", 200.0),
                                                    ("bash", 100.0)]
    recipe = catalog.load()["syscalls"]
    c = Context(recipe=recipe, hook=recipe.hooks[0], values={p: None for p in recipe.params})
    est = guard.priced(guard.Estimate(budget_pct=2.0, ncpu=guard.ncpu(), scoped=False), r,
                       costs.Costs(in_ns=500, out_ns=200, progs_per_event=2, body_in_ns=400, body_out_ns=150,
                                   source="test", terms={}))
    from kit.guard import suggest
    monkeypatch.setattr(suggest, "is_kthread", lambda pid: False)  # pids 10 and 20 are made up here
    sugg, _kthreads = suggest.suggestions(c, Options(duration=recipe.duration_default), est, me=-1)
    assert re.fullmatch(r"kit run syscalls --comm ho-renamed", sugg[0]["command"])
    # its projection counts both renamed threads in scope, bash filtered
    assert sugg[0]["cpu_pct"] == pytest.approx(100 * (500 * 500e-9 + 100 * 200e-9) / guard.ncpu(), abs=1e-3)
    rn_w0 = next(s for s in sugg if s["command"].endswith("--comm rn-w0"))
    assert rn_w0["cpu_pct"] == pytest.approx(100 * (300 * 500e-9 + 300 * 200e-9) / guard.ncpu(), abs=1e-3)


def test_kit_itself_is_never_a_name_match():
    me = os.getpid()
    assert all(s.pid != me for s in targets.pids_by_comm(procfs.comm_of(me)))
