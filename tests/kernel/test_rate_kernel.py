"""The guardrail's rate measurement (perf counting and sampling, no BPF) against the workload's own
counts: exact for a uprobe only the test's process can hit, and the share of a box-wide tracepoint that a
load with a known rate causes."""

import os
import threading
import time

import pytest

from kit import catalog
from kit.binaries import insn
from kit.guard import costs, rate
from kit.host import perfevent
from kit.guard.calibrate import _Target
from calibration import calibrate
from workloads.load import Load

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_uprobe_counting_sees_every_call_exactly(kernel):
    t = _Target()  # a process calling kit's sample functions from a memfd nobody else maps
    try:
        hook = rate.RateHook("uprobe", "calibration:push", path=t.path, offset=t.offsets["push"])
        attr, keep = hook.attr()
        with perfevent.CpuEvents(attr, keep) as ev:
            ev.enable()
            t.run("push", 12345)
            t.run("jmp", 1000)  # another function in the same file: not counted
            ev.disable()
            counts = ev.counts()
    finally:
        t.close()
    assert sum(counts.values()) == 12345


def test_uprobe_rate_is_attributed_to_the_calling_process(kernel):
    t = _Target()
    try:
        hook = rate.RateHook("uprobe", "calibration:push", path=t.path, offset=t.offsets["push"])
        worker = threading.Thread(target=t.run, args=("push", 10_000_000))
        worker.start()
        time.sleep(0.2)
        r = rate.measure(hook, match=lambda pid, tid: pid == t.p.pid)
        worker.join()
    finally:
        t.close()
    assert r.total > 0 and r.in_scope == pytest.approx(r.total)
    assert r.threads[0].pid == t.p.pid


def _own(load, t0, t1):
    """The load's own (calls per second, calls per CPU-second, share of a CPU) around [t0, t1]."""
    s = load.between(t0 - 0.15, t1 + 0.15)
    calls, cpu, wall = (s[-1]["calls"] - s[0]["calls"], (s[-1]["cpu_ns"] - s[0]["cpu_ns"]) / 1e9,
                        s[-1]["mono"] - s[0]["mono"])
    return calls / wall, calls / cpu, cpu / wall


def _own_uncounted(load, t0, t1, span=1.0):
    """The load's own calls per CPU-second in the `span` seconds before t0 and after t1, when no event
    counted its calls: what kit claims to give back once it undoes its counting's slowdown."""
    calls = cpu = 0
    for a, b in ((t0 - span, t0 - 0.05), (t1 + 0.05, t1 + span)):
        s = load.between(a, b)
        calls += s[-1]["calls"] - s[0]["calls"]
        cpu += (s[-1]["cpu_ns"] - s[0]["cpu_ns"]) / 1e9
    return calls / cpu


