"""Just enough ELF to attach uprobes safely: find a function symbol, map its
address to a file offset, and read its first bytes.

kit checks symbols itself, before anything attaches, so a missing or
ambiguous symbol is one clear line instead of a BCC exception halfway through
attaching. Pure Python over the section and program headers (no pyelftools):
.symtab and .dynsym, the GNU version table to skip non-default versions, and
PT_LOAD segments for address -> file offset.
"""

import dataclasses
import functools
import mmap
import os
import struct

from kit.errors import BadInput

ET_EXEC, ET_DYN = 2, 3
EM_386, EM_X86_64 = 3, 62
SHT_SYMTAB, SHT_DYNSYM, SHT_GNU_VERSYM = 2, 11, 0x6FFFFFFF
PT_LOAD = 1
STT_FUNC, STT_GNU_IFUNC = 2, 10
SHN_UNDEF = 0
VERSYM_HIDDEN = 0x8000


class ElfError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str
    addr: int      # st_value: the virtual address in the file's own layout
    size: int
    kind: int      # STT_*
    table: str     # "dynsym" or "symtab"


@dataclasses.dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    flags: int


class Elf:
    """One ELF file, read through mmap. Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = path
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise ElfError(f"{path}: {e.strerror}") from None
        try:
            self._m = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            self._f.close()
            raise ElfError(f"{path}: empty or not mappable") from None
        try:
            self._parse_header()
        except struct.error:
            self.close()
            raise ElfError(f"{path}: truncated ELF header") from None
        except ElfError:
            self.close()
            raise

    def close(self):
        self._m.close()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _parse_header(self):
        m = self._m
        if m[:4] != b"\x7fELF":
            raise ElfError(f"{self.path}: not an ELF file")
        cls, data = m[4], m[5]
        if cls not in (1, 2) or data not in (1, 2):
            raise ElfError(f"{self.path}: unknown ELF class or byte order")
        self.is64 = cls == 2
        self.end = "<" if data == 1 else ">"
        if self.is64:
            (self.type, self.machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(self.end + "HHIQQQIHHHHHH", m, 16)
        else:
            (self.type, self.machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(self.end + "HHIIIIIHHHHHH", m, 16)
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
        self.sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if self.is64:
                name, stype, _fl, _addr, soff, size, link, _info, _al, entsize = struct.unpack_from(
                    self.end + "IIQQQQIIQQ", m, off)
            else:
                name, stype, _fl, _addr, soff, size, link, _info, _al, entsize = struct.unpack_from(
                    self.end + "IIIIIIIIII", m, off)
            self.sections.append((stype, soff, size, link, entsize))

    def _sym_tables(self):
        for idx, (stype, soff, size, link, entsize) in enumerate(self.sections):
            if stype in (SHT_SYMTAB, SHT_DYNSYM) and entsize and link < len(self.sections):
                yield idx, ("symtab" if stype == SHT_SYMTAB else "dynsym"), soff, size, entsize, self.sections[link]

    def _versym(self):
        for stype, soff, size, _link, _entsize in self.sections:
            if stype == SHT_GNU_VERSYM:
                return soff, size
        return None

    def find(self, name):
        """Defined function symbols called `name` (default versions only), deduplicated by address."""
        want = name.encode()
        fmt = self.end + ("IBBHQQ" if self.is64 else "IIIBBH")
        out = {}
        for _idx, table, soff, size, entsize, (_t, str_off, str_size, _l, _e) in self._sym_tables():
            strtab = self._m[str_off:str_off + str_size]
            # Offsets where a string ending in exactly this name starts. Linkers share tails
            # ("pthread_mutex_lock" inside "__pthread_mutex_lock"), so no leading NUL is required.
            starts, pos = set(), strtab.find(want + b"\0")
            while pos >= 0:
                starts.add(pos)
                pos = strtab.find(want + b"\0", pos + 1)
            if not starts:
                continue
            versym = self._versym() if table == "dynsym" else None
            count = size // entsize
            for i in range(count):
                off = soff + i * entsize
                if self.is64:
                    st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from(fmt, self._m, off)
                else:
                    st_name, st_value, st_size, st_info, _other, st_shndx = struct.unpack_from(fmt, self._m, off)
                if st_name not in starts or st_shndx == SHN_UNDEF or st_value == 0:
                    continue
                kind = st_info & 0xF
                if kind not in (STT_FUNC, STT_GNU_IFUNC):
                    continue
                if versym and i * 2 + 2 <= versym[1]:
                    (ver,) = struct.unpack_from(self.end + "H", self._m, versym[0] + i * 2)
                    if ver & VERSYM_HIDDEN:
                        continue  # name@OLD_VERSION: not what a new link would bind to
                out.setdefault(st_value, Symbol(name, st_value, st_size, kind, table))
        return list(out.values())

    def functions(self):
        """Every defined function symbol as sorted [(addr, size, name)], for symbolizing addresses."""
        fmt = self.end + ("IBBHQQ" if self.is64 else "IIIBBH")
        out = {}
        for _idx, _table, soff, size, entsize, (_t, str_off, str_size, _l, _e) in self._sym_tables():
            strtab = self._m[str_off:str_off + str_size]
            for i in range(size // entsize):
                if self.is64:
                    st_name, st_info, _o, st_shndx, st_value, st_size = struct.unpack_from(fmt, self._m, soff + i * entsize)
                else:
                    st_name, st_value, st_size, st_info, _o, st_shndx = struct.unpack_from(fmt, self._m, soff + i * entsize)
                if st_shndx == SHN_UNDEF or not st_value or (st_info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC):
                    continue
                if st_value not in out or out[st_value][1] < st_size:
                    end = strtab.find(b"\0", st_name)
                    out[st_value] = (st_value, st_size, strtab[st_name:end].decode("utf-8", "replace"))
        return sorted(out.values())

    def file_offset(self, addr):
        for s in self.segments:
            if s.vaddr <= addr < s.vaddr + s.filesz:
                return addr - s.vaddr + s.offset
        raise ElfError(f"{self.path}: address {addr:#x} is in no loadable segment")

    def read_at(self, addr, n):
        off = self.file_offset(addr)
        return bytes(self._m[off:off + n])


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
        import bisect
        self._bisect = bisect.bisect_right
        with Elf(path) as e:
            self.funcs = e.functions()
        self.starts = [f[0] for f in self.funcs]
        self.base = base
        self.name = os.path.basename(shown or path)

    def __call__(self, addr):
        rel = addr - self.base
        i = self._bisect(self.starts, rel) - 1
        if i >= 0:
            start, size, name = self.funcs[i]
            if rel < start + max(size, 1):
                return f"{name}+{rel - start:#x} [{self.name}]"
        return None
