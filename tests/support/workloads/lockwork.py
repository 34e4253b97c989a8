"""Builds and drives tests/support/workloads/lockwork.c, runs bpftrace as a peer, and
runs kit around the two (under_kit).

The workload keeps its own books (holds, waits, per-bucket hold counts, lookups
per name); bpftrace on the same probes is the second opinion.
"""

import heapq
import json
import os
import re
import shutil
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "lockwork.c")
CFLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"]


def build(directory, name):
    """Compiles the workload as directory/name (name becomes its comm: at most 15 bytes)."""
    assert len(name) <= 15
    path = os.path.join(directory, name)
    subprocess.run(["gcc", *CFLAGS, "-o", path, SOURCE], check=True, capture_output=True, text=True)
    return path


class Workload:
    """One run of lockwork. With gate=True it exists (threads started) but waits
    for go() before doing any work; with hold_gate=True it stays alive after
    its report until finish()."""

    def __init__(self, binary, threads, fast, slow, slow_ms, lookups=(), gate=False, hold_gate=False, chroot=None,
                 container=None, nested=0):
        argv = [binary]
        if chroot:
            argv = ["chroot", chroot, "/bin/" + os.path.basename(binary)]
        if container:
            argv = container_argv(*container, "/bin/" + os.path.basename(binary))
        flags = (["--gate"] if gate else []) + (["--hold-gate"] if hold_gate else []) + \
            ([f"--nested={nested}"] if nested else [])
        argv += flags + [str(threads), str(fast), str(slow), str(slow_ms), *lookups]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(self.p.stdout.readline())
        self.pid = first["pid"]
        self.gate, self.hold_gate = gate, hold_gate
        self.report = None

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def wait_report(self, timeout=60):
        deadline = time.time() + timeout
        line = self.p.stdout.readline()
        assert line, f"lockwork {self.pid} ended without a report (exit {self.p.poll()})"
        assert time.time() < deadline
        self.report = json.loads(line)
        return self.report

    def finish(self, timeout=30):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        return self.p.wait(timeout=timeout)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def under_kit(kit_args, workload, peer=None, also=()):
    """Runs `kit run KIT_ARGS --json` around one lockwork run, in the order that makes every count
    exact: kit attaches, then the bpftrace peer (a program text, optional) attaches, then the
    workload works and reports, then the peer and kit stop.

    workload: a Workload started with gate=True (released once kit has attached), or a function
    that starts one once kit has attached. also: more gated Workloads, released alongside. A
    workload is finished as soon as it has reported, or after kit stops if it was started with
    hold_gate (so its exit adds nothing to what kit measured); on an error, all are finished.
    Returns (kit's result, the workload's report, the peer's output or None, the workload).
    """
    from conftest import ACCURACY_BUDGET, KitProc  # tests/ is on sys.path under pytest
    runs = [w for w in (workload, *also) if isinstance(w, Workload)]
    try:
        kit = KitProc("run", *kit_args, *ACCURACY_BUDGET, "--json")
        kit.wait_attached()
        peer = Bpftrace(peer) if peer else None
        for w in runs:
            assert w.gate, "a workload started before kit must wait at its gate"
            w.go()
        if not isinstance(workload, Workload):
            workload = workload()
            runs.insert(0, workload)
        book = workload.wait_report()
        for w in also:
            w.wait_report()
        for w in runs:
            if not w.hold_gate:
                w.finish()
        peer_out = peer.stop() if peer else None
        kit.finish()
    finally:
        for w in runs:
            w.finish()
    res = kit.json()
    assert kit.code == 0, kit.stderr
    return res, book, peer_out, workload


def rootfs(directory, binary, hosts):
    """A minimal chroot (a 'container') with its own copy of libc and ld.so, the
    workload, and its own /etc/hosts: a libc on a different inode from the host's."""
    root = os.path.join(directory, "root")
    libdir = os.path.join(root, "lib", "x86_64-linux-gnu")
    os.makedirs(libdir, exist_ok=True)
    os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    shutil.copy2(binary, os.path.join(root, "bin"))
    shutil.copy2(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), os.path.join(libdir, "libc.so.6"))
    shutil.copy2(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), os.path.join(root, "lib64", "ld-linux-x86-64.so.2"))
    with open(os.path.join(root, "etc", "hosts"), "w") as f:
        f.write("".join(f"{addr} {name}\n" for name, addr in hosts.items()))
    with open(os.path.join(root, "etc", "nsswitch.conf"), "w") as f:
        f.write("hosts: files\n")
    return root


def container_argv(rootfs_dir, mountpoint, program):
    """argv that runs program as in a container: a private mount namespace whose
    root is a tmpfs (a copy of rootfs_dir) made the root by pivot_root. Its files
    are unreachable from the host's root, so /proc/PID/maps shows them as the
    container sees them and only /proc/PID/root reaches them."""
    script = ('set -e; mount -t tmpfs kit-ctr "$1"; cp -a "$2"/. "$1"/; mkdir "$1"/old; cd "$1"; '
              'pivot_root . old; shift 2; exec /old/usr/sbin/chroot . "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", mountpoint, rootfs_dir,
            program]


class Bpftrace:
    """bpftrace as a peer: started, attached (its BEGIN fired), stopped with SIGINT (it prints maps then)."""

    def __init__(self, program, timeout=20):
        self.p = subprocess.Popen(["bpftrace", "-e", 'BEGIN { printf("kit-peer-ready\\n"); } ' + program],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if "kit-peer-ready" in line:
                return
        self.p.kill()
        raise AssertionError(f"bpftrace did not start: {self.p.stderr.read()}")

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        out, err = self.p.communicate(timeout=30)
        self.out = out
        return out


def bpftrace_counts(out, name):
    """{key: count} from a bpftrace map printed as @name[key]: count (or {None: n} for a plain count)."""
    counts = {}
    for m in re.finditer(rf"^@{name}(?:\[(.*)\])?: (\d+)$", out, re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def bpftrace_hist(out, name):
    """{low: count} from a bpftrace hist() map (labels like [0], [1], [2, 4), [16K, 32K))."""
    block = re.search(rf"^@{name}: *\n((?:\[.*\n)+)", out, re.M)
    hist = {}
    if not block:
        return hist
    for m in re.finditer(r"^\[(\d+)([KMG]?)(?:, [^)]*\))?\]?\s+(\d+)", block.group(1), re.M):
        hist[int(m.group(1)) * _SUFFIX[m.group(2)]] = int(m.group(3))
    return hist


def fits(hist, ranges):
    """Can every hold go into one bucket of hist ({bucket: count}) inside its own [low, high] bucket
    range (the workloads' hold_ranges, hold_pairs), filling each bucket's count exactly?
    Earliest-closing range first, bucket by bucket."""
    pending, open_, i = sorted(ranges), [], 0
    for b in sorted(hist):
        while i < len(pending) and pending[i][0] <= b:
            heapq.heappush(open_, pending[i][1])
            i += 1
        for _ in range(hist[b]):
            if not open_ or open_[0] < b:  # none can go here, or one closed before it was placed
                return False
            heapq.heappop(open_)
    return i == len(pending) and not open_


def hold_ranges(book):
    """[[low µs, low µs]] per hold from lockwork's hold_pairs, bucket lows as kit's histograms give them."""
    from kit.engine import prelude
    return [[prelude.slot_range(lo)[0], prelude.slot_range(hi)[0]]
            for lo, hi, n in book["hold_pairs"] for _ in range(n)]
