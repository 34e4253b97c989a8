"""Scopes that cannot both hold, what a scope matches now, and output paths checked before a run:
pure logic over this process's own /proc entries and files (no root, no BPF). The same checks
through kit's entry point, with nothing attached, are in test_scope_checks_kernel.py."""

import ctypes
import os
import subprocess
import sys
import threading

import pytest

from kit.catalog import scope
from kit.catalog import ParamSpec
from kit.errors import BadInput
from kit.catalog.params import TYPES

PR_SET_NAME = 15


@pytest.fixture
def renamed_thread():
    """A thread of this process whose own comm differs from the process's (as worker pools rename theirs)."""
    ready, stop = threading.Event(), threading.Event()
    box = {}

    def body():
        ctypes.CDLL(None).prctl(PR_SET_NAME, b"kit-scope-wrk", 0, 0, 0)
        box["tid"] = threading.get_native_id()
        ready.set()
        stop.wait()

    t = threading.Thread(target=body)
    t.start()
    ready.wait()
    yield box["tid"], "kit-scope-wrk"
    stop.set()
    t.join()


@pytest.fixture
def other_process():
    p = subprocess.Popen(["sleep", "30"])
    yield p.pid
    p.kill()
    p.wait()


def my_comm():
    with open("/proc/self/comm") as f:
        return f.read().strip()


def test_pid_and_the_name_of_one_of_its_threads_hold_together(renamed_thread):
    _tid, name = renamed_thread
    scope.check_compatible({"pid": os.getpid(), "comm": name})
    scope.check_compatible({"pid": os.getpid(), "comm": my_comm()})


def test_pid_and_a_name_neither_it_nor_its_threads_have_are_bad_input(renamed_thread):
    with pytest.raises(BadInput) as e:
        scope.check_compatible({"pid": os.getpid(), "comm": "kit-nobody"})
    line = e.value.line()
    assert f"--pid {os.getpid()} is named {my_comm()!r} and its threads 'kit-scope-wrk', not 'kit-nobody'" in line
    assert "exclude each other" in line and f"--comm {my_comm()}" in line


def test_a_thread_and_a_process_it_does_not_belong_to_are_bad_input(renamed_thread, other_process):
    tid, _name = renamed_thread
    with pytest.raises(BadInput) as e:
        scope.check_compatible({"pid": other_process, "tid": tid})
    assert f"--tid {tid} is a thread of process {os.getpid()}, not of --pid {other_process}" in e.value.line()
    scope.check_compatible({"pid": os.getpid(), "tid": tid})


def test_a_thread_matches_its_own_name_or_its_process_s(renamed_thread):
    tid, name = renamed_thread
    scope.check_compatible({"tid": tid, "comm": name})
    scope.check_compatible({"tid": tid, "comm": my_comm()})
    want = f"--tid {tid} is named 'kit-scope-wrk' and its process '{my_comm()}', not 'other'"
    with pytest.raises(BadInput, match=want):
        scope.check_compatible({"tid": tid, "comm": "other"})


def test_thread_comm_matches_a_thread_s_own_name_only(renamed_thread):
    tid, name = renamed_thread
    scope.check_compatible({"pid": os.getpid(), "thread_comm": name})
    scope.check_compatible({"tid": tid, "thread_comm": name})
    with pytest.raises(BadInput, match=f"--tid {tid} is named 'kit-scope-wrk', not {my_comm()!r}: --thread-comm"):
        scope.check_compatible({"tid": tid, "thread_comm": my_comm()})  # its process's name is not its own
    with pytest.raises(BadInput, match=f"--pid {os.getpid()} has no thread named 'kit-nobody'.*kit-scope-wrk"):
        scope.check_compatible({"pid": os.getpid(), "thread_comm": "kit-nobody"})


def test_a_cgroup_the_process_is_not_in_is_bad_input():
    roots = scope.cgroup2_roots()
    if not roots:
        pytest.skip("no cgroup v2 hierarchy mounted here")  # the kernel test covers it on the test host
    mine = scope._cgroup_id(scope._cgroup_path(os.getpid(), os.getpid()))
    scope.check_compatible({"pid": os.getpid(), "cgroup": mine})
    with pytest.raises(BadInput, match="not in .*exclude each other"):
        scope.check_compatible({"pid": os.getpid(), "cgroup": os.stat(roots[0]).st_ino + 10**9})


def test_a_name_nobody_has_is_said_to_be_waited_for():
    text, found = scope.describe({"comm": "kit-nobody-xyz"})
    assert found == {}
    assert text == ("scope --comm 'kit-nobody-xyz' matches no running process or thread now; kit waits for one "
                    "to appear until the run ends")
    text, _ = scope.describe({"comm": "kit-nobody-xyz"}, waits=False)
    assert "waits" not in text


RENAMED_CHILD = """
import ctypes, sys, threading
ev = threading.Event()
def body():
    ctypes.CDLL(None).prctl(15, b"kit-scope-kid", 0, 0, 0)
    print(threading.get_native_id(), flush=True)
    ev.wait()
threading.Thread(target=body, daemon=True).start()
sys.stdin.readline()
"""


def test_a_renamed_thread_of_another_process_is_matched_now_by_its_own_name():
    p = subprocess.Popen([sys.executable, "-c", RENAMED_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        tid = int(p.stdout.readline())
        text, found = scope.describe({"comm": "kit-scope-kid"})
        assert found == {p.pid: [tid]} and f"matches 1 thread of 1 process now (pid {p.pid})" in text
        text, found = scope.describe({"thread_comm": "kit-scope-kid"})
        assert found == {p.pid: [tid]} and text.startswith("scope --thread-comm 'kit-scope-kid' matches 1 thread")
        main = scope.names(p.pid)[p.pid]  # --comm of the process's name takes all its threads, --thread-comm one
        assert tid in scope.matching({"comm": main, "pid": p.pid})[p.pid]
        assert tid not in scope.matching({"thread_comm": main, "pid": p.pid}).get(p.pid, [])
    finally:
        p.stdin.close()
        p.wait()


def test_scopes_that_name_a_process_need_no_description():
    assert scope.describe({"pid": os.getpid()}) is None and scope.describe({}) is None


OUT = ParamSpec(name="svg", type="outpath")


@pytest.mark.parametrize("path", ["/proc/x.svg", "/proc/self/x.svg"])
def test_an_output_path_the_kernel_will_not_create_is_refused_before_the_run(path):
    with pytest.raises(BadInput, match=f"--svg {path} cannot be written"):
        TYPES["outpath"].parse(path, OUT)


def test_a_new_output_path_is_checked_without_leaving_a_file(tmp_path):
    p = str(tmp_path / "off.svg")
    assert TYPES["outpath"].parse(p, OUT) == p
    assert not os.path.exists(p)


def test_an_existing_output_file_is_checked_without_truncating_it(tmp_path):
    p = tmp_path / "off.svg"
    p.write_text("keep me")
    TYPES["outpath"].parse(str(p), OUT)
    assert p.read_text() == "keep me"
