"""Teardown on every exit path, on the real kernel.

Ground truth is the kernel's: while kit runs, /proc/PID/fd and fdinfo name the
programs, maps and perf events it holds; after it ends those ids must be gone
from `bpftool prog/map show` and no named probe of its pid may be left in
tracefs. Counts are checked against the network namespace's TcpRetransSegs or
the workload's own call counts.
"""

import os
import signal
import subprocess
import time

import pytest

from conftest import ACCURACY_BUDGET, KitProc
from fixtures import kitshim
from harness import ShimProc, Workload
import leaks
from kit import catalog
from leaks import held_ids, probe_events_of, released
from workloads import retrans
from workloads.build import build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _ns(tag):
    return f"kit-h-{tag}-{os.getpid()}"


@pytest.fixture(scope="module")
def target_bin(tmp_path_factory):
    return build("target", str(tmp_path_factory.mktemp("teardown")))


@pytest.fixture
def forever(target_bin):
    """A target that calls kit_target_fn every millisecond until killed."""
    p = subprocess.Popen([target_bin, "0"])
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def _attached(kit):
    """Waits for kit to attach and returns what it holds in the kernel (proving there is something to leak)."""
    kit.wait_attached()
    kinds, progs, maps = held_ids(kit.p.pid)
    assert progs and maps and (kinds["perf_event"] or kinds["link"]), (kinds, progs, maps)
    return progs, maps


def _nothing_left(kit, progs, maps):
    assert released(progs, maps) == (set(), set()), "kit's programs or maps outlived it"
    assert probe_events_of(kit.p.pid) == []


@retrans.retake_on_disagreement
def test_sigint_prints_partial_results_and_detaches(kernel, no_leftovers):
    with retrans.netns(_ns("int")) as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--for", "120s", "--json")
        progs, maps = _attached(kit)
        _cport, delta = retrans.provoke(ns, port=5611, hold=lambda pid: kit.p.send_signal(signal.SIGINT))
        res = kit.finish().json()
    assert kit.code == 130, kit.stderr
    assert res["stopped_by"] == "SIGINT" and res["duration_s"] < 120
    assert delta >= 3
    retrans.counts_agree(res["rows"], delta, {**res["lost"], "filtered": res["filtered"]})
    _nothing_left(kit, progs, maps)


def test_sigterm_prints_results_and_detaches(kernel, no_leftovers):
    with retrans.netns(_ns("term")) as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--for", "120s")
        progs, maps = _attached(kit)
        _cport, delta = retrans.provoke(ns, port=5612, hold=lambda pid: kit.p.send_signal(signal.SIGTERM))
        kit.finish()
    assert kit.code == 143, kit.stderr
    assert "stopped by SIGTERM" in kit.stdout
    assert delta >= 3 and f"{delta} events" in kit.stdout, kit.stdout
    _nothing_left(kit, progs, maps)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6, 1.0, 1.5])
def test_sigint_at_any_moment_of_start_up_leaves_nothing(kernel, no_leftovers, delay):
    """Before, during or after BCC compiles and attaches: the run ends as interrupted, nothing stays."""
    kit = KitProc("run", "tcpretrans", "--for", "60s", "--json")
    seen = set()
    deadline = time.time() + delay
    while time.time() < deadline:  # note every program it holds on the way
        try:
            seen |= held_ids(kit.p.pid)[1]
        except OSError:
            break
        time.sleep(0.01)
    kit.p.send_signal(signal.SIGINT)
    kit.finish(timeout=60)
    assert kit.code in (130, -signal.SIGINT), kit.stderr
    assert released(seen, ()) == (set(), set())
    assert probe_events_of(kit.p.pid) == []


def _run_args(recipe, target_bin, target_pid):
    """Arguments that make any recipe attach against the target workload."""
    args = []
    symbols = [p for p in recipe.params.values() if p.type == "symbol"]
    for p in recipe.params.values():
        if p.type == "binary" and symbols:  # a recipe with its own symbols probes them in the target
            args += [f"--{p.flag}", target_bin]
        elif p.type == "symbol":
            args += [f"--{p.flag}", "kit_target_fn"]
    if "pid" in recipe.params:
        args += ["--pid", str(target_pid)]
    elif recipe.guard.scope_required:
        args += ["--comm", "kit-target"]
    return args


KILL_CASES = [(path, name) for path in (catalog.DEFAULT_CATALOG, kitshim.CATALOG)
              for name in catalog.load(path)]


