"""What a run's result says, as the evidence `kit triage` follows.

The first look (offcpu, with profile where it exists) becomes per-thread time on and off the CPU and a
list of wait sites: why threads waited (the kernel frames), where (the user frames), for how long, as a
share of those threads' time. A lock wait is read down to the lock functions lockhold can probe: the
application's own wrapper pair when the file that defines it has the matching unlock (argument-less
wrappers included), else the libc call. Step results give evidence too (lockhold's calls inside a
hold).

What is not code is data below: the kernel frames that say why a thread waited, the user calls that
name a lock, a resolver or a condition, the unlock names an application's lock function pairs with,
the thresholds. The live system (ELF symbol tables, /proc) is read through `System`, so the rules are
tested without a kernel.
"""

import dataclasses
import os
import re

from kit.binaries import elf
from kit.host import targets

# Why a thread waited, by the kernel frames of its off-CPU stack: a stack's kind is that of its
# innermost frame listed here (a thread preempted inside pipe_read waited for a CPU, not the peer).
KERNEL_WAITS = {
    "runqueue": ("a CPU (preempted while runnable)", (
        "preempt_schedule", "preempt_schedule_irq", "preempt_schedule_common", "preempt_schedule_notrace",
        "__cond_resched", "_cond_resched", "exit_to_user_mode_loop", "irqentry_exit_to_user_mode",
        "do_sched_yield")),
    "lock": ("a lock (futex)", (
        "futex_wait", "futex_do_wait", "__futex_wait", "futex_wait_queue", "futex_wait_queue_me",
        "futex_wait_multiple", "futex_lock_pi", "futex_wait_requeue_pi", "do_futex")),
    "disk": ("disk I/O", (
        "io_schedule", "io_schedule_timeout", "bit_wait_io", "__wait_on_buffer", "submit_bio_wait",
        "folio_wait_bit_common", "folio_wait_bit", "folio_wait_writeback", "__folio_lock", "__folio_lock_killable",
        "wait_on_page_bit_common", "__lock_page", "blk_mq_get_tag", "jbd2_log_wait_commit",
        "__blkdev_direct_IO_simple", "blkdev_direct_IO")),
    "tcp": ("a TCP socket", (
        "tcp_recvmsg", "tcp_recvmsg_locked", "tcp_sendmsg", "tcp_sendmsg_locked", "sk_stream_wait_memory",
        "sk_stream_wait_connect", "inet_wait_for_connect", "wait_for_connect", "inet_csk_accept",
        "inet_csk_wait_for_connect", "tcp_splice_read")),
    "peer": ("a pipe or local socket", (
        "pipe_read", "anon_pipe_read", "pipe_write", "anon_pipe_write", "pipe_wait_readable", "pipe_wait_writable",
        "unix_stream_read_generic", "unix_stream_data_wait", "unix_dgram_recvmsg", "unix_wait_for_peer",
        "__skb_wait_for_more_packets", "__skb_recv_udp", "udp_recvmsg", "sk_wait_data", "sock_recvmsg",
        "n_tty_read", "wait_woken")),
    "poll": ("poll, epoll or select", (
        "do_epoll_wait", "ep_poll", "do_sys_poll", "do_poll", "do_select", "core_sys_select")),
    "sleep": ("a sleep", (
        "do_nanosleep", "hrtimer_nanosleep", "common_nsleep", "__x64_sys_nanosleep", "__x64_sys_clock_nanosleep",
        "__x64_sys_pause", "do_sigtimedwait")),
}
FRAME_KIND = {f: kind for kind, (_label, frames) in KERNEL_WAITS.items() for f in frames}
GENERIC_SOCKET = frozenset({"sk_wait_data", "sock_recvmsg", "wait_woken", "__skb_wait_for_more_packets"})
LABELS = {kind: label for kind, (label, _frames) in KERNEL_WAITS.items()}
LABELS.update({"resolver": "a name lookup (the resolver)", "condition": "a condition variable or semaphore",
               "other": "something else in the kernel", "unknown": "an unknown reason (no kernel stack)"})

