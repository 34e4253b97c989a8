"""The words around the numbers in RESULTS.md: what each workload is, how
each figure is taken, and why kit misses a target where it does. The reasons
are the bench author's analysis of measured behaviour (see the per-case
sections for the figures they rest on); they are printed only for targets
the run actually missed."""

WORKLOAD = {
    "offcpu": "`kit-pingpong` (bench/workloads/pingpong.c): two processes pinned to CPU 0 bounce a byte through "
              "two pipes; every round trip is two context switches, each a switch-out of a process in scope.",
    "tcpretrans": "bulk TCP on 127.0.0.1 in a network namespace of the bench's own (bench/workloads/bulk.py), MTU "
                  "1500 and one segment per packet, where nftables drops every 10th segment on the input hook: "
                  "thousands of fast retransmits a second. The namespace's TcpRetransSegs (nstat) is the event "
                  "count.",
    "lockhold": "`kit-lockloop` (bench/workloads/lockloop.c): one thread taking and releasing a pthread mutex through "
                "its own noinline `pool_lock`/`pool_unlock` (both start with `push %rbp`, which the kernel emulates "
                "at a uprobe); kit and bpftrace time waits and holds of that pair in that process. Its own loop "
                "count is the event count.",
    "getaddrinfo": "`kit-gai` (bench/workloads/gai.c): `getaddrinfo(\"localhost\")` in a loop, answered from "
                   "/etc/hosts (no network); the tools time every lookup in that process. Its own call count is "
                   "the event count.",
}

PER_EVENT_METHOD = """\
Each repetition runs the workload bare, then under each tool in rotating order. Under a tool the workload runs
{wall_runs} times with run-time statistics off, as in production, for its cost: the CPU time the workload's
processes used (their rusage: the scheduler's precise runtime, where the probe's time lands) per workload event,
least of the runs, minus the same repetition's bare figure; and its wall clock, fastest of the runs, against the
bare run's. Then once more with statistics on (BPF_ENABLE_STATS, held only for that run) for the program body:
the delta of `run_time_ns / run_cnt` of the programs the tool's process holds (found through /proc/PID/fdinfo,
read with `bpftool prog show -j`). The body leaves out the hook's dispatch (and a uprobe's trap); the CPU added
includes them. The wall clock also counts the time other sessions held the CPU, so on this box it is the noisiest
figure. Every tool does the same job: kit with its scope on the workload, bpftrace with the equivalent program
(bench/peers.py), bcc's tool where it runs on this kernel."""

START_METHOD = """\
Seconds from exec to the line that says the probes are attached: kit's `kit: RECIPE attached to ...` (stderr),
a `BEGIN` marker for bpftrace (bpftrace runs BEGIN after attaching every probe; its `Attaching N probes...` comes
before the programs are even loaded), bcc's banner (printed after `BPF()` has loaded and attached; run with
PYTHONUNBUFFERED=1 so a pipe does not hold it back). Taken at every start of the per-event repetitions above
(alternating, and warm: every tool runs once before them); the reference programs are timed the same way."""

FOOTPRINT_METHOD = """\
Each tool runs on a busy workload (the same as above, looping) for {seconds:g} s after it is attached.
CPU while aggregating is the tool process's utime + stime (all its threads, /proc/PID/stat) over those seconds,
start-up excluded; CPU in all and peak memory (ru_maxrss) come from the reaped child's rusage, start-up and the
final report included. BCC's tools and kit compile with clang in-process, so their peak is mostly the compiler's."""

METHOD_FOOTER = """\
## Reproducing

`sudo ./bench/run` (about 15 minutes) builds the workloads into bench/out/, runs every case, writes this file
and the raw samples to bench/out/results.json. `sudo ./bench/run --quick` is the smoke test's tiny mode
(one repetition, tiny workloads, writes to bench/out/). Targets are reported here, never asserted in tests.
"""

WHY = {}


def why(key):
    kind, case = key
    return WHY.get(key) or WHY.get((kind, None)) or "not analysed yet: see the figures in the section below."


def failure(label, text):
    """One line for a peer that cannot run here."""
    if "kprobes/blacklist" in text or "kprobe" in text.lower():
        return ("needs kprobes (it probes finish_task_switch), which this kernel has compiled out "
                "(BCC fails reading /sys/kernel/debug/kprobes/blacklist)")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1][:200] if lines else text[:200]


def notes(hooks, starts, footprints):
    """Observations drawn from the figures themselves."""
    out = []
    for name, res in (hooks or {}).items():
        for label, rows in res.rows.items():
            if any(r and r.get("sysctl_on") for r in rows):
                out.append(f"{name}: kernel.bpf_stats_enabled was on during some {label} runs (someone else's): "
                           "those wall-clock figures include the timing overhead.")
                break
    return out
