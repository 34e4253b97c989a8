"""Generic, data-driven uprobe attach for recipes whose hook is a uprobe.

The catalog says what to attach (`attach: [{fn, symbol, at}]`, `binary:` naming
a parameter); this module decides where, checks every symbol before anything
attaches, and attaches through BCC by file descriptor. BCC 0.26 opens uprobes
with perf_event_open on the `uprobe` PMU (no tracefs `uprobe_events` entry),
so a kill -9 of kit closes the fds and the kernel removes the probes.

Where a probe goes:
  --binary B            B, for every process that maps it (or only --pid/--comm's)
  --pid P               the file in P's maps that defines the symbol (P's own libc)
  --comm C              hot path: each running process named C, or with a
  (--thread-comm C)     thread named C (kit/host/targets.py applies the prelude's
                        rule), breakpoints in those processes only; otherwise
                        the libcs they map plus kit's own, for every process,
                        filtered in the kernel by name (so processes started
                        later are caught)
  nothing               kit's own libc (hot path) or every libc on the box
A hot-path recipe (guard.hot_path) attaches per process with a pid, so the
kernel installs the breakpoint only in processes in scope: the rest of the box
pays nothing, not even a trap and a filter.
"""

import dataclasses
import errno
import os

from kit.binaries import elf, insn
from kit.guard import costs
from kit.host import features, perfevent, targets
from kit.errors import BadInput, CompileError, Unsupported

HOOK_TYPES = features.UPROBE_TYPES

def first_insn_kind(code, machine=elf.EM_X86_64):
    """kit/binaries/insn.py's kind of the instruction at the start of `code`; None off x86."""
    if machine not in (elf.EM_X86_64, elf.EM_386) or not code:
        return None
    return insn.kind(code)


def first_insn_cost_class(code, machine=elf.EM_X86_64):
    """'emulated' or 'single-step' for the instruction at the start of `code`;
    'unknown' on other architectures."""
    return cost_class(first_insn_kind(code, machine))


def cost_class(kind):
    """'emulated' or 'single-step' for an instruction of kit/binaries/insn.py's `kind`; 'unknown' for None."""
    if kind is None:
        return "unknown"
    return "emulated" if insn.emulated(kind) else "single-step"


def cycle_cost_ns(probes, symbols=None, cal=None):
    """Estimated ns the traced code pays for one pass through `symbols` (all
    probed symbols by default), at this host's calibrated prices (kit/guard/costs.py):
    one trap per probed function entry (shared by its entry and return probes),
    priced by its first instruction, plus the return trampoline of each uretprobe."""
    entries, returns = {}, set()
    for p in probes:
        if symbols is not None and p.symbol not in symbols:
            continue
        entries[p.symbol] = costs.uprobe_ns(p.kind, cal)
        if p.at == "return":
            returns.add(p.symbol)
    return sum(entries.values()) + costs.uretprobe_extra_ns(cal) * len(returns)


def uprobe_first_insn_cost_class(binary, symbol):
    """'emulated' (cheap, ~1 us per hit) or 'single-step' (~10-15 us per hit here)
    for a uprobe at `symbol` in `binary`; 'unknown' off x86. BadInput if the
    symbol is missing."""
    sym = elf.function(binary, symbol)
    _syms, machine = elf.lookup(binary, symbol)
    with elf.Elf(binary) as e:
        return first_insn_cost_class(e.read_at(sym.addr, 16), machine)


@dataclasses.dataclass
class Probe:
    fn: str            # C function in the template
    at: str            # entry or return
    symbol: str
    open_path: str     # what BCC and the kernel open
    shown: str         # the file as the target sees it
    addr: int          # the symbol's virtual address in that file
    offset: int        # its file offset: what the kernel's uprobe is keyed on
    pid: int           # -1: every process mapping the file
    cost: str          # emulated / single-step / unknown
    insn: str          # first bytes, hex, for the record
    kind: str = "other"  # kit/binaries/insn.py's kind of the first instruction, priced by; "other" off x86 (dearest)

    def as_dict(self):
        return {"symbol": self.symbol, "at": self.at, "binary": self.shown, "pid": self.pid,
                "first_insn": self.insn, "cost_class": self.cost}


def symbol_of(ctx, attach):
    if attach.symbol.startswith("="):
        return attach.symbol[1:]
    return ctx.value(attach.symbol)


def _search_order(mappings):
    """Where a symbol is looked up in one process: the executable, then
    libpthread and libc (where the pthread and resolver functions live), then
    the other libraries, as the dynamic linker would mostly bind them."""
    def rank(m):
        if m.is_exe:
            return 0
        if targets.is_libpthread(m.path):
            return 1
        if targets.is_libc(m.path):
            return 2
        return 3
    return sorted(mappings, key=rank)


