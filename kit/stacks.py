"""Renderings of stack rows (rows with comm, kernel_stack, user_stack and a
value field): folded lines for flame graph tools, and the human listing.

Folded format (Brendan Gregg's stackcollapse output, read by flamegraph.pl,
speedscope, inferno): one line per stack, frames root first separated by
';', then a space and the value. kit writes `comm;user frames;kernel frames`
so a flame graph shows who blocked, then where in their code, then where in
the kernel.
"""

ENTRY_FRAMES = {"do_syscall_64", "entry_SYSCALL_64_after_hwframe", "entry_SYSCALL_64", "x64_sys_call"}
SCHED_FRAMES = {"__schedule", "schedule", "preempt_schedule_common", "schedule_hrtimeout_range_clock"}


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
    from kit.output import duration
    return duration(us, "us")


def human_text(result, top=10, value="total_us"):
    rows = result.get("rows") or []
    if not rows:
        return "(no off-CPU time in scope: nothing in scope blocked, or it blocked less than --min-block)\n"
    total = sum(int(r.get(value) or 0) for r in rows) or 1
    out = []
    threads = {}
    for r in rows:
        t = threads.setdefault((r["pid"], r["tid"], r["comm"]), [0, 0])
        t[0] += r[value]
        t[1] += r["count"]
    out.append(f"off-CPU time by thread ({_ms(total)} in all):")
    for (pid, tid, comm), (us, n) in sorted(threads.items(), key=lambda kv: -kv[1][0])[:top]:
        out.append(f"  {_ms(us):>10}  {100.0 * us / total:5.1f}%  {n:>6} blocks  {comm} (pid {pid}, tid {tid})")
    if len(threads) > top:
        out.append(f"  ... {len(threads) - top} more threads")
    # the same stack in several threads of a process reads best as one entry
    groups = {}
    for r in rows:
        g = groups.setdefault((r["pid"], r["comm"], tuple(r.get("kernel_stack") or []),
                               tuple(r.get("user_stack") or [])), dict(r, tids=set(), **{value: 0, "count": 0,
                                                                                         "in_progress": 0}))
        g[value] += r[value]
        g["count"] += r["count"]
        g["in_progress"] += r.get("in_progress") or 0
        g["tids"].add(r["tid"])
    rows = sorted(groups.values(), key=lambda g: -g[value])
    out.append("")
    out.append(f"top {min(top, len(rows))} of {len(rows)} stacks, by off-CPU time (frames innermost first):")
    for i, r in enumerate(rows[:top], 1):
        who = f"tid {r['tid']}" if len(r["tids"]) == 1 else f"{len(r['tids'])} threads"
        out.append("")
        out.append(f"#{i} {_ms(r[value])} in {r['count']} blocks ({100.0 * r[value] / total:.1f}%)  "
                   f"{r['comm']} (pid {r['pid']}, {who})"
                   + (f"  [{r['in_progress']} still blocked at the end]" if r.get("in_progress") else ""))
        out.append("    kernel: " + " < ".join(wait_path(r.get("kernel_stack") or [])[:8]))
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
