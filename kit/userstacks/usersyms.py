"""User-space symbols for live processes and for processes that have exited.

BCC's per-pid symbol cache reads /proc/PID/maps and the mapped files when it
is asked, so it cannot name frames of a process that exited during the run.
kit instead snapshots /proc/PID/maps as soon as it first sees a process and
opens every mapped ELF file then (through /proc/PID/map_files, so a file
deleted or in another mount namespace still resolves). The open files are
what resolve the frames later, after the process is gone.

A frame in a function the file's symbol tables do not list (Debian's libc
exports pthread_mutex_lock but not __lll_lock_wait, where a contended mutex
waits) is named from the file's separate debug symbols when they are
installed (found by build id under /usr/lib/debug, as gdb and perf find
them), else as [file+0xSTART], START being where its unwind tables say the
function begins, so every address in it folds into one frame and
`addr2line -f -e FILE 0xSTART` names it wherever the symbols are.
"""

import os
import time

from kit.binaries import cfi, elf
from kit.host import procfs, targets

DEBUG_ROOT = "/usr/lib/debug"


def read_maps(pid):
    """Executable mappings (targets.MapsLine) of a live process, or None if it is gone."""
    text = procfs.read_text(f"/proc/{pid}/maps")
    if text is None:
        return None
    return [m for m in targets.parse_maps(text, files_only=False) if m.perms[2] == "x"]


