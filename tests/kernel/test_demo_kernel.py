"""The README's main command, `./demo.sh`, end to end: set-up, the bundled pay-svc, and
`kit run offcpu --comm pay-svc` against it. What it must show is what pay_svc.c does:
its workers wait on the ledger lock (futex), the database socket (read) and the rate
limiter (usleep, inside libc, so its caller is the one kit recovers)."""

import os
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_demo_shows_where_pay_svc_waits_and_writes_its_flame_graph(kernel, no_leftovers):
    svg = os.path.join(ROOT, "demo", "pay-svc-offcpu.svg")
    if os.path.exists(svg):
        os.unlink(svg)
    p = subprocess.run([os.path.join(ROOT, "demo.sh")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    pid = int(re.search(r"pay-svc: serving \(pid (\d+)\)", out).group(1))
    assert "$ kit run offcpu --comm pay-svc --for 10s" in out
    # every wait pay_svc.c makes, by the function that made it, and no process but pay-svc
    for fn in ("ledger_append", "query_db", "rate_limit"):
        assert fn in out, (fn, out[-3000:])
    assert re.search(r"\bpthread_mutex_lock\b", out) and re.search(r"\bread\b", out), out[-3000:]
    # off-CPU time per thread: pay-svc's main thread, 4 workers and 4 "database" threads (renamed pay-db,
    # still in scope: --comm matches the process's name too). None can be off CPU longer than the 10 s run,
    # and the database threads do nothing but wait for a query and sleep 8 ms, so they wait nearly all of it.
    threads = {}
    for value, unit, comm, tpid, tid in re.findall(
            r"^\s*([\d.]+) (s|ms|µs)\s+[\d.]+%\s+\d+ blocks\s+(\S+) \(pid (\d+), tid (\d+)\)", out, re.M):
        assert int(tpid) == pid, (comm, tpid, pid)  # no process but pay-svc
        threads[int(tid)] = (comm, float(value) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[unit])
    assert sorted(c for c, _ in threads.values()) == ["pay-db"] * 4 + ["pay-svc"] * 5, threads
    assert all(sec <= 10.0 * 1.01 for _, sec in threads.values()), threads
    assert all(sec >= 9.0 for c, sec in threads.values() if c == "pay-db"), threads
    # the first next step is computed from this run: the lock pay_svc.c's workers wait on longest, the pool
    # lock behind its argument-less pool_lock()/pool_unlock() wrappers (held through a reconnect on every
    # tenth checkout), and pay-svc's own pid (from its own output), with the command that pairs the wrappers
    first = re.search(r"^next 1: (.*)\n    \$ (.*)$", out, re.M)
    assert first and "pool_lock" in first.group(1) and f"pid {pid}" in first.group(1), out[-3000:]
    assert first.group(2) == f"kit run lockhold --pid {pid} --lock pool_lock --unlock pool_unlock"
    # the flame graph a person opens: an SVG whose frames name the same functions
    text = " ".join(t.text or "" for t in ET.parse(svg).iter() if t.tag.endswith("title"))
    for fn in ("pay-svc", "ledger_append", "query_db", "rate_limit"):
        assert fn in text, fn


def test_demo_triage_walks_from_the_first_look_to_the_lookup_inside_the_pool_lock(kernel, no_leftovers):
    import json
    import shutil
    report = os.path.join(ROOT, "demo", "pay-svc-report")
    shutil.rmtree(report, ignore_errors=True)
    p = subprocess.run([os.path.join(ROOT, "demo.sh"), "triage"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "$ kit triage --comm pay-svc --for 45s --out demo/pay-svc-report" in p.stdout
    rep = json.load(open(os.path.join(report, "report.json")))
    assert [s["recipe"] for s in rep["steps"]][:4] == ["offcpu", "profile", "lockhold", "getaddrinfo"], p.stderr
    verdict = " ".join(rep["verdict"])
    # what pay_svc.c does: its workers wait on the pool lock, whose holder resolves localhost inside it
    for words in ("pool_lock()/pool_unlock()", "checkout_conn", "getaddrinfo for localhost", "inside the lock"):
        assert words in verdict, (words, rep["verdict"])
    assert "## Verdict" in p.stdout and os.path.exists(os.path.join(report, "report.md"))
