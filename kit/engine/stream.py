"""Streams: recipes whose answer is a line per event as it happens (execsnoop, oomkill) rather than
an aggregate read at the end.

The template outputs one record per event into the buffer its catalog entry names (`stream:
{buffer: MAP}`): a BPF ring buffer where the kernel has one (BPF_MAP_TYPE_RINGBUF, 5.8+: one
buffer for all CPUs, events in order), else a per-CPU perf buffer. Which one is a feature check
here, handed to the template as two integers every stream template must use:

    #if {{kit_ringbuf}}
    BPF_RINGBUF_OUTPUT(events, {{kit_stream_pages}});
    #else
    BPF_PERF_OUTPUT(events);
    #endif

and every output checks its result: kit_count(KIT_EVENTS) when it went out,
kit_count(KIT_BUFFER_LOST) when the buffer was full (user space fell behind). A third,
{{kit_stream_wake_ns}}, paces the ring buffer's wakeups (see WAKE_S; probes/execsnoop.c has the
pattern, kit_wake_flags()).

The record's fields are the catalog's `fields` (`from: event.MEMBER`, with `unit`, `decode`,
`len`, `values`, `kinds`), decoded here as each record arrives: no Python per recipe. The run's
wait loop polls the buffer instead of sleeping (Streamer.poll), so lines are written and flushed
as they come, human columns or JSON Lines (one object per event). A per-second cap (`--limit`,
default the catalog's `stream.limit`) keeps a flood from the terminal: events over it are still
decoded for the tallies and counted as `capped`, apart from what the kernel dropped. At the end
the probes are detached first and the buffer drained, so every event the kernel counted is either
received or counted as lost; the summary (events per kind, drops, counts per group such as comm)
goes into the result.
"""

import collections
import ctypes
import datetime
import errno
import functools
import os
import platform
import signal
import sys
import time

from kit.guard import bpfstats
from kit.engine.contract import DECODERS as ROW_DECODERS, STREAM_DECODERS, UNIT_DIGITS, UNIT_SCALE, source_value
from kit.errors import CompileError

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27
TOP_GROUPS = 20       # per-group counts kept in the summary (the rest are summed as "other")
MAX_GROUPS = 4096     # distinct values tallied per group field; beyond, counted as "other"
DRAIN_SETTLE_S = 0.02  # after detaching: a program already running on another CPU finishes its output
# The template wakes the reader for the first event after a quiet spell and then at most once per
# WAKE_S (a wakeup costs the traced task an IPI and a context switch, ~10 us here, measured by bench/);
# the reader drains the buffer itself every WAKE_S, so a line is never later than that.
WAKE_S = 0.05
PERF_WAKEUP_EVENTS = 16  # the perf buffer's equivalent: wake the reader every N records, drain the rest


# ---- which buffer ------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def ringbuf_available():
    """Can this kernel make a BPF ring buffer? Asked of the kernel (BPF_MAP_CREATE); without the
    privilege to ask, by its version (ring buffers came in 5.8)."""
    attr = (ctypes.c_uint32 * 12)(BPF_MAP_TYPE_RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE"))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(bpfstats.NR_BPF, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return True
    if ctypes.get_errno() in (errno.EPERM, errno.EACCES):
        return _kernel_at_least(5, 8)
    return False


def _kernel_at_least(major, minor, release=None):
    parts = (release or platform.release()).split(".")
    try:
        return (int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)) >= (major, minor)
    except (IndexError, ValueError):
        return False


def extra(ctx):
    """The integers every stream template uses: which buffer, and its size. A recipe with a table and a
    stream form (opensnoop) fills them in both, and {{kit_stream}} says which form this run is."""
    r = ctx.recipe
    spec = r.stream if r.output == "stream" else r.stream_form.stream
    out = {"kit_ringbuf": int(ringbuf_available()), "kit_stream_pages": spec.pages,
           "kit_stream_wake_ns": int(WAKE_S * 1e9)}
    if r.form or r.stream_form is not None:
        out["kit_stream"] = int(r.output == "stream")
    return out


# ---- decoding ----------------------------------------------------------------

def _strings(raw, _env):
    """NUL-separated strings (argv): a final NUL ends the last one; without it the last was cut."""
    if not raw:
        return []
    parts = raw.split(b"\0")
    if raw.endswith(b"\0"):
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


