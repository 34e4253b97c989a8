"""Next steps computed from a run's result: what dominates, and the exact command to run next.

One function per recipe turns the result's rows into hints, each {"text", "command"}: the text
names what the rows show (with the real pid, comm, function, host or flow) and the command is
paste-ready, with the real pid and, for a lock, the lock functions the user stack names. A
command is a kit command or, where kit has no recipe for the step, a standard tool (ip,
getent, strace). Both are written by kit/guard/suggest.py's rules, as a refusal's ways out are
(`Steps`): a kit line names a recipe and parameters of the catalog and every value passes
kit's typed layer now (so it runs as `kit ... --dry-run`), and never kit itself; a tool's
typed arguments (pid, address, host, netns) pass the same types. A value that fails: the
hint keeps its text and has no command. Nothing in the rows that supports a step: no hint.

What is not code is data below: the kernel frames that say why a thread waited, the lock calls
and their unlock, the thresholds. The system is read through `System` (live /proc, ELF symbol
tables) so the rules are tested without a kernel.
"""

import os
import re

from kit.binaries import elf
from kit.guard import suggest
from kit.host import targets

MIN_SHARE = 0.05        # a wait class under 5% of the off-CPU time gets no hint
MAX_HINTS = 4
LONG_HOLD_US = 1000     # lockhold: a hold this long is worth its holder stack
SLOW_LOOKUP_US = 100000  # getaddrinfo: a lookup this slow stalls its caller visibly
SYSCALL_SHARE = 0.5     # syscalls: one syscall with this share of a process's syscall time dominates
SLOW_IO_AVG_US = 5000   # biolatency: requests this slow on average are slow for any disk (an SSD's p99 is less)
SLOW_IO_MAX_US = 50000  # biolatency: or one request this slow
SLOW_CONNECT_MS = 200   # tcplife: a connect this slow lost a SYN or SYN-ACK (the first resend waits 1 s) or queued
REFUSED_MS = 1000       # tcplife: a connect that failed sooner was reset (refused), not timed out
MANY_CONNS = 5          # tcplife: this many connections from one process to one remote...
SHORT_MS = 1000         # ...living a median this short: one connection per request
OPEN_FAILS = 3          # opensnoop: a process failing this many opens (and ERROR_SHARE of them) is worth a step
SEARCH_DIRS = 3         # opensnoop: one missing name tried in this many directories is a search path
ERROR_SHARE = 0.1       # syscalls: a syscall failing this often is worth its arguments

# Why a thread waited, by the kernel frames of its off-CPU stack. A stack's class is that of its
# innermost frame listed here: a thread preempted inside pipe_read waited for a CPU, not the peer.
WAIT_CLASSES = {
    "runqueue": ("run queue", {"preempt_schedule", "preempt_schedule_irq", "preempt_schedule_common",
                               "preempt_schedule_notrace", "__cond_resched", "_cond_resched", "exit_to_user_mode_loop",
                               "irqentry_exit_to_user_mode", "do_sched_yield"}),
    "lock": ("futex/lock", {"futex_wait", "futex_do_wait", "__futex_wait", "futex_wait_queue", "futex_wait_queue_me",
                            "futex_wait_multiple", "futex_lock_pi", "futex_wait_requeue_pi", "do_futex"}),
    "disk": ("disk", {"io_schedule", "io_schedule_timeout", "bit_wait_io", "__wait_on_buffer", "submit_bio_wait",
                      "folio_wait_bit_common", "folio_wait_bit", "folio_wait_writeback", "__folio_lock",
                      "__folio_lock_killable", "wait_on_page_bit_common", "__lock_page", "blk_mq_get_tag",
                      "jbd2_log_wait_commit", "__blkdev_direct_IO_simple", "blkdev_direct_IO"}),
    "peer": ("peer I/O", {"pipe_read", "anon_pipe_read", "pipe_write", "anon_pipe_write", "pipe_wait_readable",
                          "pipe_wait_writable",
                          "unix_stream_read_generic", "unix_stream_data_wait", "unix_dgram_recvmsg", "tcp_recvmsg",
                          "tcp_recvmsg_locked", "sk_wait_data", "sk_stream_wait_memory", "sk_stream_wait_connect",
                          "inet_csk_accept", "__skb_wait_for_more_packets", "__skb_recv_udp", "udp_recvmsg",
                          "wait_for_connect", "inet_wait_for_connect", "do_epoll_wait", "ep_poll", "do_sys_poll",
                          "do_poll", "do_select", "core_sys_select", "n_tty_read", "sock_recvmsg"}),
    "sleep": ("sleep", {"do_nanosleep", "hrtimer_nanosleep", "common_nsleep", "__x64_sys_nanosleep",
                        "__x64_sys_clock_nanosleep", "__x64_sys_pause"}),
}
FRAME_CLASS = {f: cls for cls, (_label, frames) in WAIT_CLASSES.items() for f in frames}
LABELS = {cls: label for cls, (label, _f) in WAIT_CLASSES.items()} | {"other": "other", "unknown": "no kernel stack"}
# What a peer wait's kernel frame waits on, in words.
PEER_KIND = {"pipe_": "a pipe", "anon_pipe_": "a pipe", "unix_": "a Unix socket", "tcp_": "a TCP socket",
             "inet_csk_accept": "accept()", "inet_": "a TCP connect", "wait_for_connect": "a TCP connect",
             "sk_": "a socket", "__skb": "a socket",
             "udp": "a UDP socket", "sock_": "a socket", "ep_poll": "epoll_wait()", "do_epoll": "epoll_wait()",
             "do_sys_poll": "poll()", "do_poll": "poll()", "do_select": "select()", "core_sys_select": "select()",
             "n_tty": "a terminal"}

