"""offcpu: what the template needs from BTF, the watcher that snapshots new
processes and learns unwind hints while the run goes on, and the reading of
the totals into symbolized stacks at the end."""

import ctypes
import errno
import os
import time

from kit.engine import prelude, procwatch
from kit.host import btf, features
from kit.output import stacks
from kit.userstacks import hidden_frames, usersyms
from kit.errors import Unsupported
from kit.engine.contract import Hooks

WINDOW_WORDS = 64       # must match KIT_WINDOW_WORDS in probes/offcpu.c
# Frames of the tracing machinery above the scheduler in a sched_switch stack.
SCHED_ENTRY = "__schedule"
UNW_NONE, UNW_DONE, UNW_PARTIAL, UNW_ASKED, UNW_CFI = 0, 1, 2, 3, 4  # as in probes/offcpu.c
NO_FP_ABOVE = "[callers unknown: no frame pointers above]"


class _Learn(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("tid", ctypes.c_uint32), ("kstack", ctypes.c_int32),
                ("ustack", ctypes.c_int32), ("nwords", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("ip", ctypes.c_uint64),
                ("sp", ctypes.c_uint64), ("words", ctypes.c_uint64 * WINDOW_WORDS)]


def extra(ctx):
    offs = {"task_pid_off": 0, "task_state_off": 0}
    if ctx.hook.type == "raw_tracepoint":
        b = btf.kernel()
        if b is None:
            raise Unsupported("the raw tracepoint rung needs kernel BTF", "use --hook tracepoint")
        state = "__state"
        try:
            b.offsetof("task_struct", state)
        except KeyError:
            state = "state"  # before 5.14
        offs = btf.offsets({"task_pid_off": ("task_struct", "pid"), "task_state_off": ("task_struct", state)})
    unwind = features.user_regs_readable()
    if not unwind:
        ctx.notes.append("this kernel lacks bpf_task_pt_regs: callers hidden by libc's missing frame pointers "
                         "are not recovered")
    return {**offs, "unwind": int(unwind)}


class Watcher(procwatch.Watcher):
    """The shared watcher (snapshots on first sight), and learning unwind hints from the stack
    windows the template sends for call sites it has no hint for."""

    name = "kit-offcpu-watch"

    def __init__(self, bpf, unwind):
        super().__init__(bpf)
        self.learner = hidden_frames.Learner(self.sym)
        self.lost_learn = 0
        self.asked = {}  # (tid, kstack, ustack) -> [(chain, complete) from the block that asked, ...]
        self.unwind = unwind
        if unwind:
            bpf["unwind_learn"].open_perf_buffer(self._on_learn, page_cnt=64, lost_cb=self._on_lost_learn)

    def _on_learn(self, cpu, data, size):
        ev = ctypes.cast(data, ctypes.POINTER(_Learn)).contents
        n = min(ev.nwords, WINDOW_WORDS)
        try:
            chain = self.learner.learn(ev.tgid, ev.ip, ev.sp, list(ev.words[:n]))
        except Exception:  # an unreadable unwind table: that site stays unrecovered
            self.errors += 1
            chain = None
        self.asked.setdefault((ev.tid, ev.kstack, ev.ustack), []).append(chain)

    def _on_lost_learn(self, n):
        self.lost_learn += n

    def after_poll(self):
        if self.unwind:
            self._push_hints()

    def _push_hints(self):
        pending = self.learner.take_pending()
        if not pending:
            return
        table = self.bpf["unwind_hints"]
        for (page_off, code), (off, flags) in pending.items():
            k = table.Key()
            k.page_off, k.code = page_off, code
            v = table.Leaf()
            v.cfa_off, v.flags = off, flags
            table[k] = v


def attach(ctx, bpf):
    what = prelude.auto_attached(bpf)
    procwatch.start(ctx, Watcher(bpf, bool(ctx.extra.get("unwind"))))
    return what


# --- collecting ----------------------------------------------------------

def _kernel_frames(bpf, stack_id, cache):
    return stacks.kernel_frames(bpf, stack_id, cache, start_at=SCHED_ENTRY, table="kstacks")


def _hidden_chain(key, w, asked_blocks):
    """(frames the kernel's walk skipped for this sample, complete), if kit knows them, else None.
    Not complete: no frame on the way keeps a frame pointer, so nothing above them is known."""
    b = key.block
    if b.unwind in (UNW_DONE, UNW_CFI) and b.nhidden:
        return list(b.hidden[:b.nhidden]), b.unwind == UNW_DONE
    if b.unwind == UNW_ASKED:
        # This block sent its own stack window; its chain was computed from it. Usable only if
        # no other block shares the sample's key (the key is all that tells blocks apart).
        ident = (key.tid, b.kstack, b.ustack)
        chains = w.asked.get(ident, [])
        if asked_blocks.get(ident) == 1 and len(chains) == 1 and chains[0] and chains[0][0]:
            return chains[0]
    return None


def _user_frames(bpf, key, img, w, stats, asked_blocks):
    """(frame names, number of recovered frames, the file of each frame) for one sample."""
    b = key.block
    if b.ustack < 0:
        return [f"[missing user stack: {errno.errorcode.get(-b.ustack, b.ustack)}]"], 0, [None]
    addrs = list(bpf["ustacks"].walk(b.ustack))
    if not addrs:
        return ["[empty user stack]"], 0, [None]
    if img is None or not img.maps:
        stats["unsnapshotted"].add(b.tgid)
        return ["[unknown]"] * len(addrs), 0, [None] * len(addrs)
    recovered = []
    tail = addrs[1:]
    found = _hidden_chain(key, w, asked_blocks)
    complete = True
    if found:
        hidden, complete = found
        if w.learner.verify(img, addrs[0], hidden, complete):
            recovered = hidden
            if not complete:
                tail = []  # the kernel's walk above them followed a register holding anything
                stats["cfi_only"] += 1
            elif b.bp_unsure:
                tail = []
                stats["bp_unsure"] += 1
        else:
            stats["rejected_chains"] += 1
    names = [img.symbol(addrs[0])]
    names += [img.symbol(a, is_return=True) for a in recovered + tail]
    modules = [img.module(addrs[0])] + [img.module(a - 1) for a in recovered + tail]  # hints tell app from libc
    if recovered and not complete:
        names.append(NO_FP_ABOVE)
        modules.append(None)
    elif recovered and b.bp_unsure:
        names.append("[outer frames unknown: libc reused rbp]")
        modules.append(None)
    names, modules = _collapse_unknown(names, modules)
    return names, len(recovered), modules


def _collapse_unknown(names, modules):
    """A run of [unknown] frames is one thing (a frame-pointer walk gone astray): one frame, so the
    same wait folds together however far the walk strayed."""
    out, mods = [], []
    for n, m in zip(names, modules):
        if n == "[unknown]" and out and out[-1] == "[unknown]":
            continue
        out.append(n)
        mods.append(m)
    return out, mods


def _libc_top(img, addr):
    m = img.find(addr) if img else None
    return m is not None and m.name.startswith("libc.so")


def collect(ctx, bpf):
    w = ctx.private
    w.stop()
    w.poll_once(0)  # sightings and hints still in the buffers
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    min_ns = (ctx.value("min_block") or 0) * 1000
    samples = [(k, int(v.total_ns), int(v.count), 0) for k, v in bpf["blocks"].items()]
    for tid, s in bpf["start"].items():  # blocks still in progress: count their time so far
        delta = now - int(s.ts)
        if delta >= min_ns and os.path.exists(f"/proc/{s.block.tgid}/task/{tid.value}"):  # not a thread gone since
            k = bpf["blocks"].Key()
            k.block = type(k.block).from_buffer_copy(s.block)  # the same C struct, but each table has its own class
            k.tid = tid.value
            samples.append((k, delta, 1, 1))
    for k, *_ in samples:  # a sighting lost from the perf buffer: try now
        if w.sym.image(k.block.tgid) is None:
            w.sym.see(k.block.tgid)
    asked_blocks = {}
    for k, _ns, count, _ip in samples:
        if k.block.unwind == UNW_ASKED:
            ident = (k.tid, k.block.kstack, k.block.ustack)
            asked_blocks[ident] = asked_blocks.get(ident, 0) + count
    kcache = {}
    stats = {"unsnapshotted": set(), "rejected_chains": 0, "bp_unsure": 0, "cfi_only": 0}
    merged = {}
    libc_unrecovered = [0, 0]  # rows, ns
    recovered_rows = [0, 0]
    total_ns = 0
    for k, ns, count, in_progress in samples:
        b = k.block
        img = w.sym.image(b.tgid)
        kframes = _kernel_frames(bpf, b.kstack, kcache)
        uframes, nrec, umods = _user_frames(bpf, k, img, w, stats, asked_blocks)
        comm = b.comm.decode("utf-8", "replace")
        ident = (b.tgid, k.tid, comm, tuple(kframes), tuple(uframes))
        row = merged.get(ident)
        if row is None:
            row = merged[ident] = {"comm": comm, "pid": b.tgid, "tid": k.tid, "total_us": 0, "count": 0,
                                   "kernel_stack": kframes, "user_stack": uframes, "recovered": nrec,
                                   "user_modules": umods, "in_progress": 0, "_ns": 0}
        row["_ns"] += ns
        row["count"] += count
        row["in_progress"] += in_progress
        total_ns += ns
        if nrec:
            recovered_rows[0] += 1
            recovered_rows[1] += ns
        elif b.ustack >= 0 and img is not None and _libc_top(img, _first(bpf, b.ustack)):
            libc_unrecovered[0] += 1
            libc_unrecovered[1] += ns
    rows = list(merged.values())
    for r in rows:
        r["total_us"] = r.pop("_ns") // 1000
    rows.sort(key=lambda r: (-r["total_us"], -r["count"]))
    notes = _notes(ctx, bpf, w, stats, rows, libc_unrecovered, recovered_rows, total_ns)
    return {"rows": rows, "notes": notes, "stack_value": "total_us", "offcpu": _summary(bpf, w, stats, total_ns)}


def _first(bpf, stack_id):
    for a in bpf["ustacks"].walk(stack_id):
        return a
    return 0


def _stat(bpf, i):
    return prelude.percpu_sum(bpf["offcpu_stats"], i)


def _summary(bpf, w, stats, total_ns):
    return {
        "total_us": total_ns // 1000,
        "short_blocks_dropped": _stat(bpf, 0),
        "short_blocks_us": _stat(bpf, 1) // 1000,
        "kernel_stacks_lost": _stat(bpf, 2),
        "user_stacks_lost": _stat(bpf, 3),
        "processes_seen": len(w.sym.procs),
        "processes_unsnapshotted": len(stats["unsnapshotted"]),
        "unwind_sites_learned": len(w.learner.hints),
        "recovered_chains_rejected": stats["rejected_chains"],
    }


def _notes(ctx, bpf, w, stats, rows, libc_unrec, recovered, total_ns):
    notes = []
    short = _stat(bpf, 0)
    if short:
        notes.append(f"{short} blocks shorter than --min-block ({_stat(bpf, 1) / 1e6:.1f} ms in all) "
                     "were dropped in the kernel")
    lost_k, lost_u = _stat(bpf, 2), _stat(bpf, 3)
    if lost_k or lost_u:
        notes.append(f"stacks lost: {lost_k} kernel, {lost_u} user (EEXIST: two stacks hashed to one "
                     "slot of the stack map, more likely the more distinct stacks there are; or the stack could not "
                     "be read): their time is kept under [missing ... stack] frames")
    in_prog = sum(r["in_progress"] for r in rows)
    if in_prog:
        notes.append(f"{in_prog} blocks were still in progress when the run ended; their time so far is included")
    if stats["unsnapshotted"]:
        notes.append(f"{len(stats['unsnapshotted'])} process(es) exited before kit could read their memory maps: "
                     "their user frames show as [unknown]")
    if w.lost_sightings:
        notes.append(f"{w.lost_sightings} new-process events were lost (perf buffer full)")
    if w.lost_learn:
        notes.append(f"{w.lost_learn} stack windows for caller recovery were lost (perf buffer full); "
                     "their call sites are asked about again")
    if recovered[0]:
        notes.append(f"libc has no frame pointers, so the kernel's stack walk skips the function that called a "
                     f"libc wrapper; kit recovered it from libc's unwind tables in {recovered[0]} stack(s) "
                     f"({100.0 * recovered[1] / max(total_ns, 1):.0f}% of the time)")
    if stats["cfi_only"]:
        notes.append(f"{stats['cfi_only']} stack(s) pass through code built without frame pointers: kit followed "
                     f"them through the unwind tables for up to {hidden_frames.MAX_HIDDEN} frames and marks where "
                     f"it had to stop ({NO_FP_ABOVE}); building the program with -fno-omit-frame-pointer shows "
                     "the rest")
    if libc_unrec[0]:
        notes.append(f"{libc_unrec[0]} stack(s) ({100.0 * libc_unrec[1] / max(total_ns, 1):.0f}% of the time) start "
                     "in libc and lack the function that called into it: libc keeps no frame pointers, so the "
                     "kernel's stack walk skips that caller. kit works out such a caller from libc's unwind "
                     "tables, but only after the first time a thread blocks at that spot in libc: blocks that "
                     "happened before then stay without it (a longer run shows fewer of them)")
    notes += usersyms.explain(rows, w.sym)
    if stats["rejected_chains"]:
        notes.append(f"{stats['rejected_chains']} recovered caller chain(s) failed the check against the unwind "
                     "tables and are not shown")
    return notes


HOOKS = Hooks(extra=extra, attach=attach, collect=collect, detach=procwatch.detach, cleanup=procwatch.cleanup)
