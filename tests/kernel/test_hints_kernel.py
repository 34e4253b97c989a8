"""Next-step hints on real runs: each names what the workload really did (its pid, the function its
source takes the lock in, the symbols its binary has, the host it failed to resolve, the flow the
kernel counted), and every command it suggests runs: kit's with --dry-run (exit 0), the others
for real, agreeing with the workload or the kernel.

Oracles kit did not produce: the workloads' own output and books (pid, waits, lookups), their
source (demo/pay_svc.c), nm on their binaries, the namespace's TcpRetransSegs, getent and strace."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ACCURACY_BUDGET, ROOT, KitProc, kit_cmd
from workloads import lockwork, retrans

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

sys.path.insert(0, os.path.join(ROOT, "demo"))


def dry_run_ok(command):
    """A suggested kit command, exactly as printed, plus --dry-run: every argument checked (pid, symbols,
    scopes) and the guardrail's estimate, nothing attached. With the accuracy budget, as every test that
    runs kit on this shared box: filtering other tests' load may cost more than the default 2% here."""
    argv = shlex.split(command)
    assert argv[0] == "kit", command
    p = subprocess.run(kit_cmd(*argv[1:], "--dry-run", *ACCURACY_BUDGET), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, (command, p.stdout, p.stderr)


def kit_commands(res):
    return [h["command"] for h in res["hints"] if h["command"] and h["command"].startswith("kit ")]


def nm(binary, dynamic=False):
    out = subprocess.run(["nm", *(["-D"] if dynamic else []), binary], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].split("@")[0]: line.split()[-2] for line in out.splitlines() if line.split()}