# User-space lock calls a futex wait sits under, and the call that ends the hold (lockhold's pair).
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
    "sem_wait": ("sem_wait", "sem_post"),
    "sem_timedwait": ("sem_timedwait", "sem_post"),
}
DEFAULT_LOCK = ("pthread_mutex_lock", "pthread_mutex_unlock")  # lockhold's own default pair
CONDITION_CALLS = {"pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_clockwait", "__pthread_cond_wait"}
# An application's own lock function -> the names its release would have.
UNLOCK_WORDS = (("lock", "unlock"), ("Lock", "Unlock"), ("LOCK", "UNLOCK"), ("acquire", "release"),
                ("Acquire", "Release"), ("enter", "leave"), ("enter", "exit"), ("Enter", "Leave"), ("Enter", "Exit"))
WRAPPER_DEPTH = 3       # application frames above the lock call searched for a function with an unlock pair
RESOLVER_CALLS = ("getaddrinfo", "gethostbyname", "gethostbyname2", "gethostbyname_r", "getaddrinfo_a")
BLOCKING_SYSCALLS = {"read", "readv", "pread64", "preadv", "recvfrom", "recvmsg", "recvmmsg", "futex", "poll", "ppoll",
                     "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2", "nanosleep", "clock_nanosleep",
                     "accept", "accept4", "connect", "wait4", "waitid", "fsync", "fdatasync", "sync_file_range",
                     "write", "writev", "pwrite64", "sendto", "sendmsg", "flock", "msgrcv", "semop", "io_getevents",
                     "io_uring_enter", "sched_yield", "pause", "rt_sigtimedwait", "rt_sigsuspend"}
SYSCALL_RE = re.compile(r"[a-z0-9_]{1,40}")   # no kit type names a syscall: bcc's names are these


def hint(text, command=None):
    return {"text": text, "command": command}


class Steps:
    """How a hint's command is written, by kit/guard/suggest.py's rules (tests pass a catalog and a pid for
    kit itself)."""

    def __init__(self, recipes=None, me=None):
        self._recipes = recipes  # a catalog, or a function that loads one (only when a step needs it)
        self.me = os.getpid() if me is None else me

    @property
    def recipes(self):
        if self._recipes is None:
            from kit import catalog
            self._recipes = catalog.load()
        elif callable(self._recipes):
            self._recipes = self._recipes()
        return self._recipes

    def kit(self, recipe, duration=None, **values):
        """`kit run RECIPE --PARAM VALUE ...`, or None when the catalog or a value's type refuses it."""
        return suggest.next_step(self.recipes, recipe, values, duration, me=self.me)

    def tool(self, *words, typed=()):
        """Another tool's command; typed: (kit type, value) pairs for the words that carry a pid, an
        address, a host or a netns, each checked as kit checks its own parameters."""
        if not all(suggest.value_ok(t, v, me=self.me) for t, v in typed):
            return None
        return suggest.shell_line(words)


def fmt_us(us):
    if us >= 1e6:
        return f"{us / 1e6:.1f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} us"


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else (many or word + 's')}"


# --- the system, as hints read it ---------------------------------------------------------------

class System:
    """What the rules ask of the live box (tests pass their own)."""

    def alive(self, pid):
        return pid is not None and os.path.isdir(f"/proc/{pid}/task")

    def name(self, pid):
        return targets.comm_of(pid)

    def threads(self, pid):
        try:
            return len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            return 0

    def _files(self, pid):
        from kit.engine.uprobes import _search_order  # the order lockhold looks a symbol up in
        return _search_order(targets.mapped_files(pid))

    def defining_file(self, pid, name):
        """(path as /proc shows it, is the executable) of the one mapped file of pid defining function
        `name`, or None (not defined, or defined twice: lockhold could not attach it unambiguously)."""
        for m in self._files(pid):
            try:
                syms, _machine = elf.lookup(m.open_path, name)
            except elf.ElfError:
                continue
            if syms:
                return (m.path, m.is_exe, m.open_path) if len(syms) == 1 else None
        return None

    def defines(self, open_path, name):
        try:
            syms, _machine = elf.lookup(open_path, name)
        except elf.ElfError:
            return False
        return len(syms) == 1 and syms[0].kind != elf.STT_GNU_IFUNC

    def imports(self, pid, names):
        """Which of `names` the process's own files (not libc's) call."""
        return targets.own_imports(pid, names)

    def netns_name(self, inode):
        """'' for kit's own network namespace (where a plain `ip` runs), a name from `ip netns` for a named
        one, else None."""
        try:
            if os.stat("/proc/self/ns/net").st_ino == inode:
                return ""
            names = sorted(os.listdir("/run/netns"))
        except OSError:
            return None
        for n in names:
            try:
                if os.stat(f"/run/netns/{n}").st_ino == inode:
                    return n
            except OSError:  # one going away as we look
                continue
        return None

    def exe(self, pid):
        """The process's executable, as /proc shows it (None once gone or for a kernel thread)."""
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None

    def own_mount_ns(self, pid):
        try:
            return os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
        except OSError:
            return True


