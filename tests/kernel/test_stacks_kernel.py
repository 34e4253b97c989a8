"""Stacks that say what waits, on the real kernel, in code built without frame pointers (as most release
builds are): the workload's own clocks and its source's function names are the ground truth
(tests/support/workloads/offcpu_work.c, built here with -fomit-frame-pointer)."""

import pytest

from conftest import ACCURACY_BUDGET, KitProc
from kit.recipes.offcpu import NO_FP_ABOVE
from workloads import offcpu as work

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

# thread -> (kernel frames of its wait, the libc function it called, the function of ours that called it)
WAITS = {
    "lock-wait": ({"futex_wait", "futex_do_wait", "futex_wait_queue"}, "pthread_mutex_lock", "wait_for_lock"),
    "libc-sleep": ({"do_nanosleep"}, "usleep", "sleep_via_libc"),
    "pipe-read": ({"pipe_read", "anon_pipe_read"}, "read", "read_from_pipe"),
}


@pytest.fixture(scope="module")
def nofp(tmp_path_factory):
    return work.build(str(tmp_path_factory.mktemp("nofp")), "offcpu-nofp", frame_pointers=False)


def test_waits_in_code_without_frame_pointers_name_the_libc_call_and_its_caller(kernel, no_leftovers, nofp):
    kit = KitProc("run", "offcpu", *ACCURACY_BUDGET, "--comm", "offcpu-nofp", "--for", "6s", "--json")
    kit.wait_attached()
    truth = work.finish(work.start(nofp, rounds=25))
    res = kit.finish().json()
    assert kit.code == 0, kit.stderr
    for name, (marks, libc_fn, caller) in WAITS.items():
        t = truth["threads"][name]
        rows = [r for r in res["rows"] if r["tid"] == t["tid"] and marks & set(r["kernel_stack"])]
        total = sum(r["total_us"] for r in rows)
        # the time is the workload's own (its clock around the blocking call)...
        assert abs(total - t["waited_us"]) <= 0.10 * t["waited_us"], (name, total, t["waited_us"])
        # ...and it is said where: the libc function, then ours that called it; a frame-pointer walk alone
        # would have lost both (the program keeps no frame pointers for it to follow)
        named = [r for r in rows if caller in r["user_stack"]]
        assert sum(r["total_us"] for r in named) >= 0.8 * total, (name, rows)
        for r in named:
            stack = r["user_stack"]
            assert libc_fn in stack and stack.index(libc_fn) < stack.index(caller) <= r["recovered"], stack
            assert stack[-1] == NO_FP_ABOVE, stack  # and it says where it had to stop
    assert res["offcpu"]["recovered_chains_rejected"] == 0
    assert any("pass through code built without frame pointers" in n for n in res["notes"]), res["notes"]