def _wallclock(ns, env):
    """A bpf_ktime_get_ns() timestamp (CLOCK_MONOTONIC) as local wall-clock time, ISO 8601."""
    t = env.wall_offset + ns / 1e9
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def _exit_code(status, _env):
    """A wait status (task->exit_code) -> the exit code, or None when a signal killed it."""
    return None if status & 0x7F else (status >> 8) & 0xFF


def _exit_signal(status, _env):
    sig = status & 0x7F
    if not sig:
        return None
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return name + (" (core dumped)" if status & 0x80 else "")


def _cgroup(cid, env):
    """A cgroup v2 id (its directory's inode, what bpf_get_current_cgroup_id gives) -> its path under
    the hierarchy's root, at the time of the event (it may be gone by the end of the run); the id
    when no directory has it."""
    if not cid:
        return None
    path = env.cgroups.path(cid)
    return path if path is not None else str(cid)


def _memcg(cid, env):
    """The id of a memory cgroup (its directory's inode on the hierarchy the memory controller is
    mounted on: v2, or v1's memory hierarchy) -> its path there."""
    if not cid:
        return None
    path = env.memcgs.path(cid)
    return path if path is not None else str(cid)


def _memcg_limit(cid, env):
    """The memory cgroup whose limit binds a task of memory cgroup `cid`: the nearest one, itself or
    an ancestor, with a limit set; None when none has one (the limit was the machine's memory)."""
    found = env.memcgs.limit(cid)
    return found[0] if found else None


def _memcg_max(cid, env):
    found = env.memcgs.limit(cid)
    return found[1] if found else None


# open(2) flags by name, in the order strace prints them; a composite (O_SYNC holds O_DSYNC's bit,
# O_TMPFILE O_DIRECTORY's) comes before its part. This machine's own values, from Python's os module,
# except O_LARGEFILE, which 64-bit libcs define as 0 (the kernel's bit: its asm/fcntl.h).
KERNEL_O_LARGEFILE = {"x86_64": 0o100000, "i686": 0o100000, "aarch64": 0o400000}.get(platform.machine(), 0)
OPEN_FLAGS = [(n, getattr(os, n, 0) or (KERNEL_O_LARGEFILE if n == "O_LARGEFILE" else 0)) for n in (
    "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_SYNC", "O_DSYNC", "O_ASYNC",
    "O_DIRECT", "O_LARGEFILE", "O_TMPFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_PATH")]
OPEN_FLAGS = [(n, v) for n, v in OPEN_FLAGS if v]
OPEN_ACCESS = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}


def _open_flags(flags, _env):
    """open(2) flags as O_RDONLY|O_CLOEXEC...; bits without a name here stay, in hex."""
    flags = int(flags)
    acc = flags & os.O_ACCMODE
    names = [OPEN_ACCESS.get(acc, f"{acc:#x}")]
    rest = flags & ~os.O_ACCMODE
    for name, bits in OPEN_FLAGS:
        if rest & bits == bits:
            names.append(name)
            rest &= ~bits
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names)


# decode: names a stream field may take beyond the row decoders (kit.engine.contract.DECODERS)
DECODERS = {
    "open_flags": _open_flags,
    "strings": _strings,
    "wallclock": _wallclock,
    "exit_code": _exit_code,
    "exit_signal": _exit_signal,
    "cgroup": _cgroup,
    "memcg": _memcg,
    "memcg_limit": _memcg_limit,
    "memcg_max": _memcg_max,
}

assert set(DECODERS) == set(STREAM_DECODERS), "kit.engine.contract.STREAM_DECODERS names the stream's decoders"

V1_UNLIMITED = 1 << 62   # v1 says "no limit" with PAGE_COUNTER_MAX pages in bytes (9223372036854771712 on 4k pages)


def memory_root(mountinfo="/proc/self/mountinfo"):
    """Where the memory controller's hierarchy is mounted: the v2 root if memory is enabled there,
    else v1's memory hierarchy (a hybrid box, systemd's legacy layout); None if neither."""
    from kit.catalog.params import cgroup2_roots
    for root in cgroup2_roots(mountinfo):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "memory" in f.read().split():
                    return root
        except OSError:
            continue
    try:
        with open(mountinfo) as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                post = post.split()
                if post[:1] == ["cgroup"] and len(post) >= 3 and "memory" in post[2].split(","):
                    return pre.split()[4]
    except OSError:
        pass
    return None


