"""Which processes are in scope, and which ELF files they actually map.

A uprobe is placed on a file (an inode), so kit must name the file the target
really executes: the libc in /proc/PID/maps, opened through /proc/PID/root so a
container's own libc is found, or through /proc/PID/map_files when the file on
disk was replaced after the process mapped it (an upgraded libc).
"""

import dataclasses
import os
import re

from kit.host.procfs import comm_of, pids, read_text, thread_names

LIBC_RE = re.compile(r"^(libc\.so\.6|libc-[0-9.]+\.so|libc\.so|libc\.musl-[^/]*\.so\.1|ld-musl-[^/]*\.so\.1)$")
LIBPTHREAD_RE = re.compile(r"^(libpthread\.so\.0|libpthread-[0-9.]+\.so)$")


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One executable file mapped by a process (or named by the user)."""
    path: str        # as /proc/PID/maps shows it to kit (or as the user gave it)
    open_path: str   # a path kit and the kernel can open from here that names that very inode
    dev: int
    ino: int
    pid: int = -1    # whose mapping this is; -1: kit's own or the user's
    is_exe: bool = False
    via: str = "path"  # path | root (the process's own root) | map_files (the file was replaced)

    @property
    def shown(self):
        if self.via == "root":
            return f"{self.path} (in the root of pid {self.pid})"
        if self.via == "map_files":
            return f"{self.path} (the copy pid {self.pid} maps, via /proc/{self.pid}/map_files)"
        return self.path

    @property
    def name(self):
        return os.path.basename(self.path)


@dataclasses.dataclass(frozen=True)
class MapsLine:
    start: int
    end: int
    perms: str
    offset: int
    dev: int
    ino: int
    path: str        # without the " (deleted)" maps adds; "" for anonymous memory, "[vdso]" and such
    deleted: bool

    @property
    def name(self):
        return os.path.basename(self.path) or self.path


def parse_maps(text, files_only=True):
    """File-backed lines of /proc/PID/maps text (every line with files_only=False)."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 5:
            parts.append("")  # anonymous memory
        if len(parts) < 6 or (files_only and not parts[5].startswith("/")):
            continue
        rng, perms, off, dev, ino, path = parts
        start, _, end = rng.partition("-")
        major, _, minor = dev.partition(":")
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[:-len(" (deleted)")]
        out.append(MapsLine(int(start, 16), int(end, 16), perms, int(off, 16),
                            os.makedev(int(major, 16), int(minor, 16)), int(ino), path, deleted))
    return out


def _same_inode(path, line, check_dev=True):
    try:
        st = os.stat(path)
    except OSError:
        return False
    # overlayfs may report the lower file's device in maps: then the inode alone decides
    return st.st_ino == line.ino and (st.st_dev == line.dev or not check_dev)


def _open_path(pid, line):
    """(path, via) naming the very file `line` maps, or None. maps shows paths
    relative to the reader's root: a chrooted process's files appear under
    kit's root as they are, a container's (another mount namespace) as the
    container sees them, so they are reached through /proc/PID/root. A file
    replaced since it was mapped (an upgraded libc) is reached through
    map_files."""
    if not line.deleted:
        candidates = [(line.path, "path")]
        if pid != "self":
            candidates.append((f"/proc/{pid}/root{line.path}", "root"))
        for path, via in candidates:
            if _same_inode(path, line):
                return path, via
        # inode only: the process's own view first, unless both views are one file (an overlay on
        # a 9p root, as in the qemu guest, reports another device in maps than stat does)
        if len(candidates) == 2 and _same_inode(line.path, line, check_dev=False) and _same_file(candidates[0][0], candidates[1][0]):
            return candidates[0]
        for path, via in reversed(candidates):
            if _same_inode(path, line, check_dev=False):
                return path, via
    mf = f"/proc/{pid}/map_files/{line.start:x}-{line.end:x}"
    if os.path.exists(mf):
        return mf, "map_files"
    return None


def mapped_files(pid):
    """Executable files mapped by pid, one per inode, the main executable first.
    pid may be "self". Empty if the process is gone or its maps are unreadable."""
    text = read_text(f"/proc/{pid}/maps")
    if not text:
        return []
    exe = None
    try:
        st = os.stat(f"/proc/{pid}/exe")
        exe = (st.st_dev, st.st_ino)
    except OSError:
        pass
    seen, out = set(), []
    for line in parse_maps(text):
        if "x" not in line.perms or (line.dev, line.ino) in seen:
            continue
        seen.add((line.dev, line.ino))
        found = _open_path(pid, line)
        if found is None:
            continue
        opened, via = found
        pid_num = os.getpid() if pid == "self" else int(pid)
        is_exe = False
        if exe:
            try:
                st = os.stat(opened)
                is_exe = (st.st_dev, st.st_ino) == exe
            except OSError:
                pass
        out.append(Mapping(line.path, opened, line.dev, line.ino, pid=-1 if pid == "self" else pid_num,
                           is_exe=is_exe, via=via))
    out.sort(key=lambda m: not m.is_exe)
    return out


