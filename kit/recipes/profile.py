"""profile: the watcher that snapshots processes on first sight, and the
reading of the sample counts into symbolized stacks, CPU shares and hints."""

import errno
import os
import struct

from kit.engine import procwatch
from kit.host import perfevent
from kit.output import stacks
from kit.engine.contract import Hooks

EFAULT = -errno.EFAULT   # a stack absent by nature (see probes/profile.c)
PROFILE_IDLE, PROFILE_OUT_OF_SCOPE, PROFILE_KSTACK_LOST, PROFILE_USTACK_LOST = range(4)  # as in probes/profile.c
IDLE_HINT = 0.5          # a scope that ran less than this share of one CPU mostly waits: look off-CPU
KERNEL_HINT = 0.5        # a process with more of its samples in the kernel: look at its syscalls
BOX_IDLE = 0.8           # unscoped, CPUs idle this much: the box is not CPU-bound
BOX_BUSY = 0.1           # unscoped, CPUs idle less than this: they are saturated
MISSED_NOTE = 0.02       # say so when more of the expected samples than this were not taken


def attach(ctx, bpf):
    procwatch.start(ctx, procwatch.Watcher(bpf))
    return None  # the engine's description of the sampling events stands


def _stat(bpf, i):
    t = bpf["profile_stats"]
    return int(sum(t[t.Key(i)]))


def _user(bpf, key, img, unsnapshotted):
    if key.ustack == EFAULT:
        return []   # a kernel thread
    if key.ustack < 0:
        return [f"[missing user stack: {errno.errorcode.get(-key.ustack, key.ustack)}]"]
    addrs = list(bpf["ustacks"].walk(key.ustack))
    if addrs and (img is None or not img.maps):
        unsnapshotted.add(key.tgid)
    return stacks.user_frames(addrs, img)


def collect(ctx, bpf):
    w = ctx.private
    counts = [(k, int(v.value)) for k, v in bpf["samples"].items()]
    w.finish(k.tgid for k, _ in counts)
    kcache, rows, unsnapshotted = {}, {}, set()
    for k, n in counts:
        kframes = [] if k.kstack == EFAULT else stacks.kernel_frames(bpf, k.kstack, kcache, table="kstacks")
        uframes = _user(bpf, k, w.sym.image(k.tgid), unsnapshotted)
        comm = k.comm.decode("utf-8", "replace")
        ident = (k.tgid, k.tid, comm, tuple(kframes), tuple(uframes))
        row = rows.get(ident)
        if row is None:
            row = rows[ident] = {"comm": comm, "pid": k.tgid, "tid": k.tid, "samples": 0,
                                 "kernel_stack": kframes, "user_stack": uframes}
        row["samples"] += n
    rows = sorted(rows.values(), key=lambda r: (-r["samples"], r["pid"], r["tid"]))
    summary = _summary(ctx, bpf, rows)
    return {"rows": rows, "stack_value": "samples", "profile": summary,
            "notes": _notes(bpf, w, unsnapshotted, summary), "hints": hints(ctx, rows, summary),
            "text": [_cpu_line(summary)]}


def clock_s(bpf, target):
    """Seconds each sampling event has been counting, summed over CPUs (a cpu-clock event counts
    nanoseconds while enabled; BCC opens it without a read format, so a read is that one number)."""
    total = 0.0
    for fd in bpf.open_perf_events.get(perfevent.SAMPLING_EVENTS[target], {}).values():
        try:
            total += struct.unpack("Q", os.read(fd, 8))[0] / 1e9
        except OSError:
            return None
    return total


def _summary(ctx, bpf, rows):
    in_scope = sum(r["samples"] for r in rows)
    idle, out = _stat(bpf, PROFILE_IDLE), _stat(bpf, PROFILE_OUT_OF_SCOPE)
    # the events run on until teardown: their clock is read after the counts, so it can only be ahead
    lost = _stat(bpf, PROFILE_KSTACK_LOST), _stat(bpf, PROFILE_USTACK_LOST)
    counted_s = clock_s(bpf, ctx.hook.target)
    total = in_scope + idle + out
    ncpu = len(bpf.open_perf_events.get(perfevent.SAMPLING_EVENTS[ctx.hook.target], {})) or \
        max(1, len(perfevent.online_cpus()))
    expected = int(counted_s * ctx.value("hz")) if counted_s else None
    per_cpu = total / ncpu if total else 0   # samples one CPU took: a whole CPU's worth of time
    procs = {}
    for r in rows:
        p = procs.setdefault(r["pid"], {"pid": r["pid"], "comm": r["comm"], "samples": 0, "kernel_samples": 0})
        p["samples"] += r["samples"]
        if r["kernel_stack"]:
            p["kernel_samples"] += r["samples"]
        if r["tid"] == r["pid"]:
            p["comm"] = r["comm"]  # the main thread's name is the process's
    top = sorted(procs.values(), key=lambda p: -p["samples"])
    for p in top:
        p["cpus"] = round(p["samples"] / per_cpu, 3) if per_cpu else 0.0
    return {
        "hz": ctx.value("hz"), "ncpu": ncpu, "samples": total, "in_scope": in_scope, "idle": idle,
        "out_of_scope": out, "kernel_stacks_lost": lost[0], "user_stacks_lost": lost[1],
        # what the timers should have taken; the kernel skips a sample while another BPF program runs on
        # that CPU, and a timer firing late skips the periods it missed
        "expected": expected, "missed": max(expected - total, 0) if expected is not None else None,
        "in_scope_cpus": round(in_scope / per_cpu, 3) if per_cpu else 0.0,   # CPUs' worth of time in scope
        "idle_share": round(idle / total, 4) if total else 0.0,
        "processes": top[:20],
        "top_functions": top_functions(rows)[:10],
    }


