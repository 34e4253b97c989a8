"""Builds and runs offcpu_work.c, the workload whose threads block in known
ways and time themselves (the ground truth for the offcpu tests)."""

import json
import os
import shutil
import subprocess

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offcpu_work.c")
# thread name -> (kernel frames that mark its wait, the function that made the blocking call)
PATHS = {
    "libc-sleep": ({"do_nanosleep"}, "sleep_via_libc"),
    "direct-sleep": ({"do_nanosleep"}, "sleep_by_syscall"),
    "lock-wait": ({"futex_wait", "futex_do_wait", "futex_wait_queue"}, "wait_for_lock"),
    "pipe-read": ({"pipe_read", "anon_pipe_read"}, "read_from_pipe"),
}


def build(directory, name="offcpu-work", frame_pointers=True):
    """Compile with frame pointers kept (or, frame_pointers=False, without them, as most release builds
    are); returns the binary's path (its name is the process comm)."""
    out = os.path.join(directory, name)
    if not os.path.exists(out):
        cc = shutil.which("gcc") or shutil.which("cc")
        assert cc, "the offcpu tests need gcc (./setup.sh installs it)"
        fp = "-fno-omit-frame-pointer" if frame_pointers else "-fomit-frame-pointer"
        subprocess.run([cc, "-O1", "-g", fp, "-pthread", "-o", out, SRC], check=True)
    return out


def start(binary, rounds=25, period_us=20000, wait=False):
    """Starts the workload; with wait=True it blocks until release() sends it a byte."""
    args = [binary, "wait" if wait else "go", str(rounds), str(period_us)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def release(proc):
    proc.stdin.write("x")
    proc.stdin.flush()


def finish(proc, timeout=60):
    """The workload's own account: {thread name: {tid, waited_us, calls, each_us}} plus pid (each_us:
    the first 64 calls' own durations)."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"workload failed with {proc.returncode}"
    return json.loads(out)


def kit_time(rows, tid, kernel_marks, exclude_top=()):
    """kit's off-CPU microseconds for a thread on a kernel wait path."""
    total = 0
    for r in rows:
        if r["tid"] != tid or not kernel_marks & set(r["kernel_stack"]):
            continue
        if r["user_stack"] and r["user_stack"][0] in exclude_top:
            continue
        total += r["total_us"]
    return total