# User-space calls a futex wait sits under, and the call that ends their hold (lockhold's pair).
LOCK_CALLS = {
    "pthread_mutex_lock": ("pthread_mutex_lock", "pthread_mutex_unlock"),
    "__pthread_mutex_lock": ("pthread_mutex_lock", "pthread_mutex_unlock"),
    "___pthread_mutex_lock": ("pthread_mutex_lock", "pthread_mutex_unlock"),
    "__pthread_mutex_lock_full": ("pthread_mutex_lock", "pthread_mutex_unlock"),
    "pthread_mutex_timedlock": ("pthread_mutex_timedlock", "pthread_mutex_unlock"),
    "pthread_mutex_clocklock": ("pthread_mutex_clocklock", "pthread_mutex_unlock"),
    "pthread_rwlock_rdlock": ("pthread_rwlock_rdlock", "pthread_rwlock_unlock"),
    "pthread_rwlock_wrlock": ("pthread_rwlock_wrlock", "pthread_rwlock_unlock"),
    "pthread_rwlock_timedrdlock": ("pthread_rwlock_timedrdlock", "pthread_rwlock_unlock"),
    "pthread_rwlock_timedwrlock": ("pthread_rwlock_timedwrlock", "pthread_rwlock_unlock"),
}
# Waits for an event rather than for a lock's holder: not something lockhold measures.
CONDITION_CALLS = frozenset({"pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_clockwait",
                             "__pthread_cond_wait", "___pthread_cond_timedwait", "sem_wait", "sem_timedwait",
                             "sem_clockwait", "__new_sem_wait_slow64"})
# Frames of the C library's own lock internals, below the lock call.
LOCK_INTERNALS = frozenset({"__lll_lock_wait", "__lll_lock_wait_private", "lll_lock_wait", "futex_wait",
                            "__futex_abstimed_wait_common", "__futex_abstimed_wait_common64", "syscall"})
RESOLVER_CALLS = ("getaddrinfo", "gethostbyname", "gethostbyname2", "gethostbyname_r", "gethostbyname2_r",
                  "getaddrinfo_a", "getnameinfo", "gethostbyaddr")
# the resolver functions the getaddrinfo recipe (and lockhold --inside) can probe, the usual first
PROBED_RESOLVERS = ("getaddrinfo", "gethostbyname", "gethostbyname2")
# An application's lock function -> the name of its release (pool_lock -> pool_unlock).
UNLOCK_WORDS = (("lock", "unlock"), ("Lock", "Unlock"), ("LOCK", "UNLOCK"), ("acquire", "release"),
                ("Acquire", "Release"), ("enter", "leave"), ("enter", "exit"), ("Enter", "Leave"))
WRAPPER_DEPTH = 3        # application frames above the lock call searched for a function with an unlock
SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,255}")

BUSY_SHARE = 0.5         # a thread on CPU this much of the look is busy, or on CPU CPU_BOUND_ON of it and
CPU_BOUND_ON = 0.2       # runnable waiting for one the rest of BUSY_SHARE (it wants a CPU it does not get)
IDLE_ON_SHARE = 0.01     # ... under this, and waking less often than IDLE_WAKEUPS_PER_S, idle
IDLE_WAKEUPS_PER_S = 10
PER_PROCESS = ("runqueue",)  # kinds whose user frames say nothing: where a thread was preempted is chance
STUCK = ("lock", "disk")  # ...unless most of its off-CPU time is in one of these: then it is stuck, waiting
STUCK_SHARE = 0.5
FOLLOW_SHARE = 0.05      # a wait site under this share of its threads' time is not followed
MAX_SITES = 8


