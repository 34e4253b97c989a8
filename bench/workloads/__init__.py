"""The benchmarks' workloads: each runs a fixed amount of work, times itself,
and counts its events from a source kit does not control (its own loop
count, or a kernel counter)."""

import contextlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _cc():
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("the benchmarks need gcc (./setup.sh installs it)")
    return cc


def build_c(src, out, *flags):
    """Compiles once per output directory (the bench builds into bench/out/)."""
    src = os.path.join(HERE, src)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        subprocess.run([_cc(), "-O2", "-g", "-fno-omit-frame-pointer", *flags, "-o", out, src], check=True)
    return out


class PingPong:
    """Two processes bouncing a byte through pipes on one CPU: 2 context switches per round trip."""

    comm = "kit-pingpong"

    def __init__(self, outdir, rounds, cpu=0):
        self.binary = build_c("pingpong.c", os.path.join(outdir, self.comm))
        self.rounds, self.cpu = rounds, cpu
        self.unit, self.units = "context switch", "context switches"

    def run(self):
        """(seconds, events, CPU seconds): its own clock, its own count of switches (each side
        blocks once per trip), and the CPU time both processes used."""
        from bench.procs import run_json
        r, cpu = run_json([self.binary, str(self.rounds), str(self.cpu)])
        return r["seconds"], 2 * r["rounds"], cpu

    def busy(self):
        """A background load for the footprint runs: ping-pong until stopped."""
        return subprocess.Popen([self.binary, str(10 ** 10), str(self.cpu)], stdout=subprocess.DEVNULL,
                                start_new_session=True)


def _sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Retrans:
    """Bulk TCP over loopback in a network namespace of its own where nftables drops every
    `every`th segment on the input hook: thousands of fast retransmits a second. Events come
    from the namespace's TcpRetransSegs counter, which no probe touches. The namespace's
    loopback sends one segment per packet (gso_max_segs 1), so that counter, which counts
    segments, also counts the tcp_retransmit_skb events (one per retransmitted packet)."""

    PORT = 7070

    def __init__(self, nbytes, every=10):
        self.ns = f"kit-bench-{os.getpid()}"
        self.nbytes, self.every = nbytes, every
        self.unit, self.units = "retransmit", "retransmits"

    @contextlib.contextmanager
    def prepared(self):
        _sh("ip", "netns", "add", self.ns)
        try:
            _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            _sh("ip", "-n", self.ns, "link", "set", "lo", "mtu", "1500", "gso_max_segs", "1")
            nft = ["ip", "netns", "exec", self.ns, "nft"]
            _sh(*nft, "add", "table", "inet", "kit_bench")
            _sh(*nft, "add", "chain", "inet", "kit_bench", "in", "{ type filter hook input priority 0; }")
            _sh(*nft, "add", "rule", "inet", "kit_bench", "in", "tcp", "dport", str(self.PORT),
                "numgen", "inc", "mod", str(self.every), "==", "0", "drop")
            yield self
        finally:
            _sh("ip", "netns", "del", self.ns, check=False)

    def retrans_segs(self):
        out = _sh("ip", "netns", "exec", self.ns, "nstat", "-az", "TcpRetransSegs").stdout
        for line in out.splitlines():
            if line.startswith("TcpRetransSegs"):
                return int(line.split()[1])
        raise RuntimeError(f"no TcpRetransSegs in nstat output: {out!r}")

    def _argv(self, nbytes):
        return ["ip", "netns", "exec", self.ns, sys.executable, os.path.join(HERE, "bulk.py"), str(self.PORT),
                str(nbytes)]

    def run(self):
        """(seconds, events, CPU seconds): the transfer's own clock, the namespace's TcpRetransSegs
        delta, and the CPU time of the process (sender and receiver threads, and the softirq work
        the kernel did on their behalf in their context)."""
        from bench.procs import run_json
        before = self.retrans_segs()
        r, cpu = run_json(self._argv(self.nbytes))
        return r["seconds"], self.retrans_segs() - before, cpu

    def busy(self):
        """Back-to-back transfers until stopped (a shell loop we own, killed by its process group)."""
        loop = f"while :; do {' '.join(self._argv(self.nbytes))} >/dev/null || sleep 0.2; done"
        return subprocess.Popen(["sh", "-c", loop], start_new_session=True)