@pytest.mark.parametrize("pace", [20000, 0], ids=["steady", "as-fast-as-it-goes"])
def test_tracepoint_rate_in_scope_and_cpu_use_match_the_loads_own(pace, kernel):
    comm = f"kit-r{os.getpid() % 100000}"
    recipe = catalog.load()["syscalls"]
    match, _ = rate.scope_matcher(recipe, {"comm": comm})
    hook = rate.RateHook("tracepoint", "raw_syscalls:sys_enter")
    # This host's price of a counting hit (the cost-class default, 120 ns, is 4x what this VM measures):
    # the slowdown undone is the one this host's calibration says the event causes.
    proc, path = calibrate()
    assert proc.returncode == 0, proc.stderr
    cal, note = costs.load_calibration(path)
    assert cal, note
    m = costs.for_class("tracepoint_pair", "raw_tracepoint", cal=cal).measure_ns
    with Load("syscalls", comm, seconds=60, pace=pace) as load:
        load.go()
        time.sleep(1.5)
        t0 = time.monotonic()
        r = rate.measure(hook, match=match, measure_ns=m)
        t1 = time.monotonic()
        time.sleep(1.2)
        load.finish()
    per_s, per_cpu_s, util = _own(load, t0, t1)
    mine = [t for t in r.threads if t.comm == comm]
    assert len(mine) == 1 and mine[0].in_scope and mine[0].pid == load.pid
    assert r.total >= r.in_scope == pytest.approx(mine[0].rate)
    if pace:
        # Paced: it keeps its rate while counted, and uses a fraction of a CPU.
        assert r.in_scope == pytest.approx(per_s, rel=0.3), (r.in_scope, per_s)
        assert mine[0].util == pytest.approx(util, abs=0.15), (mine[0].util, util)
    else:
        # As fast as it goes: it is the busiest, and on a box other tests share its rate per second of
        # CPU is what it keeps once the counting event's own slowdown is undone, so the truth is its own
        # rate per CPU-second while nothing counted it (the window around the measurement, which the
        # event slowed, gave a ratio of 2.01 on a fresh CI machine); util is the CPU it wants.
        assert r.by_comm[0].comm == comm
        assert mine[0].busy, mine[0]
        free = _own_uncounted(load, t0, t1)
        # Other tests sharing the cores make a CPU-bound thread's time per call wander: a factor of 2.
        assert 0.5 <= r.in_scope / mine[0].util / free <= 2.0, (r.in_scope, mine[0], free, per_cpu_s)


def _objdump_first(path, offset):
    import subprocess
    out = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", f"--start-address={offset}",
                          f"--stop-address={offset + 16}", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].strip().endswith(":"):
            return parts[2].split()[0]
    raise AssertionError(out)


def _expected_kind(mnemonic):
    if mnemonic.startswith("push"):
        return "push"
    if mnemonic.startswith("nop"):
        return "nop"
    if mnemonic in ("jmp", "call", "endbr64"):
        return mnemonic
    if mnemonic.startswith("j"):
        return "jcc"
    return "other"