class System:
    """What the rules ask of the live box (tests pass their own)."""

    def files(self, pid):
        from kit.engine.uprobes import _search_order  # the order lockhold looks a symbol up in
        return _search_order(targets.mapped_files(pid))

    def defining_file(self, pid, name):
        """The path (as /proc shows it) of the one file pid maps that defines function `name`, with whether
        it is the executable or a library of its own (not libc), or None."""
        for m in self.files(pid):
            try:
                syms, _machine = elf.lookup(m.open_path, name)
            except elf.ElfError:
                continue
            if syms:
                own = not (targets.is_libc(m.path) or targets.is_libpthread(m.path)
                           or os.path.basename(m.path).startswith("ld-"))
                return (m.path, own, m.open_path) if len(syms) == 1 else None
        return None

    def defines(self, open_path, name):
        try:
            syms, _machine = elf.lookup(open_path, name)
        except elf.ElfError:
            return False
        return len(syms) == 1

    def imports(self, pid, names):
        """Which of `names` the process's own files (not libc's) call."""
        return targets.own_imports(pid, names)

    def busiest_tcp_port(self, pid):
        """The port most of the process's TCP sockets use (a listener's own, else the peer's), or None."""
        return busiest_port(_socket_inodes(pid), _tcp_table(pid))


def _socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _tcp_table(pid):
    """[(local port, remote port, state, inode)] of /proc/PID/net/tcp and tcp6 (the process's netns)."""
    rows = []
    for name in ("tcp", "tcp6"):
        text = targets.read_text(f"/proc/{pid}/net/{name}") or ""
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) < 10:
                continue
            try:
                rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), int(f[3], 16),
                             int(f[9])))
            except ValueError:
                continue
    return rows


TCP_LISTEN = 0x0A


def busiest_port(inodes, table):
    """The port most of these sockets use: a listener's own port for the connections it accepted, the
    peer's port for connections it made; ties to the lower port. None without TCP sockets."""
    mine = [r for r in table if r[3] in inodes]
    listening = {lp for lp, _rp, st, _i in mine if st == TCP_LISTEN}
    counts = {}
    for lp, rp, st, _i in mine:
        port = lp if st == TCP_LISTEN or lp in listening else rp
        if port:
            counts[port] = counts.get(port, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda p: (-counts[p], p))


# --- one stack ------------------------------------------------------------------------------------

def kernel_kind(kernel_stack):
    """(kind, the kernel frame that says so) of one off-CPU stack, innermost frame first."""
    frames = [f for f in kernel_stack or [] if not f.startswith("[")]
    if not frames:
        return "unknown", None
    for i, f in enumerate(frames):
        if f in FRAME_KIND:
            if f in GENERIC_SOCKET:  # any protocol's wait: the protocol's own frame above it decides
                proto = next((g for g in frames[i + 1:] if FRAME_KIND.get(g) in ("tcp", "peer")
                              and g not in GENERIC_SOCKET), None)
                if proto is not None:
                    return FRAME_KIND[proto], proto
            return FRAME_KIND[f], f
    return "other", next((f for f in frames if f not in ("__schedule", "schedule", "schedule_timeout")), frames[0])


def _named(f):
    return bool(f) and not f.startswith("[") and bool(SYMBOL_RE.fullmatch(f))


def unlock_names(fn):
    """Names the release of an application's lock function would have: pool_lock -> pool_unlock,
    lock_pool -> unlock_pool, Pool::Lock -> Pool::Unlock (mangled lengths rewritten)."""
    low = fn.lower()
    if "unlock" in low or "release" in low:
        return []
    out = []
    for a, b in UNLOCK_WORDS:
        if a not in fn:
            continue
        if fn.startswith("_Z"):  # Itanium mangling: <len><ident>
            for m in re.finditer(r"(?<![0-9])([0-9]+)", fn):
                n = int(m.group(1))
                ident = fn[m.end():m.end() + n]
                if len(ident) == n and a in ident:
                    new = ident[::-1].replace(a[::-1], b[::-1], 1)[::-1]
                    out.append(fn[:m.start()] + str(len(new)) + new + fn[m.end() + n:])
        else:
            i = fn.rfind(a)
            out.append(fn[:i] + b + fn[i + len(a):])
    return list(dict.fromkeys(out))