def compute(result, system=None, steps=None):
    """The hints for a run's result: a list of {"text", "command"}, best first (maybe empty).
    Adds recipe-specific summaries to the result too (offcpu: result["waits"])."""
    rule = RULES.get(result.get("recipe"))
    if rule is None or not result.get("rows"):
        return []
    return rule(result, system or System(), steps or Steps())[:MAX_HINTS]


# --- offcpu ------------------------------------------------------------------------------------

def classify(kernel_stack):
    """(class, the kernel frame that says so) of one off-CPU stack, innermost frame first."""
    frames = [f for f in kernel_stack or [] if not f.startswith("[")]
    if not frames:
        return "unknown", None
    for f in frames:
        if f in FRAME_CLASS:
            return FRAME_CLASS[f], f
    past = [f for f in frames if f not in ("__schedule", "schedule", "schedule_timeout", "schedule_hrtimeout_range",
                                           "schedule_hrtimeout_range_clock", "io_schedule")]
    return "other", (past[0] if past else frames[0])


def _is_app(name, module):
    """A frame of the program (or a library of its own), not of libc or an unnamed one."""
    if not name or name.startswith("["):
        return False
    if module is None:
        return True
    return not (targets.is_libc(module) or targets.is_libpthread(module) or module.startswith("ld-linux")
                or module.startswith("["))


def _app_frames(row, start=0):
    names = row.get("user_stack") or []
    mods = row.get("user_modules") or [None] * len(names)
    return [n for n, m in zip(names[start:], list(mods)[start:] + [None] * len(names)) if _is_app(n, m)]


def _lock_site(row):
    """(lock call, application frames above it, outermost last) for a futex wait, or (None, frames)."""
    names = row.get("user_stack") or []
    for i, n in enumerate(names):
        if n in LOCK_CALLS or n in CONDITION_CALLS:
            return n, _app_frames(row, i + 1)
    return None, _app_frames(row)


def unlock_names(fn):
    """Names the release of an application lock function `fn` would have (pool_lock -> pool_unlock).
    Itanium-mangled C++ names get their length prefixes rewritten (_ZN4Pool4lockEv -> _ZN4Pool6unlockEv)."""
    low = fn.lower()
    if "unlock" in low or "release" in low:
        return []
    out = []
    if fn.startswith("_Z"):
        for a, b in UNLOCK_WORDS:
            for m in re.finditer(r"(\d+)", fn):
                n = int(m.group(1))
                ident = fn[m.end():m.end() + n]
                if len(ident) == n and a in ident and (m.start() == 0 or not fn[m.start() - 1].isdigit()):
                    new = ident[::-1].replace(a[::-1], b[::-1], 1)[::-1]
                    out.append(fn[:m.start()] + str(len(new)) + new + fn[m.end() + n:])
        return list(dict.fromkeys(out))
    for a, b in UNLOCK_WORDS:
        i = fn.rfind(a)
        if i >= 0:
            out.append(fn[:i] + b + fn[i + len(a):])
    return list(dict.fromkeys(out))


def lockhold_command(system, steps, pid, call, frames):
    """(command, lock function shown) for lockhold on the lock a futex wait sits under."""
    for fn in frames[:WRAPPER_DEPTH]:
        where = system.defining_file(pid, fn)
        if where is None:
            continue
        path, is_exe, open_path = where
        for unlock in unlock_names(fn):
            if system.defines(open_path, unlock):
                cmd = steps.kit("lockhold", pid=pid, lock=fn, unlock=unlock, binary=None if is_exe else path)
                return cmd, f"its lock functions {fn} and {unlock} in {os.path.basename(path)}"
    lock, unlock = LOCK_CALLS[call]
    pair = {} if (lock, unlock) == DEFAULT_LOCK else {"lock": lock, "unlock": unlock}
    return steps.kit("lockhold", pid=pid, stacks=True, **pair), f"{lock}/{unlock}, with the stacks that take it"


def _offcpu(result, system, steps):
    rows = result["rows"]
    total = sum(r.get("total_us", 0) for r in rows)
    if total <= 0:
        return []
    classes = {}
    for r in rows:
        cls, kfn = classify(r.get("kernel_stack"))
        c = classes.setdefault(cls, {"us": 0, "sites": {}})
        c["us"] += r["total_us"]
        call, frames = _lock_site(r) if cls == "lock" else (None, _app_frames(r))
        key = (r["pid"], call, frames[0] if frames else None, kfn if cls != "lock" else None)
        s = c["sites"].setdefault(key, {"us": 0, "tids": set(), "frames": frames, "comms": {}})
        s["us"] += r["total_us"]
        s["tids"].add(r["tid"])
        s["comms"][r["comm"]] = s["comms"].get(r["comm"], 0) + r["total_us"]
    result["waits"] = [{"class": cls, "label": LABELS[cls], "total_us": c["us"], "share": round(c["us"] / total, 3)}
                       for cls, c in sorted(classes.items(), key=lambda kv: -kv[1]["us"])]
    out = []
    for cls, c in classes.items():
        share = round(c["us"] / total, 3)
        if share < MIN_SHARE or cls not in OFFCPU_HINTS:
            continue
        h = OFFCPU_HINTS[cls](system, steps, c, share)
        if h:
            out.append((h[0], share, h[1]))
    # Tiers, then share: a contended lock first (its cause is inside the process, another of its threads
    # holds it, and lockhold names the holder); then waits on a resource (peer, disk, CPU); last the
    # waits the code chose (its own sleeps, condition variables of idle workers).
    out.sort(key=lambda t: (-t[0], -t[1]))
    return [h for _p, _s, h in out]