def _sites(ctx):
    """[(pid or -1, [candidate Mappings in search order], what)]: where each symbol is looked up."""
    per_process = ctx.recipe.guard.hot_path
    binary_path = ctx.value(ctx.hook.binary) if ctx.hook.binary else None
    pid = ctx.value("pid") if "pid" in ctx.recipe.params else None
    comm = ctx.value("comm") if "comm" in ctx.recipe.params else None
    thread_comm = ctx.value("thread_comm") if "thread_comm" in ctx.recipe.params else None
    named = comm is not None or thread_comm is not None
    scope = targets.scope_text(comm, thread_comm)

    def comm_pids():
        """The processes with a thread the prelude's name rule admits (kit/host/targets.py)."""
        found = targets.pids_by_comm(comm, thread_comm)
        if not found:
            if thread_comm is None:
                what = f"no running process is named {comm!r}, nor has a thread of that name"
            else:
                what = f"no running process has a thread named {thread_comm!r}" + \
                    (f" in scope of --comm {comm!r}" if comm is not None else "")
            raise BadInput(what,
                           f"{ctx.recipe.name} attaches to running processes: start it first, check the names with "
                           "`ps -eo comm` (processes) or `ps -eL -o comm` (threads), or give --binary PATH to trace "
                           "every process of that executable")
        ctx.notes.extend(targets.thread_only_notes(found, comm))
        return [f.pid for f in found]

    if binary_path:
        binary = targets.user_binary(binary_path)
        wanted = [pid] if pid else (comm_pids() if named and per_process else [])
        if not wanted:
            return [(-1, [binary], binary_path)]
        sites = []
        for p in wanted:
            m = targets.find_mapping(p, binary)
            if m is None:
                if pid:
                    raise BadInput(f"process {p} does not map {binary_path}",
                                   f"check `grep {binary_path.rsplit('/', 1)[-1]} /proc/{p}/maps`; "
                                   "or drop --binary to use the file the process maps")
                continue
            sites.append((p, [m], f"pid {p}"))
        if not sites:
            raise BadInput(f"no process in scope of {scope} maps {binary_path}",
                           "drop --binary to use the files those processes map")
        return sites
    if pid:
        return [(pid, _search_order(targets.mapped_files(pid)), f"pid {pid}")]
    if named and per_process:
        found = comm_pids()
        ctx.notes.append(f"traced the {len(found)} process{'es' if len(found) > 1 else ''} with threads in scope of "
                         f"{scope} running when kit attached; processes started later are not traced "
                         "(--binary PATH covers them)")
        return [(p, _search_order(targets.mapped_files(p)), f"pid {p}") for p in found]
    if named:
        libcs = {}
        found = targets.pids_by_comm(comm, thread_comm)
        ctx.notes.extend(targets.thread_only_notes(found, comm))
        for m in [targets.host_libc()] + [targets.libc_of(f.pid) for f in found]:
            if m is not None:
                libcs.setdefault((m.dev, m.ino), m)
        return [(-1, [m], "every process") for m in libcs.values()]
    libcs = [targets.host_libc()] if per_process else targets.all_libcs()
    return [(-1, [m], "every process") for m in libcs]


def plan(ctx):
    """Resolves every attach point to (file, address, pid) and checks it, before
    anything attaches. Stores the probes in ctx.planned_uprobes."""
    probes, missing_optional = [], set()
    for pid, candidates, _what in _sites(ctx):
        if not candidates:
            raise BadInput(f"cannot read the memory map of process {pid}",
                           "it exited, or kit lacks the privilege to read /proc/PID/maps")
        for a in ctx.hook.attach:
            name = symbol_of(ctx, a)
            if not name and a.optional:
                continue  # an optional attach point whose symbol parameter is unset
            if not name:
                raise BadInput(f"no symbol given for {a.fn}", f"give --{a.symbol.replace('_', '-')} NAME")
            found = None
            for m in candidates:
                try:
                    syms, _machine = elf.lookup(m.open_path, name)
                except elf.ElfError:
                    continue
                if syms:
                    found = m
                    break
            if found is None:
                if a.optional:
                    missing_optional.add(name)
                    continue
                where = candidates[0].shown if len(candidates) == 1 else \
                    f"process {pid} (its executable and {len(candidates) - 1} libraries)"
                raise BadInput(f"symbol {name!r} is not defined in {where}",
                               f"check the name with `nm -D FILE | grep -w {name}` (or `nm` for static functions);"
                               " give --binary PATH for the file that defines it")
            sym = elf.function(found.open_path, name, found.shown)
            _syms, machine = elf.lookup(found.open_path, name)
            with elf.Elf(found.open_path) as e:
                code, offset = e.read_at(sym.addr, 16), e.file_offset(sym.addr)
            kind = first_insn_kind(code, machine)
            probes.append(Probe(fn=a.fn, at=a.at, symbol=name, open_path=found.open_path, shown=found.shown,
                                addr=sym.addr, offset=offset, pid=pid, cost=cost_class(kind),
                                insn=code[:8].hex(" "), kind=kind or "other"))
    ctx.planned_uprobes = probes
    for name in sorted(missing_optional):
        ctx.notes.append(f"{name} is not defined in the probed library; its calls are not counted")
    slow = sorted({p.symbol for p in probes if p.cost == "single-step"})
    if slow:
        ctx.notes.append(f"{', '.join(slow)} start{'s' if len(slow) == 1 else ''} with an instruction the kernel "
                         "single-steps at a uprobe: each call pays ~10-15 us here, not ~1 us")
    return probes


