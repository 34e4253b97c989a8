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

from bench.procs import Tool, ToolFailed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = "kit-bench-ready"


def kit(label, recipe, *args, duration="300s"):
    """kit as an engineer runs it, except --budget 100: the benchmark's workloads are hot on
    purpose, and the guardrail's breaker would otherwise stop kit a few seconds in (as it should
    on a production box), ending the measurement while the peers keep going."""
    exe = os.path.join(ROOT, ".venv", "bin", "kit")
    return Tool(label, [exe, "run", recipe, *args, "--for", duration, "--budget", "100", "--json"],
                ready=r"kit: \S+ attached to ", cwd=ROOT, grace=KIT_GRACE)


# kit reads and symbolizes its maps after SIGINT; a second SIGINT would cut that short
KIT_GRACE = 15.0


def kit_patched(label, patch, recipe, *args, duration="300s"):
    """kit with one module attribute replaced before it runs (`patch`: Python statements), to
    measure what one of its steps costs. Used only by the bench; kit itself has no such switch."""
    code = f"import sys; {patch}; from kit import cli; sys.exit(cli.main(sys.argv[1:]))"
    return Tool(label, [sys.executable, "-c", code, "run", recipe, *args, "--for", duration, "--budget", "100",
                        "--json"], ready=r"kit: \S+ attached to ", cwd=ROOT, grace=KIT_GRACE)


def bpftrace(label, program, env=None):
    prog = 'BEGIN { printf("%s\\n", "' + READY + '"); } ' + program
    # bpftrace 0.17 can miss the first SIGINT (see procs.Tool.stop): ask again soon
    return Tool(label, ["bpftrace", "-e", prog], ready=READY, grace=0.5, env=env)


# kit's hash maps hold 10240 entries; bpftrace's 4096 unless told (a map that is full drops updates)
BPFTRACE_KIT_MAPS = {"BPFTRACE_MAP_KEYS_MAX": "10240"}


LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")


def bcc_tool(name):
    """Path of bcc's tool as Debian installs it (NAME-bpfcc), or None."""
    return shutil.which(f"{name}-bpfcc") or shutil.which(name, path="/usr/share/bcc/tools")


def bcc(label, name, *args, ready):
    # a SIGINT that lands in a perf-buffer callback is swallowed by ctypes ("Exception ignored"): under a
    # flood of events (gethostlatency) most are, so ask again soon
    return Tool(label, [bcc_tool(name) or name, *args], ready=ready, env={"PYTHONUNBUFFERED": "1"}, grace=0.5)


class _SamplingTool(Tool):
    """A tool that prints its banner before it attaches (bcc's profile): ready once the process holds a
    perf event on every online CPU, the attach itself (polled in /proc/PID/fd)."""

    def start(self, timeout=60):
        import time
        from kit.host import perfevent
        t0 = time.monotonic()
        super().start(timeout)
        want, deadline = len(perfevent.online_cpus()), time.monotonic() + timeout
        while time.monotonic() < deadline and not self._reap():
            if _perf_fds(self.pid) >= want:
                self.ready_s = time.monotonic() - t0
                return self.ready_s
            time.sleep(0.01)
        self.stop()
        raise ToolFailed(f"{self.label} never attached its perf events: {self.stderr.strip()[-300:]}")


