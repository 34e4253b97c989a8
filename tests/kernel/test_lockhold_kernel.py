"""lockhold on the real kernel, against the workload's own books and bpftrace.

The workload starts (or starts working) after kit has attached and finishes
well inside the time box, so every count is exact.
"""

import os
import signal
import time

import pytest

from conftest import ACCURACY_BUDGET, KitProc, orphan_progs, loaded_prog_ids
from kit.engine import prelude
from kit.host import features
from workloads import lockwork, wrapwork

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
SLOW_MS = 17  # lands in [16384, 32767] us with 15 ms of slack for a busy box


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return lockwork.build(str(tmp_path_factory.mktemp("lockhold")), f"lkh{os.getpid() % 100000}")


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
    """wrapwork: pool_lock(void)/pool_unlock(void), wrappers that take no lock argument."""
    return wrapwork.build(str(tmp_path_factory.mktemp("lockwrap")), f"lkw{os.getpid() % 100000}")


APP_PAIR = ["--lock", "pool_lock", "--unlock", "pool_unlock"]


def hist_count(buckets, low):
    return sum(b["count"] for b in buckets if b["low"] == low)


def test_app_lock_pair_counts_and_slow_buckets_equal_the_workload_and_bpftrace(kernel, no_leftovers, binary):
    res, book, bt, w = lockwork.under_kit(
        ["lockhold", "--binary", binary, "--lock", "pool_lock", "--unlock", "pool_unlock", "--for", "10s"],
        lambda: lockwork.Workload(binary, threads=4, fast=3000, slow=4, slow_ms=SLOW_MS, lookups=["localhost:6"]),
        peer=f"uretprobe:{binary}:pool_lock {{ @h[tid] = nsecs; }} "
             f"uprobe:{binary}:pool_unlock /@h[tid]/ {{ @n = count(); "
             f"@us = hist((nsecs - @h[tid]) / 1000); delete(@h[tid]); }}")

    slow_slot = str(prelude.slot_of(SLOW_MS * 1000))
    assert book["holds"] == 3000 + 4 + 6 and book["hold_slots"].get(slow_slot) == 4, book
    hold = next(r for r in res["rows"] if r["what"] == "hold")
    wait = next(r for r in res["rows"] if r["what"] == "wait")
    assert hold["pid"] == w.pid and hold["count"] == book["holds"]
    assert wait["count"] == book["waits"]
    # the slow holds land in the same log2 bucket for kit, the workload and bpftrace
    low = prelude.slot_range(int(slow_slot))[0]
    assert hist_count(res["histograms"]["hold_us"], low) == book["hold_slots"][slow_slot]
    assert lockwork.bpftrace_hist(bt, "us").get(low) == book["hold_slots"][slow_slot]
    assert lockwork.bpftrace_counts(bt, "n") == {None: book["holds"]}
    # kit's probe points sit just outside the workload's own clocks: holds can only be longer, waits shorter
    assert hold["total_us"] >= book["hold_total_us"] and hold["max_us"] >= book["hold_max_us"]
    assert wait["total_us"] <= book["wait_total_us"]
    assert res["lost_events"] == 0 and res["unmatched"] == {"unlock_without_hold": 0, "return_without_entry": 0}
    assert {u["cost_class"] for u in res["uprobes"]} == {"emulated"}
    # pool_lock(struct pool *) passes its lock: every unlock named its thread's hold by argument
    p = res["pairing"]
    assert (p["match"], p["rule"], p["used"]) == ("auto", "auto", "argument")
    assert p["holds"] == {"either": book["holds"], "by_argument": 0, "by_thread": 0}


