"""The tools compared: kit, and what an on-call engineer would run instead for
the same question (the bpftrace equivalent, bcc's tool where it runs here),
plus an empty program as the floor. Each is a bench.procs.Tool with the line
that says it is attached.

Ready lines: kit prints `kit: RECIPE attached to ...` on stderr after
attaching; the bpftrace programs print a marker from BEGIN, which bpftrace
runs once every probe is attached (checked with strace: the tracepoint's
PERF_EVENT_IOC_ENABLE comes before the write; its own `Attaching N probes...`
comes before the programs are even loaded); bcc's tools print their banner
after BPF() has loaded and attached (made unbuffered, else Python holds it
back when stdout is a pipe).
"""

import os
import shutil
import sys

from bench.procs import Tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = "kit-bench-ready"


def kit(label, recipe, *args, duration="300s"):
    """kit as an engineer runs it, except --budget 100: the benchmark's workloads are hot on
    purpose, and the guardrail's breaker would otherwise stop kit a few seconds in (as it should
    on a production box), ending the measurement while the peers keep going."""
    exe = os.path.join(ROOT, ".venv", "bin", "kit")
    return Tool(label, [exe, "run", recipe, *args, "--for", duration, "--budget", "100", "--json"],
                ready=r"kit: \S+ attached to ", cwd=ROOT)


def bpftrace(label, program):
    prog = 'BEGIN { printf("%s\\n", "' + READY + '"); } ' + program
    return Tool(label, ["bpftrace", "-e", prog], ready=READY)


def bcc_tool(name):
    """Path of bcc's tool as Debian installs it (NAME-bpfcc), or None."""
    return shutil.which(f"{name}-bpfcc") or shutil.which(name, path="/usr/share/bcc/tools")


def bcc(label, name, *args, ready):
    return Tool(label, [bcc_tool(name) or name, *args], ready=ready, env={"PYTHONUNBUFFERED": "1"})


def empty(label, hook, target):
    """An empty program through BCC: the floor for a hook, and the minimal BCC start-up."""
    return Tool(label, [sys.executable, os.path.join(ROOT, "bench", "empty_probe.py"), hook, target],
                ready=r": ready$", cwd=ROOT)


# --- the equivalent bpftrace programs --------------------------------------

def bpftrace_offcpu(comm):
    """kit offcpu's job in bpftrace: at switch-out of a task in scope, note the time and both
    stacks by thread; at switch-in, sum the time off CPU by (kernel stack, user stack, thread).
    The tracepoint version of bpftrace's offcputime.bt (which needs a kprobe here unavailable)."""
    return (
        "tracepoint:sched:sched_switch { "
        f'if (args->prev_comm == "{comm}") {{ '
        "@start[args->prev_pid] = nsecs; @ks[args->prev_pid] = kstack; @us[args->prev_pid] = ustack; } "
        "$t = @start[args->next_pid]; "
        "if ($t) { @off[@ks[args->next_pid], @us[args->next_pid], args->next_pid] = sum(nsecs - $t); "
        "delete(@start[args->next_pid]); } } "
        "END { clear(@start); clear(@ks); clear(@us); }"
    )


def bpftrace_tcpretrans():
    """kit tcpretrans's job in bpftrace: retransmits counted per flow and state."""
    return ("tracepoint:tcp:tcp_retransmit_skb { "
            "@[ntop(args->saddr_v6), ntop(args->daddr_v6), args->sport, args->dport, args->state] = count(); }")
