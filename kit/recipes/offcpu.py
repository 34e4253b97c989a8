"""offcpu: what the template needs from BTF, the watcher that snapshots new
processes and learns unwind hints while the run goes on, and the reading of
the totals into symbolized stacks at the end."""

import ctypes
import errno
import os
import threading
import time

from kit import btf, features, hidden_frames, prelude, targets, usersyms
from kit.errors import Unsupported
from kit.contract import Hooks

POLL_MS = 50            # how fast a new process is snapshotted after its first switch-out
REFRESH_S = 1.0         # how often live processes' maps are re-read (dlopen)
WINDOW_WORDS = 64       # must match KIT_WINDOW_WORDS in probes/offcpu.c
# Frames of the tracing machinery above the scheduler in a sched_switch stack.
SCHED_ENTRY = "__schedule"
UNWIND_HELPERS = ("bpf_task_pt_regs", "bpf_get_current_task_btf")
UNW_NONE, UNW_DONE, UNW_PARTIAL, UNW_ASKED, UNW_CFI = 0, 1, 2, 3, 4  # as in probes/offcpu.c
NO_FP_ABOVE = "[callers unknown: no frame pointers above]"


class _Learn(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("tid", ctypes.c_uint32), ("kstack", ctypes.c_int32),
                ("ustack", ctypes.c_int32), ("nwords", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("ip", ctypes.c_uint64),
                ("sp", ctypes.c_uint64), ("words", ctypes.c_uint64 * WINDOW_WORDS)]


def _kernel_has(*names):
    want = set(names)
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want:
                    want.discard(parts[2])
                    if not want:
                        return True
    except OSError:
        pass
    return False


def unwind_supported():
    """Can the BPF program read the user registers (ip, sp, bp) of the task it stops?"""
    return features.btf_available() and _kernel_has(*UNWIND_HELPERS)


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
    unwind = unwind_supported()
    if not unwind:
        ctx.notes.append("this kernel lacks bpf_task_pt_regs: callers hidden by libc's missing frame pointers "
                         "are not recovered")
    return {**offs, "unwind": int(unwind)}


class Watcher:
    """Background thread: snapshot processes on first sight, learn unwind hints.

    It owns the perf buffers' polling; detach() stops it before BCC frees them."""

    def __init__(self, bpf, unwind):
        self.bpf = bpf
        self.sym = usersyms.Symbolizer()
        self.learner = hidden_frames.Learner(self.sym)
        self.lost_sightings = 0
        self.lost_learn = 0
        self.errors = 0
        self.asked = {}  # (tid, kstack, ustack) -> [(chain, complete) from the block that asked, ...]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        bpf["first_sight"].open_perf_buffer(self._on_sight, page_cnt=8, lost_cb=self._on_lost_sight)
        self.unwind = unwind
        if unwind:
            bpf["unwind_learn"].open_perf_buffer(self._on_learn, page_cnt=64, lost_cb=self._on_lost_learn)
        self.thread = threading.Thread(target=self._loop, name="kit-offcpu-watch", daemon=True)

    def prewarm(self, pids):
        for pid in pids:
            self.sym.see(pid)

    def start(self):
        self.thread.start()

    def _on_sight(self, cpu, data, size):
        tgid = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32)).contents.value
        try:
            self.sym.see(tgid)
        except Exception:  # one odd process must not stop the watcher; its frames show as [unknown]
            self.errors += 1

    def _on_lost_sight(self, n):
        self.lost_sightings += n

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

    def poll_once(self, timeout_ms):
        with self._lock:
            self.bpf.perf_buffer_poll(timeout=timeout_ms)
            if self.unwind:
                self._push_hints()

    def _loop(self):
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            self.poll_once(POLL_MS)
            with self._lock:
                if time.monotonic() - last_refresh >= REFRESH_S:
                    self.sym.refresh_live()
                    last_refresh = time.monotonic()
                else:
                    self.sym.refresh_young(REFRESH_S)

    def stop(self):
        """Idempotent; after it returns nothing touches the BPF object from another thread."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def close(self):
        self.stop()
        self.sym.close()


def _in_scope_now(ctx):
    """Processes in scope that already run, so they are snapshotted before they can exit."""
    pid, tid, comm = ctx.values.get("pid"), ctx.values.get("tid"), ctx.values.get("comm")
    if pid:
        return [pid]
    if tid:
        try:
            with open(f"/proc/{tid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        return [int(line.split()[1])]
        except OSError:
            return []
    thread_comm = ctx.values.get("thread_comm")
    if comm is not None or thread_comm is not None:
        return [s.pid for s in targets.pids_by_comm(comm, thread_comm)]
    return []


def attach(ctx, bpf):
    what = prelude.auto_attached(bpf)
    w = Watcher(bpf, bool(ctx.extra.get("unwind")))
    ctx.private = w
    w.prewarm(_in_scope_now(ctx))
    w.start()
    return what


def detach(ctx, bpf):
    w = ctx.private
    if w is not None:
        w.stop()


def cleanup(ctx):
    w, ctx.private = ctx.private, None
    if w is not None:
        w.close()


# --- collecting ----------------------------------------------------------

def _kernel_frames(bpf, stack_id, cache):
    if stack_id < 0:
        return [f"[missing kernel stack: {errno.errorcode.get(-stack_id, stack_id)}]"]
    if stack_id in cache:
        return cache[stack_id]
    names = [bpf.ksym(a).decode("utf-8", "replace") for a in bpf["stacks"].walk(stack_id)]
    if SCHED_ENTRY in names:  # drop the tracing machinery that ran the probe
        names = names[names.index(SCHED_ENTRY):]
    cache[stack_id] = names
    return names


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
    """(frame names, number of recovered frames) for one sample."""
    b = key.block
    if b.ustack < 0:
        return [f"[missing user stack: {errno.errorcode.get(-b.ustack, b.ustack)}]"], 0
    addrs = list(bpf["stacks"].walk(b.ustack))
    if not addrs:
        return ["[empty user stack]"], 0
    if img is None or not img.maps:
        stats["unsnapshotted"].add(b.tgid)
        return ["[unknown]"] * len(addrs), 0
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
    if recovered and not complete:
        names.append(NO_FP_ABOVE)
    elif recovered and b.bp_unsure:
        names.append("[outer frames unknown: libc reused rbp]")
    return _collapse_unknown(names), len(recovered)


def _collapse_unknown(names):
    """A run of [unknown] frames is one thing (a frame-pointer walk gone astray): one frame, so the
    same wait folds together however far the walk strayed."""
    out = []
    for n in names:
        if n == "[unknown]" and out and out[-1] == "[unknown]":
            continue
        out.append(n)
    return out


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
        uframes, nrec = _user_frames(bpf, k, img, w, stats, asked_blocks)
        comm = b.comm.decode("utf-8", "replace")
        ident = (b.tgid, k.tid, comm, tuple(kframes), tuple(uframes))
        row = merged.get(ident)
        if row is None:
            row = merged[ident] = {"comm": comm, "pid": b.tgid, "tid": k.tid, "total_us": 0, "count": 0,
                                   "kernel_stack": kframes, "user_stack": uframes, "recovered": nrec,
                                   "in_progress": 0, "_ns": 0}
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
    for a in bpf["stacks"].walk(stack_id):
        return a
    return 0


def _stat(bpf, i):
    t = bpf["offcpu_stats"]
    return int(sum(t[t.Key(i)]))


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
        notes.append(f"stacks lost: {lost_k} kernel, {lost_u} user (stack map full, or the stack could not be "
                     "read): their time is kept under [missing ... stack] frames")
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


HOOKS = Hooks(extra=extra, attach=attach, collect=collect, detach=detach, cleanup=cleanup)
