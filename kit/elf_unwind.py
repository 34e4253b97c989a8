"""A small reader for 64-bit little-endian ELF files: loadable segments,
function symbols and the .eh_frame_hdr lookup table.

kit resolves user stacks itself (rather than through BCC's per-pid symbol
cache) so a process that exits during a run can still be symbolized: kit
keeps the mapped files open from the moment it first sees the process, and
this module reads them through those file objects.
"""

import bisect
import struct

PT_LOAD = 1
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC, STT_GNU_IFUNC = 2, 10


class NotELF(ValueError):
    pass


class ElfFile:
    def __init__(self, f):
        """f: a binary file object kept open by the caller (it may be the only way to the file)."""
        self.f = f
        ident = self._read(0, 64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise NotELF("not a 64-bit little-endian ELF file")
        (self.type, _m, _v, self.entry, phoff, shoff, _fl, _eh, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", ident, 16)
        self.segments = []  # (vaddr, memsz, offset, filesz, flags)
        for i in range(phnum):
            p_type, p_flags, p_off, p_vaddr, _pa, p_filesz, p_memsz, _al = struct.unpack(
                "<IIQQQQQQ", self._read(phoff + i * phentsize, 56))
            if p_type == PT_LOAD:
                self.segments.append((p_vaddr, p_memsz, p_off, p_filesz, p_flags))
        self.sections = {}
        if shoff and shnum:
            raw = [struct.unpack("<IIQQQQIIQQ", self._read(shoff + i * shentsize, 64)) for i in range(shnum)]
            names = raw[shstrndx] if shstrndx < shnum else None
            for i, s in enumerate(raw):
                name = self._cstr(names[4] + s[0]) if names else ""
                self.sections[name] = dict(index=i, type=s[1], addr=s[3], offset=s[4], size=s[5], link=s[6],
                                           entsize=s[9])
            self._raw_sections = raw
        else:
            self._raw_sections = []
        self._syms = None

    def _read(self, off, n):
        self.f.seek(off)
        data = self.f.read(n)
        if len(data) != n:
            raise NotELF(f"short read at {off:#x}")
        return data

    def _cstr(self, off):
        self.f.seek(off)
        out = b""
        while True:
            chunk = self.f.read(64)
            if not chunk:
                break
            i = chunk.find(b"\0")
            if i >= 0:
                return (out + chunk[:i]).decode("utf-8", "replace")
            out += chunk
        return out.decode("utf-8", "replace")

    # --- addresses -------------------------------------------------------
    def offset_to_vaddr(self, off):
        """ELF virtual address of a file offset inside a loadable segment, or None."""
        for vaddr, _memsz, p_off, filesz, _fl in self.segments:
            if p_off <= off < p_off + filesz:
                return vaddr + off - p_off
        return None

    def vaddr_to_offset(self, vaddr):
        for v, _memsz, p_off, filesz, _fl in self.segments:
            if v <= vaddr < v + filesz:
                return p_off + vaddr - v
        return None

    def read_vaddr(self, vaddr, n):
        off = self.vaddr_to_offset(vaddr)
        if off is None:
            return None
        try:
            return self._read(off, n)
        except NotELF:
            return None

    # --- symbols ---------------------------------------------------------
    def _load_symbols(self):
        syms = {}
        for want in (SHT_SYMTAB, SHT_DYNSYM):  # .symtab when present, .dynsym adds exported ones
            for name, s in self.sections.items():
                if s["type"] != want or not s["entsize"]:
                    continue
                strtab = self._raw_sections[s["link"]]
                data = self._read(s["offset"], s["size"])
                for i in range(s["size"] // s["entsize"]):
                    st_name, st_info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, i * 24)
                    if (st_info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC) or not value or shndx == 0:
                        continue
                    if value not in syms or (syms[value][1] == 0 and size):
                        syms[value] = (self._cstr(strtab[4] + st_name).split("@")[0], size)
        items = sorted(syms.items())
        self._syms = ([a for a, _ in items], [(n, s) for _, (n, s) in items])

    def symbol(self, vaddr):
        """(name, offset) of the function containing vaddr, or None."""
        if self._syms is None:
            self._load_symbols()
        addrs, info = self._syms
        i = bisect.bisect_right(addrs, vaddr) - 1
        if i < 0:
            return None
        name, size = info[i]
        if size and vaddr >= addrs[i] + size:
            return None
        return name, vaddr - addrs[i]

    # --- unwind tables ---------------------------------------------------
    def eh_frame(self):
        """(eh_frame_hdr section, eh_frame section) or None."""
        hdr, eh = self.sections.get(".eh_frame_hdr"), self.sections.get(".eh_frame")
        if hdr and eh:
            return hdr, eh
        return None
