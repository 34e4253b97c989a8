"""kit triage on the real kernel, against ground truth kit did not produce.

- The bundled demo service (demo/pay_svc.c, under a name of this test's own): triage names the pool
  lock, its argument-less wrappers, the resolver call inside it and the host looked up; each step's
  counts equal the service's own books for that step's window (the service is parked between
  requests while a step attaches and before it ends, so every hold and lookup of the window falls
  inside the probes' time).
- A CPU-bound workload (tests/support/workloads/profile_work.c): busy, the hot function named, its share and
  the thread's on-CPU share against the workload's own CPU clock.
- An idle process: idle by the kernel's own counters (no context switch, no CPU time), and the triage
  stops after the first look.
- A first look the guardrail refuses: reported with its reason, exit 4, the report still written.
Every run leaves nothing attached (no_leftovers) and writes its bundle: report.md without control codes,
report.json, flame graphs that parse as SVG, the host's facts.
"""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT, kit_cmd
from harness import Workload
from workloads import paysvc
from workloads.build import build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

BUDGET = ("--budget", "50")   # as conftest.ACCURACY_BUDGET: other work on the box must not refuse the look
PAUSE_BEFORE_END_S = 2.5      # a step's window is parked this long before its time box ends


@pytest.fixture(scope="module")
def pay_svc(tmp_path_factory):
    return paysvc.build(str(tmp_path_factory.mktemp("triage")), f"pay{os.getpid() % 100000}")


def bundle_ok(d, steps_with_svg):
    files = set(os.listdir(d))
    assert {"report.md", "report.json", "host.txt"} <= files, files
    md = open(os.path.join(d, "report.md"), encoding="utf-8").read()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", md), "a control character in report.md"
    rep = json.load(open(os.path.join(d, "report.json")))
    for i, s in enumerate(rep["steps"], 1):
        if s["recipe"] in steps_with_svg and s["result"] and s["result"]["rows"]:
            svg = os.path.join(d, f"{i:02d}-{s['recipe']}.svg")
            assert ET.parse(svg).getroot().tag.endswith("svg"), svg
    assert "kernel" in open(os.path.join(d, "host.txt")).read()
    return md, rep


