"""Just enough ELF for uprobes and user stacks, in pure Python (no pyelftools).

Two uses share one parser:
- attaching a uprobe safely: find a function symbol by name (.symtab and
  .dynsym, skipping non-default GNU symbol versions), map its address to a
  file offset through the PT_LOAD segments, read its first bytes;
- naming user frames: address -> function through a sorted table, file offset
  -> ELF address, sections by name (.eh_frame, .eh_frame_hdr for kit.binaries.cfi).

`Elf(path)` opens the file; `Elf(f)` reads an open binary file object (a file
reached through /proc/PID/map_files may be the only way to it once the
process has exited). Either way Elf holds an mmap of the file (with its own
descriptor) until close(). 32/64-bit, either byte order.
"""

import bisect
import dataclasses
import functools
import mmap
import os
import stat
import struct

from kit.errors import BadInput

ET_EXEC, ET_DYN = 2, 3
EM_386, EM_X86_64 = 3, 62
SHT_SYMTAB, SHT_NOTE, SHT_DYNSYM, SHT_GNU_VERSYM = 2, 7, 11, 0x6FFFFFFF
NT_GNU_BUILD_ID = 3
PT_LOAD = 1
STT_FUNC, STT_GNU_IFUNC = 2, 10
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
VERSYM_HIDDEN = 0x8000


class ElfError(ValueError):
    """The file cannot be read as ELF (or not that part of it)."""


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str
    addr: int      # st_value: the virtual address in the file's own layout
    size: int
    kind: int      # STT_*
    table: str     # "symtab" or "dynsym"