def test_argless_wrappers_pair_by_thread_by_default_as_the_workload_and_bpftrace_count(kernel, no_leftovers, wrapper):
    # the issue's shape: 4 threads, 300 holds through pool_lock(void), 10 of them ~40 ms
    res, book, bt, w = lockwork.under_kit(
        ["lockhold", "--binary", wrapper, *APP_PAIR, "--for", "15s"],
        lambda: wrapwork.Workload(wrapper, "flat", 4, 300, 10, 40),
        peer=f"uretprobe:{wrapper}:pool_lock {{ @h[tid] = nsecs; }} "
             f"uprobe:{wrapper}:pool_unlock /@h[tid]/ {{ @n = count(); "
             f"@us = hist((nsecs - @h[tid]) / 1000); delete(@h[tid]); }}")
    assert book["holds"] == book["waits"] == 300
    slow = {int(s): c for s, c in book["hold_slots"].items() if int(s) > prelude.slot_of(1000)}
    assert sum(slow.values()) == 10, book
    hold = next(r for r in res["rows"] if r["what"] == "hold")
    wait = next(r for r in res["rows"] if r["what"] == "wait")
    assert (hold["pid"], hold["count"], wait["count"]) == (w.pid, 300, 300)
    assert lockwork.bpftrace_counts(bt, "n") == {None: 300}
    peer_hist = lockwork.bpftrace_hist(bt, "us")
    for s, count in slow.items():  # each slow hold in the bucket the workload and bpftrace put it in
        low = prelude.slot_range(s)[0]
        assert hist_count(res["histograms"]["hold_us"], low) == count == peer_hist.get(low), (s, peer_hist)
    assert hold["total_us"] >= book["hold_total_us"] and hold["max_us"] >= book["hold_max_us"]
    assert res["lost_events"] == 0 and res["unmatched"] == {"unlock_without_hold": 0, "return_without_entry": 0}
    # the workload leaves its lock call's value in the register at the odd-numbered unlocks only
    p = res["pairing"]
    assert (p["match"], p["rule"], p["used"]) == ("auto", "auto", "thread")
    assert p["holds"] == {"either": 150, "by_argument": 0, "by_thread": 150}
    assert any(n.startswith("holds paired by thread (the functions take no lock argument)") for n in res["notes"])


@pytest.mark.parametrize("match", [None, "thread"])
def test_nested_argless_wrappers_pair_each_unlock_with_its_threads_newest_hold(kernel, no_leftovers, wrapper, match):
    # each of 2 threads, 3 times: take A, 20 ms, take B, 5 ms, release B, 20 ms, release A: B is held ~5 ms and
    # A ~45 ms. Pairing oldest first would give two ~25 ms holds; one hold per thread would lose A's.
    res, book, _, _ = lockwork.under_kit(
        ["lockhold", "--binary", wrapper, *APP_PAIR, "--for", "15s"] + (["--match", match] if match else []),
        lambda: wrapwork.Workload(wrapper, "nested", 2, 3, 20, 5, 20))
    assert (book["outer_holds"], book["inner_holds"]) == (6, 6)
    assert set(book["inner_slots"]).isdisjoint(book["outer_slots"]), book
    hold = next(r for r in res["rows"] if r["what"] == "hold")
    assert hold["count"] == 12 and hold["max_us"] >= book["hold_max_us"]
    kit_hist = {b["low"]: b["count"] for b in res["histograms"]["hold_us"] if b["count"]}
    # each hold in a bucket from its own time inside the probe points to its span outside them, by the
    # workload's clock: one bucket on the host; on a slow (emulated) CPU the traps can straddle a boundary
    ranges = [[prelude.slot_range(lo)[0], prelude.slot_range(hi)[0]] for lo, hi in book["hold_ranges"]]
    assert len(ranges) == 12 and lockwork.fits(kit_hist, ranges), (kit_hist, ranges)
    assert res["lost_events"] == 0 and res["unmatched"]["unlock_without_hold"] == 0
    # of each thread's 3 rounds, the unlocks of one pass values no hold has (see wrapwork.c's nested_hold)
    p = res["pairing"]
    assert (p["rule"], p["used"]) == ("auto" if match is None else "thread", "thread")
    assert p["holds"] == ({"either": 8, "by_argument": 0, "by_thread": 4} if match is None else
                          {"either": 0, "by_argument": 0, "by_thread": 12})