def user_kind(user_stack):
    """A kind the user frames decide over the kernel's: a name lookup or a condition wait, or None."""
    for f in user_stack or []:
        if f in RESOLVER_CALLS:
            return "resolver"
        if f in CONDITION_CALLS:
            return "condition"
    return None


def lock_site(row, pid, system):
    """Where a futex wait's lock is taken, as lockhold would probe it:
    {lock, unlock, wrapper (bool), call (the libc call), callers (application frames, innermost first),
    file (the file that defines the pair), frame (the application frame the wait sits under)};
    None when no frame names a lock lockhold can pair."""
    stack = [f for f in row.get("user_stack") or []]
    at = next((i for i, f in enumerate(stack) if f in LOCK_CALLS), None)
    callers = [f for f in (stack[at + 1:] if at is not None else stack) if _named(f) and f not in LOCK_INTERNALS]
    call = stack[at] if at is not None else None
    # the application's own pair: a function at most WRAPPER_DEPTH frames up, defined in its own files,
    # whose unlock the same file defines
    for fn in callers[:WRAPPER_DEPTH]:
        found = system.defining_file(pid, fn)
        if found is None or not found[1]:
            continue
        for unlock in unlock_names(fn):
            if system.defines(found[2], unlock):
                return {"lock": fn, "unlock": unlock, "wrapper": True, "call": call, "callers": callers,
                        "file": found[0], "frame": fn}
    if call is not None:
        lock, unlock = LOCK_CALLS[call]
        return {"lock": lock, "unlock": unlock, "wrapper": False, "call": call, "callers": callers,
                "file": None, "frame": callers[0] if callers else call}
    return None


# --- the first look ---------------------------------------------------------------------------------

@dataclasses.dataclass
class ThreadTime:
    pid: int
    tid: int
    comm: str
    off_us: int = 0
    blocks: int = 0
    on_us: float = None      # from profile's samples, else None (derived from the window)
    samples: int = 0
    stuck_us: int = 0        # off-CPU time in STUCK kinds of wait (a lock, the disk)
    runq_us: int = 0         # off-CPU time runnable, waiting for a CPU (preempted)

    def on(self, window_us):
        """On-CPU time: profile's samples, or what the window leaves after the off-CPU time."""
        if self.on_us is not None:
            return self.on_us
        return max(window_us - self.off_us, 0.0)


def thread_times(offcpu, profile=None):
    """{tid: ThreadTime} from an offcpu result and, when given, a profile result (samples x 1/hz)."""
    out = {}
    for r in (offcpu or {}).get("rows") or []:
        t = out.setdefault(r["tid"], ThreadTime(r["pid"], r["tid"], r["comm"]))
        t.off_us += int(r.get("total_us") or 0)
        t.blocks += int(r.get("count") or 0)
        kind = kernel_kind(r.get("kernel_stack"))[0]
        if kind in STUCK and user_kind(r.get("user_stack")) != "condition":
            t.stuck_us += int(r.get("total_us") or 0)
        elif kind == "runqueue":
            t.runq_us += int(r.get("total_us") or 0)
    if profile is not None:
        hz = (profile.get("params") or {}).get("hz") or 49
        for t in out.values():
            t.on_us = 0.0
        for r in profile.get("rows") or []:
            t = out.setdefault(r["tid"], ThreadTime(r["pid"], r["tid"], r["comm"], on_us=0.0))
            t.samples += int(r.get("samples") or 0)
            t.on_us = t.samples * 1e6 / hz
    return out