class ElfCache:
    """One open Elf per (device, inode), shared by every process that maps it."""

    def __init__(self, debug_root=DEBUG_ROOT):
        self.files = {}
        self.debug_root = debug_root
        self._debug = {}    # (dev, inode) -> Elf of the file's separate debug symbols, or None
        self._eh = {}       # (dev, inode) -> cfi.EhFrame, or None
        self.unnamed = {}   # file name -> frames named only by where their function starts

    def debug_symbols(self, pid, m, e):
        """The file's separate debug symbols (an Elf with the full .symtab), or None if not installed."""
        key = (m.dev, m.ino)
        if key in self._debug:
            return self._debug[key]
        found, bid = None, None
        try:
            bid, link = e.build_id(), e.debuglink()
        except elf.ElfError:
            link = None
        cands = []
        for root in (f"/proc/{pid}/root{self.debug_root}", self.debug_root):
            if bid and len(bid) > 2:
                cands.append(f"{root}/.build-id/{bid[:2]}/{bid[2:]}.debug")
            if link and m.path.startswith("/"):
                cands.append(f"{root}{os.path.dirname(m.path)}/{link}")
        for cand in cands:
            try:
                d = elf.Elf(cand)
            except elf.ElfError:
                continue
            try:
                same = bid is None or d.build_id() == bid  # never names from another build's symbols
            except elf.ElfError:
                same = False
            if same:
                found = d
                break
            d.close()
        self._debug[key] = found
        return found

    def function_start(self, m, e, vaddr):
        key = (m.dev, m.ino)
        if key not in self._eh:
            try:
                self._eh[key] = cfi.EhFrame(e)
            except (cfi.CFIError, elf.ElfError, ValueError, IndexError):
                self._eh[key] = None
        eh = self._eh[key]
        try:
            return eh.function_start(vaddr) if eh else None
        except (cfi.CFIError, elf.ElfError, ValueError, IndexError):
            return None

    def get(self, pid, m):
        key = (m.dev, m.ino)
        if key in self.files:
            return self.files[key]
        found = None
        if m.ino and m.path.startswith("/"):
            for cand in (f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", f"/proc/{pid}/root{m.path}", m.path):
                try:
                    with open(cand, "rb") as f:
                        if os.fstat(f.fileno()).st_ino == m.ino:
                            found = elf.Elf(f)  # keeps its own descriptor of the file
                            break
                except (OSError, elf.ElfError):
                    pass
        self.files[key] = found
        return found

    def close(self):
        for e in list(self.files.values()) + list(self._debug.values()):
            if e is not None:
                e.close()
        self.files.clear()
        self._debug.clear()
        self._eh.clear()


class ProcessImage:
    """What kit keeps of one process to resolve its user addresses, live or exited."""

    def __init__(self, pid, cache):
        self.pid = pid
        self.cache = cache
        self.maps = []
        self.alive = True
        self.snapshots = 0
        self.seen_at = time.monotonic()

    def refresh(self):
        """Re-read the maps while the process lives (it may have loaded libraries). False once it is gone."""
        if not self.alive:
            return False
        maps = read_maps(self.pid)
        if maps is None:
            self.alive = False
            return False
        known = {(m.start, m.end, m.ino) for m in self.maps}
        for m in maps:
            if (m.start, m.end, m.ino) not in known:
                self.cache.get(self.pid, m)  # open the file now, while /proc/PID still exists
        # keep old mappings that were unmapped since: stacks may still point into them
        keep = [m for m in self.maps if not any(n.start < m.end and m.start < n.end for n in maps)]
        self.maps = sorted(maps + keep, key=lambda m: m.start)
        self.snapshots += 1
        return True

    def find(self, addr):
        for m in self.maps:
            if m.start <= addr < m.end:
                return m
        return None

    def locate(self, addr):
        """(mapping, Elf or None, ELF virtual address or None) for a user address."""
        m = self.find(addr)
        if m is None:
            return None, None, None
        e = self.cache.get(self.pid, m)
        if e is None:
            return m, None, None
        return m, e, e.offset_to_vaddr(addr - m.start + m.offset)

    def symbol(self, addr, is_return=False):
        """Frame name for a user address. Return addresses are looked up at addr-1 (the call)."""
        m, e, vaddr = self.locate(addr - 1 if is_return else addr)
        if m is None:
            return "[unknown]"
        where = m.name if m.name.startswith("[") else f"[{m.name}]"  # [vdso] is named so already
        if e is None or vaddr is None:
            return where
        sym = e.symbol(vaddr)
        if sym is None:
            d = self.cache.debug_symbols(self.pid, m, e)
            sym = d.symbol(vaddr) if d is not None else None
        if sym is not None:
            return sym[0]
        start = self.cache.function_start(m, e, vaddr)
        if start is None:
            return where
        self.cache.unnamed[m.name] = self.cache.unnamed.get(m.name, 0) + 1
        return f"[{m.name}+{start:#x}]"

    def module(self, addr):
        m = self.find(addr)
        return m.name if m else None


class Symbolizer:
    """ProcessImage per tgid, kept after the process exits."""

    def __init__(self):
        self.cache = ElfCache()
        self.procs = {}

    def see(self, pid):
        """First sight of a process: snapshot it now. Returns False if it had already exited."""
        p = self.procs.get(pid)
        if p is None:
            p = self.procs[pid] = ProcessImage(pid, self.cache)
            return p.refresh()
        return p.alive

    def refresh_live(self):
        for p in self.procs.values():
            if p.alive:
                p.refresh()

    def refresh_young(self, max_age_s):
        """Re-read the maps of processes first seen less than max_age_s ago: first sight can come
        before the dynamic loader has mapped libc, and a short-lived process may be gone by the
        next refresh_live."""
        now = time.monotonic()
        for p in self.procs.values():
            if p.alive and now - p.seen_at < max_age_s:
                p.refresh()

    def covering(self, pid, addr):
        """The process's image, re-read once if `addr` is outside every mapping it knows."""
        if pid not in self.procs:
            self.see(pid)
        img = self.procs.get(pid)
        if img is not None and img.find(addr) is None:
            img.refresh()
        return img

    def image(self, pid):
        return self.procs.get(pid)

    def close(self):
        self.cache.close()


# What names the frames of code kit only sees from the outside: (pattern on a mapped file's name,
# what it is, what would name its frames). {pid} is filled in.
INTERPRETERS = (
    (r"^(lib)?python\d", "a Python interpreter",
     "kit sees the interpreter's C functions, not the Python functions it runs. `py-spy dump --pid {pid}` "
     "prints the Python stacks now; a Python of 3.12 or later built with frame pointers and started with "
     "-X perf gives native profilers named Python frames"),
    (r"^node$|^libnode", "Node.js", "JavaScript runs as JIT code no file names: node --perf-basic-prof writes "
     "the names for native profilers, and --interpreted-frames-native-stack keeps the walk going"),
    (r"^libjvm\.so$", "a Java VM", "Java runs as JIT code no file names: -XX:+PreserveFramePointer and a perf "
     "map agent (perf-map-agent, async-profiler) name it"),
    (r"^(lib)?ruby", "a Ruby interpreter", "kit sees the interpreter's C functions, not the Ruby methods; "
     "`rbspy snapshot --pid {pid}` prints the Ruby stack"),
    (r"^(lib)?perl", "a Perl interpreter", "kit sees the interpreter's C functions, not the Perl subs"),
)
DEBUG_PACKAGES = {"libc.so.6": "libc6-dbg", "ld-linux-x86-64.so.2": "libc6-dbg"}


def interpreter(img):
    """(what, remedy) if the process runs an interpreter or a JIT, from the files it maps; else None."""
    import re
    for m in img.maps if img else ():
        for pattern, what, remedy in INTERPRETERS:
            if re.search(pattern, m.name):
                return what, remedy.format(pid=img.pid)
    return None


def explain(rows, sym):
    """Notes that say why some frames have no name, and what would give them one."""
    notes = []
    unknown, pids = {}, set()
    for r in rows:
        pids.add(r["pid"])
        if "[unknown]" in (r.get("user_stack") or []):
            unknown[r["pid"]] = unknown.get(r["pid"], 0) + 1
    plain = 0
    for pid in sorted(pids):
        found = interpreter(sym.image(pid))
        if found is None:
            plain += unknown.get(pid, 0)
            continue
        what, remedy = found
        lost = (f" {unknown[pid]} of its stacks have [unknown] frames, where the kernel's frame-pointer walk lost "
                "its way in code that keeps no frame pointers." if unknown.get(pid) else "")
        notes.append(f"pid {pid} runs {what}:{lost} {remedy}")
    if plain:
        notes.append(f"{plain} stack(s) have [unknown] frames: addresses in no file the process maps, where the "
                     "kernel's frame-pointer walk lost its way in code built without frame pointers (rebuild it "
                     "with -fno-omit-frame-pointer to see those callers)")
    shown = {f.split("+0x")[0][1:] for r in rows for f in (r.get("user_stack") or [])
             if f.startswith("[") and "+0x" in f}
    for name in sorted(shown & set(sym.cache.unnamed)):
        pkg = DEBUG_PACKAGES.get(name)
        how = (f"apt install {pkg}" if pkg else
               "install the debug symbols of the package that ships it (Debian: its -dbgsym package)")
        notes.append(f"frames shown as [{name}+0xSTART] are in functions {name} does not export (START is where "
                     f"the function begins, for addr2line -f -e FILE 0xSTART); its debug symbols would name them: "
                     f"{how}, and kit finds them by build id under {sym.cache.debug_root}")
    return notes
