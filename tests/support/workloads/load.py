"""Loads that make a hook hot, with their own ground truth.

Run as a process (so it has its own pid and comm):

  python load.py syscalls --comm NAME [--calls N] [--seconds S] [--pace PER_S] [--delay S]
      getppid() in a loop: exactly one getppid syscall per call, a syscall
      Python never makes on its own. --pace spreads the calls evenly over
      time (a moderate, steady rate, never above it) instead of as fast as
      possible; --delay makes it quiet first (20 calls a second), then hot.
  python load.py pingpong --comm NAME [--seconds S] [--pace ROUNDS_PER_S] [--delay S]
      two threads bouncing a byte over two pipes: a context switch and a
      read and a write per half round trip (sched_switch and syscalls hot).
  python load.py mutex|resolve --comm NAME [--seconds S] [--pace PER_S] [--delay S]
      libc pthread_mutex_lock/unlock on a private mutex, or libc getaddrinfo
      of localhost, in a loop like `syscalls` (uprobe recipes' hooks hot).
  python load.py idle --comm NAME
      sleeps: a quiet process to scope to.
  python load.py mixed --comm NAME --calls N --sleeps K --sleep-us US
      exactly N getppid() calls, N close(-1) calls (each fails with EBADF)
      and K nanosleeps of US microseconds, timing each sleep itself: ground
      truth for counts, errors and latency.

Protocol: prints {"ready": pid} and waits for a line on stdin, then runs,
printing one JSON line per SAMPLE_S with its own counters
({"t", "mono", "calls", "cpu_ns"}: seconds since go, CLOCK_MONOTONIC, calls
made, this thread's CPU time, and "calls_ns": CPU time inside the calls
themselves, for pingpong both threads'), and a final
{"done": true, "calls", "cpu_ns", "wall_ns"}. Closing stdin early stops it.
"""

import argparse
import ctypes
import json
import os
import select
import sys
import threading
import time

SAMPLE_S = 0.1


def set_comm(name):
    libc = ctypes.CDLL(None)
    libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME: this thread's comm


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def stdin_closed():
    r, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(r) and not sys.stdin.readline()


