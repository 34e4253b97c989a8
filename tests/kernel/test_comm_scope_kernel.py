"""--comm and --thread-comm on the real kernel, against the workload's own counts.

tests/support/workloads/renamed.c runs as `ho-renamed`; its two workers rename themselves rn-w0 and rn-w1 and do
known, different numbers of locks, lookups, getppid() syscalls and sleeps. By kit_prelude.h's rule,
--comm ho-renamed (the process's name) takes every thread, --comm rn-w0 (a thread's own name) and
--thread-comm rn-w0 take only that worker, in every recipe that has a comm scope (tcpretrans has none)."""

import json
import os
import subprocess

import pytest

from conftest import ACCURACY_BUDGET, KitProc
from workloads import offcpu as offcpu_work

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "workloads", "renamed.c")
SLEEP_US = 3000
# per worker: locks, lookups, getppid calls, sleeps; different numbers so a count says whose it is
WORK = {"rn-w0": (25, 12, 1000, 10), "rn-w1": (35, 18, 700, 15)}
SCOPES = {
    "process name": (["--comm", "ho-renamed"], {"rn-w0", "rn-w1"}),
    "thread name": (["--comm", "rn-w0"], {"rn-w0"}),
    "thread-comm": (["--thread-comm", "rn-w0"], {"rn-w0"}),
}


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    path = os.path.join(str(tmp_path_factory.mktemp("renamed")), "ho-renamed")
    subprocess.run(["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", path, SRC], check=True,
                   capture_output=True, text=True)
    return path


class Renamed:
    """One run of ho-renamed: started (workers renamed) before kit, working once released."""

    def __init__(self, binary):
        counts = [",".join(map(str, WORK[n])) for n in ("rn-w0", "rn-w1")]
        self.p = subprocess.Popen([binary, str(SLEEP_US), *counts], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        self.ready = json.loads(self.p.stdout.readline())
        self.pid = self.ready["pid"]

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        if self.p.stdin and not self.p.stdin.closed:
            self.p.stdin.close()
        try:
            self.p.wait(timeout=30)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()


def run(binary, *args):
    """kit run ARGS around one workload run: attach, release the work, read its books, Ctrl-C kit
    while the process still lives (so its names are readable when kit collects), then let it exit."""
    w = Renamed(binary)
    kit = None
    try:
        kit = KitProc("run", *args, "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        book = w.go()
        kit.stop()
    finally:
        if kit is not None and kit.p.poll() is None:
            kit.p.kill()
            kit.p.wait()
        w.close()
    res = kit.json()
    assert kit.code == 130, kit.stderr  # stopped by the Ctrl-C, results printed
    assert all(book["threads"][n]["tid"] == w.ready["threads"][n]["tid"] for n in WORK)
    return res, book, w


def expected(book, threads, i):
    """The workload's own count of kind i (0 locks, 1 lookups, 2 calls, 3 sleeps) over the threads in scope."""
    keys = ("locks", "lookups", "calls", "sleeps")
    for n in WORK:
        assert book["threads"][n][keys[i]] == WORK[n][i]
    return sum(book["threads"][n][keys[i]] for n in threads)


def check_thread_only_note(res, args, book):
    """--comm reached the process through a thread's name: kit says so (uprobe recipes resolve processes)."""
    if args[:2] == ["--comm", "rn-w0"]:
        tid = book["threads"]["rn-w0"]["tid"]
        assert any(f"{'rn-w0'!r} is the name of its thread {tid}" in n for n in res["notes"]), res["notes"]


@pytest.mark.parametrize("scope", SCOPES)
def test_lockhold_counts_the_holds_of_the_threads_in_scope(kernel, no_leftovers, binary, scope):
    args, threads = SCOPES[scope]
    res, book, w = run(binary, "lockhold", "--lock", "pool_lock", "--unlock", "pool_unlock", *args)
    want = expected(book, threads, 0)
    for what in ("hold", "wait"):
        got = [(r["pid"], r["count"]) for r in res["rows"] if r["what"] == what]
        assert got == [(w.pid, want)], (what, got, res["notes"])
    check_thread_only_note(res, args, book)


@pytest.mark.parametrize("scope", SCOPES)
def test_getaddrinfo_counts_the_lookups_of_the_threads_in_scope(kernel, no_leftovers, binary, scope):
    args, threads = SCOPES[scope]
    res, book, w = run(binary, "getaddrinfo", *args)
    mine = [r for r in res["rows"] if r["pid"] == w.pid]
    assert {(r["function"], r["host"]) for r in mine} == {("getaddrinfo", "localhost")}, mine
    assert sum(r["count"] for r in mine) == expected(book, threads, 1)
    assert sum(r["failed"] for r in mine) == 0
    check_thread_only_note(res, args, book)


@pytest.mark.parametrize("scope", [*SCOPES, "both"])
def test_syscalls_counts_the_calls_of_the_threads_in_scope_and_no_other_threads(kernel, no_leftovers, binary,
                                                                                 scope):
    args, threads = SCOPES[scope] if scope != "both" else \
        (["--comm", "ho-renamed", "--thread-comm", "rn-w1"], {"rn-w1"})  # both rules at once
    res, book, w = run(binary, "syscalls", *args)
    mine = [r for r in res["rows"] if r["pid"] == w.pid]
    assert sum(r["count"] for r in mine if r["syscall"] == "getppid") == expected(book, threads, 2)
    # rows are keyed by the thread's name: only threads in scope made any syscall kit counted
    named = {r["comm"] for r in mine}
    assert named == (threads | {"ho-renamed"} if scope == "process name" else threads), named
    assert {r["pid"] for r in res["rows"]} == {w.pid}


@pytest.mark.parametrize("scope", SCOPES)
def test_offcpu_times_the_sleeps_of_the_threads_in_scope_and_no_other_threads(kernel, no_leftovers, binary, scope):
    args, threads = SCOPES[scope]
    res, book, w = run(binary, "offcpu", *args)
    rows = [r for r in res["rows"] if r["pid"] == w.pid]
    assert {r["pid"] for r in res["rows"]} == {w.pid}
    tids = {r["tid"] for r in rows}
    want_tids = {book["threads"][n]["tid"] for n in threads}
    if scope == "process name":  # the main thread too: it waits for its workers
        want_tids.add(w.ready["main_tid"])
    assert tids == want_tids, (tids, want_tids)
    expected(book, threads, 3)
    for n in threads:
        t = book["threads"][n]
        sleeps = [r for r in rows if r["tid"] == t["tid"] and "do_nanosleep" in r["kernel_stack"]]
        assert sum(r["count"] for r in sleeps) == t["sleeps"], sleeps
        got = offcpu_work.kit_time(rows, t["tid"], {"do_nanosleep"})
        assert abs(got - t["slept_us"]) <= 0.10 * t["slept_us"], (n, got, t["slept_us"])
