"""Scopes that cannot both hold and output paths that cannot be written are bad input before anything
attaches; a scope that names nothing yet is waited for and said so; an output that fails at the end
still leaves the results on the terminal.

Bad input runs kit's entry point in this process, with the oracle of test_bad_input_matrix.py: the
BPF objects and probe events this process holds (before and after) and a spy on BCC's loader. The
other oracles are the kernel's own: which names /proc gives the processes and threads (ps), which
cgroup it puts them in, what the workloads themselves did (their pids, their sleeps)."""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import ACCURACY_BUDGET, ROOT, KitProc, kit_cmd
from kit.cli import main
from kit.errors import ExitCode
from kit.catalog.params import cgroup2_roots
from leaks import snapshot

pytestmark = [pytest.mark.kernel]

SLEEPER = "import time\nwhile True: time.sleep(0.05)\n"


@pytest.fixture
def bpf_loads(monkeypatch):
    import bcc
    loads = []

    class Spy(bcc.BPF):
        def __init__(self, *a, **kw):
            loads.append(kw.get("text", "")[:60])
            super().__init__(*a, **kw)

    monkeypatch.setattr(bcc, "BPF", Spy)
    return loads


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", SLEEPER])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture
def our_thread():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    yield t.native_id
    stop.set()
    t.join()


@pytest.fixture
def cgroup(sleeper):
    """A cgroup v2 directory holding the sleeper (and nothing else)."""
    cg = os.path.join(cgroup2_roots()[0], f"kit-test-scope-{os.getpid()}")
    os.mkdir(cg)
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(sleeper))
    yield cg
    root = cgroup2_roots()[0]
    with open(os.path.join(cg, "cgroup.procs")) as f:
        pids = f.read().split()
    for p in pids:  # back to the root before the directory can go
        try:
            with open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(p)
        except OSError:
            pass
    os.rmdir(cg)


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "kit-test-ro", str(d)], check=True)
    yield str(d)
    subprocess.run(["umount", str(d)], check=True)


def thread_names(pid):
    """Every thread's name as ps shows it (the oracle for what --comm can match)."""
    out = subprocess.run(["ps", "-L", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def bad_input(argv, bpf_loads):
    before = snapshot()
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    after = snapshot()
    err = err.getvalue()
    assert code == ExitCode.BAD_INPUT, err
    assert err.count("\n") == 1 and err.startswith("kit: error: ") and " — " in err, repr(err)
    assert out.getvalue() == ""
    assert bpf_loads == [], "a program was compiled for bad input"
    assert after == before, "kernel objects or probe events changed"
    return err


# --- scopes that exclude each other ------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["offcpu", "syscalls"])
def test_pid_and_a_comm_it_does_not_have_is_bad_input_naming_both(kernel, bpf_loads, recipe):
    assert "x" not in thread_names(1), "precondition: neither pid 1 nor a thread of it is named x"
    with open("/proc/1/comm") as f:
        name = f.read().strip()
    err = bad_input(["run", recipe, "--pid", "1", "--comm", "x", "--for", "1s"], bpf_loads)
    assert f"--pid 1 is named {name!r}" in err and "not 'x'" in err and "exclude each other" in err


def test_pid_and_the_name_of_one_of_its_threads_is_a_valid_scope(kernel, bpf_loads):
    """pay-svc's 'pay-db' threads: a thread name matches as well as the process name (ps -L says so)."""
    code = ("import ctypes, threading, time\n"
            "def w():\n    ctypes.CDLL(None).prctl(15, b'kit-scope-db', 0, 0, 0); time.sleep(60)\n"
            "threading.Thread(target=w, daemon=True).start(); print('up', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        for _ in range(50):
            if "kit-scope-db" in thread_names(p.pid):
                break
            time.sleep(0.02)
        assert "kit-scope-db" in thread_names(p.pid)
        out, err = io.StringIO(), io.StringIO()
        assert main(["run", "offcpu", "--pid", str(p.pid), "--comm", "kit-scope-db", "--dry-run"],
                    out=out, err=err) == ExitCode.OK, err.getvalue()
    finally:
        p.kill()
        p.wait()


def test_a_thread_of_another_process_is_bad_input(kernel, bpf_loads, our_thread, sleeper):
    err = bad_input(["run", "offcpu", "--tid", str(our_thread), "--pid", str(sleeper)], bpf_loads)
    assert f"--tid {our_thread} is a thread of process {os.getpid()}, not of --pid {sleeper}" in err
    assert f"give --pid {os.getpid()}" in err


def test_a_pid_outside_the_cgroup_is_bad_input_and_inside_it_is_not(kernel, bpf_loads, cgroup, sleeper):
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        ours = next(line[3:].strip() for line in f if line.startswith("0::"))
    err = bad_input(["run", "offcpu", "--cgroup", cgroup, "--pid", str(os.getpid())], bpf_loads)
    assert f"is in cgroup {ours}, not in {cgroup}" in err and "exclude each other" in err
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "offcpu", "--cgroup", cgroup, "--pid", str(sleeper), "--dry-run"], out=out,
                err=err) == ExitCode.OK, err.getvalue()


# --- output paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, why", [("/proc/x.svg", "No such file or directory"),
                                       ("/sys/x.svg", "Permission denied")])