def _who(system, pid, site):
    """'4 threads (pay-db) of pay-svc (pid 8646)': the process by its name, its threads by theirs if they differ."""
    name = (system.name(pid) if system.alive(pid) else None) or max(site["comms"], key=site["comms"].get)
    others = sorted(c for c in site["comms"] if c != name)
    n = len(site["tids"])
    return f"{plural(n, 'thread')}{' (' + ', '.join(others) + ')' if others else ''} of {name} (pid {pid})"


def _top(c, want=lambda key: True):
    sites = [(k, s) for k, s in c["sites"].items() if want(k)]
    return max(sites, key=lambda ks: ks[1]["us"]) if sites else ((None, None, None, None), None)


def _head(cls, share):
    return f"{LABELS[cls]} is {share:.0%} of the off-CPU time"


def _lock_hint(system, steps, c, share):
    (pid, call, fn, _k), site = _top(c, lambda k: k[1] in LOCK_CALLS)
    if site is not None:
        text = (f"{_head('lock', share)}: {_who(system, pid, site)} waited {fmt_us(site['us'])} for a lock"
                f"{' taken in ' + fn if fn else ''} ({call})")
        if not system.alive(pid):
            return 2, hint(text + f"; pid {pid} has exited, so there is no holder left to follow")
        cmd, shown = lockhold_command(system, steps, pid, call, site["frames"])
        return 2, hint(text + f": who holds it, and for how long ({shown})", cmd)
    (pid, call, fn, _k), site = _top(c, lambda k: k[1] in CONDITION_CALLS)
    if site is not None:
        return 0, hint(f"{_head('lock', share)}: {_who(system, pid, site)} waited {fmt_us(site['us'])} on a condition "
                       f"variable{' in ' + fn if fn else ''} ({call}): usually workers waiting for work, not a lock "
                       "someone holds; look at the threads that should signal it")
    return None


def _site_text(system, cls, share, c, verb):
    (pid, _call, fn, kfn), site = _top(c)
    return pid, (f"{_head(cls, share)}: {_who(system, pid, site)} {verb} {fmt_us(site['us'])}"), fn, kfn


def _peer_hint(system, steps, c, share):
    pid, text, fn, kfn = _site_text(system, "peer", share, c, "waited")
    kind = next((w for p, w in PEER_KIND.items() if kfn and kfn.startswith(p)), "a peer")
    text += f" on {kind} ({kfn}){' in ' + fn if fn else ''}: the peer's latency is the question"
    if not system.alive(pid):
        return 1, hint(text)
    return 1, hint(text + "; how long each of its calls takes", steps.kit("syscalls", pid=pid, duration=10))


def _disk_hint(system, steps, c, share):
    pid, text, fn, kfn = _site_text(system, "disk", share, c, "waited")
    text += f" for the disk ({kfn}){' in ' + fn if fn else ''}: `iostat -x 1` shows the device's queue and latency"
    if not system.alive(pid):
        return 1, hint(text)
    return 1, hint(text + "; which of its syscalls wait", steps.kit("syscalls", pid=pid, duration=10))


def _sleep_hint(system, steps, c, share):
    _pid, text, fn, kfn = _site_text(system, "sleep", share, c, "slept")
    return 0, hint(text + f"{' in ' + fn if fn else ''} ({kfn}) by the code's own choice: a rate limit, "
                   "back-off or poll interval, not a resource")


def _runqueue_hint(system, steps, c, share):
    _pid, text, _fn, _kfn = _site_text(system, "runqueue", share, c, "waited")
    return 1, hint(text + " for a CPU (preempted while runnable): the CPUs are busy; see who uses them",
                   steps.tool("top", "-b", "-n", "1", "-o", "%CPU"))


OFFCPU_HINTS = {"lock": _lock_hint, "peer": _peer_hint, "disk": _disk_hint, "sleep": _sleep_hint,
                "runqueue": _runqueue_hint}


def waits_line(result):
    waits = result.get("waits") or []
    shown = [w for w in waits if w["share"] >= 0.01] or waits[:1]
    return "off-CPU time by wait: " + " | ".join(f"{w['label']} {w['share']:.0%}" for w in shown) if shown else None


# --- tcpretrans --------------------------------------------------------------------------------

def _ip(system, steps, row, *args, typed=()):
    """`ip ... ` run where the flow lives: its named network namespace, or its owner's."""
    ns = system.netns_name(row.get("netns")) if row.get("netns") else ""
    if ns:
        return steps.tool("ip", "-n", ns, *args, typed=(("netns", ns), *typed))
    if ns is None and row.get("pid") and system.alive(row["pid"]):
        return steps.tool("nsenter", "-t", row["pid"], "-n", "ip", *args, typed=(("pid", row["pid"]), *typed))
    return steps.tool("ip", *args, typed=typed)


