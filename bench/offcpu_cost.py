"""What offcpu costs a context-switch-heavy process: a pipe ping-pong between
two processes (every round trip is two switch-outs and two switch-ins),
timed bare, with kit scoped to another process (the filter path), and with
kit scoped to the ping-pong itself (every switch recorded with both stacks).

    sudo .venv/bin/python bench/offcpu_cost.py [ROUNDS]

Prints ns added per context switch, as medians over alternating runs. A
benchmark, not a test: on a shared 2-CPU VM the numbers move by ~20%.
"""

import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINGPONG = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"kit-pingpong", 0, 0, 0)  # PR_SET_NAME: a comm of its own to scope on
n = int(sys.argv[1]); a, b = os.pipe(), os.pipe()
if os.fork() == 0:
    for _ in range(n):
        os.read(a[0], 1); os.write(b[1], b"x")
    os._exit(0)
t = time.perf_counter()
for _ in range(n):
    os.write(a[1], b"x"); os.read(b[0], 1)
print(time.perf_counter() - t); os.wait()
"""


def pingpong(n):
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", PINGPONG, str(n)], capture_output=True,
                         text=True, check=True).stdout
    return float(out)


def with_kit(comm, n):
    p = subprocess.Popen([sys.executable, "-m", "kit", "run", "offcpu", "--comm", comm, "--for", "60s"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if " attached to " in line:
            break
    try:
        return pingpong(n)
    finally:
        p.send_signal(2)
        p.wait()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    switches = 2 * n  # per round trip, pinned to one CPU: each side blocks once in read()
    bare, other, scoped = [], [], []
    for _ in range(5):
        bare.append(pingpong(n))
        other.append(with_kit("no-such-comm", n))
        scoped.append(with_kit("kit-pingpong", n))
    b, o, s = (statistics.median(x) for x in (bare, other, scoped))
    print(f"ping-pong {n} round trips pinned to one CPU, medians of 5")
    print(f"  bare                          {b:.3f}s")
    print(f"  kit offcpu, other scope       {o:.3f}s  (+{(o - b) / switches * 1e9:.0f} ns per switch)")
    print(f"  kit offcpu, scoped to it      {s:.3f}s  (+{(s - b) / switches * 1e9:.0f} ns per switch)")


if __name__ == "__main__":
    main()