def leaf(row):
    """Where the sample was: the innermost kernel frame if it was in the kernel, else the user one."""
    if row["kernel_stack"]:
        return row["kernel_stack"][0]
    return row["user_stack"][0] if row["user_stack"] else "[unknown]"


def top_functions(rows):
    """[{function, samples, share}] by the frame each sample was in, busiest first."""
    acc = {}
    for r in rows:
        f = leaf(r)
        acc[f] = acc.get(f, 0) + r["samples"]
    total = sum(acc.values()) or 1
    return [{"function": f, "samples": n, "share": round(n / total, 4)}
            for f, n in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))]


def _cpu_line(s):
    if not s["samples"]:
        return "no samples were taken"
    return (f"{s['samples']} samples at {s['hz']} Hz on {s['ncpu']} CPUs: {s['in_scope']} in scope "
            f"({s['in_scope_cpus']:.2f} CPUs' worth of time), {100.0 * s['idle_share']:.0f}% idle, "
            f"{s['out_of_scope']} other tasks")


def _notes(bpf, w, unsnapshotted, s):
    notes = []
    if s["kernel_stacks_lost"] or s["user_stacks_lost"]:
        notes.append(f"stacks lost: {s['kernel_stacks_lost']} kernel, {s['user_stacks_lost']} user (EEXIST: two "
                     "stacks hashed to one slot of the stack map, more likely the more distinct stacks there are; "
                     "scope the run to see fewer): those samples are kept under [missing ... stack]")
    if unsnapshotted:
        notes.append(f"{len(unsnapshotted)} process(es) exited before kit could read their memory maps: "
                     "their user frames show as [unknown]")
    if s["missed"] and s["expected"] and s["missed"] > MISSED_NOTE * s["expected"]:
        notes.append(f"{s['missed']} of {s['expected']} samples ({100.0 * s['missed'] / s['expected']:.0f}%) were "
                     "not taken: timers fired late on a busy CPU, or the sample came while another BPF program "
                     "ran on that CPU (the kernel skips it); shares are of the samples taken")
    if w.lost_sightings:
        notes.append(f"{w.lost_sightings} new-process events were lost (perf buffer full)")
    return notes


def hints(ctx, rows, s):
    """Next steps computed from the result: [{text, command}] (command "" when there is none)."""
    out = []
    scoped = any(ctx.values.get(n) is not None for n in ("pid", "tid", "comm", "cgroup"))
    if s["top_functions"] and s["in_scope"]:
        f = s["top_functions"][0]
        out.append({"text": f"{f['function']} was on CPU in {100.0 * f['share']:.0f}% of the samples in scope",
                    "command": ""})
    busiest = s["processes"][0] if s["processes"] else None
    if busiest and busiest["samples"] >= 10 and busiest["kernel_samples"] > KERNEL_HINT * busiest["samples"]:
        out.append({"text": f"pid {busiest['pid']} spent {100.0 * busiest['kernel_samples'] / busiest['samples']:.0f}%"
                            " of its CPU time in the kernel: which syscalls?",
                    "command": f"kit run syscalls --pid {busiest['pid']} --for 10s"})
    if scoped and s["samples"] and s["in_scope_cpus"] < IDLE_HINT:
        pid = ctx.values.get("pid") or (busiest["pid"] if busiest else None)
        if pid:
            out.append({"text": f"the scope ran only {s['in_scope_cpus']:.2f} CPUs' worth of the time: it mostly "
                                "waits; see where",
                        "command": f"kit run offcpu --pid {pid} --for 20s"})
    if not scoped and s["samples"]:
        if s["idle_share"] >= BOX_IDLE and busiest:
            out.append({"text": f"the CPUs were idle {100.0 * s['idle_share']:.0f}% of the time: the box is not "
                                "CPU-bound; see where the busiest process waits",
                        "command": f"kit run offcpu --pid {busiest['pid']} --for 20s"})
        elif s["idle_share"] < BOX_BUSY:
            out.append({"text": f"the CPUs were idle only {100.0 * s['idle_share']:.0f}% of the time: are tasks "
                                "waiting for a CPU?",
                        "command": "kit run runqlat --for 10s"})
    return out


HOOKS = Hooks(attach=attach, collect=collect, detach=procwatch.detach, cleanup=procwatch.cleanup)