def test_an_output_path_the_kernel_refuses_is_bad_input_before_attaching(kernel, bpf_loads, path, why):
    err = bad_input(["run", "offcpu", "--pid", "1", "--for", "1s", "--svg", path], bpf_loads)
    assert f"--svg {path} cannot be written: {why}" in err
    assert not os.path.exists(path)


def test_an_output_path_on_a_read_only_mount_is_bad_input(kernel, bpf_loads, readonly_dir):
    err = bad_input(["run", "offcpu", "--pid", "1", "--svg", os.path.join(readonly_dir, "x.svg")], bpf_loads)
    assert "cannot be written: Read-only file system" in err


def test_a_flame_graph_that_cannot_be_written_at_the_end_leaves_the_results_and_exits_8(
        kernel, no_leftovers, sleeper, tmp_path):
    d = tmp_path / "gone"
    d.mkdir()
    kit = KitProc("run", "offcpu", "--pid", str(sleeper), "--for", "2s", "--svg", str(d / "x.svg"), "--json",
                  *ACCURACY_BUDGET)
    kit.wait_attached()
    d.rmdir()  # after the check, before the write
    kit.finish()
    assert kit.code == ExitCode.OUTPUT, kit.stderr
    res = json.loads(kit.stdout)
    assert {r["pid"] for r in res["rows"]} == {sleeper}
    assert f"could not write the flame graph to {d / 'x.svg'} (No such file or directory)" in kit.stderr
    assert "the results are on stdout" in kit.stderr and "internal error" not in kit.stderr


def test_stdout_that_fills_up_sends_the_results_to_the_terminal_and_exits_8(kernel, no_leftovers, sleeper):
    with open("/dev/full", "w") as full:
        p = subprocess.run(kit_cmd("run", "offcpu", "--pid", str(sleeper), "--for", "1s", "--json",
                                   *ACCURACY_BUDGET), cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert p.returncode == ExitCode.OUTPUT, p.stderr
    assert "offcpu: where a process blocks" in p.stderr and f"(pid {sleeper}, tid {sleeper})" in p.stderr
    assert "could not write the results to stdout (No space left on device)" in p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr


# --- a scope that names nothing (yet) -----------------------------------------------------------

def test_a_name_nobody_has_is_waited_for_and_the_end_says_nothing_was_seen(kernel, no_leftovers):
    name = f"kit-none-{os.getpid() % 100000}"
    assert subprocess.run(["pgrep", "-x", name]).returncode == 1  # no process of that name (pgrep's word)
    kit = KitProc("run", "offcpu", "--comm", name, "--for", "2s", "--json")
    kit.wait_attached()
    kit.finish()
    assert kit.code == 0, kit.stderr
    res = kit.json()
    assert f"scope --comm {name!r} matches no running process or thread now; kit waits for one to appear" in kit.stderr
    assert res["events"] == 0 and res["rows"] == [] and res["hints"] == []
    assert f"nothing in scope of --comm {name!r} was seen during the run (0 events in scope, and nothing matched when " \
           "it started)" in res["notes"]
    assert not any("running any more" in n for n in res["notes"])
    assert res["scope_seen"] == {"at_start": [], "at_end": [], "events": 0, "seen": False}


def test_a_process_started_mid_run_is_seen_and_its_exit_is_said(kernel, no_leftovers, tmp_path):
    name = f"kit-late-{os.getpid() % 100000}"
    exe = tmp_path / name
    shutil.copy("/bin/sleep", exe)  # its comm is the file's name
    kit = KitProc("run", "offcpu", "--comm", name, "--for", "6s", "--json", *ACCURACY_BUDGET)
    kit.wait_attached()
    time.sleep(0.5)
    t0 = time.monotonic()
    late = subprocess.run([str(exe), "1"])
    wall = time.monotonic() - t0
    kit.finish()
    assert late.returncode == 0 and kit.code == 0, kit.stderr
    res = kit.json()
    assert f"scope --comm {name!r} matches no running process or thread now; kit waits" in kit.stderr
    pid = {r["pid"] for r in res["rows"]}
    assert len(pid) == 1, res["rows"]  # one process, started after kit attached
    slept = sum(r["total_us"] for r in res["rows"]) / 1e6
    assert 0.9 <= slept <= wall, (slept, wall)  # `sleep 1` sleeps a second, inside what its parent timed
    assert res["events"] > 0 and res["scope_seen"]["seen"] and res["scope_seen"]["at_start"] == []
    assert f"no thread in scope of --comm {name!r} is running any more (the run went on for its whole time; " \
           f"{res['events']} events in scope were seen)" in res["notes"]