IOC_SET_BPF = 0x40042408  # _IOW('$', 8, u32)


def attach_one(bpf, path, offset, fn_name, ret=False, pid=-1, tag=""):
    """One uprobe (or uretprobe) at a file offset: perf_event_open on the uprobe
    PMU, the program set on it by ioctl, and the fd registered with BCC so
    cleanup() closes it. kit opens the event itself rather than through libbcc,
    whose bpf_attach_uprobe falls back to writing a named event into tracefs
    when the PMU refuses (a kill -9 then leaves it behind) and whose Python
    binding in 0.26 passes a stray ref_ctr_offset (iovisor/bcc#5236).
    Returns None, or the OSError the kernel answered."""
    from bcc import BPF
    if not features.pmu("uprobe"):
        raise Unsupported("this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe)",
                          "kit attaches uprobes only by file descriptor; use a kernel >= 4.17")
    fn = bpf.load_func(fn_name.encode(), BPF.KPROBE)
    attr, keep = perfevent.uprobe_attr(path, offset, retprobe=ret)  # ref_ctr_offset (config:32-63) stays 0
    attr.sample_period, attr.wakeup_events = 1, 1
    try:
        # a uprobe fires on every CPU; perf wants cpu 0 when it is not tied to one pid
        fd = perfevent.open_event(attr, pid if pid > 0 else -1, -1 if pid > 0 else 0)
    except OSError as e:
        return e
    finally:
        del keep
    try:
        perfevent.ioctl(fd, IOC_SET_BPF, fn.fd)
        perfevent.ioctl(fd, perfevent.IOC_ENABLE, 0)
    except OSError as e:
        os.close(fd)
        return e
    ev_name = b"kit_%s%s_%s_0x%x" % (b"r" if ret else b"p", tag.encode(), fn_name.encode(), offset)
    bpf._add_uprobe_fd(ev_name, fd)  # BCC's key for cleanup(), which closes the fd
    return None


def refusal_hint(e):
    """What to do when the kernel refuses a uprobe."""
    if e.errno == errno.EINVAL:
        return ("another tool may hold a uprobe at this address with a USDT semaphore offset (dmesg: "
                "'ref_ctr_offset mismatch'; BCC 0.26's own tools do, iovisor/bcc#5236): stop it and rerun kit")
    return "run `kit doctor`; `dmesg | tail` may say why the kernel refused it"


def attach(ctx, bpf):
    """Attaches the planned probes. A process that exited since planning is
    skipped; anything else is an error (the run engine then detaches whatever
    did attach)."""
    done, gone = [], set()
    for i, p in enumerate(ctx.planned_uprobes):
        e = attach_one(bpf, p.open_path, p.offset, p.fn, ret=p.at == "return", pid=p.pid, tag=str(i))
        if e is not None:
            if p.pid > 0 and not os.path.exists(f"/proc/{p.pid}"):
                gone.add(p.pid)
                continue
            raise CompileError(f"the kernel refused a uprobe on {p.symbol} in {p.shown} (pid {p.pid}): "
                               f"{e.strerror or e}", refusal_hint(e))
        done.append(p)
    for pid in sorted(gone):
        ctx.notes.append(f"process {pid} exited before kit attached; it is not traced")
    if not done:
        raise CompileError("no uprobe could be attached (every target process exited)",
                           "start the process again and rerun kit")
    ctx.attached_uprobes = done
    return describe(done)


def describe(probes):
    syms = ", ".join(dict.fromkeys(p.symbol for p in probes))
    files = sorted({p.shown for p in probes})
    pids = sorted({p.pid for p in probes if p.pid > 0})
    who = f"pid {', '.join(map(str, pids))}" if pids else "every process"
    where = files[0] if len(files) == 1 else f"{len(files)} files"
    return f"{len(probes)} uprobes ({syms}) in {where}, {who}"


def summary(ctx):
    """What was attached, for the result: file, symbol, pid and cost class of each probe."""
    return [p.as_dict() for p in (ctx.attached_uprobes or ctx.planned_uprobes)]