def is_libc(path):
    return bool(LIBC_RE.match(os.path.basename(path)))


def is_libpthread(path):
    return bool(LIBPTHREAD_RE.match(os.path.basename(path)))


def libc_of(pid):
    """The libc pid maps, or None (a static binary, or the process is gone)."""
    for m in mapped_files(pid):
        if is_libc(m.path):
            return m
    return None


def host_libc():
    """The libc kit itself runs on: the host's, when kit runs on the host."""
    m = libc_of("self")
    if m is None:
        from kit.errors import Unsupported
        raise Unsupported("cannot find the libc kit itself maps in /proc/self/maps",
                          "give the library with --binary PATH")
    return m


@dataclasses.dataclass(frozen=True)
class InScope:
    """A process with threads in scope of --comm/--thread-comm, by kit_prelude.h's rule."""
    pid: int
    name: str        # the process's (main thread's) name, what `ps -o comm` shows
    by_process: bool  # --comm is its name: every thread is in scope (with --thread-comm, those so named)
    tids: tuple = ()  # otherwise: the threads whose own name admits them


def pids_by_comm(comm=None, thread_comm=None):
    """[InScope] for the processes with a thread that the prelude's rule admits: --comm NAME takes a
    thread whose own name or whose process's name is NAME; --thread-comm NAME a thread whose own name
    is NAME. Threads are read only for a process whose own name does not settle it."""
    me = os.getpid()
    out = []
    for p in pids():
        if p == me:
            continue
        name = comm_of(p)
        if name is None:
            continue
        by_process = comm is not None and name == comm
        if by_process and thread_comm is None:
            out.append(InScope(p, name, True))
            continue
        tids = tuple(sorted(t for t, own in thread_names(p).items()
                            if (thread_comm is None or own == thread_comm)
                            and (comm is None or by_process or own == comm)))
        if tids:
            out.append(InScope(p, name, by_process, tids))
    return out


def scope_text(comm=None, thread_comm=None):
    """How the user named the scope, for messages: --comm 'x' --thread-comm 'y'."""
    return " ".join(f"--{flag} {v!r}" for flag, v in (("comm", comm), ("thread-comm", thread_comm)) if v is not None)


def thread_only_notes(found, comm):
    """Notes for the processes --comm NAME reached only through a thread of that name."""
    notes = []
    for s in found:
        if comm is not None and not s.by_process:
            notes.append(f"no process is named {comm!r} in pid {s.pid} ({s.name}): {comm!r} is the name of its "
                         f"thread{'s' if len(s.tids) > 1 else ''} {', '.join(map(str, s.tids[:5]))}, so only "
                         f"{'they are' if len(s.tids) > 1 else 'that thread is'} traced (--pid {s.pid} takes them all)")
    return notes


def all_libcs():
    """Every distinct libc file mapped by any process on the box (host and containers),
    kit's own first."""
    found = {}
    own = host_libc()
    found[(own.dev, own.ino)] = own
    for p in pids():
        m = libc_of(p)
        if m is not None:
            found.setdefault((m.dev, m.ino), m)
    return list(found.values())


def user_binary(path):
    """A --binary the user named, as a Mapping kit opens as given."""
    st = os.stat(path)
    return Mapping(path, path, st.st_dev, st.st_ino)


def find_mapping(pid, binary):
    """pid's mapping of the same file as the Mapping `binary`, or None."""
    for m in mapped_files(pid):
        if m.ino == binary.ino and (m.dev == binary.dev or _same_file(m.open_path, binary.open_path)):
            return m
    return None


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def own_imports(pid, names):
    """Which of `names` the process's own mapped files (not libc's or libpthread's) import: a call the
    program makes itself, as the triage and the hints read it."""
    from kit.binaries import elf
    found = set()
    for m in mapped_files(pid):
        if is_libc(m.path) or is_libpthread(m.path):
            continue
        try:
            with elf.Elf(m.open_path) as e:
                found |= e.imports(names)
        except elf.ElfError:
            continue
    return found
