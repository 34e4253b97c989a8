"""`kit calibrate`: measure what a probe costs on this host, per event, and
cache it for the guardrail (kit/guard/costs.py).

How: run a workload whose CPU time the kernel accounts exactly, once bare
and once with a probe attached, and divide the extra CPU time by the number
of events. CPU time (not wall-clock) keeps the numbers usable on a busy box:
being descheduled costs the workload nothing.

- Tracepoint and raw tracepoint programs (empty, hash counter, kit's comm
  filter rejecting, kernel+user stack capture) on raw_syscalls:sys_enter,
  under `dd bs=1` (two syscalls per byte; its rusage gives user+sys time).
- Uprobes, per kind of first instruction (kit/binaries/insn.py), on tiny functions
  kit writes into a memfd and a throwaway Python process calls through
  ctypes; the probe is attached to that process only.
- A perf counting event on the same tracepoint: what the guardrail's own
  rate measurement costs per event, so it can undo the slowdown it causes
  in a thread that is already busy on a whole CPU (kit/guard/rate.py).
- A stream event's record (kit/engine/stream.py): the workload's scope check and a 256-byte record output
  to a ring buffer (a perf buffer where the kernel has none) on the same tracepoints, the buffer big
  enough to hold a whole run and drained between runs, so every output succeeds as it does when kit
  keeps up.
- offcpu's whole in-scope path (stacks, caller recovery, aggregation), by
  running the recipe's own program around a ping-pong, back to back and
  paced: warm and cold caches (kit/guard/calibrate_offcpu.py).
- The program body as the kernel times it (BPF_ENABLE_STATS), in separate
  short runs so the statistics' own cost does not leak into the numbers
  above; the guardrail compares a running probe's body time against these.

Each measurement is a pair of back-to-back runs, bare and probed, in
alternating order, repeated (`--rounds`, 4 tracepoint pairs per round); the
median of the pairs' differences is kept. The kernel's body timing is a
floor under each cost.
"""

import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from kit.binaries import insn
from kit.engine import render
from kit.guard import bpfstats, calibrate_offcpu, costs
from kit.host import features, perfevent
from kit.catalog import params as ptypes
from kit.catalog import ParamSpec
from kit.errors import BadInput, ExitCode, KitError, Unsupported

DD_BYTES = 25_000  # short runs, many pairs: a crowded moment spoils fewer of them
PAIRS_PER_ROUND = 4
SETTLE_S = 0.03  # after a detach: a perf tracepoint goes away asynchronously, and the next bare run must not pay
NO_SUCH_COMM = "kit-calib-none"
STATS_CLOCK_NS = 60  # what bpf_stats' own clock reads add to a run's measured body on this kind of VM
WORKLOAD_COMM = "dd"

PROGRAM = "calibrate/tracepoints.c"  # under probes/: the programs measured, one per configuration below

# name -> (hook family, {hook: program}): the tracepoint-family measurements, all driven by dd's syscalls
TP_CONFIGS = {
    "tracepoint_empty": ("tp", {"enter": "tp_empty"}),
    "tracepoint_hash": ("tp", {"enter": "tp_hash"}),
    "tracepoint_filter": ("tp", {"enter": "tp_filter"}),
    "tracepoint_stack": ("tp", {"enter": "tp_stack"}),
    "tracepoint_pair": ("tp", {"enter": "tp_pair_enter", "exit": "tp_pair_exit"}),
    "tracepoint_pair_filter": ("tp", {"enter": "tp_pair_enter_reject", "exit": "tp_pair_exit"}),
    "raw_tracepoint_empty": ("raw", {"enter": "raw_empty"}),
    "raw_tracepoint_hash": ("raw", {"enter": "raw_hash"}),
    "raw_tracepoint_filter": ("raw", {"enter": "raw_filter"}),
    "raw_tracepoint_pair": ("raw", {"enter": "raw_pair_enter", "exit": "raw_pair_exit"}),
    "raw_tracepoint_pair_filter": ("raw", {"enter": "raw_pair_enter_reject", "exit": "raw_pair_exit"}),
    "tracepoint_output": ("tp", {"enter": "tp_output"}),
    "raw_tracepoint_output": ("raw", {"enter": "raw_output"}),
}
RING_PAGES = 4096  # 16 MiB: a whole dd run's records (2 x DD_BYTES x 264 bytes) fit without draining
HOOKS = {("tp", "enter"): "raw_syscalls:sys_enter", ("tp", "exit"): "raw_syscalls:sys_exit",
         ("raw", "enter"): "sys_enter", ("raw", "exit"): "sys_exit"}