def test_default_pair_is_pthread_in_the_libc_the_process_maps_and_other_processes_pay_nothing(
        kernel, no_leftovers, binary):
    # both stay alive (hold_gate) until kit has stopped, so their exit paths add no locks
    target = lockwork.Workload(binary, threads=4, fast=2000, slow=2, slow_ms=SLOW_MS, gate=True, hold_gate=True)
    other = lockwork.Workload(binary, threads=2, fast=500, slow=0, slow_ms=1, gate=True, hold_gate=True)
    res, book, bt, _ = lockwork.under_kit(
        ["lockhold", "--pid", str(target.pid), "--for", "8s"], target, also=[other],
        peer=f"uprobe:{LIBC}:pthread_mutex_lock /pid == {target.pid}/ {{ @locks = count(); }}")
    hold = [r for r in res["rows"] if r["what"] == "hold"]
    assert [(r["pid"], r["count"]) for r in hold] == [(target.pid, book["holds"])]
    assert lockwork.bpftrace_counts(bt, "locks") == {None: book["holds"]}
    # the 2 slow holds and the fast ones each in a bucket the workload's own clock allows: from the
    # hold inside pool_lock/pool_unlock to its span outside them (one bucket apart at most on the
    # host; on an emulated CPU a fast holder preempted by its peers holds for 16 ms too)
    kit_hist = {b["low"]: b["count"] for b in res["histograms"]["hold_us"] if b["count"]}
    ranges = lockwork.hold_ranges(book)
    assert len(ranges) == book["holds"] and lockwork.fits(kit_hist, ranges), (kit_hist, book["hold_pairs"])
    slow = prelude.slot_of(SLOW_MS * 1000)
    assert sum(n for lo, _hi, n in book["hold_pairs"] if lo >= slow) >= 2
    # breakpoints went only into the target: the other process was never even filtered
    assert res["filtered"] == 0
    probes = res["uprobes"]
    assert {(p["symbol"], p["pid"]) for p in probes} == {("pthread_mutex_lock", target.pid),
                                                         ("pthread_mutex_unlock", target.pid)}
    assert all(os.path.samefile(p["binary"], LIBC) for p in probes)
    assert {p["cost_class"] for p in probes} == {"single-step"}
    assert any("single-steps" in n for n in res["notes"])
    # the pthread pair takes the mutex as first argument: auto pairs by it alone
    p = res["pairing"]
    assert (p["match"], p["rule"], p["used"]) == ("auto", "lock", "argument")
    assert p["holds"] == {"either": 0, "by_argument": book["holds"], "by_thread": 0}
    assert any(n.startswith("holds paired by lock object (pthread_mutex_lock and pthread_mutex_unlock take")
               for n in res["notes"])


def _check_top_stack(res, pid, book, slow):
    # stacks come by total hold; the slow path's is found by its frames, not its rank: in the emulated
    # 6.1 guest each probe's trap lengthens every hold, and 400 fast ones outweighed 3 slow ones
    stacks = res["stacks"]
    assert [s["total_us"] for s in stacks] == sorted((s["total_us"] for s in stacks), reverse=True)
    top = next((s for s in stacks if any(f.startswith("slow_path+") for f in s["frames"])), None)
    assert top, [s["frames"] for s in stacks]
    assert top["pid"] == pid and top["count"] == slow
    assert top["total_us"] >= slow * SLOW_MS * 1000 and top["max_us"] >= SLOW_MS * 1000, top
    assert sum(s["count"] for s in res["stacks"]) == book["holds"]
    assert res["lost"]["stack_lost"] == 0


def test_stacks_name_the_holder_of_a_process_that_exited_before_the_end(kernel, no_leftovers, binary):
    # --pid: kit reads the process's symbols when it attaches, so names survive the exit
    w = lockwork.Workload(binary, threads=2, fast=400, slow=3, slow_ms=SLOW_MS, gate=True)
    res, book, _, _ = lockwork.under_kit(["lockhold", "--pid", str(w.pid), "--lock", "pool_lock", "--unlock",
                                          "pool_unlock", "--stacks", "--for", "20s"], w)
    assert res["stopped_by"] == "target_exit"
    _check_top_stack(res, w.pid, book, 3)


def test_stacks_name_the_holder_of_a_process_kit_never_saw_alive(kernel, no_leftovers, binary):
    # --binary: the process starts after attach and exits before the end; frames in the probed
    # file are named from its symbol table and the load base the probe saw
    res, book, _, w = lockwork.under_kit(
        ["lockhold", "--binary", binary, "--lock", "pool_lock", "--unlock", "pool_unlock", "--stacks", "--for", "8s"],
        lambda: lockwork.Workload(binary, threads=2, fast=400, slow=3, slow_ms=SLOW_MS))
    _check_top_stack(res, w.pid, book, 3)