def _tcpretrans(result, system, steps):
    rows = [r for r in result["rows"] if r.get("count")]
    if not rows:
        return []
    out = []
    total = sum(r["count"] for r in rows)
    by_peer = {}
    for r in rows:
        by_peer.setdefault(r["daddr"], []).append(r)
    daddr, flows = max(by_peer.items(), key=lambda kv: sum(r["count"] for r in kv[1]))
    n = sum(r["count"] for r in flows)
    if len(flows) > 1 and "addr" not in (result.get("scope") or {}):
        out.append(hint(f"{len(flows)} flows to {daddr} retransmit ({n} of {total} retransmits): that peer, or the "
                        "link to it, drops packets; follow that address alone",
                        steps.kit("tcpretrans", addr=daddr, duration=30)))
    top = rows[0]
    flow = f"{top['saddr']}:{top['sport']} -> {top['daddr']}:{top['dport']}"
    failed = f", {top['failed']} failed" if top.get("failed") else ""
    if top.get("pid") and system.alive(top["pid"]):
        out.append(hint(f"{flow} retransmitted {plural(top['count'], 'time')}{failed}; its owner is "
                        f"{top.get('comm') or '?'} (pid {top['pid']}): where the owner waits while its packets are "
                        "lost",
                        steps.kit("offcpu", pid=top["pid"], duration=20)))
    out.append(hint(f"{flow}: check the path to {top['daddr']} (the route and its device, then that device's "
                    "drop counters with `ip -s link`)",
                    _ip(system, steps, top, "route", "get", top["daddr"], typed=(("ipaddr", top["daddr"]),))))
    return out


# --- getaddrinfo -------------------------------------------------------------------------------

def _getaddrinfo(result, system, steps):
    rows = result["rows"]
    out = []
    slow = [r for r in rows if r.get("max_us", 0) >= SLOW_LOOKUP_US]
    if slow:
        r = max(slow, key=lambda r: r["total_us"])
        text = (f"lookups of {r['host'] or '(no host)'} by {r['comm']} (pid {r['pid']}) took up to "
                f"{fmt_us(r['max_us'])} (avg {fmt_us(r['avg_us'])}, {plural(r['count'], 'call')})")
        if system.alive(r["pid"]):
            out.append(hint(text + ": where the caller waits during them",
                            steps.kit("offcpu", pid=r["pid"], duration=20)))
            if system.threads(r["pid"]) > 1:
                out.append(hint(f"pid {r['pid']} has {system.threads(r['pid'])} threads: a lookup made while holding a "
                                "lock stalls every thread that wants it; are its locks held that long?",
                                steps.kit("lockhold", pid=r["pid"], stacks=True)))
        else:
            out.append(hint(text))
    failing = [r for r in rows if r.get("failed")]
    if failing:
        r = max(failing, key=lambda r: (r["failed"], r["count"]))
        text = (f"{r['failed']} of {plural(r['count'], 'lookup')} of {r['host'] or '(no host)'} by {r['comm']} "
                f"(pid {r['pid']}) failed")
        cmd = None
        if r["host"]:
            words, typed = ["getent", "ahosts", r["host"]], [("hostname", r["host"])]
            if system.alive(r["pid"]) and not system.own_mount_ns(r["pid"]):
                # the process's own /etc/hosts and resolv.conf
                words, typed = ["nsenter", "-t", r["pid"], "-m", *words], typed + [("pid", r["pid"])]
            cmd = steps.tool(*words, typed=typed)
        if cmd:
            out.append(hint(text + ": does the resolver fail the same way outside the program? (then check "
                            "/etc/resolv.conf, /etc/nsswitch.conf and the DNS server)", cmd))
        else:
            out.append(hint(text + ": check /etc/resolv.conf, /etc/nsswitch.conf and the DNS server"))
    return out


# --- lockhold ----------------------------------------------------------------------------------

def _lockhold_command(result, steps, pid, **extra):
    """lockhold again on the same lock (the run's own --binary, --lock and --unlock)."""
    params = result.get("params") or {}
    same = {k: params[k] for k in ("binary", "lock", "unlock") if params.get(k)}
    if same.get("lock") == DEFAULT_LOCK[0]:
        del same["lock"]
    if same.get("unlock") == DEFAULT_LOCK[1]:
        del same["unlock"]
    return steps.kit("lockhold", pid=pid, **same, **extra)


def _lockhold(result, system, steps):
    holds = [r for r in result["rows"] if r.get("what") == "hold" and r.get("max_us", 0) >= LONG_HOLD_US]
    if not holds:
        return []
    r = max(holds, key=lambda r: r["max_us"])
    pid = r["pid"]
    lock = (result.get("params") or {}).get("lock") or DEFAULT_LOCK[0]
    text = (f"{r['comm']} (pid {pid}) held the lock ({lock}) for up to {fmt_us(r['max_us'])} "
            f"({plural(r['count'], 'hold')}, avg {fmt_us(r['avg_us'])})")
    if not system.alive(pid):
        return [hint(text + f"; pid {pid} has exited")]
    out = []
    if not (result.get("params") or {}).get("stacks"):
        out.append(hint(text + ": which code path takes it for that long",
                        _lockhold_command(result, steps, pid, stacks=True)))
    calls = sorted(system.imports(pid, RESOLVER_CALLS))
    if calls:
        out.append(hint(f"pid {pid}'s program calls {', '.join(calls)}: a name lookup inside the lock would explain "
                        f"holds of {fmt_us(r['max_us'])}; how slow are its lookups?",
                        steps.kit("getaddrinfo", pid=pid, duration=20)))
    return out


# --- syscalls ----------------------------------------------------------------------------------