def test_uprobe_targets_first_instruction_kind_agrees_with_objdump(kernel):
    import subprocess
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        libc = os.path.realpath(subprocess.run(["sh", "-c", "ldd /bin/true | awk '/libc.so/ {print $3}'"],
                                               capture_output=True, text=True).stdout.strip())
    names = subprocess.run(["nm", "-D", "--defined-only", libc], capture_output=True, text=True, check=True).stdout
    funcs = sorted({ln.split()[2].split("@")[0] for ln in names.splitlines() if ln.split()[1:2] == ["T"]})
    picked = funcs[::max(1, len(funcs) // 60)] + ["getaddrinfo", "malloc", "pthread_mutex_lock", "read"]
    seen = set()
    for sym in picked:
        path, offset = rate.resolve(libc, sym)
        want = _expected_kind(_objdump_first(path, offset))
        assert insn.symbol_kind(path, offset) == want, (sym, hex(offset), want)
        seen.add(want)
    assert {"push", "other"} <= seen


UPROBE_RECIPE = """\
apiVersion: kit/v1
kind: RecipeCatalog
recipes:
  - name: lockprobe
    summary: a uprobe recipe made up for this test
    example: kit run lockprobe
    scopes: [comm, thread_comm, pid]
    hooks:
      - type: uprobe
        binary: binary
        attach:
          - {fn: on_lock, symbol: "=pthread_mutex_lock"}
          - {fn: on_unlock, symbol: "=pthread_mutex_unlock"}
    params:
      binary: {type: binary, default: LIBC, help: the C library}
    duration: {default: 10s, max: 1m}
    guard: {hot_path: true, cost_class: uprobe_pair, scope_required: true, rate_hook: on_unlock}
    output: table
    table: {map: calls}
    fields: [{name: n, from: val, help: h}]
    runbook: r
"""


def test_uprobe_recipe_estimate_counts_its_rate_hook_symbol_and_prices_its_first_instruction(kernel, tmp_path):
    from kit import guard
    from kit.engine.contract import Context
    from kit.engine.run import Options
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    (tmp_path / "lockprobe.c").write_text("/* not compiled by this test */\n")
    r = catalog.parse(UPROBE_RECIPE.replace("LIBC", libc), "test.yaml", probes_dir=str(tmp_path))["lockprobe"]
    comm = f"kit-u{os.getpid() % 100000}"
    ctx = Context(recipe=r, hook=r.hooks[0], values={"comm": comm, "pid": None, "binary": None})
    import re
    import signal
    import statistics
    import subprocess
    with Load("mutex", comm, seconds=60, pace=2000) as load:
        load.go()
        # Peer: bpftrace counts the same process's unlocks (the interpreter adds its own around sleeps and
        # writes, so the load's call count is not the truth here), per half second.
        bt = subprocess.Popen(["bpftrace", "-e", f"uprobe:{libc}:pthread_mutex_unlock /pid == {load.pid}/ "
                               "{ @c = count(); } interval:ms:500 { print(@c); clear(@c); }"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "Attaching" in bt.stdout.readline()
            time.sleep(1.2)
            est = guard.estimate(ctx, Options(duration=10.0))
            time.sleep(1.2)
        finally:
            bt.send_signal(signal.SIGINT)
            out, _ = bt.communicate(timeout=30)
        load.finish()
    peer = [2 * int(n) for n in re.findall(r"@c: (\d+)", out)][1:-1]
    assert len(peer) >= 3, out
    assert est["hook"] == f"uprobe {os.path.realpath(libc)}:pthread_mutex_unlock", est.get("rate_error")
    assert est["cost"]["uprobe_first_insn"] == insn.symbol_kind(*rate.resolve(libc, "pthread_mutex_unlock"))
    assert est["in_scope_per_s"] == pytest.approx(statistics.median(peer), rel=0.3), \
        (est["in_scope_per_s"], peer, {k: est.get(k) for k in ("window_s", "samples", "lost", "busiest_threads")})
    assert est["busiest_threads"][0]["in_scope"] or est["in_scope_per_s"] < est["events_per_s"]


def _switches(pid):
    """Context switches of all of pid's threads so far, as the kernel counts them (/proc status)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n += sum(int(line.split()[1]) for line in f
                         if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")))
        except OSError:
            continue
    return n


def test_threads_in_scope_are_counted_one_by_one_while_others_swamp_the_hook(kernel):
    # A paced ping-pong in scope (a few thousand switches a second) beside one as fast as it goes out of
    # scope (ten to a hundred times more): the samples give the scope a handful of records; the counted rate
    # must agree with the kernel's own count of the scoped process's context switches over the same window.
    recipe = catalog.load()["offcpu"]
    comm = f"kit-x{os.getpid() % 100000}"
    values = {"comm": comm}
    match, _ = rate.scope_matcher(recipe, values)
    hook = rate.RateHook("tracepoint", "sched:sched_switch")
    with Load("pingpong", comm, seconds=60, pace=2000) as mine, \
            Load("pingpong", f"kit-y{os.getpid() % 100000}", seconds=60) as loud:
        mine.go()
        loud.go()
        time.sleep(1.0)
        takes = []
        for _ in range(3):
            inside = rate.threads_in_scope(values, match)
            t0, s0 = time.monotonic(), _switches(mine.pid)
            r = rate.measure(hook, match=match, scope_threads=inside)
            t1, s1 = time.monotonic(), _switches(mine.pid)
            takes.append((r, (s1 - s0) / (t1 - t0)))
        mine.finish()
        loud.finish()
    assert {p for p, _ in inside} == {mine.pid} and len(inside) >= 2, inside  # the load's threads, no other
    for r, truth in takes:
        assert r.counted_threads == len(inside), r
        assert r.total > 10 * truth, (r.total, truth)  # the out-of-scope ping-pong does swamp the hook
    ratios = [round(r.in_scope / truth, 2) for r, truth in takes]
    print(f"counted in scope / the kernel's context switches: {ratios}")
    assert all(0.8 <= x <= 1.25 for x in ratios), ratios