class Cgroups:
    """cgroup ids -> paths in one hierarchy, found by walking it (again when an id is new)."""

    def __init__(self, root):
        self.root = root
        self._paths = {}
        self._missed = set()

    def _walk(self):
        if not self.root:
            return
        for d, _dirs, _files in os.walk(self.root):
            try:
                self._paths[os.stat(d).st_ino] = d
            except OSError:
                continue

    def dir(self, cid):
        if cid not in self._paths and cid not in self._missed:
            self._walk()
            if cid not in self._paths:
                self._missed.add(cid)
        return self._paths.get(cid)

    def path(self, cid):
        d = self.dir(cid)
        if d is None:
            return None
        rel = os.path.relpath(d, self.root)
        return "/" if rel == "." else "/" + rel

    def limit(self, cid):
        """(path, limit in bytes) of the nearest memory-limited cgroup at or above cid, or None.
        v2 says memory.max, v1 memory.limit_in_bytes."""
        d = self.dir(cid) if cid else None
        while d and (d == self.root or d.startswith(self.root.rstrip("/") + "/")):
            v = None
            for name in ("memory.max", "memory.limit_in_bytes"):
                try:
                    with open(os.path.join(d, name)) as f:
                        v = f.read().strip()
                    break
                except OSError:
                    continue
            if v and v != "max" and v.isdigit() and int(v) < V1_UNLIMITED:
                rel = os.path.relpath(d, self.root)
                return ("/" if rel == "." else "/" + rel), int(v)
            if d == self.root:
                break
            d = os.path.dirname(d)
        return None


def decode(env, fields, ev, raw, kind=None):
    """{field: value} of one record by the catalog's fields (those of its kind): `from: event.MEMBER`
    read as kit.engine.contract reads a map's members, `len:` bounding a byte member."""
    out = {}
    for f in fields:
        if kind is not None and f.kinds and kind not in f.kinds:
            continue
        _side, _, member = f.source.partition(".")
        if f.length:
            m = getattr(type(ev), member)
            n = max(0, min(int(getattr(ev, f.length.partition(".")[2])), m.size))
            v = raw[m.offset:m.offset + n]
        elif f.decode == "strings":
            m = getattr(type(ev), member)
            v = raw[m.offset:m.offset + m.size].rstrip(b"\0") + b"\0"
        else:
            v = source_value(ev, member)
        if f.values:
            v = f.values[v] if isinstance(v, int) and 0 <= v < len(f.values) else str(v)
        elif f.decode in DECODERS:
            v = DECODERS[f.decode](v, env)
        elif f.decode:
            v = ROW_DECODERS[f.decode](v)
        elif member.endswith("_ns") and f.unit in UNIT_SCALE and isinstance(v, (int, float)):
            v = round(v / UNIT_SCALE[f.unit], UNIT_DIGITS[f.unit])
        out[f.name] = v
    return out


# ---- the streamer ------------------------------------------------------------