# A process that maps kit's sample functions from a memfd and calls one of them n times on request.
TARGET = r"""
import ctypes, json, mmap, os, sys, time
code, offs = bytes.fromhex(sys.argv[1]), json.loads(sys.argv[2])
try:
    fd = os.memfd_create("kit-calibrate", 0x10)  # MFD_EXEC, for kernels with vm.memfd_noexec
except OSError:
    fd = os.memfd_create("kit-calibrate", 0)
os.write(fd, code.ljust(4096, b"\xcc"))
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
if addr is None or addr == ctypes.c_void_p(-1).value:
    print("error mmap", ctypes.get_errno(), flush=True)
    sys.exit(1)
fns = {k: ctypes.CFUNCTYPE(None)(addr + o) for k, o in offs.items()}
print("ready", fd, flush=True)
for line in sys.stdin:
    k, n = line.split()
    f = fns[k]
    t0 = time.thread_time_ns()
    for _ in range(int(n)):
        f()
    print(time.thread_time_ns() - t0, flush=True)
"""


class _CalibScope:
    """Stands in for a recipe with a --comm scope (the only scope calibration sets)."""
    name = "calibrate"
    params = {"comm": ParamSpec(name="comm", type="comm")}


def program_text():
    comm = ptypes.TYPES["comm"]
    # the prelude as a --comm run renders it (the workload is a main thread: its own name decides)
    task = render.task_offsets({"comm": NO_SUCH_COMM})
    lits = render.scope_literals(_CalibScope(), {"comm": NO_SUCH_COMM}, task)
    from kit.engine import stream
    return render.prelude(lits, who="calibrate") + render.own_program(PROGRAM, {
        "workload_comm": comm.emit(WORKLOAD_COMM),
        "calib_ringbuf": str(int(stream.ringbuf_available())),
        "calib_ring_pages": str(RING_PAGES),
    })


class _Records:
    """The stream buffer of the output programs, opened so it can be emptied between runs."""

    def __init__(self, bpf):
        from kit.engine import stream
        self.bpf, self.ring = bpf, stream.ringbuf_available()
        table = bpf["kit_calib_events"]
        if self.ring:
            table.open_ring_buffer(lambda _ctx, _data, _size: 0)
        else:
            table.open_perf_buffer(lambda _cpu, _data, _size: None, page_cnt=RING_PAGES)

    def drain(self):
        if self.ring:
            self.bpf.ring_buffer_consume()
        else:
            self.bpf.perf_buffer_consume()


def dd_cpu_ns(nbytes=DD_BYTES):
    """CPU time (user+sys, ns) of `dd bs=1` copying nbytes: 2 syscalls per byte."""
    p = subprocess.Popen(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={nbytes}", "status=none"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise KitError(f"calibration workload dd exited with {p.returncode}", "is coreutils' dd installed?")
    return (ru.ru_utime + ru.ru_stime) * 1e9


class _Attached:
    """Attach one calibration configuration (its programs on sys_enter and maybe sys_exit) for a with-block."""

    def __init__(self, bpf, family, progs):
        self.bpf, self.family, self.progs = bpf, family, progs

    def __enter__(self):
        for hook, fn in self.progs.items():
            tp = HOOKS[(self.family, hook)]
            if self.family == "tp":
                self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
            else:
                self.bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)
        return self

    def __exit__(self, *exc):
        for hook in self.progs:
            tp = HOOKS[(self.family, hook)]
            if self.family == "tp":
                self.bpf.detach_tracepoint(tp=tp)
            else:
                self.bpf.detach_raw_tracepoint(tp=tp)