class Triage:
    """`kit triage` as a subprocess whose stderr is read line by line; on_line(line) may act on each."""

    def __init__(self, *args, on_line=None):
        self.p = subprocess.Popen(kit_cmd("triage", *args), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._out = []
        reader = threading.Thread(target=lambda: self._out.append(self.p.stdout.read()), daemon=True)
        reader.start()
        for line in self.p.stderr:
            self.lines.append(line)
            if on_line:
                on_line(line)
        self.code = self.p.wait(timeout=300)
        reader.join(30)
        self.stdout = "".join(self._out)
        self.stderr = "".join(self.lines)


def test_triage_of_the_demo_names_the_lock_its_wrappers_the_resolver_inside_and_the_host_by_its_books(
        kernel, no_leftovers, pay_svc, tmp_path):
    svc = paysvc.Service(pay_svc)
    books = {}     # step (recipe) -> the service's books over that step's window
    pending = {}   # the step being started: its recipe, its time box, the books at its start
    parked = {}    # the books while the workers are parked (from a step's end to the next one's attach)

    def on_line(line):
        m = re.match(r"kit: triage: next: kit run (\S+) .*--for (\d+)s", line)
        if m:  # a step is about to start: the workers stay parked until its probes are attached
            start = parked.get("books") or svc.pause()
            parked["books"] = start
            pending.update(recipe=m.group(1), seconds=int(m.group(2)), start=start)
        elif " attached to " in line and pending:
            svc.resume()
            parked.clear()
            time.sleep(pending["seconds"] - PAUSE_BEFORE_END_S)
            parked["books"] = svc.pause()   # parked until the next step attaches: nothing after its window
            books[pending["recipe"]] = paysvc.delta(parked["books"], pending["start"])
            pending.clear()

    out = tmp_path / "report"
    try:
        t = Triage("--comm", os.path.basename(pay_svc), "--for", "45s", *BUDGET, "--out", str(out),
                   on_line=on_line)
    finally:
        svc.stop()
    assert t.code == 0, t.stderr
    md, rep = bundle_ok(str(out), ("offcpu", "profile"))
    steps = {s["recipe"]: s for s in rep["steps"]}
    assert [s["recipe"] for s in rep["steps"]][:4] == ["offcpu", "profile", "lockhold", "getaddrinfo"], t.stderr
    assert all(steps[n]["status"] == "ran" for n in ("offcpu", "profile", "lockhold", "getaddrinfo")), t.stderr

    # the first look: the workers wait, on the pool lock more than on anything kit can follow
    look = rep["look"]
    assert look["state"] == "waiting" and look["on_cpu_from"] == "profile"
    lock = next(s for s in look["sites"] if s["kind"] == "lock")
    assert lock["site"]["lock"] == "pool_lock" and lock["site"]["unlock"] == "pool_unlock"
    assert lock["site"]["wrapper"] and lock["site"]["call"] == "pthread_mutex_lock"
    assert "checkout_conn" in lock["site"]["callers"] and len(lock["tids"]) == 4  # pay_svc.c's WORKERS

    # lockhold on the wrapper pair, the resolver inside it: every count is the service's own
    lh = steps["lockhold"]
    assert "--lock pool_lock --unlock pool_unlock --inside getaddrinfo" in lh["command"]
    b = books["lockhold"]
    res = lh["result"]
    assert b["pool_holds"] > 50 and b["pool_misses"] > 5, b
    assert res["totals"]["hold"]["count"] == b["pool_holds"], (res["totals"], b)
    assert res["totals"]["wait"]["count"] == b["pool_holds"]
    inside = res["inside"]
    assert inside["inside"]["count"] == b["lookups"] == b["pool_misses"], (inside, b)
    assert inside["holds_with_calls"] == b["pool_misses"] and inside["outside"]["count"] == 0
    assert res["pairing"]["used"] == "thread"   # the wrappers take no lock argument

    # getaddrinfo, because the resolver ran inside the lock: the host, its lookups and failures
    g = books["getaddrinfo"]
    rows = steps["getaddrinfo"]["result"]["rows"]
    assert [(r["host"], r["function"]) for r in rows] == [("localhost", "getaddrinfo")], rows
    assert rows[0]["count"] == g["lookups"] > 0 and rows[0]["failed"] == g["lookup_failures"], (rows, g)
    assert "inside the lock" in steps["getaddrinfo"]["why"]

    # the verdict says it, on top, with the commands that reproduce each step
    verdict = " ".join(rep["verdict"])
    for words in ("pool_lock()/pool_unlock()", "checkout_conn", "getaddrinfo for localhost",
                  f"inside the lock in {inside['holds_with_calls']} of {res['totals']['hold']['count']} holds"):
        assert words in verdict, (words, rep["verdict"])
    assert md.index("## Verdict") < md.index("## Steps")
    assert f"```sh\n{lh['command']}\n```" in md and t.stdout == md


def test_triage_of_a_cpu_bound_process_says_busy_and_names_the_hot_function_by_its_cpu_clock(
        kernel, no_leftovers, tmp_path):
    name = f"pw{os.getpid() % 100000}"
    binary = os.path.join(str(tmp_path), name)
    shutil.copy(build("profile_work", str(tmp_path)), binary)
    w = Workload(binary, "25", "70")   # 25 s of burning, 70% of it in hot_a
    w.p.stdin.write("go\n")
    w.p.stdin.flush()
    try:
        t = Triage("--comm", name, "--for", "40s", *BUDGET, "--out", str(tmp_path / "r"))
        truth = json.loads(w.p.stdout.readline())
    finally:
        w.end()
    assert t.code == 0, t.stderr
    md, rep = bundle_ok(str(tmp_path / "r"), ("offcpu", "profile"))
    look = rep["look"]
    assert look["state"] == "busy", look
    burner = next(x for x in look["threads"] if x["tid"] == truth["tid"])
    assert burner["state"] == "busy"
    cpu_share = (truth["hot_a_us"] + truth["hot_b_us"]) / 25e6   # its own CPU clock over its wall time
    assert abs(burner["on_share"] - cpu_share) <= 0.15, (burner, cpu_share)
    sleeper = next(x for x in look["threads"] if x["pid"] == truth["sleeper"])
    assert sleeper["state"] == "idle" and sleeper["on_share"] == 0
    hot = look["hot"][0]
    want = truth["hot_a_us"] / (truth["hot_a_us"] + truth["hot_b_us"])
    assert hot["function"] == "hot_a" and abs(hot["share"] - want) <= 0.08, (look["hot"], want)
    assert rep["verdict"][0].startswith(f"--comm {name} is busy:")
    assert "The hottest function is hot_a" in rep["verdict"][1]


def test_triage_of_an_idle_process_says_so_and_stops_after_the_first_look(kernel, no_leftovers, tmp_path):
    name = f"idl{os.getpid() % 100000}"
    binary = os.path.join(str(tmp_path), name)
    shutil.copy(shutil.which("sleep"), binary)
    p = subprocess.Popen([binary, "600"])
    try:
        time.sleep(0.2)

        def switches():
            status = open(f"/proc/{p.pid}/status").read()
            return int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))

        def cpu_ticks():
            fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        before = switches(), cpu_ticks()
        t0 = time.monotonic()
        t = Triage("--comm", name, "--for", "60s", *BUDGET, "--out", str(tmp_path / "r"))
        took = time.monotonic() - t0
        after = switches(), cpu_ticks()
    finally:
        p.kill()
        p.wait()
    assert t.code == 0, t.stderr
    # the kernel's own counters: it neither woke nor ran during the triage
    assert after == before
    md, rep = bundle_ok(str(tmp_path / "r"), ("offcpu", "profile"))
    assert rep["state"] == "idle" and [s["recipe"] for s in rep["steps"]] == ["offcpu", "profile"]
    assert [(x["tid"], x["state"], x["on_share"], x["wakeups_per_s"]) for x in rep["look"]["threads"]] == \
        [(p.pid, "idle", 0, 0.0)]
    assert "is idle" in rep["verdict"][0] and "nothing to follow" in rep["verdict"][0]
    assert took < 40, took   # the first look is 15 s of the 60 s box; nothing came after it