class Streamer:
    """Receives the records of one run, writes them as lines, and keeps the tallies.

    poll(seconds) is the run loop's sleep; finish() detaches the probes and drains the buffer;
    summary() is what goes into the result. Nothing here raises out of a buffer callback: a
    record that cannot be decoded is counted (`errors`), and a closed stdout ends the run."""

    def __init__(self, ctx, bpf, opts, out=None, err=None, clock=time.monotonic, wall=time.time, event_type=None):
        from kit import output
        self.ctx, self.bpf, self.recipe = ctx, bpf, ctx.recipe
        self.spec = ctx.recipe.stream
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.json = bool(getattr(opts, "json", False))
        limit = getattr(opts, "limit", None)
        self.limit = self.spec.limit if limit is None else limit
        self.clock = clock
        self.wall_offset = wall() - clock()
        from kit.catalog.params import cgroup2_roots
        self.cgroups = Cgroups((cgroup2_roots() or [None])[0])
        self.memcgs = Cgroups(memory_root())
        self.ring = bool(ctx.extra.get("kit_ringbuf"))
        self.fields = ctx.recipe.fields
        self.by_name = {f.name: f for f in self.fields}
        self.kind_field = self.by_name.get(self.spec.kind)
        # what a capped event still needs decoded: its kind, its groups, its failure and nonzero marks
        self.marks = [f for f in self.fields if f.show == "nonzero"]
        names = {self.spec.kind, *self.spec.group, *(f.name for f in self.fields if f.failure),
                 *(f.name for f in self.marks)}
        self.tally_fields = [f for f in self.fields if f.name in names]
        self.nonzero = collections.Counter()  # events in which each show: nonzero field was set (argv_cut, cut)
        self.received = self.shown = self.capped = self.errors = self.perf_lost = 0
        self.by_kind = collections.Counter()
        self.groups = {g: {} for g in self.spec.group}
        self.failed = 0
        self.stopped = None          # why the stream ended the run early (its output closed), or None
        self._second = None
        self._shown_this_second = 0
        self._capped_this_second = 0
        self._header_done = False
        self._output = output
        self.table = bpf[self.spec.buffer]
        self.event_type = event_type or self._event_class()
        for f in self.fields:
            for ref in (f.source, f.length):
                if ref and not hasattr(self.event_type, ref.split(".", 1)[1]):
                    raise CompileError(f"recipe {self.recipe.name}: field {f.name!r} reads {ref}, which the "
                                       f"record sent to {self.spec.buffer} does not have",
                                       "fix the catalog's fields or the template's struct")
        self._size = ctypes.sizeof(self.event_type)
        if self.ring:
            self.table.open_ring_buffer(self._on_ring)
        else:
            self.table.open_perf_buffer(self._on_perf, page_cnt=self.spec.pages, lost_cb=self._on_lost,
                                        wakeup_events=PERF_WAKEUP_EVENTS)

    def _event_class(self):
        """The record's ctypes layout, as BCC parsed it from the template's output call."""
        try:
            from bcc.table import _get_event_class
            return _get_event_class(self.table)
        except SystemExit:  # BCC prints and exits on a member type it cannot map to ctypes
            raise CompileError(f"recipe {self.recipe.name}: the record sent to {self.spec.buffer} has a member "
                               "type BCC cannot decode", "use plain integer and u8/char array members") from None

    @property
    def kind(self):
        return "ring buffer" if self.ring else "perf buffer"

    # -- the buffer's callbacks (run inside poll, in this thread) --------------
    def _on_ring(self, _ctx, data, size):
        self._record(data, size)
        return 0

    def _on_perf(self, _cpu, data, size):
        self._record(data, size)

    def _on_lost(self, n):
        self.perf_lost += n  # the kernel also counted each as KIT_BUFFER_LOST when its output failed

    def _record(self, data, size):
        try:
            ev = self.event_type()
            ctypes.memmove(ctypes.byref(ev), data, min(int(size), self._size))
            self.handle(ev)
        except BrokenPipeError:
            self.stopped = "output_closed"
        except Exception:  # one bad record must not stop the stream; it is counted
            self.errors += 1

    # -- one event ------------------------------------------------------------
    def handle(self, ev, now=None):
        """Tally one record, and show it unless this second's limit is reached."""
        raw = bytes(ev)
        self.received += 1
        kind = None
        if self.kind_field is not None:
            kind = decode(self, [self.kind_field], ev, raw)[self.kind_field.name]
            self.by_kind[kind] += 1
        now = self.clock() if now is None else now
        second = int(now)
        if second != self._second:
            self._end_second()
            self._second = second
        show = self.stopped is None and (not self.limit or self._shown_this_second < self.limit)
        values = decode(self, self.fields if show else self.tally_fields, ev, raw, kind)
        self._tally(values, kind)
        if not show:
            self.capped += 1
            self._capped_this_second += 1
            return values
        self._shown_this_second += 1
        self.shown += 1
        self._write(values, kind)
        return values

    def _tally(self, values, kind):
        failed = any(values.get(f.name) for f in self.fields if f.failure)
        self.failed += failed
        for f in self.marks:
            if values.get(f.name):
                self.nonzero[f.name] += 1
        for g, counts in self.groups.items():
            if g not in values:
                continue
            key = values[g]
            key = " ".join(key) if isinstance(key, list) else key
            if key not in counts and len(counts) >= MAX_GROUPS:
                key = "(other)"
            c = counts.setdefault(key, collections.Counter())
            c["events"] += 1
            if kind is not None:
                c[kind] += 1
            if failed:
                c["failed"] += 1

    def _write(self, values, kind):
        w = self.out.write
        if self.json:
            w(self._output.stream_json(values) + "\n")
        else:
            if not self._header_done:
                w(self._output.stream_header(self.recipe) + "\n")
                self._header_done = True
            w(self._output.stream_line(self.recipe, values, kind) + "\n")
        self.out.flush()

    def _end_second(self):
        if self._capped_this_second:
            self.err.write(f"kit: {self._capped_this_second} events over the limit of {self.limit}/s not shown "
                           "(counted in the summary; --limit 0 shows all)\n")
            self.err.flush()
        self._shown_this_second = self._capped_this_second = 0

    # -- the run loop's side ----------------------------------------------------
    def poll(self, seconds):
        """The wait loop's sleep: deliver what arrives for up to `seconds`, waking for the records the
        template woke us for and draining the rest every WAKE_S."""
        end = self.clock() + seconds
        while self.stopped is None:
            ms = max(1, int(min(WAKE_S, end - self.clock()) * 1000))
            if self.ring:
                self.bpf.ring_buffer_poll(ms)
            else:
                self.bpf.perf_buffer_poll(ms)
            self._consume()
            if self.clock() >= end:
                break

    def interleaves(self, err):
        """Would a progress line on err land among the event lines (both on one terminal)?"""
        try:
            return err.isatty() and self.out.isatty()
        except (AttributeError, ValueError):
            return False

    def _consume(self):
        if self.ring:
            self.bpf.ring_buffer_consume()
        else:
            self.bpf.perf_buffer_consume()

    def finish(self):
        """Detach the probes, then drain: every event the kernel counted is then here or lost."""
        for tp in list(getattr(self.bpf, "tracepoint_fds", {})):
            self.bpf.detach_tracepoint(tp)
        for tp in list(getattr(self.bpf, "raw_tracepoint_fds", {})):
            self.bpf.detach_raw_tracepoint(tp)
        self._consume()
        time.sleep(DRAIN_SETTLE_S)
        self._consume()
        self._end_second()

    def summary(self, stats):
        """The result's stream summary, rows (counts per the first group) and the other groups."""
        lost = stats.get("buffer_lost", 0)
        s = {"buffer": self.kind, "pages": self.spec.pages, "received": self.received, "shown": self.shown,
             "capped": self.capped, "limit": self.limit, "lost_in_kernel": lost, "failed": self.failed,
             "by_kind": self._kinds(), "errors": self.errors,
             "nonzero": {f.name: self.nonzero[f.name] for f in self.marks if self.nonzero[f.name]}}
        if self.stopped:
            s["stopped"] = self.stopped
        groups = {g: _top(g, counts) for g, counts in self.groups.items()}
        out = {"type": "summary", "stream": s, "rows": groups[self.spec.group[0]] if self.spec.group else [], "groups": groups,
               "notes": []}
        missing = stats.get("events", 0) - self.received
        if missing > 0:
            out["notes"].append(f"{missing} events the kernel sent never arrived (the run ended while they "
                                "were in flight)")
        if self.errors:
            out["notes"].append(f"{self.errors} records could not be decoded")
        if self.capped:
            out["notes"].append(f"{self.capped} events over the limit of {self.limit}/s were counted but not "
                                "shown (--limit N, or 0 for all)")
        return out

    def _kinds(self):
        """Events per kind, in the catalog's order of kinds."""
        order = list(self.kind_field.values) if self.kind_field else []
        return {k: self.by_kind[k] for k in sorted(self.by_kind, key=lambda k: (order.index(k) if k in order
                                                                                 else len(order), str(k)))}

    def close(self):
        """Nothing to free here: BCC frees the buffers in cleanup; the callbacks stay referenced by it."""


def _top(name, counts):
    rows = [{name: k, **dict(c)} for k, c in counts.items()]
    rows.sort(key=lambda r: (-r["events"], str(r[name])))
    if len(rows) > TOP_GROUPS:
        rest = rows[TOP_GROUPS:]
        other = collections.Counter()
        for r in rest:
            other.update({k: v for k, v in r.items() if k != name})
        rows = rows[:TOP_GROUPS] + [{name: f"({len(rest)} more)", **dict(other)}]
    return rows