def test_comm_resolves_to_the_running_processes_and_their_own_libc(kernel, no_leftovers, binary, tmp_path):
    root = lockwork.rootfs(str(tmp_path), binary, {"localhost": "127.0.0.1"})
    w = lockwork.Workload(binary, threads=2, fast=300, slow=0, slow_ms=1, gate=True, hold_gate=True, chroot=root)
    res, book, _, _ = lockwork.under_kit(["lockhold", "--comm", os.path.basename(binary), "--for", "6s"], w)
    assert [(r["pid"], r["count"]) for r in res["rows"] if r["what"] == "hold"] == [(w.pid, book["holds"])]
    # the chroot's own copy of libc (kit sees a chroot's files under its own root), not the host's
    files = {p["binary"] for p in res["uprobes"]}
    assert files == {os.path.join(root, "lib/x86_64-linux-gnu/libc.so.6")}
    assert not os.path.samefile(files.pop(), LIBC)


def test_sigkill_leaves_no_probe_in_tracefs_and_no_program_loaded(kernel, no_leftovers, binary):
    before = loaded_prog_ids()
    events = os.path.join(features.tracefs(), "uprobe_events")
    with open(events) as f:
        ev_before = f.read()
    kit = KitProc("run", "lockhold", *ACCURACY_BUDGET, "--binary", binary, "--lock", "pool_lock", "--unlock", "pool_unlock",
                  "--for", "60s")
    kit.wait_attached()
    with open(events) as f:
        assert f.read() == ev_before, "kit created a named uprobe event"
    assert orphan_progs(before) == set() and loaded_prog_ids() - before, "kit's programs should be loaded and owned"
    kit.p.send_signal(signal.SIGKILL)
    kit.p.wait(timeout=10)
    # the kernel drops the probes with the last fd: a workload run now is not traced by anyone
    w = lockwork.Workload(binary, threads=1, fast=10, slow=0, slow_ms=1)
    w.wait_report()
    w.finish()
    for _ in range(30):
        if not orphan_progs(before):
            break
        time.sleep(0.1)
    assert orphan_progs(before) == set()


def test_nested_locks_are_paired_by_lock_object_and_a_full_map_is_counted_exactly(kernel, no_leftovers, binary):
    nested = 10240 + 60  # 60 more held locks than the holding map's 10240 entries
    res, book, _, _ = lockwork.under_kit(
        ["lockhold", "--binary", binary, "--lock", "pool_lock", "--unlock", "pool_unlock", "--for", "10s"],
        lambda: lockwork.Workload(binary, threads=1, fast=5, slow=0, slow_ms=1, nested=nested))
    assert book["nested"] == nested and book["holds"] == 5
    hold = next(r for r in res["rows"] if r["what"] == "hold")
    wait = next(r for r in res["rows"] if r["what"] == "wait")
    assert wait["count"] == 5 + nested                      # every lock call was measured
    assert hold["count"] == 5 + 10240                       # every hold that fit in the map
    assert res["lost"]["map_full"] == 60                    # the rest were counted, not silently dropped
    assert res["unmatched"]["unlock_without_hold"] == 60
    assert any("60 unlocks had no recorded hold" in n for n in res["notes"])
    # holds past the per-thread stack pair by argument only: none was paired by thread
    assert res["pairing"]["used"] == "argument" and res["pairing"]["holds"]["by_thread"] == 0


def test_sigint_prints_what_was_measured_and_detaches(kernel, no_leftovers, binary):
    w = lockwork.Workload(binary, threads=2, fast=300, slow=0, slow_ms=1, gate=True, hold_gate=True)
    try:
        kit = KitProc("run", "lockhold", *ACCURACY_BUDGET, "--pid", str(w.pid), "--lock", "pool_lock", "--unlock", "pool_unlock",
                      "--for", "60s", "--json")
        kit.wait_attached()
        w.go()
        book = w.wait_report()
        kit.p.send_signal(signal.SIGINT)
        kit.finish()
    finally:
        w.finish()
    res = kit.json()
    assert kit.code == 130 and res["stopped_by"] == "SIGINT"
    assert next(r for r in res["rows"] if r["what"] == "hold")["count"] == book["holds"]