def _syscalls(result, system, steps):
    per_pid = {}
    for r in result["rows"]:
        per_pid.setdefault(r["pid"], []).append(r)
    out = []
    busiest = sorted(per_pid.items(), key=lambda kv: -sum(r["total_ms"] for r in kv[1]))
    for pid, rows in busiest[:2]:
        total = sum(r["total_ms"] for r in rows)
        by_call = {}
        for r in rows:
            c = by_call.setdefault(r["syscall"], {"ms": 0.0, "count": 0, "max_us": 0.0, "comm": r["comm"]})
            c["ms"] += r["total_ms"]
            c["count"] += r["count"]
            c["max_us"] = max(c["max_us"], r["max_us"])
        name, c = max(by_call.items(), key=lambda kv: kv[1]["ms"])
        if total > 0 and c["ms"] / total >= SYSCALL_SHARE and name in BLOCKING_SYSCALLS and system.alive(pid):
            out.append(hint(f"{c['comm']} (pid {pid}) spends {c['ms'] / total:.0%} of its syscall time in {name} "
                            f"({plural(c['count'], 'call')}, {c['ms']:.1f} ms, longest {fmt_us(c['max_us'])}): "
                            "where it waits, by stack", steps.kit("offcpu", pid=pid, duration=20)))
    errs = [r for r in result["rows"] if r.get("errors") and r["errors"] / max(r["count"], 1) >= ERROR_SHARE]
    if errs:
        r = max(errs, key=lambda r: r["errors"])
        if SYSCALL_RE.fullmatch(r["syscall"]) and system.alive(r["pid"]):
            out.append(hint(f"{r['syscall']} failed {r['errors']} of {plural(r['count'], 'time')} in {r['comm']} "
                            f"(pid {r['pid']}): its arguments and errors, for a few seconds",
                            steps.tool("timeout", "5", "strace", "-f", "-e", f"trace={r['syscall']}", "-p", r["pid"],
                                       typed=(("pid", r["pid"]),))))
    return out


# --- where a flow lives ------------------------------------------------------------------------

def _netns_of(system, row):
    """(kit's --netns value or None for kit's own namespace, words that run a command there or None).
    A named namespace is its name; an unnamed one its owner's pid while it lives; else unknown."""
    inode = row.get("netns")
    ns = system.netns_name(inode) if inode else ""
    if ns:
        return ns, ["ip", "netns", "exec", ns]
    if ns is None and row.get("pid") and system.alive(row["pid"]):
        return row["pid"], ["nsenter", "-t", row["pid"], "-n"]
    return (None, []) if ns == "" else (False, None)


def _there(system, steps, row, *words, typed=()):
    """A tool's command run in the flow's network namespace (None when kit cannot say how to get there)."""
    ns, prefix = _netns_of(system, row)
    if prefix is None:
        return None
    if ns:
        typed = (("netns", ns), *typed)
    return steps.tool(*prefix, *words, typed=typed)


def _flow_step(system, steps, recipe, row, **values):
    """kit RECIPE on one flow, with --netns where it lives elsewhere (None when that is unknown)."""
    ns, prefix = _netns_of(system, row)
    if prefix is None:
        return None
    return steps.kit(recipe, netns=ns or None, **values)


# --- biolatency --------------------------------------------------------------------------------

def _biolatency(result, system, steps):
    groups = {}
    for r in result["rows"]:
        if not r.get("count"):
            continue
        g = groups.setdefault((r["disk"], r["op"]), {"count": 0, "ms": 0.0, "max_us": 0.0, "errors": 0, "by": {}})
        g["count"] += r["count"]
        g["ms"] += r.get("total_ms") or 0.0
        g["max_us"] = max(g["max_us"], r.get("max_us") or 0.0)
        g["errors"] += r.get("errors") or 0
        who = g["by"].setdefault(r.get("pid") or 0, {"comm": r.get("comm") or "?", "ms": 0.0, "count": 0})
        who["ms"] += r.get("total_ms") or 0.0
        who["count"] += r["count"]
    if not groups:
        return []
    out = []
    failing = [(k, g) for k, g in groups.items() if g["errors"]]
    if failing:
        (disk, op), g = max(failing, key=lambda kg: kg[1]["errors"])
        out.append(hint(f"{g['errors']} of {plural(g['count'], op + ' request')} to {disk} failed: the kernel log "
                        "names the device's error and the sectors", steps.tool("dmesg", "--level=err,warn")))
    total_ms = sum(g["ms"] for g in groups.values())
    (disk, op), g = max(groups.items(), key=lambda kg: kg[1]["ms"])
    avg_us = g["ms"] * 1000 / g["count"]
    head = (f"{op}s to {disk}: {plural(g['count'], 'request')}, {g['ms'] / total_ms:.0%} of the device time "
            f"(avg {fmt_us(avg_us)}, max {fmt_us(g['max_us'])})" if total_ms > 0 else
            f"{op}s to {disk}: {plural(g['count'], 'request')}")
    slow = avg_us >= SLOW_IO_AVG_US or g["max_us"] >= SLOW_IO_MAX_US
    users = sorted(((pid, w) for pid, w in g["by"].items() if pid and pid != steps.me and not suggest.is_kthread(pid)),
                   key=lambda pw: -pw[1]["ms"])
    if not users:
        out.append(hint(head + ", issued by kernel threads (writeback, the journal): the processes that dirtied "
                        "the data are not known when it is written"))
        return out
    pid, w = users[0]
    share = w["ms"] / g["ms"] if g["ms"] > 0 else w["count"] / g["count"]
    who = f"{w['comm']} (pid {pid}) issued {w['count']} of them ({share:.0%} of their time)"
    if not system.alive(pid):
        out.append(hint(f"{head}; {who} and has exited"))
        return out
    if slow:
        out.append(hint(f"{head}, slow for any disk; {who}: how long its threads wait on them",
                        steps.kit("offcpu", pid=pid)))
        out.append(hint(f"which files {w['comm']} (pid {pid}) opens: the data behind those slow {op}s",
                        steps.kit("opensnoop", pid=pid)))
    else:
        out.append(hint(f"{head}: the device answers fast, so the disk is not what is slow; {who}: where it waits "
                        "instead", steps.kit("offcpu", pid=pid)))
    return out