def test_a_first_look_the_guardrail_refuses_is_reported_with_its_reason(kernel, no_leftovers, pay_svc, tmp_path):
    svc = paysvc.Service(pay_svc)
    try:
        t = Triage("--comm", os.path.basename(pay_svc), "--for", "20s", "--budget", "0.0001",
                   "--out", str(tmp_path / "r"))
    finally:
        svc.stop()
    assert t.code == 4, t.stderr
    assert " attached to " not in t.stderr   # nothing was attached
    md, rep = bundle_ok(str(tmp_path / "r"), ())
    assert rep["state"] == "refused" and rep["look"] is None
    for s in rep["steps"]:
        assert s["status"] == "refused" and "would cost more than its budget" in s["reason"], s
        assert s["details"], "its ways out"
    assert "refused by the guardrail: offcpu would cost more than its budget" in md


def test_kit_run_out_writes_the_bundle_of_one_run(kernel, no_leftovers, pay_svc, tmp_path):
    svc = paysvc.Service(pay_svc)
    try:
        p = subprocess.run(kit_cmd("run", "offcpu", "--pid", str(svc.pid), "--for", "3s", *BUDGET, "--out",
                                   str(tmp_path / "r")), cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        svc.stop()
    assert p.returncode == 0, p.stderr
    md, rep = bundle_ok(str(tmp_path / "r"), ("offcpu",))
    assert sorted(os.listdir(tmp_path / "r")) == ["01-offcpu.svg", "host.txt", "report.json", "report.md"]
    step = rep["steps"][0]
    assert step["command"] == f"kit run offcpu --pid {svc.pid} --for 3s --budget 50"
    assert step["result"]["rows"] and {r["pid"] for r in step["result"]["rows"]} == {svc.pid}
    assert "pool_lock" in md and "checkout_conn" in md and f"```sh\n{step['command']}\n```" in md