@pytest.mark.parametrize("catalog_path, name", KILL_CASES, ids=[n for _, n in KILL_CASES])
def test_sigkill_leaves_no_program_map_perf_event_or_probe_behind(kernel, no_leftovers, forever, target_bin,
                                                                  catalog_path, name):
    recipe = catalog.load(catalog_path)[name]
    args = ["run", name, *_run_args(recipe, target_bin, forever.pid), *ACCURACY_BUDGET, "--for", "60s"]
    kit = KitProc(*args) if catalog_path == catalog.DEFAULT_CATALOG else ShimProc(*args)
    progs, maps = _attached(kit)
    time.sleep(0.5)  # let it be in the middle of its run
    kit.p.kill()
    kit.p.wait()
    assert kit.p.returncode == -signal.SIGKILL
    _nothing_left(kit, progs, maps)


def test_target_exit_ends_the_run_cleanly_and_says_so(kernel, no_leftovers, target_bin):
    """Even while the exited target is a zombie nobody has reaped yet."""
    target = subprocess.Popen([target_bin, "0"])
    try:
        kit = ShimProc("run", "uprobed", "--binary", target_bin, "--symbol", "kit_target_fn", "--pid",
                       str(target.pid), "--for", "60s", "--json")
        progs, maps = _attached(kit)
        time.sleep(1.0)
        target.kill()  # not reaped: /proc/PID stays, as a zombie
        t0 = time.time()
        res = kit.finish(timeout=30).json()
        waited = time.time() - t0
        with open(f"/proc/{target.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        target.kill()
        target.wait()
    assert kit.code == 0, kit.stderr
    assert res["stopped_by"] == "target_exit" and waited < 5
    assert any(f"target process {target.pid} exited" in n for n in res["notes"]), res["notes"]
    assert res["rows"] and res["rows"][0]["pid"] == target.pid and res["rows"][0]["calls"] > 100
    _nothing_left(kit, progs, maps)


@retrans.retake_on_disagreement
def test_two_runs_at_once_count_their_own_namespaces_and_a_killed_third_takes_nothing_with_it(
        kernel, no_leftovers):
    with retrans.netns(_ns("a")) as ns_a, retrans.netns(_ns("b")) as ns_b:
        run_a = KitProc("run", "tcpretrans", "--netns", ns_a, "--for", "120s", "--json")
        run_b = KitProc("run", "tcpretrans", "--netns", ns_b, "--for", "120s", "--json")
        third = KitProc("run", "tcpretrans", "--for", "120s", "--json")
        for k in (run_a, run_b):
            k.wait_attached()
        progs, maps = _attached(third)
        third.p.kill()
        third.p.wait()
        _nothing_left(third, progs, maps)
        _c, delta_a = retrans.provoke(ns_a, port=5613)
        _c, delta_b = retrans.provoke(ns_b, port=5614, drop_seconds=4.0)
        for k in (run_a, run_b):
            k.p.send_signal(signal.SIGINT)
        res_a, res_b = run_a.finish().json(), run_b.finish().json()
    assert delta_a >= 3 and delta_b >= 3
    retrans.counts_agree(res_a["rows"], delta_a, res_a["lost"])
    retrans.counts_agree(res_b["rows"], delta_b, res_b["lost"])
    assert {r["dport"] for r in res_a["rows"]} == {5613} and {r["dport"] for r in res_b["rows"]} == {5614}


def test_comm_scoped_run_goes_on_when_its_process_exits_and_says_so(kernel, no_leftovers, target_bin):
    calls = 200
    w = Workload(target_bin, str(calls), "kit-h-gone")
    try:
        kit = ShimProc("run", "uprobed", "--binary", target_bin, "--symbol", "kit_target_fn", "--comm", "kit-h-gone",
                       "--for", "4s", "--json")
        _attached(kit)
        assert w.go() == f"done {calls}"
    finally:
        w.end()  # exits well before the run's 4 s are up
    res = kit.finish().json()
    assert kit.code == 0 and res["stopped_by"] == "timeout" and res["duration_s"] >= 4
    assert res["rows"] == [{"pid": w.pid, "calls": calls}]
    assert any("--comm 'kit-h-gone' is running any more" in n for n in res["notes"]), res["notes"]


@pytest.mark.parametrize("hook", ["collect", "detach"])
def test_a_recipe_hook_that_fails_still_detaches_and_names_the_real_error(kernel, no_leftovers, monkeypatch, hook):
    """A bug in a recipe's collect() or detach() is reported as itself, and every probe still goes."""
    import io
    from kit import cli
    from kit.recipes import tcpretrans

    def boom(*a):
        raise RuntimeError(f"injected failure in {hook}")

    # the engine takes a recipe's steps from its HOOKS (kit.engine.contract), not from the module's functions
    import dataclasses
    monkeypatch.setattr(tcpretrans, "HOOKS", dataclasses.replace(tcpretrans.HOOKS, **{hook: boom}))
    before = leaks.held()
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["run", "tcpretrans", "--for", "0.5s"], out=out, err=err)
    assert code == 1, err.getvalue()
    assert f"RuntimeError: injected failure in {hook}" in err.getvalue()
    assert leaks.held() == before, "probes stayed attached after a recipe hook failed"