# --- drops -------------------------------------------------------------------------------------

def _drops(result, system, steps):
    rows = [r for r in result["rows"] if r.get("count")]
    if not rows:
        return []
    total = sum(r["count"] for r in rows)
    by_reason = {}
    for r in rows:
        by_reason.setdefault(r.get("reason") or "", []).append(r)
    reason, rrows = max(by_reason.items(), key=lambda kv: sum(r["count"] for r in kv[1]))
    n = sum(r["count"] for r in rrows)
    top = max(rrows, key=lambda r: r["count"])
    flow = (f"{top['proto']} {top['saddr']}:{top['sport']} -> {top['daddr']}:{top['dport']}"
            if top.get("proto") else "packets without a flow kit could read")
    head = (f"{reason or 'drops in ' + (top.get('location') or '?')} is {n} of {plural(total, 'drop')}, most of them "
            f"{flow} ({top['count']}, in {top.get('location') or '?'})")
    out = []
    tcp = top.get("proto") == "tcp" and top.get("dport")
    if reason == "NETFILTER_DROP":
        out.append(hint(head + ": a firewall rule drops them; the ruleset's counters name the rule",
                        _there(system, steps, top, "nft", "list", "ruleset")))
    elif reason == "NO_SOCKET" and top.get("dport"):
        if tcp:
            out.append(hint(head + f": nothing listens on tcp port {top['dport']}; who tries to connect to it",
                            _flow_step(system, steps, "tcplife", top, port=top["dport"])))
        else:
            out.append(hint(head + f": nothing listens on {top['proto']} port {top['dport']}; what does listen there",
                            _there(system, steps, top, "ss", "-lnup" if top["proto"] == "udp" else "-lnp")))
    else:
        out.append(hint(head))
    if tcp:
        out.append(hint(f"TCP sends a dropped segment again: does {top['daddr']}:{top['dport']} retransmit, and "
                        "whose flow is it", _flow_step(system, steps, "tcpretrans", top, addr=top["daddr"],
                                                       port=top["dport"])))
    ns, _prefix = _netns_of(system, top)
    if ns and "netns" not in (result.get("scope") or {}) and n * 2 > total:
        out.append(hint(f"the drops are in network namespace {ns}: follow it alone",
                        steps.kit("drops", netns=ns)))
    return out


# --- tcplife -----------------------------------------------------------------------------------

def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0


def _tcplife(result, system, steps):
    remotes = {}
    for r in result["rows"]:
        if r.get("side") == "client":
            remotes.setdefault((r["daddr"], r["dport"], r.get("netns")), []).append(r)
    out = []
    # connects that failed: at once (a reset: refused) or after SYN resends (timed out)
    failed = {k: [r for r in rs if r.get("state") == "closed" and not r.get("established")]
              for k, rs in remotes.items()}
    failed = {k: f for k, f in failed.items() if f}
    if failed:
        (daddr, dport, _ns), f = max(failed.items(), key=lambda kv: len(kv[1]))
        r0 = f[0]
        who = f" by {r0['comm']} (pid {r0['pid']})" if r0.get("pid") else ""
        slowest = max(r["duration_ms"] for r in f)
        n_all = len(remotes[(daddr, dport, _ns)])
        if slowest < REFUSED_MS:
            out.append(hint(f"{len(f)} of {plural(n_all, 'connect')}{who} to {daddr}:{dport} failed within "
                            f"{fmt_us(slowest * 1000)}, so they were reset: nothing listens on port {dport} there, "
                            "or a firewall rejects them; what listens",
                            _there(system, steps, r0, "ss", "-ltn", f"sport = :{dport}", typed=(("port", dport),))))
        else:
            out.append(hint(f"{len(f)} of {plural(n_all, 'connect')}{who} to {daddr}:{dport} failed after up to "
                            f"{slowest / 1000:.1f} s, so their SYNs went unanswered: are they resent, and is anything "
                            "else to it lost", _flow_step(system, steps, "tcpretrans", r0, addr=daddr, port=dport)))
    # connects that established slowly
    slow = {k: [r for r in rs if (r.get("connect_ms") or 0) >= SLOW_CONNECT_MS] for k, rs in remotes.items()}
    slow = {k: v for k, v in slow.items() if v}
    if slow:
        (daddr, dport, _ns), v = max(slow.items(), key=lambda kv: len(kv[1]))
        worst = max(r["connect_ms"] for r in v)
        n_est = sum(1 for r in remotes[(daddr, dport, _ns)] if r.get("established"))
        out.append(hint(f"{len(v)} of {plural(n_est, 'connection')} to {daddr}:{dport} took over {SLOW_CONNECT_MS} ms "
                        f"to establish (up to {worst:.0f} ms): a SYN or SYN-ACK was lost and resent (the first resend "
                        "waits 1 s), or the server's accept queue was full; are they resent",
                        _flow_step(system, steps, "tcpretrans", v[0], addr=daddr, port=dport)))
    # many short connections from one process to one remote, each connecting fast
    churn = []
    for (daddr, dport, _ns), rs in remotes.items():
        per_pid = {}
        for r in rs:
            if r.get("pid") and r.get("established") and r.get("state") == "closed":
                per_pid.setdefault(r["pid"], []).append(r)
        for pid, conns in per_pid.items():
            life = _median(r["duration_ms"] for r in conns)
            slowest = max((r.get("connect_ms") or 0) for r in conns)
            if len(conns) >= MANY_CONNS and life <= SHORT_MS and slowest < SLOW_CONNECT_MS:
                churn.append((len(conns), pid, conns[0]["comm"], daddr, dport, life, slowest))
    if churn:
        n, pid, comm, daddr, dport, life, slowest = max(churn)
        out.append(hint(f"{comm} (pid {pid}) opened {n} connections to {daddr}:{dport} that lived a median "
                        f"{life:.0f} ms (one per request: no pool, or a broken one); they connect fast (at most "
                        f"{slowest:.1f} ms), so if its requests are slow to start the time goes before the SYN: its "
                        "name lookups", steps.kit("getaddrinfo", pid=pid) if system.alive(pid) else None))
    return out