def _perf_fds(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
            except OSError:
                continue
    except OSError:
        pass
    return n


def bcc_sampling(label, name, *args, ready):
    return _SamplingTool(label, [bcc_tool(name) or name, *args], ready=ready, env={"PYTHONUNBUFFERED": "1"},
                         grace=0.5)


def empty(label, *hooks):
    """An empty program through BCC on each (type, target) of `hooks`: the floor for kit's
    attach points, and the minimal BCC start-up."""
    return Tool(label, [sys.executable, os.path.join(ROOT, "bench", "empty_probe.py"), *hooks],
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


def bpftrace_lockhold(binary, pid, lock="pool_lock", unlock="pool_unlock"):
    """kit lockhold's job in bpftrace: wait (lock entry to return) and hold (lock return to
    unlock entry) per process, paired by thread and lock object, as count/total/max and a log2
    histogram of holds. bpftrace 0.17 puts uprobes in every process mapping the file (-p is
    for USDT only), so the process is chosen by a filter."""
    b = binary
    return (
        f"uprobe:{b}:{lock} /pid == {pid}/ {{ @ws[tid] = nsecs; @lk[tid] = arg0; }} "
        f"uretprobe:{b}:{lock} /@ws[tid]/ {{ $w = nsecs - @ws[tid]; @wait[pid] = stats($w); @wmax[pid] = max($w); "
        "@hs[tid, @lk[tid]] = nsecs; delete(@ws[tid]); delete(@lk[tid]); } "
        f"uprobe:{b}:{unlock} /@hs[tid, arg0]/ {{ $h = nsecs - @hs[tid, arg0]; @hold[pid] = stats($h); "
        "@hmax[pid] = max($h); @hist = hist($h / 1000); delete(@hs[tid, arg0]); } "
        "END { clear(@ws); clear(@lk); clear(@hs); }"
    )


def bpftrace_getaddrinfo(pid, libc=LIBC):
    """kit getaddrinfo's job in bpftrace: getaddrinfo, gethostbyname and gethostbyname2 per
    (process, comm, function, name) with count, failures, total and max latency, and a log2
    histogram. bpftrace keeps 64 bytes of the name (its default), kit 256."""
    return (
        f"uprobe:{libc}:getaddrinfo, uprobe:{libc}:gethostbyname, uprobe:{libc}:gethostbyname2 /pid == {pid}/ "
        "{ @ts[tid] = nsecs; @host[tid] = str(arg0); } "
        f"uretprobe:{libc}:getaddrinfo /@ts[tid]/ {{ $d = nsecs - @ts[tid]; $k = @host[tid]; "
        "@lat[pid, comm, func, $k] = stats($d); @max[pid, comm, func, $k] = max($d); "
        "if (retval != 0) { @failed[pid, comm, func, $k] = count(); } @hist = hist($d / 1000); "
        "delete(@ts[tid]); delete(@host[tid]); } "
        f"uretprobe:{libc}:gethostbyname, uretprobe:{libc}:gethostbyname2 /@ts[tid]/ {{ $d = nsecs - @ts[tid]; "
        "$k = @host[tid]; @lat[pid, comm, func, $k] = stats($d); @max[pid, comm, func, $k] = max($d); "
        "if (retval == 0) { @failed[pid, comm, func, $k] = count(); } @hist = hist($d / 1000); "
        "delete(@ts[tid]); delete(@host[tid]); } "
        "END { clear(@ts); clear(@host); }"
    )


def bpftrace_profile(pid, hz):
    """kit profile's job in bpftrace: samples on every CPU at hz, those of the process counted by kernel
    stack, user stack and thread."""
    return f"profile:hz:{hz} /pid == {pid}/ {{ @[kstack, ustack, tid] = count(); }}"


def bpftrace_runqlat(comm):
    """kit runqlat's job in bpftrace (bcc's runqlat.bt, scoped by the woken task's name): a wait starts at
    the wakeup of a task in scope or the switch-out of one still runnable, and ends at its switch-in,
    as a log2 histogram and the worst wait per thread."""
    return (
        "tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new "
        f'/args->comm == "{comm}"/ {{ @qtime[args->pid] = nsecs; }} '
        "tracepoint:sched:sched_switch { "
        f'if (args->prev_state == 0 && args->prev_comm == "{comm}") {{ @qtime[args->prev_pid] = nsecs; }} '
        "$ns = @qtime[args->next_pid]; "
        "if ($ns) { $d = nsecs - $ns; @usecs[args->next_pid] = hist($d / 1000); @max[args->next_pid] = max($d); "
        "delete(@qtime[args->next_pid]); } } "
        "END { clear(@qtime); }"
    )


def bpftrace_biolatency(devno):
    """kit biolatency's job in bpftrace: on one disk, the submitting process and name by request
    (dev, sector) at block_getrq, the issue time at issue; at completion, a log2 histogram of latency
    per disk and operation, and count/mean/total and max per disk, operation, process and name."""
    d = f"/args->dev == {devno}/"
    k = "args->dev, args->sector"
    return (
        f"tracepoint:block:block_getrq {d} {{ @pid[{k}] = pid; @comm[{k}] = comm; }} "
        f"tracepoint:block:block_rq_issue {d} {{ @start[{k}] = nsecs; "
        f"if (!@pid[{k}]) {{ @pid[{k}] = pid; @comm[{k}] = comm; }} }} "
        f"tracepoint:block:block_rq_complete {d} {{ $t = @start[{k}]; if ($t) {{ $d = nsecs - $t; "
        f"@lat_us[args->dev, args->rwbs] = hist($d / 1000); "
        f"@stats[args->dev, args->rwbs, @pid[{k}], @comm[{k}]] = stats($d); "
        f"@max[args->dev, args->rwbs, @pid[{k}], @comm[{k}]] = max($d); "
        f"delete(@start[{k}]); delete(@pid[{k}]); delete(@comm[{k}]); }} }} "
        "END { clear(@start); clear(@pid); clear(@comm); }"
    )


def bpftrace_drops(netns_inum):
    """kit drops' job in bpftrace: packets freed by kfree_skb in one network namespace (the
    device's), counted by drop reason, dropping function and IPv4 flow, read from the packet's
    headers through BTF (kit reads IPv6 flows too)."""
    return (
        "tracepoint:skb:kfree_skb { $skb = (struct sk_buff *)args->skbaddr; "
        f"if ($skb->dev->nd_net.net->ns.inum == {netns_inum}) {{ "
        "$ip = (struct iphdr *)($skb->head + $skb->network_header); "
        "$l4 = (struct udphdr *)($skb->head + $skb->transport_header); "
        "$sp = $l4->source; $dp = $l4->dest; "
        "@drops[args->reason, ksym(args->location), $ip->protocol, ntop($ip->saddr), "
        "(($sp & 0xff) << 8) | ($sp >> 8), ntop($ip->daddr), (($dp & 0xff) << 8) | ($dp >> 8)] = count(); } }"
    )


def bpftrace_tcplife(netns_inum):
    """kit tcplife's job in bpftrace (after bpftrace's tools/tcplife.bt, on the tracepoint): in
    one network namespace, each TCP socket's birth and owner by socket address; at CLOSE its
    lifetime and bytes each way (tcp_sock through BTF) kept in a map per connection, and connect
    latency (SYN_SENT to ESTABLISHED) as a histogram per remote."""
    sk = "args->skaddr"
    return (
        "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { "
        f"$sk = (struct sock *){sk}; if ($sk->__sk_common.skc_net.net->ns.inum == {netns_inum}) {{ "
        f"if (args->newstate < 4 && !@birth[{sk}]) {{ @birth[{sk}] = nsecs; }} "
        f"if (args->newstate == 2 || args->newstate == 4 || args->newstate == 9) {{ "
        f"@skpid[{sk}] = pid; @skcomm[{sk}] = comm; }} "
        f"if (args->oldstate == 2 && args->newstate == 1) {{ "
        f"@connect_us[ntop(args->daddr), args->dport] = hist((nsecs - @birth[{sk}]) / 1000); }} "
        f"if (args->newstate == 7 && @birth[{sk}]) {{ $tp = (struct tcp_sock *){sk}; $b = @birth[{sk}]; "
        f"@life[{sk}, $b, @skpid[{sk}], @skcomm[{sk}], ntop(args->saddr), args->sport, ntop(args->daddr), "
        "args->dport] = (nsecs - $b, $tp->bytes_received, $tp->bytes_acked); "
        f"delete(@birth[{sk}]); delete(@skpid[{sk}]); delete(@skcomm[{sk}]); }} }} }} "
        "END { clear(@birth); clear(@skpid); clear(@skcomm); }"
    )


def bpftrace_opensnoop(pid):
    """kit opensnoop's job in bpftrace: one process's openat calls counted by process, comm,
    path and errno (the path read at exit, as kit does; bpftrace keeps 64 bytes of it, kit 255)."""
    return (
        f"tracepoint:syscalls:sys_enter_openat /pid == {pid}/ {{ @path[tid] = args->filename; }} "
        "tracepoint:syscalls:sys_exit_openat /@path[tid]/ { $e = args->ret < 0 ? - args->ret : 0; "
        "@opens[pid, comm, str(@path[tid]), $e] = count(); delete(@path[tid]); } "
        "END { clear(@path); }"
    )
def bpftrace_execsnoop(pid):
    """kit execsnoop's job in bpftrace, as its own execsnoop.bt does it plus the exit: every exec with
    its argv (from execve's arguments: bpftrace has no reader of the new mm's argv) and every exit with
    its code, of the processes a parent starts."""
    return (
        f"tracepoint:syscalls:sys_enter_execve /curtask->real_parent->tgid == {pid}/ "
        "{ printf(\"exec %d %d %s \", pid, curtask->real_parent->tgid, comm); join(args->argv); } "
        f"tracepoint:sched:sched_process_exit /curtask->real_parent->tgid == {pid}/ "
        "{ printf(\"exit %d %s %d\\n\", pid, comm, curtask->exit_code >> 8); }"
    )


def bpftrace_oomkill(comm):
    """kit oomkill's job in bpftrace: the victim and its memory as mark_victim gives them, and the task
    that triggered the kill, for kills triggered by a process of that name."""
    return (f'tracepoint:oom:mark_victim /comm == "{comm}"/ {{ printf("%d %s anon %d file %d by %d %s\\n", '
            "args->pid, str(args->comm), args->anon_rss, args->file_rss, pid, comm); }")