@dataclasses.dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    flags: int


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class Functions:
    """Defined functions of one file, sorted by address, for address -> name.

    A function covers [addr, addr + size). One without a size (hand-written
    assembly, crt files) covers up to the next function or the end of its
    section, so code that follows it in another section (.init -> .plt) is
    not named after it.
    """

    def __init__(self, entries):
        """entries: (addr, end, name) sorted by addr, one per address."""
        self.starts = [a for a, _e, _n in entries]
        self.ends = [e for _a, e, _n in entries]
        self.names = [n for _a, _e, n in entries]

    def lookup(self, addr):
        """(name, offset) of the function containing addr, or None."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.ends[i]:
            return None
        return self.names[i], addr - self.starts[i]


class Elf:
    """One ELF file, read through mmap. Use as a context manager or call close()."""

    def __init__(self, source):
        """source: a path, or an open binary file object. The mapping holds its own descriptor of the
        file, so the caller may close the file object: a file reached through /proc/PID/map_files
        stays readable after the process has exited."""
        self._m = None
        self._functions = None
        fd = -1
        try:
            if isinstance(source, (str, bytes, os.PathLike)):
                self.path = os.fsdecode(source)
                fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
                fileno = fd
            else:
                self.path = str(getattr(source, "name", "<file>"))
                fileno = source.fileno()
            if not stat.S_ISREG(os.fstat(fileno).st_mode):
                raise ElfError(f"{self.path}: not a regular file")
            try:
                self._m = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)  # dups the descriptor
            except (ValueError, OSError):
                raise ElfError(f"{self.path}: empty or not mappable") from None
            self._parse_headers()
        except struct.error:
            self.close()
            raise ElfError(f"{self.path}: truncated ELF headers") from None
        except OSError as e:
            self.close()
            raise ElfError(f"{self.path}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def close(self):
        if self._m is not None:
            self._m.close()
            self._m = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- headers ----------------------------------------------------------
    def _parse_headers(self):
        m = self._m
        if m[:4] != b"\x7fELF":
            raise ElfError(f"{self.path}: not an ELF file")
        cls, data = m[4], m[5]
        if cls not in (1, 2) or data not in (1, 2):
            raise ElfError(f"{self.path}: unknown ELF class or byte order")
        self.is64 = cls == 2
        self.end = "<" if data == 1 else ">"
        (self.type, self.machine, _v, self.entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from(self.end + ("HHIQQQIHHHHHH" if self.is64 else "HHIIIIIHHHHHH"), m, 16)
        self.segments = []
        for i in range(phnum):
            off = phoff + i * phentsize
            if self.is64:
                p_type, p_flags, p_offset, p_vaddr, _pa, p_filesz, _memsz, _al = struct.unpack_from(
                    self.end + "IIQQQQQQ", m, off)
            else:
                p_type, p_offset, p_vaddr, _pa, p_filesz, _memsz, p_flags, _al = struct.unpack_from(
                    self.end + "IIIIIIII", m, off)
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_vaddr, p_offset, p_filesz, p_flags))
        raw = []
        for i in range(shnum if shoff else 0):
            raw.append(struct.unpack_from(self.end + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII"), m,
                                          shoff + i * shentsize))
        names = raw[shstrndx] if shstrndx < len(raw) else None
        self.sections = []
        for name, stype, _fl, addr, off, size, link, _info, _al, entsize in raw:
            self.sections.append(Section(self._cstr(names[4] + name) if names else "", stype, addr, off, size, link,
                                         entsize))

    def _cstr(self, off):
        end = self._m.find(b"\0", off)
        return self._m[off:end if end >= 0 else len(self._m)].decode("utf-8", "replace")

    def _bytes(self, off, n):
        """n bytes at file offset off. The size is checked against the file as it is now: a page of the
        mapping past the end of a file truncated since it was mapped would kill kit with SIGBUS."""
        if off < 0 or off + n > min(len(self._m), self._m.size()):
            raise ElfError(f"{self.path}: {n} bytes at offset {off:#x} are past the end of the file")
        return self._m[off:off + n]

    # --- sections and addresses -------------------------------------------
    def section(self, name):
        """The first section called name, or None."""
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, sec):
        return self._bytes(sec.offset, sec.size)

    def file_offset(self, addr):
        """File offset of an ELF virtual address in a loadable segment (ElfError if in none)."""
        for s in self.segments:
            if s.vaddr <= addr < s.vaddr + s.filesz:
                return addr - s.vaddr + s.offset
        raise ElfError(f"{self.path}: address {addr:#x} is in no loadable segment")

    def offset_to_vaddr(self, off):
        """ELF virtual address of a file offset inside a loadable segment, or None."""
        for s in self.segments:
            if s.offset <= off < s.offset + s.filesz:
                return s.vaddr + off - s.offset
        return None

    def read_at(self, addr, n):
        """n bytes at ELF virtual address addr (ElfError if they are not in the file)."""
        return self._bytes(self.file_offset(addr), n)

    def build_id(self):
        """The GNU build id as hex (what names the file's separate debug symbols), or None."""
        sec = self.section(".note.gnu.build-id")
        if sec is None or sec.type != SHT_NOTE:
            return None
        data, i = self.section_data(sec), 0
        while i + 12 <= len(data):
            namesz, descsz, ntype = struct.unpack_from(self.end + "III", data, i)
            name_at = i + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if ntype == NT_GNU_BUILD_ID and data[name_at:name_at + namesz] == b"GNU\0":
                return data[desc_at:desc_at + descsz].hex() or None
            i = desc_at + (descsz + 3) // 4 * 4
        return None

    def debuglink(self):
        """The file name .gnu_debuglink gives for the separate debug symbols, or None."""
        sec = self.section(".gnu_debuglink")
        if sec is None or not sec.size:
            return None
        name = self.section_data(sec).split(b"\0", 1)[0]
        return os.fsdecode(name) if name and b"/" not in name else None

    # --- symbols ------------------------------------------------------------
    def _symbol_tables(self):
        """(table name, section) of .symtab then .dynsym: the fuller table first."""
        for want, table in ((SHT_SYMTAB, "symtab"), (SHT_DYNSYM, "dynsym")):
            for s in self.sections:
                if s.type == want and s.entsize and s.link < len(self.sections):
                    yield table, s

    def _entries(self, sec):
        """(index, st_name, st_value, st_size, st_info, st_shndx) of every entry of a symbol table."""
        fmt = self.end + ("IBBHQQ" if self.is64 else "IIIBBH")
        if sec.entsize != struct.calcsize(fmt):
            return  # not a symbol table any linker writes
        data = self._bytes(sec.offset, sec.size - sec.size % sec.entsize)
        for i, e in enumerate(struct.iter_unpack(fmt, data)):
            if self.is64:
                yield i, e[0], e[4], e[5], e[1], e[3]
            else:
                yield i, e[0], e[1], e[2], e[3], e[5]

    @staticmethod
    def _defined_function(value, info, shndx):
        return shndx != SHN_UNDEF and value != 0 and (info & 0xF) in (STT_FUNC, STT_GNU_IFUNC)

    def _hidden_versions(self):
        """Indexes of .dynsym entries that are non-default versions (name@OLD_VERSION)."""
        sec = next((s for s in self.sections if s.type == SHT_GNU_VERSYM), None)
        if sec is None:
            return frozenset()
        vers = struct.unpack(f"{self.end}{sec.size // 2}H", self._bytes(sec.offset, sec.size // 2 * 2))
        return frozenset(i for i, v in enumerate(vers) if v & VERSYM_HIDDEN)

    def find(self, name):
        """Defined function symbols called `name` (default versions only), deduplicated by address."""
        want = name.encode() + b"\0"
        out = {}
        for table, sec in self._symbol_tables():
            strtab = self.sections[sec.link]
            strs = self._bytes(strtab.offset, strtab.size)
            # Offsets where a string ending in exactly this name starts. Linkers share tails
            # ("pthread_mutex_lock" inside "__pthread_mutex_lock"), so no leading NUL is required.
            starts, pos = set(), strs.find(want)
            while pos >= 0:
                starts.add(pos)
                pos = strs.find(want, pos + 1)
            if not starts:
                continue
            hidden = self._hidden_versions() if table == "dynsym" else frozenset()
            for i, st_name, value, size, info, shndx in self._entries(sec):
                if st_name in starts and self._defined_function(value, info, shndx) and i not in hidden:
                    out.setdefault(value, Symbol(name, value, size, info & 0xF, table))
        return list(out.values())

    def imports(self, names):
        """Which of `names` this file calls from another (undefined entries of .dynsym)."""
        want = set(names)
        found = set()
        for table, sec in self._symbol_tables():
            if table != "dynsym":
                continue
            strtab = self.sections[sec.link]
            strs = self._bytes(strtab.offset, strtab.size)
            for _i, st_name, _value, _size, _info, shndx in self._entries(sec):
                if shndx == SHN_UNDEF and st_name:
                    end = strs.find(b"\0", st_name)
                    name = strs[st_name:end if end >= 0 else len(strs)].decode("utf-8", "replace")
                    if name in want:
                        found.add(name)
        return found

    def functions(self):
        """Every defined function as a Functions table (built once per Elf).

        Where several names share an address (aliases), the one with the
        largest size wins, then the shortest (glibc's public `write` over its
        internal `__write` and `__GI___write`), then the first seen.
        """
        if self._functions is not None:
            return self._functions
        best = {}  # addr -> (size, name, shndx)
        for _table, sec in self._symbol_tables():
            strtab = self.sections[sec.link]
            strs = self._bytes(strtab.offset, strtab.size)
            for _i, st_name, value, size, info, shndx in self._entries(sec):
                if not self._defined_function(value, info, shndx):
                    continue
                end = strs.find(b"\0", st_name)
                name = strs[st_name:end if end >= 0 else len(strs)].decode("utf-8", "replace").split("@")[0]
                if value not in best or best[value][0] < size or \
                        (best[value][0] == size and len(name) < len(best[value][1])):
                    best[value] = (size, name, shndx)
        addrs = sorted(best)
        entries = []
        for k, addr in enumerate(addrs):
            size, name, shndx = best[addr]
            if size:
                end = addr + size
            else:
                end = addrs[k + 1] if k + 1 < len(addrs) else 1 << 64
                if shndx < min(len(self.sections), SHN_LORESERVE):
                    sec = self.sections[shndx]
                    if sec.addr <= addr < sec.addr + sec.size:
                        end = min(end, sec.addr + sec.size)
            entries.append((addr, end, name))
        self._functions = Functions(entries)
        return self._functions

    def symbol(self, addr):
        """(name, offset) of the function containing the ELF virtual address addr, or None."""
        return self.functions().lookup(addr)


@functools.lru_cache(maxsize=256)
def _cached_lookup(path, dev, ino, mtime, name):
    with Elf(path) as e:
        return e.find(name), e.machine


def file_key(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def lookup(path, name):
    """(symbols, machine) for `name` in the ELF at path. Cached by file identity."""
    try:
        dev, ino, mtime = file_key(path)
    except OSError as e:
        raise ElfError(f"{path}: {e.strerror}") from None
    return _cached_lookup(path, dev, ino, mtime, name)


def function(path, name, shown=None):
    """The one function symbol `name` in path, or BadInput saying what is wrong.

    IFUNCs are refused: their address is the resolver that picks an
    implementation at load time, so a probe there would fire once, not per call.
    """
    shown = shown or path
    try:
        syms, _machine = lookup(path, name)
    except ElfError as e:
        raise BadInput(f"cannot read {shown}: {e}", "give the path of an executable or shared library") from None
    if not syms:
        raise BadInput(f"symbol {name!r} is not defined in {shown}",
                       f"check the name with `nm -D {shown} | grep -w {name}` (or `nm` for static functions); "
                       "C++ names must be given mangled")
    if len(syms) > 1:
        where = ", ".join(f"{s.addr:#x}" for s in syms)
        raise BadInput(f"symbol {name!r} is defined {len(syms)} times in {shown} ({where})",
                       "it is a local (static) name used in several files; probe a unique function instead")
    sym = syms[0]
    if sym.kind == STT_GNU_IFUNC:
        raise BadInput(f"{name!r} in {shown} is an IFUNC (its address is a resolver run once at load time)",
                       "probe the implementation the resolver picks instead (see `nm -D` for variants)")
    return sym


class Symbolizer:
    """Address -> 'name+0xoff [file]' for one ELF loaded at `base` in a process
    that may have exited (so /proc cannot help any more)."""

    def __init__(self, path, base, shown=None):
        with Elf(path) as e:
            self.funcs = e.functions()
        self.base = base
        self.name = os.path.basename(shown or path)

    def __call__(self, addr):
        found = self.funcs.lookup(addr - self.base)
        return f"{found[0]}+{found[1]:#x} [{self.name}]" if found else None
