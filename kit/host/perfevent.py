"""perf_event_open through ctypes: per-CPU counting and sampling events on a
tracepoint or a uprobe, without loading any BPF program.

The guardrail uses these to measure how often a hook fires before attaching
anything (what `perf stat -e` and `perf record -e` do). A counting event
costs the kernel an increment per hit; a sampling event also writes one small
record (pid, tid) every `period` hits into a per-CPU ring buffer that is read
once, after the window is closed.
"""

import ctypes
import mmap
import os
import platform
import struct


PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_SAMPLE_TID = 1 << 1
PERF_FORMAT_TOTAL_TIME_ENABLED = 1 << 0
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_FLAG_FD_CLOEXEC = 1 << 3
IOC_ENABLE = 0x2400
IOC_DISABLE = 0x2401
ATTR_DISABLED = 1 << 0
ATTR_SIZE = 136  # PERF_ATTR_SIZE_VER8; older kernels accept a larger zero-tailed struct
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), 298)
PAGE = mmap.PAGESIZE


class Attr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("rest", ctypes.c_uint8 * (ATTR_SIZE - 72)),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class PerfError(OSError):
    pass


def _open(attr, pid, cpu):
    fd = _libc.syscall(NR_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise PerfError(e, f"perf_event_open: {os.strerror(e)}")
    return fd


def open_event(attr, pid, cpu):
    """perf_event_open(attr, pid, cpu): the fd, or PerfError (an OSError) with the kernel's errno."""
    return _open(attr, pid, cpu)


def ioctl(fd, request, arg):
    if _libc.ioctl(fd, request, ctypes.c_ulong(arg)) < 0:
        e = ctypes.get_errno()
        raise PerfError(e, f"perf ioctl {request:#x}: {os.strerror(e)}")


def online_cpus():
    """CPU numbers from /sys/devices/system/cpu/online ('0-3,5')."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def tracepoint_attr(tracepoint_id):
    """A counting event on a tracepoint, by its id (features.tracepoint_id: from tracefs)."""
    a = Attr(type=PERF_TYPE_TRACEPOINT, size=ATTR_SIZE, config=tracepoint_id)
    return a, None


def uprobe_attr(path, offset, retprobe=False):
    """A uprobe through the perf 'uprobe' PMU: config1 points to the path, config2 is the file offset."""
    base = "/sys/bus/event_source/devices/uprobe"
    with open(f"{base}/type") as f:
        ptype = int(f.read())
    config = 0
    if retprobe:
        with open(f"{base}/format/retprobe") as f:  # e.g. "config:0"
            config = 1 << int(f.read().strip().split(":")[1])
    keep = ctypes.create_string_buffer(os.fsencode(path))
    a = Attr(type=ptype, size=ATTR_SIZE, config=config, config1=ctypes.addressof(keep), config2=offset)
    return a, keep


class CpuEvents:
    """One event per online CPU, box-wide (pid -1); counting, or sampling every `periods[cpu]` hits."""

    def __init__(self, attr, keep=None, periods=None, pages=8):
        self.cpus = online_cpus()
        self.fds, self.rings = {}, {}
        self.periods = periods or {}
        self._keep = keep
        try:
            for cpu in self.cpus:
                a = Attr.from_buffer_copy(attr)
                a.flags = ATTR_DISABLED
                a.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED
                if periods:
                    a.sample_period = max(1, int(periods.get(cpu, 1)))
                    a.sample_type = PERF_SAMPLE_TID
                    a.wakeup_events = 1 << 30  # never wake anyone: the ring is read once, after disable
                self.fds[cpu] = _open(a, -1, cpu)
                if periods:
                    self.rings[cpu] = self._map(self.fds[cpu], pages)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _map(fd, pages):
        # Unprivileged users are limited by perf_event_mlock_kb: shrink the ring rather than fail.
        while True:
            try:
                return mmap.mmap(fd, (1 + pages) * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:
                if pages == 1:
                    raise
                pages //= 2

    def enable(self):
        import fcntl
        for fd in self.fds.values():
            fcntl.ioctl(fd, IOC_ENABLE, 0)

    def disable(self):
        import fcntl
        for fd in self.fds.values():
            fcntl.ioctl(fd, IOC_DISABLE, 0)

    def counts(self):
        return {cpu: n for cpu, (n, _) in self.read().items()}

    def read(self):
        """{cpu: (hits, seconds enabled)}, both kept by the kernel since the events were opened. Rates come
        from the kernel's own clock: a reader descheduled between its clock read and an enable or disable
        (a crowded box, which is when kit is run) would otherwise count a window it did not watch."""
        out = {}
        for cpu, fd in self.fds.items():
            n, enabled_ns = struct.unpack("QQ", os.read(fd, 16))
            out[cpu] = (n, enabled_ns / 1e9)
        return out

    def samples(self):
        """{cpu: ([(pid, tid), ...], lost records)} read from each ring after disable(); the records
        read are consumed (the ring's tail moves on), so the next call returns only newer ones."""
        out = {}
        for cpu, ring in self.rings.items():
            head = struct.unpack_from("Q", ring, 1024)[0]
            data_off, data_size = struct.unpack_from("QQ", ring, 1040)
            if not data_size:  # kernels before 4.1 do not fill these
                data_off, data_size = PAGE, len(ring) - PAGE
            tail = struct.unpack_from("Q", ring, 1032)[0]
            got, lost = [], 0
            while tail + 8 <= head:
                rtype, _misc, size = struct.unpack("IHH", _ring_bytes(ring, data_off, data_size, tail, 8))
                if size < 8:
                    break
                body = _ring_bytes(ring, data_off, data_size, tail + 8, size - 8)
                if rtype == PERF_RECORD_SAMPLE and len(body) >= 8:
                    got.append(struct.unpack_from("II", body))
                elif rtype == PERF_RECORD_LOST and len(body) >= 16:
                    lost += struct.unpack_from("QQ", body)[1]
                tail += size
            struct.pack_into("Q", ring, 1032, tail)  # data_tail: hand the space back to the kernel
            out[cpu] = (got, lost)
        return out

    def close(self):
        for ring in self.rings.values():
            ring.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds, self.rings = {}, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThreadEvents:
    """One counting event per thread (pid = the thread's id, any CPU): that thread's own hits, exactly,
    however busy the rest of the box is. A thread that exits or may not be watched is left out."""

    def __init__(self, attr, threads, keep=None):
        self.fds = {}
        self._keep = keep
        try:
            for pt in threads:
                a = Attr.from_buffer_copy(attr)
                a.flags = ATTR_DISABLED
                a.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED
                try:
                    self.fds[pt] = _open(a, pt[1], -1)
                except PerfError:
                    continue
        except BaseException:
            self.close()
            raise

    def enable(self):
        for fd in self.fds.values():
            ioctl(fd, IOC_ENABLE, 0)

    def disable(self):
        for fd in self.fds.values():
            ioctl(fd, IOC_DISABLE, 0)

    def read(self):
        """{(pid, tid): (hits, seconds enabled)}; a thread's event counts as enabled only while the thread
        runs, so its rate is the hits over the caller's own (wall-clock) window."""
        out = {}
        for pt, fd in self.fds.items():
            n, enabled_ns = struct.unpack("QQ", os.read(fd, 16))
            out[pt] = (n, enabled_ns / 1e9)
        return out

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ring_bytes(ring, off, size, pos, n):
    start = pos % size
    if start + n <= size:
        return ring[off + start:off + start + n]
    first = size - start
    return ring[off + start:off + size] + ring[off:off + n - first]


IOC_SET_BPF = 0x40042408

# perf_event hook targets a catalog may name: (perf type, config). Sampling events fire on a timer,
# whatever runs, so their rate is set by kit (frequency x CPUs) rather than measured.
SAMPLING_EVENTS = {"cpu-clock": (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK)}


def sampling_problem(target):
    """None if this kernel has perf events and kit knows the sampling event, else why not. Decided from
    files, as the other hook types are (no event is opened: kit list and a refusal's "recipes that still
    work here" make no perf_event_open); the capabilities are checked with every hook's, and `kit doctor`
    opens one for real."""
    if target not in SAMPLING_EVENTS:
        return f"unknown perf event {target!r} (kit knows {', '.join(SAMPLING_EVENTS)})"
    if not os.path.exists("/proc/sys/kernel/perf_event_paranoid"):
        return "this kernel has no perf events (CONFIG_PERF_EVENTS)"
    return None


def attach_sampling(ctx, bpf):
    """Runs the recipe's perf_event program on its sampling event on every online CPU, `frequency`
    times a second each (BCC opens one event per CPU; the fds are in bpf.open_perf_events, which
    teardown closes). Returns what was attached, for the 'attached' line."""
    hook = ctx.hook
    ptype, config = SAMPLING_EVENTS[hook.target]
    hz = int(ctx.value(hook.frequency))
    fn = hook.attach[0].fn
    bpf.attach_perf_event(ev_type=ptype, ev_config=config, fn_name=fn.encode(), sample_freq=hz)
    n = len(bpf.open_perf_events.get((ptype, config), {}))
    return f"{n} {hook.target} event{'s' if n != 1 else ''} at {hz} Hz"


def attach_bpf(attr, keep, prog_fd, pid=-1, cpu=-1):
    """Runs a loaded BPF program on every hit of the event (for `pid` only when given).
    Returns the perf fd; closing it detaches. Used by `kit calibrate` for its own targets."""
    import fcntl
    a = Attr.from_buffer_copy(attr)
    a.flags = ATTR_DISABLED
    a.sample_period = 1
    a.wakeup_events = 1
    fd = _open(a, pid, cpu)
    try:
        fcntl.ioctl(fd, IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, IOC_ENABLE, 0)
    except BaseException:
        os.close(fd)
        raise
    del keep  # the kernel copied the path during perf_event_open
    return fd