def thread_state(t, window_us):
    """busy, idle or waiting, from the thread's on-CPU share and how often it woke."""
    if window_us <= 0:
        return "idle"
    on = t.on(window_us) / window_us
    if on >= BUSY_SHARE or (on >= CPU_BOUND_ON and on + t.runq_us / window_us >= BUSY_SHARE):
        return "busy"  # on CPU, or wanting a CPU it does not get (the guardrail's CPU-bound, kit/guard/rate.py)
    stuck = t.stuck_us >= STUCK_SHARE * max(t.off_us, 1)  # blocked on a lock or the disk is not idle
    if on < IDLE_ON_SHARE and t.blocks / (window_us / 1e6) < IDLE_WAKEUPS_PER_S and not stuck:
        return "idle"
    return "waiting"


def wait_sites(offcpu, system, window_us, idle_tids=()):
    """Wait sites, biggest first: the off-CPU time of the threads that are not idle, grouped by
    (process, kind, site). Each: {kind, label, pid, comm, us, blocks, tids, share, frame, user_stack,
    kernel_frame, site (lock sites: lock_site())}."""
    groups = {}
    site_cache = {}
    for r in (offcpu or {}).get("rows") or []:
        if r["tid"] in idle_tids:
            continue
        kind, kframe = kernel_kind(r.get("kernel_stack"))
        uk = user_kind(r.get("user_stack"))
        if uk == "resolver" or (uk == "condition" and kind == "lock"):
            kind = uk
        user = [f for f in r.get("user_stack") or [] if _named(f)]
        site = None
        if kind == "lock":
            key = (r["pid"], tuple(r.get("user_stack") or []))
            if key not in site_cache:
                site_cache[key] = lock_site(r, r["pid"], system)
            site = site_cache[key]
            where = site["lock"] if site else (user[0] if user else kframe)
        elif kind == "resolver":
            where = next(f for f in r["user_stack"] if f in RESOLVER_CALLS)
        elif kind in PER_PROCESS:
            where = None
        else:
            where = _first_app(user)
        caller = _caller(user, where)
        g = groups.setdefault((r["pid"], kind, where, caller), {
            "kind": kind, "label": LABELS[kind], "pid": r["pid"], "comm": r["comm"], "us": 0, "blocks": 0,
            "tids": set(), "frame": where, "caller": caller, "user_stack": user, "kernel_frame": kframe,
            "site": site, "_top": 0})
        g["us"] += int(r.get("total_us") or 0)
        g["blocks"] += int(r.get("count") or 0)
        g["tids"].add(r["tid"])
        if int(r.get("total_us") or 0) > g["_top"]:  # the stack that holds most of the site's time speaks for it
            g["_top"] = int(r.get("total_us") or 0)
            g.update(user_stack=user, kernel_frame=kframe, comm=r["comm"])
    out = []
    for g in groups.values():
        g.pop("_top")
        g["tids"] = sorted(g["tids"])
        g["share"] = g["us"] / (window_us * len(g["tids"])) if window_us > 0 and g["tids"] else 0.0
        out.append(g)
    out.sort(key=lambda g: (-g["us"], g["pid"], g["kind"], str(g["frame"]), str(g["caller"])))
    return out[:MAX_SITES]


def _caller(user, where):
    """The frame above `where`: a helper (sleep_us) says little until its caller is named."""
    if where in user:
        i = user.index(where)
        return user[i + 1] if i + 1 < len(user) else None
    return None


def _first_app(user):
    """The innermost frame above the C library's wrappers: who made the call that waited."""
    for f in user:
        if f not in LOCK_INTERNALS and not f.startswith("__") and f not in LIBC_WRAPPERS:
            return f
    return user[0] if user else None


# C library wrappers a wait sits in: the caller above them says who waited.
LIBC_WRAPPERS = frozenset({"read", "write", "recv", "recvfrom", "recvmsg", "send", "sendto", "sendmsg", "poll",
                           "ppoll", "select", "pselect", "epoll_wait", "epoll_pwait", "nanosleep", "clock_nanosleep",
                           "usleep", "sleep", "accept", "accept4", "connect", "pread64", "pwrite64", "readv",
                           "writev", "fsync", "fdatasync", "open", "openat", "close", "ioctl", "wait4", "waitpid",
                           "sched_yield", "pause", "sigtimedwait", "futex"})


