"""What the target's off-CPU blocks look like, before anything is attached:
how deep their kernel and user stacks are, and whether they block right
after a `syscall` instruction (where offcpu walks libc's frames to recover
the hidden caller). That is most of what one block costs offcpu besides how
warm the caches are (kit/guard/costs.py prices it).

How: a perf event on sched:sched_switch per busiest in-scope thread (pid =
its tid, so only its own switch-outs fire), sampling every hit with its
callchain (PERF_SAMPLE_CALLCHAIN), for SAMPLE_S. The kernel collects that
callchain with the same code bpf_get_stackid uses, so the depths are the
ones offcpu's stack walks will meet. No BPF; a few hundred samples at most.
"""

import dataclasses
import mmap
import os
import struct
import time

from kit.host import features, perfevent

HOOK = "sched:sched_switch"
SAMPLE_S = 0.1
MAX_THREADS = 8
PAGES = 8
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_CALLCHAIN = 1 << 5
CONTEXT_KERNEL = (1 << 64) - 128   # PERF_CONTEXT_KERNEL, as u64
CONTEXT_USER = (1 << 64) - 512     # PERF_CONTEXT_USER
CONTEXT_MAX = (1 << 64) - 4095     # markers are the top 4095 values
SYSCALL_INSN = b"\x0f\x05"


@dataclasses.dataclass
class Shape:
    kernel_depth: float   # frames in a block's kernel stack, as perf's callchain counts them
    user_depth: float     # frames in its user stack (the frame-pointer walk)
    walk_share: float     # share of blocks right after a `syscall` instruction: the hidden-caller walk runs
    samples: int

    def as_dict(self):
        return {"kernel_depth": round(self.kernel_depth, 1), "user_depth": round(self.user_depth, 1),
                "walk_share": round(self.walk_share, 2), "samples": self.samples}


def parse_callchain(ips):
    """(kernel frames, user frames, first user ip or None) of one callchain with perf's context markers."""
    kernel = user = 0
    first_user = None
    where = None
    for ip in ips:
        if ip >= CONTEXT_MAX:
            where = "k" if ip == CONTEXT_KERNEL else "u" if ip == CONTEXT_USER else None
            continue
        if where == "k":
            kernel += 1
        elif where == "u":
            if first_user is None:
                first_user = ip
            user += 1
    return kernel, user, first_user


def after_syscall(pid, ip, read=None):
    """True when the code just before ip in process pid is a `syscall` instruction; None if unreadable."""
    if read is None:
        read = _read_mem
    code = read(pid, ip - len(SYSCALL_INSN), len(SYSCALL_INSN))
    return None if code is None else code == SYSCALL_INSN


def _read_mem(pid, addr, n):
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, n, addr)
    except OSError:
        return None
    finally:
        os.close(fd)


def summarize(chains, read=None):
    """Shape of [(pid, kernel frames, user frames, first user ip)], or None without samples."""
    if not chains:
        return None
    walks = [after_syscall(pid, ip, read) if ip else False for pid, _k, _u, ip in chains]
    known = [w for w in walks if w is not None]
    n = len(chains)
    return Shape(kernel_depth=sum(c[1] for c in chains) / n, user_depth=sum(c[2] for c in chains) / n,
                 walk_share=(sum(known) / len(known)) if known else 1.0, samples=n)


def sample(threads, seconds=SAMPLE_S, sleep=time.sleep):
    """Shape of the blocks of threads [(pid, tid)] (the busiest first), or None when none blocked or the
    kernel refused the events (then the caller prices the calibration's own shape)."""
    attr, keep = perfevent.tracepoint_attr(features.tracepoint_id(HOOK))
    events = []
    try:
        for pid, tid in threads[:MAX_THREADS]:
            a = perfevent.Attr.from_buffer_copy(attr)
            a.flags = perfevent.ATTR_DISABLED
            a.sample_period = 1
            a.sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_CALLCHAIN
            a.wakeup_events = 1 << 30  # read once, after the window
            try:
                fd = perfevent.open_event(a, tid, -1)
            except perfevent.PerfError:
                continue  # it exited, or this thread may not be watched
            try:
                ring = mmap.mmap(fd, (1 + PAGES) * perfevent.PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:
                os.close(fd)
                continue
            events.append((pid, fd, ring))
        if not events:
            return None
        for _pid, fd, _ring in events:
            perfevent.ioctl(fd, perfevent.IOC_ENABLE, 0)
        sleep(seconds)
        for _pid, fd, _ring in events:
            perfevent.ioctl(fd, perfevent.IOC_DISABLE, 0)
        chains = []
        for pid, _fd, ring in events:
            chains += [(pid, *parse_callchain(ips)) for ips in _records(ring)]
        return summarize(chains)
    finally:
        for _pid, fd, ring in events:
            ring.close()
            os.close(fd)
        del keep


def _records(ring):
    """Callchains of the sample records in a ring (TID then CALLCHAIN)."""
    head = struct.unpack_from("Q", ring, 1024)[0]
    data_off, data_size = struct.unpack_from("QQ", ring, 1040)
    if not data_size:
        data_off, data_size = perfevent.PAGE, len(ring) - perfevent.PAGE
    tail = struct.unpack_from("Q", ring, 1032)[0]
    out = []
    while tail + 8 <= head:
        rtype, _misc, size = struct.unpack("IHH", perfevent._ring_bytes(ring, data_off, data_size, tail, 8))
        if size < 8:
            break
        if rtype == perfevent.PERF_RECORD_SAMPLE and size >= 24:
            body = perfevent._ring_bytes(ring, data_off, data_size, tail + 8, size - 8)
            nr = struct.unpack_from("Q", body, 8)[0]
            if 16 + 8 * nr <= len(body):
                out.append(struct.unpack_from(f"{nr}Q", body, 16))
        tail += size
    return out
