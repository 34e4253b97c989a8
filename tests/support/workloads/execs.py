"""A process that starts a known list of programs with known arguments and exit codes: ground truth
for execsnoop. Run as `python execs.py NAME [REPEAT [WORKER]]`: it names itself NAME (its comm, so
`--comm NAME` scopes to what it starts), prints "ready", and on "go" runs every command in COMMANDS
(then /bin/true REPEAT more times, as fast as it can), waiting for each; the last is killed with
SIGKILL once it runs. With WORKER, a thread that names itself WORKER then runs WORKER_COMMANDS (their
parent is that thread, so its name and its process's both describe it). It then prints "done" and
one JSON line per command: its pid, argv, the wait status waitpid() gave, the monotonic times it was
started and reaped, and `by`, the name of the thread that started it. It exits on the next line."""

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

LONG = ["/bin/echo"] + [f"arg{i:03d}-" + "x" * 40 for i in range(150)]  # ~7 kB: past kit's 4096 bytes
COMMANDS = [
    (["/bin/true"], None),
    (["/bin/false"], None),
    (["/bin/sh", "-c", "exit 3"], None),
    (["/bin/echo", "a", "b", "c"], None),
    (["/bin/echo", "", "x y", "tab\tz", "é"], None),
    (LONG, None),
    (["/bin/sleep", "30"], signal.SIGKILL),
]
WORKER_COMMANDS = [(["/bin/true", "from-the-worker"], None), (["/bin/false", "from-the-worker"], None)]


def set_comm(name):
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME


def _execd(pid, argv0):
    """Has the child finished exec'ing argv0 and reached its own sleep? /proc/PID/exe changes early in
    exec, before the kernel's exec tracepoint; a SIGKILL sent then kills it mid-exec, so the exec never
    completes (no exec event is right). Waiting for the sleep's own nanosleep rules that out."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            asleep = "nanosleep" in f.read()
        return asleep and os.readlink(f"/proc/{pid}/exe") == os.path.realpath(argv0)
    except OSError:
        return False


def run(argv, kill):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
    if kill:
        while not _execd(p.pid, argv[0]):
            time.sleep(0.005)
        os.kill(p.pid, kill)
    _pid, status = os.waitpid(p.pid, 0)
    p.returncode = 0  # reaped here, so that the raw wait status is ours
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        by = f.read().rstrip("\n")
    return {"pid": p.pid, "argv": argv, "status": status, "t0": t0, "t1": time.monotonic(), "by": by}


def main():
    name = sys.argv[1]
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    worker = sys.argv[3] if len(sys.argv) > 3 else None
    set_comm(name)
    print("ready", flush=True)
    sys.stdin.readline()
    done = [run(argv, kill) for argv, kill in COMMANDS]
    done += [run(["/bin/true"], None) for _ in range(repeat)]
    if worker:
        def work():
            set_comm(worker)  # PR_SET_NAME names the calling thread only
            done.extend(run(argv, kill) for argv, kill in WORKER_COMMANDS)
        t = threading.Thread(target=work)
        t.start()
        t.join()
    print("done", flush=True)
    for d in done:
        print(json.dumps(d), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