def hot_functions(profile, tids=None, top=5):
    """[{function, samples, share}] by self samples: the innermost user frame of each sample (the kernel's
    when the sample was in the kernel), over the given threads (all when None)."""
    counts, total = {}, 0
    for r in (profile or {}).get("rows") or []:
        if tids is not None and r["tid"] not in tids:
            continue
        n = int(r.get("samples") or 0)
        user = [f for f in r.get("user_stack") or [] if _named(f)]
        kern = [f for f in r.get("kernel_stack") or [] if _named(f)]
        fn = (kern[0] + " (kernel)") if kern else (user[0] if user else "[unknown]")
        counts[fn] = counts.get(fn, 0) + n
        total += n
    out = [{"function": f, "samples": n, "share": n / total if total else 0.0}
           for f, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out[:top]


def first_look(offcpu, profile, system, scope_threads=None):
    """The first look's reading: {window_s, threads: [...], state: busy|waiting|idle, sites: [...],
    hot: [...], on_cpu_from: profile|offcpu}. scope_threads: {tid: (pid, comm)} of the threads in scope
    when it began, so threads that never woke count too."""
    window_s = float((offcpu or profile or {}).get("duration_s") or 0.0)
    window_us = window_s * 1e6
    known = offcpu is not None  # without offcpu, on-CPU time is known and off-CPU time is not
    times = thread_times(offcpu, profile)
    for tid, (pid, comm) in (scope_threads or {}).items():
        if tid not in times:  # blocked all along (offcpu sees a block only when it ends or is in progress)
            times[tid] = ThreadTime(pid, tid, comm, off_us=int(window_us) if known else 0,
                                    on_us=0.0 if profile else None)
    threads = []
    for t in sorted(times.values(), key=lambda t: (t.pid, t.tid)):
        on = t.on(window_us)
        state = thread_state(t, window_us)
        threads.append({"pid": t.pid, "tid": t.tid, "comm": t.comm, "on_us": round(on),
                        "off_us": t.off_us if known else None, "blocks": t.blocks if known else None,
                        "runq_share": round(t.runq_us / window_us, 4) if known and window_us else None,
                        "samples": t.samples, "on_share": round(on / window_us, 4) if window_us else 0.0,
                        "off_share": (round(min(t.off_us / window_us, 1.0), 4) if window_us else 0.0) if known
                        else None,
                        "wakeups_per_s": (round(t.blocks / window_s, 1) if window_s else 0.0) if known else None,
                        "state": state if known or state == "busy" else "not busy"})
    idle = {t["tid"] for t in threads if t["state"] == "idle"}
    busy = [t for t in threads if t["state"] == "busy"]
    if not known:
        state = "busy" if busy else "not busy"
    elif len(idle) == len(threads):  # no thread (none woke, none ran) is idle too
        state = "idle"
    else:
        state = "busy" if busy else "waiting"
    sites = wait_sites(offcpu, system, window_us, idle) if known else []
    hot = hot_functions(profile, {t["tid"] for t in busy} or None) if profile else []
    return {"window_s": window_s, "threads": threads, "state": state, "sites": sites, "hot": hot,
            "on_cpu_from": "profile" if profile is not None else "offcpu", "off_cpu_known": known}


# --- step results ---------------------------------------------------------------------------------

def after_lockhold(result):
    """lockhold's --inside counts, when the resolver ran inside the lock: {fn, calls, holds_with_calls,
    holds, avg_us, max_us, outside}; else None."""
    inside = (result or {}).get("inside")
    if not inside or not inside.get("attached") or not inside["inside"]["count"]:
        return None
    if inside["function"] not in RESOLVER_CALLS:
        return None
    i = inside["inside"]
    return {"fn": inside["function"], "calls": i["count"], "holds_with_calls": inside["holds_with_calls"],
            "holds": inside["holds"], "avg_us": i["avg_us"], "max_us": i["max_us"],
            "outside": inside["outside"]["count"]}