def test_the_demo_s_first_hint_is_its_pool_lock_and_every_suggestion_runs(kernel, no_leftovers, tmp_path):
    import run_demo
    source = open(os.path.join(ROOT, "demo", "pay_svc.c")).read()
    # the argument-less wrappers pay_svc.c takes and releases the pool mutex in (the source is the oracle,
    # not kit's symbols): its workers wait longest on that lock (held through a reconnect every tenth checkout)
    locker = re.search(r"void (\w+)\(void\)\n\{\n\s*pthread_mutex_lock\(&pool\);", source).group(1)
    unlocker = re.search(r"void (\w+)\(void\)\n\{\n\s*pthread_mutex_unlock\(&pool\);", source).group(1)
    svc = subprocess.Popen([run_demo.build_pay_svc(str(tmp_path))], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(re.search(r"pid (\d+)", svc.stdout.readline()).group(1))
        kit = KitProc("run", "offcpu", "--comm", "pay-svc", "--for", "5s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        res = kit.finish().json()
        assert kit.code == 0, kit.stderr
        first = res["hints"][0]
        assert locker in first["text"] and f"pid {pid}" in first["text"], first
        assert "pthread_mutex_lock" in first["text"] and "futex/lock" in first["text"]
        # both wrappers are in the binary (nm): lockhold pairs them
        assert {locker, unlocker} <= set(nm(svc.args[0]))
        assert first["command"] == f"kit run lockhold --pid {pid} --lock {locker} --unlock {unlocker}"
        assert {w["class"] for w in res["waits"]} >= {"lock", "peer", "sleep"}
        assert abs(sum(w["share"] for w in res["waits"]) - 1) < 0.01
        assert kit_commands(res)
        for cmd in kit_commands(res):
            dry_run_ok(cmd)
    finally:
        svc.terminate()
        svc.wait()


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return lockwork.build(str(tmp_path_factory.mktemp("hints")), f"hnt{os.getpid() % 100000}")


def test_a_wrapper_lock_is_named_with_its_unlock_and_the_wait_agrees_with_the_workload(kernel, no_leftovers, binary):
    w = lockwork.Workload(binary, threads=4, fast=0, slow=60, slow_ms=17, gate=True, hold_gate=True)
    try:
        kit = KitProc("run", "offcpu", "--pid", str(w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        w.go()
        book = w.wait_report()
        res = kit.stop().json()
        syms = nm(binary)
        assert syms.get("pool_lock") == "T" and syms.get("pool_unlock") == "T"
        first = res["hints"][0]
        assert first["command"] == f"kit run lockhold --pid {w.pid} --lock pool_lock --unlock pool_unlock"
        assert "pool_lock and pool_unlock" in first["text"]
        # the lock's off-CPU time is the blocked part of what the workload timed around pool_lock
        lock_us = next(x["total_us"] for x in res["waits"] if x["class"] == "lock")
        assert 0.5 * book["wait_total_us"] <= lock_us <= book["wait_total_us"] * 1.02 + 5000, (lock_us, book)
        for cmd in kit_commands(res):
            dry_run_ok(cmd)
    finally:
        w.finish()


def test_long_holds_in_a_program_that_resolves_names_lead_to_stacks_and_getaddrinfo(kernel, no_leftovers, binary):
    w = lockwork.Workload(binary, threads=3, fast=200, slow=3, slow_ms=17, lookups=["localhost:3"], gate=True,
                          hold_gate=True)
    try:
        kit = KitProc("run", "lockhold", "--pid", str(w.pid), "--lock", "pool_lock", "--unlock", "pool_unlock",
                      "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        w.go()
        book = w.wait_report()
        res = kit.stop().json()
        assert book["hold_max_us"] >= 17000
        assert nm(binary, dynamic=True).get("getaddrinfo") == "U"  # the program calls the resolver
        cmds = [h["command"] for h in res["hints"]]
        assert cmds == [f"kit run lockhold --pid {w.pid} --lock pool_lock --unlock pool_unlock --stacks",
                        f"kit run getaddrinfo --pid {w.pid}"], res["hints"]
        for cmd in cmds:
            dry_run_ok(cmd)
    finally:
        w.finish()


def test_a_failing_lookup_is_named_and_getent_fails_it_the_same_way(kernel, no_leftovers, binary):
    host = "kit-no-such.invalid"
    w = lockwork.Workload(binary, threads=1, fast=0, slow=0, slow_ms=1, lookups=[f"{host}:3:fail", "localhost:2"],
                          gate=True, hold_gate=True)
    try:
        kit = KitProc("run", "getaddrinfo", "--pid", str(w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        w.go()
        book = w.wait_report()
        res = kit.stop().json()
    finally:
        w.finish()
    assert [(j["name"], j["failed"]) for j in book["lookups"]] == [(host, 3), ("localhost", 0)]
    assert [h["command"] for h in res["hints"]] == [f"getent ahosts {host}"]
    assert f"3 of 3 lookups of {host}" in res["hints"][0]["text"]
    assert subprocess.run(shlex.split(res["hints"][0]["command"]), capture_output=True).returncode == 2  # not found


def test_a_retransmitting_flow_leads_to_its_owner_and_a_route_the_namespace_has(kernel, no_leftovers):
    seen = {}
    with retrans.netns(f"kit-t-hint-{os.getpid()}") as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--for", "60s", "--json")
        kit.wait_attached()

        def hold(pid):  # the owner still holds its socket: the commands are checked now
            seen["res"] = kit.stop().json()
            seen["pid"] = pid
            seen["cmds"] = [h["command"] for h in seen["res"]["hints"]]
            for cmd in kit_commands(seen["res"]):
                dry_run_ok(cmd)
            route = subprocess.run(shlex.split(seen["cmds"][-1]), capture_output=True, text=True)
            seen["route"] = (route.returncode, route.stdout)

        _cport, delta = retrans.provoke(ns, port=5611, hold=hold)
    assert delta >= 3
    assert seen["cmds"] == [f"kit run offcpu --pid {seen['pid']}", f"ip -n {ns} route get 127.0.0.1"]
    assert f"retransmitted {delta} times" in seen["res"]["hints"][0]["text"]
    assert seen["route"][0] == 0 and "dev lo" in seen["route"][1]


FAILING_CLOSER = """
import os, sys, time
print(os.getpid(), flush=True)
while True:
    try:
        os.close(-1)
    except OSError:
        pass
    time.sleep(0.01)
"""


def test_a_dominant_sleep_and_a_failing_syscall_lead_to_offcpu_and_strace(kernel, no_leftovers):
    p = subprocess.Popen([sys.executable, "-c", FAILING_CLOSER], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(p.stdout.readline())
        kit = KitProc("run", "syscalls", "--pid", str(pid), "--for", "2s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        res = kit.finish().json()
        assert kit.code == 0, kit.stderr
        cmds = [h["command"] for h in res["hints"]]
        assert cmds == [f"kit run offcpu --pid {pid}", f"timeout 5 strace -f -e trace=close -p {pid}"]
        assert "clock_nanosleep" in res["hints"][0]["text"]
        dry_run_ok(cmds[0])
        trace = subprocess.run(shlex.split(cmds[1]), capture_output=True, text=True)
        assert re.search(r"close\(-1\)\s+= -1 EBADF", trace.stderr), trace.stderr  # strace: close fails
    finally:
        p.kill()
        p.wait()
