"""Stack rows (rows with comm, kernel_stack, user_stack and a value field):
stack ids read into frame names, folded lines for flame graph tools, and
the human listing, worded by what the value measures (offcpu's off-CPU
time, profile's on-CPU samples).

Folded format (Brendan Gregg's stackcollapse output, read by flamegraph.pl,
speedscope, inferno): one line per stack, frames root first separated by
';', then a space and the value. kit writes `comm;user frames;kernel frames`
so a flame graph shows who blocked, then where in their code, then where in
the kernel.
"""

import dataclasses
import errno
import typing

ENTRY_FRAMES = {"do_syscall_64", "entry_SYSCALL_64_after_hwframe", "entry_SYSCALL_64", "x64_sys_call"}
SCHED_FRAMES = {"__schedule", "schedule", "preempt_schedule_common", "schedule_hrtimeout_range_clock"}


def kernel_frames(bpf, stack_id, cache, start_at=None, table="stacks"):
    """Kernel frame names of a stack id, innermost first (cached by id); a failed capture is one frame
    naming its errno. start_at: drop the frames above it (the tracing machinery that ran the probe)."""
    if stack_id < 0:
        return [f"[missing kernel stack: {errno.errorcode.get(-stack_id, stack_id)}]"]
    if stack_id in cache:
        return cache[stack_id]
    names = [bpf.ksym(a).decode("utf-8", "replace") for a in bpf[table].walk(stack_id)]
    if start_at and start_at in names:
        names = names[names.index(start_at):]
    cache[stack_id] = names
    return names


def user_frames(addrs, img):
    """User frame names for the addresses of a user stack, innermost first: the first is where the
    task was, the others return addresses (named by the call before them)."""
    if not addrs:
        return ["[empty user stack]"]
    if img is None or not img.maps:
        return ["[unknown]"] * len(addrs)
    return [img.symbol(addrs[0])] + [img.symbol(a, is_return=True) for a in addrs[1:]]


def _clean(frame):
    # ';' separates frames and ' ' ends them in the folded format
    return frame.replace(";", ":").replace(" ", "_") or "[empty]"


def fold(row, by_host=False):
    """Frames root first: comm, user stack outermost to innermost, kernel stack outermost to innermost;
    with by_host, the row's host (kit merge) below its comm, so one graph shows a fleet."""
    return ([row.get("host") or "?"] if by_host else []) + [row.get("comm") or "?"] + list(reversed(row.get("user_stack") or [])) + \
        list(reversed(row.get("kernel_stack") or []))


def folded_lines(rows, value="total_us", by_host=False):
    """Folded lines, identical stacks merged (threads of one process fold together), biggest first."""
    acc = {}
    for r in rows:
        key = ";".join(_clean(f) for f in fold(r, by_host))
        acc[key] = acc.get(key, 0) + int(r.get(value) or 0)
    return [f"{k} {v}" for k, v in sorted(acc.items(), key=lambda kv: (-kv[1], kv[0])) if v > 0]


def wait_path(kernel_stack):
    """The kernel frames that say why a task waits: below the scheduler, above the syscall entry."""
    frames = [f for f in kernel_stack if f not in SCHED_FRAMES and f not in ENTRY_FRAMES]
    return frames


def _ms(us):
    from kit.output.units import duration
    return duration(us, "us")


def _samples(n):
    return f"{n} sample{'s' if n != 1 else ''}"


@dataclasses.dataclass(frozen=True)
class Measure:
    """How the listing words a stack recipe's value."""
    value: str                 # the row field summed
    title: str                 # what it is, for headings and the flame graph
    fmt: typing.Callable       # value -> text
    count_word: str            # the row's `count` field in words ("" when rows have none)
    empty: str                 # shown when there are no rows
    kernel_path: typing.Callable  # the kernel frames worth a line


OFFCPU = Measure("total_us", "off-CPU time", _ms, "blocks",
                 "(no off-CPU time in scope: nothing in scope blocked, or it blocked less than --min-block)",
                 wait_path)
ONCPU = Measure("samples", "on-CPU samples", _samples, "",
                "(no samples in scope: nothing in scope ran on a CPU while kit sampled)",
                lambda k: [f for f in k if f not in ENTRY_FRAMES])
MEASURES = {m.value: m for m in (OFFCPU, ONCPU)}


def measure_of(value):
    return MEASURES.get(value, OFFCPU)


def human_text(result, top=10, value="total_us"):
    m = measure_of(value)
    rows = result.get("rows") or []
    if not rows:
        return m.empty + "\n"
    total = sum(int(r.get(value) or 0) for r in rows) or 1
    out = []
    threads = {}
    for r in rows:
        t = threads.setdefault((r["pid"], r["tid"], r["comm"]), [0, 0])
        t[0] += r[value]
        t[1] += r.get("count") or 0
    out.append(f"{m.title} by thread ({m.fmt(total)} in all):")
    for (pid, tid, comm), (v, n) in sorted(threads.items(), key=lambda kv: -kv[1][0])[:top]:
        count = f"  {n:>6} {m.count_word}" if m.count_word else ""
        out.append(f"  {m.fmt(v):>12}  {100.0 * v / total:5.1f}%{count}  {comm} (pid {pid}, tid {tid})")
    if len(threads) > top:
        out.append(f"  ... {len(threads) - top} more threads")
    # the same stack in several threads of a process reads best as one entry
    groups = {}
    for r in rows:
        g = groups.setdefault((r["pid"], r["comm"], tuple(r.get("kernel_stack") or []),
                               tuple(r.get("user_stack") or [])), dict(r, tids=set(), **{value: 0, "count": 0,
                                                                                         "in_progress": 0}))
        g[value] += r[value]
        g["count"] += r.get("count") or 0
        g["in_progress"] += r.get("in_progress") or 0
        g["tids"].add(r["tid"])
    rows = sorted(groups.values(), key=lambda g: -g[value])
    out.append("")
    out.append(f"top {min(top, len(rows))} of {len(rows)} stacks, by {m.title} (frames innermost first):")
    for i, r in enumerate(rows[:top], 1):
        who = f"tid {r['tid']}" if len(r["tids"]) == 1 else f"{len(r['tids'])} threads"
        count = f" in {r['count']} {m.count_word}" if m.count_word else ""
        out.append("")
        out.append(f"#{i} {m.fmt(r[value])}{count} ({100.0 * r[value] / total:.1f}%)  "
                   f"{r['comm']} (pid {r['pid']}, {who})"
                   + (f"  [{r['in_progress']} still blocked at the end]" if r.get("in_progress") else ""))
        kernel = m.kernel_path(r.get("kernel_stack") or [])[:8]
        if kernel:
            out.append("    kernel: " + " < ".join(kernel))
        rec = r.get("recovered") or 0
        for j, f in enumerate(r.get("user_stack") or []):
            mark = "   [recovered]" if 1 <= j <= rec else ""
            out.append(("    user:   " if j == 0 else "            ") + f + mark)
    if any(r.get("recovered") for r in rows[:top]):
        out.append("\n[recovered]: a frame the kernel's frame-pointer walk skipped, in code that keeps no frame "
                   "pointers (libc, or a program built without them); kit read it from the stack with that code's "
                   "unwind tables")
    if len(rows) > top:
        out.append(f"\n... {len(rows) - top} more stacks (use --json, --folded or --svg FILE for all)")
    return "\n".join(out) + "\n"