def _quiet(seconds, one):
    """A few calls a second for `seconds`: quiet, but not silent."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        one()
        time.sleep(0.05)


def _loop(args, one, batch_fast=1000):
    """Calls one() in batches, paced or as fast as it goes, sampling its own counters: besides the
    totals, the CPU time spent inside the calls (not in pacing, sampling or printing)."""
    if args.delay:
        _quiet(args.delay, one)
    calls, calls_ns, t_start = 0, 0, time.monotonic()
    cpu0 = time.thread_time_ns()
    next_sample = t_start + SAMPLE_S
    batch = batch_fast if not args.pace else max(1, int(args.pace * 0.01))
    due = t_start
    clock = time.thread_time_ns
    while True:
        now = time.monotonic()
        if args.calls and calls >= args.calls:
            break
        if args.seconds and now - t_start >= args.seconds:
            break
        n = batch if not args.calls else min(batch, args.calls - calls)
        c0 = clock()
        for _ in range(n):
            one()
        calls_ns += clock() - c0
        calls += n
        if args.pace:
            due += n / args.pace
            ahead = due - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            elif ahead < -0.02:
                due = time.monotonic()  # fell behind on a crowded box: never burst to catch up
        if now >= next_sample:
            emit({"t": round(now - t_start, 3), "mono": now, "calls": calls, "cpu_ns": time.thread_time_ns() - cpu0,
                  "calls_ns": calls_ns})
            next_sample += SAMPLE_S
            if stdin_closed():
                break
    return calls, time.thread_time_ns() - cpu0, time.monotonic() - t_start


def syscalls(args):
    return _loop(args, os.getppid)


def mutex(args):
    """pthread_mutex_lock + unlock on a private mutex through libc: one lock/unlock pair per call."""
    libc = ctypes.PyDLL("libc.so.6")  # keeps the GIL: CDLL would add the GIL's own mutex calls per call
    m = ctypes.create_string_buffer(64)  # a zeroed pthread_mutex_t is PTHREAD_MUTEX_INITIALIZER
    lock, unlock = libc.pthread_mutex_lock, libc.pthread_mutex_unlock

    def one():
        lock(m)
        unlock(m)
    return _loop(args, one)


def resolve(args):
    """libc getaddrinfo("localhost") (answered from /etc/hosts): one call per call."""
    import socket
    return _loop(args, lambda: socket.getaddrinfo("localhost", None, socket.AF_INET), batch_fast=20)


def pingpong(args):
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    stop = threading.Event()
    rounds = [0]

    def echo():
        set_comm(args.comm)
        while not stop.is_set():
            if os.read(a_r, 1) == b"q":
                break
            os.write(b_w, b"x")

    t = threading.Thread(target=echo)
    t.start()
    if args.delay:
        time.sleep(args.delay)
    t_start = time.monotonic()
    cpu0 = time.thread_time_ns()
    calls_ns = 0
    next_sample = t_start + SAMPLE_S
    batch = 200 if not args.pace else max(1, int(args.pace * 0.01))
    while time.monotonic() - t_start < args.seconds:
        c0 = time.process_time_ns()  # both threads: each round trip costs the echo thread as much
        for _ in range(batch):
            os.write(a_w, b"x")
            os.read(b_r, 1)
        calls_ns += time.process_time_ns() - c0
        rounds[0] += batch
        if args.pace:
            ahead = rounds[0] / args.pace - (time.monotonic() - t_start)
            if ahead > 0:
                time.sleep(ahead)
        now = time.monotonic()
        if now >= next_sample:
            emit({"t": round(now - t_start, 3), "mono": now, "calls": rounds[0],
                  "cpu_ns": time.thread_time_ns() - cpu0, "calls_ns": calls_ns})
            next_sample += SAMPLE_S
            if stdin_closed():
                break
    stop.set()
    os.write(a_w, b"q")
    t.join()
    return rounds[0], time.thread_time_ns() - cpu0, time.monotonic() - t_start


def idle(args):
    t_start = time.monotonic()
    while not stdin_closed() and time.monotonic() - t_start < args.seconds:
        time.sleep(0.2)
    return 0, 0, time.monotonic() - t_start


def mixed(args):
    t_start = time.monotonic()
    for _ in range(args.calls):
        os.getppid()
        try:
            os.close(-1)
        except OSError:
            pass
    slept = 0
    for _ in range(args.sleeps):
        t0 = time.monotonic_ns()
        time.sleep(args.sleep_us / 1e6)
        slept += time.monotonic_ns() - t0
    return args.calls, slept, time.monotonic() - t_start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("syscalls", "pingpong", "idle", "mixed", "mutex", "resolve"))
    p.add_argument("--comm", required=True)
    p.add_argument("--calls", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--pace", type=float, default=0, help="calls per second (0: as fast as possible)")
    p.add_argument("--delay", type=float, default=0, help="seconds to sleep after go, before the loop")
    p.add_argument("--sleeps", type=int, default=0)
    p.add_argument("--sleep-us", type=int, default=1000)
    args = p.parse_args()
    if args.kind in ("pingpong", "idle") and not args.seconds:
        args.seconds = 600
    set_comm(args.comm)
    emit({"ready": os.getpid()})
    if not sys.stdin.readline():
        return
    kinds = {"syscalls": syscalls, "pingpong": pingpong, "idle": idle, "mixed": mixed, "mutex": mutex,
             "resolve": resolve}
    calls, cpu_ns, wall = kinds[args.kind](args)
    key = "slept_ns" if args.kind == "mixed" else "cpu_ns"
    emit({"done": True, "calls": calls, key: cpu_ns, "wall_ns": int(wall * 1e9)})


if __name__ == "__main__":
    main()


class Load:
    """A load process driven from a test: start it, go(), then finish() for its own counters.
    After go() its sample lines are collected in the background into .samples."""

    def __init__(self, kind, comm, **opts):
        import subprocess
        argv = [sys.executable, os.path.abspath(__file__), kind, "--comm", comm]
        for k, v in opts.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.comm = comm
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.samples = []
        self._reader = None
        first = json.loads(self.p.stdout.readline())
        self.pid = first["ready"]

    def _read(self):
        for line in self.p.stdout:
            self.samples.append(json.loads(line))

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def between(self, t0, t1):
        """Periodic samples taken between two CLOCK_MONOTONIC times."""
        return [s for s in self.samples if "mono" in s and t0 <= s["mono"] <= t1]

    def finish(self, stop=True, timeout=120):
        """Its final counters; stop=True ends it now, stop=False lets it run its course."""
        if stop:
            self.p.stdin.close()
        try:
            self.p.wait(timeout=timeout)
        finally:
            self.kill()
        if self._reader:
            self._reader.join(timeout=10)
        if not stop:
            self.p.stdin.close()
        done = [s for s in self.samples if s.get("done")]
        return done[-1] if done else None

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