# --- opensnoop ---------------------------------------------------------------------------------

def _opensnoop(result, system, steps):
    per_pid = {}
    for r in result["rows"]:
        if r["pid"] == steps.me:  # an unscoped run sees kit's own reads of /proc
            continue
        p = per_pid.setdefault(r["pid"], {"comm": r.get("comm") or "?", "opens": 0, "errs": {}})
        p["opens"] += r["count"]
        if r.get("error"):
            e = p["errs"].setdefault(r["error"], {})
            e[r["path"]] = e.get(r["path"], 0) + r["count"]
    cands = [(pid, p, sum(sum(e.values()) for e in p["errs"].values())) for pid, p in per_pid.items()]
    cands = [c for c in cands if c[2] >= OPEN_FAILS and c[2] / max(c[1]["opens"], 1) >= ERROR_SHARE]
    if not cands:
        return []
    pid, p, nfail = max(cands, key=lambda c: c[2])
    alive = system.alive(pid)
    exe = system.exe(pid) if alive else None
    who = f"{p['comm']} (pid {pid}{', ' + exe if exe else ''})"
    out = []
    for errno_name, paths in sorted(p["errs"].items(), key=lambda kv: -sum(kv[1].values()))[:2]:
        n = sum(paths.values())
        path, k = max(paths.items(), key=lambda kv: kv[1])
        shown = f"most of them {path} ({k})" if len(paths) > 1 else f"all of them {path}"
        head = f"{who} failed {n} of {plural(p['opens'], 'open')} with {errno_name}"
        stacks = (steps.tool("timeout", "5", "strace", "-f", "-k", "-e", "trace=open,openat,openat2",
                             "-e", "status=failed", "-p", pid, typed=(("pid", pid),)) if alive else None)
        if errno_name == "ENOENT":
            names = {}
            for q in paths:
                d, _sep, base = q.rstrip("/").rpartition("/")
                names.setdefault(base, set()).add(d)
            base, dirs = max(names.items(), key=lambda kv: len(kv[1]))
            if len(dirs) >= SEARCH_DIRS:
                out.append(hint(f"{head}, looking for {base} in {len(dirs)} directories: a search path (PATH, "
                                "LD_LIBRARY_PATH, a module or config path) that misses; which code in it searches, "
                                "by stack", stacks))
            else:
                out.append(hint(f"{head}, {shown}: a file it expects is missing (a config, a socket, a "
                                "path it was given); which code asks for it, by stack", stacks))
        elif errno_name in ("EACCES", "EPERM"):
            ok = path.startswith("/") and not path.endswith("...")
            out.append(hint(f"{head}, {shown}: permissions on the way to it, or a security module; the owner and "
                            "mode of every directory on its path", steps.tool("namei", "-l", path) if ok else None))
        elif errno_name in ("EMFILE", "ENFILE"):
            out.append(hint(f"{head}: it is out of file descriptors (EMFILE: its own limit); its limit",
                            steps.tool("prlimit", "--pid", pid, "--nofile", typed=(("pid", pid),)) if alive else None))
        else:
            out.append(hint(f"{head}, {shown}: which code asks, by stack", stacks))
    return out


RULES = {"offcpu": _offcpu, "tcpretrans": _tcpretrans, "getaddrinfo": _getaddrinfo, "lockhold": _lockhold,
         "syscalls": _syscalls, "biolatency": _biolatency, "drops": _drops, "tcplife": _tcplife,
         "opensnoop": _opensnoop}


def text(result):
    """The hints block of the human output ('' when there are none)."""
    from kit.errors import printable
    lines = []
    line = waits_line(result)
    if line:
        lines.append(line)
    for i, h in enumerate(result.get("hints") or [], 1):
        lines.append(f"next {i}: {printable(h['text'])}")
        if h.get("command"):
            lines.append(f"    $ {printable(h['command'])}")
    return "".join(x + "\n" for x in lines)