class _Target:
    def __init__(self):
        code, self.offsets = insn.sample_blob()
        self.p = subprocess.Popen([sys.executable, "-c", TARGET, code.hex(), json.dumps(self.offsets)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        if not line or line[0] != "ready":
            self.close()
            raise Unsupported(f"calibration target could not map its code ({' '.join(line) or 'no output'})",
                              "is memfd execution disabled (vm.memfd_noexec=2)?")
        self.path = f"/proc/{self.p.pid}/fd/{line[1]}"

    def run(self, kind, n):
        self.p.stdin.write(f"{kind} {n}\n")
        self.p.stdin.flush()
        return int(self.p.stdout.readline())

    def attach(self, prog_fd, kind, ret=False):
        attr, keep = perfevent.uprobe_attr(self.path, self.offsets[kind], retprobe=ret)
        return perfevent.attach_bpf(attr, keep, prog_fd, pid=self.p.pid)

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def _body(bpf, fds, work, events=None):
    """Program body ns per event while `work()` runs, from the kernel's statistics: per program run,
    times the programs that run per event (those given in fds)."""
    w = bpfstats.Window({k: fd for k, fd in bpfstats.program_fds(bpf).items() if k in fds})
    if not w.start(time.monotonic()):
        return None
    try:
        work()
    finally:
        w.stop(time.monotonic())
    r = w.result()
    return len(w.fds) * r["run_time_ns"] / r["run_cnt"] if r["run_cnt"] else None


def paired(pairs, per):
    """Cost per event from (bare, probed) CPU times of back-to-back runs: the median of the differences.
    Other work on the same cores adds to both runs of a pair alike, and the median drops the pairs a
    crowded moment hit on one side only."""
    return statistics.median((p - b) / per for b, p in pairs)


def _pair(bare, probed, flip):
    """(bare, probed) CPU times of one pair, run in alternating order so neither side is always first."""
    if flip:
        p = probed()
        return bare(), p
    b = bare()
    return b, probed()


def measure(rounds=5, log=None):
    from bcc import BPF
    log = log or (lambda msg: None)
    bpf = BPF(text=program_text(), cflags=["-Wno-unused-function"])
    records = _Records(bpf)
    runs = {name: [] for name in list(TP_CONFIGS) + ["perf_tracepoint"]}  # name -> [(bare, probed)]
    events = 2 * DD_BYTES

    def with_prog(family, progs):
        def run():
            with _Attached(bpf, family, progs):
                cpu = dd_cpu_ns(DD_BYTES)
            time.sleep(SETTLE_S)
            records.drain()
            return cpu
        return run

    def with_perf_event():  # what kit's own rate measurement (a perf counting event, no BPF) costs
        with perfevent.CpuEvents(*perfevent.tracepoint_attr(features.tracepoint_id(HOOKS[("tp", "enter")]))) as ev:
            ev.enable()
            cpu = dd_cpu_ns(DD_BYTES)
        time.sleep(SETTLE_S)
        return cpu

    def bare():
        return dd_cpu_ns(DD_BYTES)

    try:
        log(f"tracepoints: dd bs=1 x {DD_BYTES}, {PAIRS_PER_ROUND * rounds} pairs each")
        for i in range(PAIRS_PER_ROUND * rounds):
            for name, (family, progs) in TP_CONFIGS.items():
                runs[name].append(_pair(bare, with_prog(family, progs), i % 2))
            runs["perf_tracepoint"].append(_pair(bare, with_perf_event, i % 2))
        body = {}
        for name, (family, progs) in TP_CONFIGS.items():
            with _Attached(bpf, family, progs):
                body[name] = _body(bpf, set(progs.values()), lambda: dd_cpu_ns(DD_BYTES))
            records.drain()
        ups, up_body, pair, pair_body = _uprobes(bpf, rounds, log)
        from kit.engine import prelude
        lost = prelude.read_stats(bpf)["buffer_lost"]
        if lost:
            log(f"stream records: {lost} outputs failed (buffer full): the output price is low")
    finally:
        bpf.cleanup()
    offcpu = calibrate_offcpu.measure(max(3, rounds), log)
    ns = {name: paired(v, events) for name, v in runs.items()}
    ns["stack"] = ns["tracepoint_stack"] - ns["tracepoint_hash"]
    if body.get("tracepoint_stack") and body.get("tracepoint_hash"):
        body["stack"] = body["tracepoint_stack"] - body["tracepoint_hash"]
    # The kernel's own timing of a program's body is a floor under its whole cost (less the clock reads
    # statistics add per run): never let a crowded moment price a program below it.
    for name, (_family, progs) in TP_CONFIGS.items():
        if body.get(name):
            ns[name] = max(ns[name], body[name] - len(progs) * STATS_CLOCK_NS)
    spread = {name: [min((p - b) / events for b, p in v), max((p - b) / events for b, p in v)]
              for name, v in runs.items()}
    cal = {
        "version": costs.CALIBRATION_VERSION,
        "host": costs.host_key(),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": rounds,
        "method": "extra CPU time per event, median of back-to-back bare/probed pairs: dd bs=1 for "
                  "tracepoints, ctypes calls for uprobes",
        "ns": {k: max(1.0, round(v, 1)) for k, v in ns.items() if k != "tracepoint_stack"},
        "body_ns": {k: round(v, 1) for k, v in body.items() if v is not None and k != "tracepoint_stack"},
        "uprobe": {k: max(1.0, round(v, 1)) for k, v in ups.items()},
        "uprobe_body": {k: round(v, 1) for k, v in up_body.items() if v is not None},
        "spread": {k: [round(a, 1), round(b, 1)] for k, (a, b) in spread.items()},
    }
    if offcpu is not None:
        cal["ns"].update(offcpu["ns"])
        cal["body_ns"].update(offcpu["body_ns"])
        cal["offcpu"] = offcpu["offcpu"]
    if pair is not None:
        cal["ns"]["uretprobe_extra"] = max(1.0, round(pair, 1))
    if pair_body is not None:
        cal["body_ns"]["uretprobe_extra"] = round(pair_body, 1)
    return cal


def _uprobes(bpf, rounds, log):
    """({kind: ns}, {kind: body ns}, uretprobe extra ns, its body ns), or empties where uprobes cannot run here."""
    if not (insn.machine_supported() and features.uprobes_available()):
        log("uprobes: skipped (needs x86-64 and uprobes)")
        return {}, {}, None, None
    from bcc import BPF
    count_fd = bpf.load_func("up_count", BPF.KPROBE).fd
    entry_fd = bpf.load_func("up_entry", BPF.KPROBE).fd
    ret_fd = bpf.load_func("up_return", BPF.KPROBE).fd
    t = _Target()
    kinds = list(insn.SAMPLES)
    samples = {k: [] for k in kinds}
    pair, pair_body = [], None
    log(f"uprobes: {len(kinds)} instruction kinds, {rounds} rounds")
    try:
        def n_for(k):
            return 40_000 if insn.emulated(k) else 10_000

        def probed(kind, fds_rets):
            pfds = [t.attach(fd, kind, ret) for fd, ret in fds_rets]
            try:
                return t.run(kind, n_for(kind))
            finally:
                for pfd in pfds:
                    os.close(pfd)

        for i in range(rounds):
            for k in kinds:
                samples[k].append(_pair(lambda: t.run(k, n_for(k)), lambda: probed(k, [(count_fd, False)]), i % 2))
            pair.append(_pair(lambda: t.run("push", n_for("push")),
                              lambda: probed("push", [(entry_fd, False), (ret_fd, True)]), i % 2))
        body = {}
        for k in kinds:
            w = bpfstats.Window({"up_count": count_fd})
            pfd = t.attach(count_fd, k)
            try:
                if w.start(time.monotonic()):
                    t.run(k, n_for(k) // 4)
                    w.stop(time.monotonic())
                    r = w.result()
                    body[k] = r["run_time_ns"] / r["run_cnt"] if r["run_cnt"] else None
            finally:
                w.close()
                os.close(pfd)
        w = bpfstats.Window({"up_entry": entry_fd, "up_return": ret_fd})
        pfds = [t.attach(entry_fd, "push"), t.attach(ret_fd, "push", True)]
        try:
            if w.start(time.monotonic()):
                t.run("push", n_for("push") // 4)
                w.stop(time.monotonic())
                r = w.result()
                if r["run_cnt"] and body.get("push"):
                    pair_body = 2 * r["run_time_ns"] / r["run_cnt"] - body["push"]
        finally:
            w.close()
            for pfd in pfds:
                os.close(pfd)
    finally:
        t.close()
    ups = {k: paired(v, n_for(k)) for k, v in samples.items()}
    for k, b in body.items():
        if b:
            ups[k] = max(ups[k], b - STATS_CLOCK_NS)
    return ups, body, paired(pair, n_for("push")) - ups["push"], pair_body


def report(cal, path):
    from tabulate import tabulate
    rows = []
    for k, v in cal["ns"].items():
        rows.append([k, f"{v:.0f}", _fmt(cal["body_ns"].get(k)), " .. ".join(f"{x:.0f}" for x in cal["spread"].get(k, []))])
    for k, v in cal["uprobe"].items():
        rows.append([f"uprobe, first instruction {k}" + ("" if insn.emulated(k) else " (single-stepped)"),
                     f"{v:.0f}", _fmt(cal["uprobe_body"].get(k)), ""])
    text = tabulate(rows, headers=["probe", "ns/event", "body ns (bpf_stats)", "spread"], tablefmt="simple")
    return (f"kit calibrate: {cal['host']['kernel']}, {cal['host']['ncpu']} CPUs, {cal['rounds']} rounds\n{text}\n"
            f"saved to {path}\n")


def _fmt(v):
    return "" if v is None else f"{v:.0f}"


def main(args, out, err):
    if features.missing_caps():
        raise Unsupported(f"kit calibrate needs {' and '.join(features.missing_caps())}", "run it as root")
    features.need_tracefs()
    rounds = getattr(args, "rounds", 5)
    if not 1 <= rounds <= 50:
        raise BadInput("--rounds must be from 1 to 50", "the default, 5, takes about 20 seconds")

    def log(msg):
        err.write(f"kit calibrate: {msg}\n")
        err.flush()

    def terminated(signo, _frame):  # unwind through the finally blocks: detach, stop the offcpu run it started
        raise SystemExit(ExitCode.TERMINATED)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        cal = measure(rounds, log)
    finally:
        signal.signal(signal.SIGTERM, previous)
    path = costs.save_calibration(cal)
    if getattr(args, "json", False):
        json.dump({"path": path, **cal}, out)
        out.write("\n")
    else:
        out.write(report(cal, path))
    return ExitCode.OK
