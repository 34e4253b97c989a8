"""The benchmarks' workloads: each runs a fixed amount of work, times itself,
and counts its events from a source kit does not control (its own loop
count, or a kernel counter).

Every workload offers the same three things to the cases:
  prepared()  set-up for a whole case (a network namespace), or nothing
  session()   a target for one tool run: tools are built from it (its pid, comm,
              binary) and its run() does one timed round -> (seconds, events, CPU s)
  busy()      a target that works without pause, for the footprint runs
"""

import contextlib
import json
import os
import shutil
import signal
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


def _stop_group(p):
    """Stops a process group we started (start_new_session), and reaps its leader."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


class _Spawned:
    """A target for workloads that start fresh processes for every round."""

    def __init__(self, workload, pid=None):
        self.workload, self.pid = workload, pid
        self.comm = getattr(workload, "comm", None)
        self.binary = getattr(workload, "binary", None)

    def run(self):
        return self.workload.run()


class PingPong:
    """Two processes bouncing a byte through pipes on one CPU: 2 context switches per round trip."""

    comm = "kit-pingpong"
    unit, units = "context switch", "context switches"

    def __init__(self, outdir, rounds, cpu=0):
        self.binary = build_c("pingpong.c", os.path.join(outdir, self.comm))
        self.rounds, self.cpu = rounds, cpu

    def prepared(self):
        return contextlib.nullcontext(self)

    @contextlib.contextmanager
    def session(self):
        yield _Spawned(self)

    def run(self):
        """(seconds, events, CPU seconds): its own clock, its own count of switches (each side
        blocks once per trip), and the CPU time both processes used."""
        from bench.procs import run_json
        r, cpu = run_json([self.binary, str(self.rounds), str(self.cpu)])
        return r["seconds"], 2 * r["rounds"], cpu

    @contextlib.contextmanager
    def busy(self):
        p = subprocess.Popen([self.binary, str(10 ** 10), str(self.cpu)], stdout=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            yield _Spawned(self, p.pid)
        finally:
            _stop_group(p)


def _sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Retrans:
    """Bulk TCP over loopback in a network namespace of its own where nftables drops every
    `every`th segment on the input hook: thousands of fast retransmits a second. Events come
    from the namespace's TcpRetransSegs counter, which no probe touches. The namespace's
    loopback sends one segment per packet (gso_max_segs 1), so that counter, which counts
    segments, also counts the tcp_retransmit_skb events (one per retransmitted packet)."""

    PORT = 7070
    unit, units = "retransmit", "retransmits"

    def __init__(self, nbytes, every=10):
        self.ns = f"kit-bench-{os.getpid()}"
        self.nbytes, self.every = nbytes, every

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

    @contextlib.contextmanager
    def session(self):
        yield _Spawned(self)

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

    @contextlib.contextmanager
    def busy(self):
        """Back-to-back transfers until stopped (a shell loop in a process group of its own)."""
        loop = f"while :; do {' '.join(self._argv(self.nbytes))} >/dev/null || sleep 0.2; done"
        p = subprocess.Popen(["sh", "-c", loop], start_new_session=True)
        try:
            yield _Spawned(self)
        finally:
            _stop_group(p)


class _Resident:
    """One resident workload process (lockloop, gai): a probe attaches to its pid, then it
    runs timed rounds on request and reports its own clock, CPU time and event count."""

    def __init__(self, workload, spin=False):
        self.workload, self.binary, self.comm = workload, workload.binary, workload.comm
        self.p = subprocess.Popen([workload.binary, str(workload.per_round)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = json.loads(self.p.stdout.readline())["pid"]
        if spin:
            self._say("spin")

    def _say(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def run(self):
        self._say("go")
        r = json.loads(self.p.stdout.readline())
        return r["seconds"], r["events"], r["cpu"]

    def close(self):
        _stop_group(self.p)


class Resident:
    """A workload binary from bench/workloads/ run as a _Resident; its name is its comm."""

    def __init__(self, outdir, src, comm, per_round, unit, units, flags=()):
        self.binary = build_c(src, os.path.join(outdir, comm), *flags)
        self.comm, self.per_round, self.unit, self.units = comm, per_round, unit, units

    def prepared(self):
        return contextlib.nullcontext(self)

    @contextlib.contextmanager
    def session(self, spin=False):
        r = _Resident(self, spin)
        try:
            yield r
        finally:
            r.close()

    def busy(self):
        return self.session(spin=True)


def lockloop(outdir, pairs):
    return Resident(outdir, "lockloop.c", "kit-lockloop", pairs, "lock/unlock pair", "lock/unlock pairs",
                    flags=("-pthread",))


def gai(outdir, calls):
    return Resident(outdir, "gai.c", "kit-gai", calls, "getaddrinfo call", "getaddrinfo calls")


class PaySvc:
    """The bundled demo service (demo/pay_svc.c), built as ./demo.sh builds it: four workers that wait on
    a ledger lock, a slow socket and a sleep, about 1400 blocks a second. Only busy() (the guardrail case):
    it has no rounds of its own to time."""

    comm = "kit-pay-svc"

    def __init__(self, outdir):
        src = os.path.normpath(os.path.join(HERE, os.pardir, os.pardir, "demo", "pay_svc.c"))
        self.binary = os.path.join(outdir, self.comm)
        if not os.path.exists(self.binary) or os.path.getmtime(self.binary) < os.path.getmtime(src):
            subprocess.run([_cc(), "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", self.binary, src],
                           check=True)

    def prepared(self):
        return contextlib.nullcontext(self)

    @contextlib.contextmanager
    def busy(self):
        p = subprocess.Popen([self.binary], stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            yield _Spawned(self, p.pid)
        finally:
            _stop_group(p)
