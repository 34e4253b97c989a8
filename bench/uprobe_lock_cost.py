"""What a lockhold run costs the traced process, per lock/unlock pair.

Runs the same loop of N lock/unlock pairs (bench/lockloop.c) with nothing
attached, with kit lockhold on the application's own pair (functions that
start with push: emulated at a uprobe), on glibc's pthread pair (single-
stepped), with --stacks, and with bpftrace's lock-hold one-liner on the same
pair as the peer. Medians of ROUNDS runs; the ratio kit/bpftrace is measured
in the same session. Usage (root): .venv/bin/python bench/uprobe_lock_cost.py [ROUNDS] [N]
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(tmp):
    exe = os.path.join(tmp, "lockloop")
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-pthread", "-o", exe,
                    os.path.join(ROOT, "bench", "lockloop.c")], check=True)
    return exe


def attach_kit(pid, extra):
    p = subprocess.Popen([sys.executable, "-m", "kit", "run", "lockhold", "--pid", str(pid), "--for", "60s", *extra],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if " attached to " in line:
            return p
    raise RuntimeError("kit did not attach")


def attach_bpftrace(exe, pid):
    prog = (f'BEGIN {{ printf("ready\\n"); }} uretprobe:{exe}:pool_lock /pid == {pid}/ {{ @h[tid] = nsecs; }} '
            f'uprobe:{exe}:pool_unlock /@h[tid]/ {{ @us = hist((nsecs - @h[tid]) / 1000); delete(@h[tid]); }}')
    p = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if "ready" in line:
            return p
    raise RuntimeError("bpftrace did not attach")


def one(exe, n, how):
    w = subprocess.Popen([exe, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    w.stdout.readline()
    probe = None
    if how == "bpftrace pool pair":
        probe = attach_bpftrace(exe, w.pid)
    elif how != "nothing":
        probe = attach_kit(w.pid, {"kit pthread pair": [], "kit pool pair": ["--lock", "pool_lock", "--unlock",
                                   "pool_unlock"], "kit pool pair --stacks": ["--lock", "pool_lock", "--unlock",
                                   "pool_unlock", "--stacks"]}[how])
    w.stdin.write("go\n")
    w.stdin.flush()
    ns = float(w.stdout.readline().split()[0])
    w.wait()
    if probe:
        probe.terminate()
        probe.wait()
    return ns


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
    hows = ["nothing", "kit pool pair", "bpftrace pool pair", "kit pool pair --stacks", "kit pthread pair"]
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        res = {h: [] for h in hows}
        for _ in range(rounds):
            for h in hows:
                res[h].append(one(exe, n, h))
                time.sleep(0.2)
    base = statistics.median(res["nothing"])
    print(f"{'attached':26} {'ns/pair':>10} {'added us/pair':>14}")
    for h in hows:
        m = statistics.median(res[h])
        print(f"{h:26} {m:10.0f} {(m - base) / 1000:14.2f}")
    print(f"kit/bpftrace on the same pair: {statistics.median(res['kit pool pair']) / statistics.median(res['bpftrace pool pair']):.2f}")


if __name__ == "__main__":
    main()
