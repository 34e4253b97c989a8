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
        self.p = subprocess.Popen([*workload.prefix(), workload.binary, str(workload.per_round), *workload.args()],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = json.loads(self.p.stdout.readline())["pid"]
        if spin:
            self._say("spin")

    def _say(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def run(self):
        """(seconds, events, CPU seconds) of one round: the events are the workload's own count, or
        the delta of the kernel counter it names (its `counted()`)."""
        before = self.workload.counted()
        self._say("go")
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.workload.comm} exited during a round")
        r = json.loads(line)
        after = self.workload.counted()
        return r["seconds"], r["events"] if before is None else after - before, r["cpu"]

    def close(self):
        _stop_group(self.p)


class Resident:
    """A workload binary from bench/workloads/ run as a _Resident; its name is its comm."""

    def __init__(self, outdir, src, comm, per_round, unit, units, flags=()):
        self.binary = build_c(src, os.path.join(outdir, comm), *flags)
        self.comm, self.per_round, self.unit, self.units = comm, per_round, unit, units

    def prepared(self):
        return contextlib.nullcontext(self)

    def prefix(self):
        """What the workload's command runs under (ip netns exec NS), or nothing."""
        return []

    def args(self):
        """The workload's arguments after its round size (known once prepared)."""
        return []

    def counted(self):
        """A kernel counter of the workload's events (read around each round), or None: its own count."""
        return None

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


BURN_HZ = 999   # the rate every profiler samples at in the bench; burn.c prices its rounds at its default 999


def burn(outdir, iterations):
    """One thread computing: a round's events are the samples a per-CPU timer at BURN_HZ takes of its CPU time."""
    return Resident(outdir, "burn.c", "kit-burn", iterations, "sample", "samples")
def netns_inum(name):
    """The inode number of a named network namespace (what the kernel's ns.inum holds)."""
    return os.stat(f"/run/netns/{name}").st_ino


def _netns(name):
    """A network namespace with its loopback up; deleted (with its nftables rules) on the way out."""
    @contextlib.contextmanager
    def ns():
        _sh("ip", "netns", "add", name)
        try:
            _sh("ip", "-n", name, "link", "set", "lo", "up")
            yield name
        finally:
            _sh("ip", "netns", "del", name, check=False)
    return ns()


class LoopDisk(Resident):
    """O_DIRECT I/O (bench/workloads/dio.c) on a loop device the case creates over a file in
    /dev/shm (so that no real disk's I/O joins the device's) and removes after. Events: the reads
    and writes completed in the device's own counters (/sys/block/loopN/stat)."""

    SIZE = 256 << 20

    def __init__(self, outdir, ios, block=4096):
        super().__init__(outdir, "dio.c", "kit-dio", ios, "block I/O request", "block I/O requests")
        self.block, self.dev, self.devno = block, None, None

    @contextlib.contextmanager
    def prepared(self):
        img = f"/dev/shm/kit-bench-disk-{os.getpid()}.img"
        with open(img, "wb") as f:
            f.truncate(self.SIZE)
        try:
            self.dev = _sh("losetup", "-f", "--show", img).stdout.strip()
            try:
                name = os.path.basename(self.dev)
                with open(f"/sys/block/{name}/dev") as f:
                    major, minor = (int(x) for x in f.read().split(":"))
                self.devno = major << 20 | minor  # the kernel's dev_t, as block tracepoints carry it
                yield self
            finally:
                _sh("losetup", "-d", self.dev, check=False)
                self.dev = self.devno = None
        finally:
            os.unlink(img)

    def args(self):
        return [self.dev, str(self.block)]

    def counted(self):
        with open(f"/sys/block/{os.path.basename(self.dev)}/stat") as f:
            v = f.read().split()
        return int(v[0]) + int(v[4])  # reads completed + writes completed


class UdpDrops(Resident):
    """UDP datagrams (bench/workloads/udpsend.c) to a port that an nftables rule on the input hook
    drops, in a network namespace the case creates. Events: the rule's own counter."""

    PORT = 7071

    def __init__(self, outdir, sends):
        super().__init__(outdir, "udpsend.c", "kit-udpsend", sends, "dropped datagram", "dropped datagrams")
        self.ns = f"kit-bench-drops-{os.getpid()}"

    @contextlib.contextmanager
    def prepared(self):
        with _netns(self.ns):
            nft = ["ip", "netns", "exec", self.ns, "nft"]
            _sh(*nft, "add", "table", "inet", "kit_bench")
            _sh(*nft, "add", "chain", "inet", "kit_bench", "in", "{ type filter hook input priority 0; }")
            _sh(*nft, "add", "rule", "inet", "kit_bench", "in", "udp", "dport", str(self.PORT), "counter", "drop")
            yield self

    def prefix(self):
        return ["ip", "netns", "exec", self.ns]

    def netns_inum(self):
        return netns_inum(self.ns)

    def args(self):
        return [str(self.PORT)]

    def counted(self):
        out = json.loads(_sh("ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet",
                             "kit_bench").stdout)
        for item in out["nftables"]:
            for e in (item.get("rule") or {}).get("expr", []):
                if "counter" in e:
                    return e["counter"]["packets"]
        raise RuntimeError(f"no counter in the bench's drop rule: {out}")


class Conns(Resident):
    """Short TCP connections (bench/workloads/conns.c) to a loopback server thread of the same
    process, in a network namespace the case creates. Events: the namespace's TcpActiveOpens
    (nstat), one per connect."""

    PORT = 7072

    def __init__(self, outdir, conns):
        super().__init__(outdir, "conns.c", "kit-conns", conns, "connection", "connections", flags=("-pthread",))
        self.ns = f"kit-bench-conns-{os.getpid()}"

    def prepared(self):
        return _netns(self.ns)

    def prefix(self):
        return ["ip", "netns", "exec", self.ns]

    def netns_inum(self):
        return netns_inum(self.ns)

    def args(self):
        return [str(self.PORT)]

    def counted(self):
        out = _sh("ip", "netns", "exec", self.ns, "nstat", "-az", "TcpActiveOpens").stdout
        for line in out.splitlines():
            if line.startswith("TcpActiveOpens"):
                return int(line.split()[1])
        raise RuntimeError(f"no TcpActiveOpens in nstat output: {out!r}")


class Opens(Resident):
    """open() in a loop (bench/workloads/opens.c), half of a file that is there and half of one
    that is not (ENOENT), in a directory the case creates. Events: its own count of opens."""

    def __init__(self, outdir, opens):
        super().__init__(outdir, "opens.c", "kit-opens", opens, "open", "opens")
        self.dir = None

    @contextlib.contextmanager
    def prepared(self):
        import tempfile
        with tempfile.TemporaryDirectory(prefix="kit-bench-opens-") as d:
            with open(os.path.join(d, "present"), "w") as f:
                f.write("kit\n")
            self.dir = d
            try:
                yield self
            finally:
                self.dir = None

    def args(self):
        return [self.dir]


def execloop(outdir, execs):
    return Resident(outdir, "execloop.c", "kit-execloop", execs, "exec or exit", "execs and exits")


class MemcgOOM:
    """Processes that each join a memory cgroup of the bench's own (a 16 MiB limit, no swap) and touch
    memory until its OOM killer kills them (bench/workloads/oomhog.c). Events come from the cgroup's
    own OOM-kill counter (memory.events on cgroup v2, memory.oom_control on a v1 memory hierarchy),
    which no probe touches. The cgroup is made for the case and removed after it."""

    comm = "kit-oomhog"
    unit, units = "OOM kill", "OOM kills"
    LIMIT = 16 << 20

    def __init__(self, outdir, kills):
        self.binary = build_c("oomhog.c", os.path.join(outdir, self.comm))
        self.kills = kills
        self.dir = None

    @contextlib.contextmanager
    def prepared(self):
        from kit.engine import stream
        root = stream.memory_root()
        if root is None:
            raise RuntimeError("no memory cgroup hierarchy is mounted")
        self.v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
        self.dir = os.path.join(root, f"kit-bench-oom-{os.getpid()}")
        os.mkdir(self.dir)
        try:
            files = (("memory.max", self.LIMIT), ("memory.swap.max", 0)) if self.v2 else (
                ("memory.limit_in_bytes", self.LIMIT), ("memory.memsw.limit_in_bytes", self.LIMIT))
            for name, v in files:
                if os.path.exists(os.path.join(self.dir, name)):
                    with open(os.path.join(self.dir, name), "w") as f:
                        f.write(str(v))
            yield self
        finally:
            for _ in range(100):  # the last hog leaves the cgroup when it is reaped
                try:
                    os.rmdir(self.dir)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    import time
                    time.sleep(0.05)

    def oom_kills(self):
        import re
        with open(os.path.join(self.dir, "memory.events" if self.v2 else "memory.oom_control")) as f:
            return int(re.search(r"^oom_kill (\d+)$", f.read(), re.M).group(1))

    @contextlib.contextmanager
    def session(self):
        yield _Spawned(self)

    def _argv(self):
        return [self.binary, os.path.join(self.dir, "cgroup.procs"), str(self.kills)]

    def run(self):
        """(seconds, events, CPU seconds): its own clock, the cgroup's OOM kills, and the CPU time the
        hogs used (the kernel's reclaim and OOM work on their behalf included)."""
        from bench.procs import run_json
        before = self.oom_kills()
        r, cpu = run_json(self._argv())
        return r["seconds"], self.oom_kills() - before, cpu

    @contextlib.contextmanager
    def busy(self):
        loop = f"while :; do {' '.join(self._argv())} >/dev/null || sleep 0.2; done"
        p = subprocess.Popen(["sh", "-c", loop], start_new_session=True)
        try:
            yield _Spawned(self)
        finally:
            _stop_group(p)


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
