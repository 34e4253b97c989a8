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
    # the flame graph a person opens: an SVG whose frames name the same functions
    text = " ".join(t.text or "" for t in ET.parse(svg).iter() if t.tag.endswith("title"))
    for fn in ("pay-svc", "ledger_append", "query_db", "rate_limit"):
        assert fn in text, fn
