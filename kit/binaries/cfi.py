"""DWARF call frame information (.eh_frame) for x86-64: where a frame's
return address and saved registers sit, at a given code address.

Used to recover the caller that a frame-pointer walk skips when it starts in
a library built without frame pointers (Debian's libc). Only what that
needs: find the FDE through .eh_frame_hdr's binary-search table, run the CIE
and FDE instructions up to the address, and report the CFA rule and the
rules for rbp and the return address. Anything unusual (a CFA expression, a
return address not at CFA-8) is reported as such so callers can give up
rather than guess.
"""

import bisect
import struct

from kit.binaries.elf import EM_X86_64

RBP, RSP, RA = 6, 7, 16

# DW_EH_PE pointer encodings
_PE_ABS, _PE_ULEB, _PE_U2, _PE_U4, _PE_U8 = 0x00, 0x01, 0x02, 0x03, 0x04
_PE_SLEB, _PE_S2, _PE_S4, _PE_S8 = 0x09, 0x0A, 0x0B, 0x0C
_PE_PCREL, _PE_DATAREL = 0x10, 0x30
_PE_OMIT = 0xFF
# the fixed-size encodings, as struct formats
_PE_FIXED = {_PE_ABS: "<Q", _PE_U8: "<Q", _PE_S8: "<q", _PE_U4: "<I", _PE_S4: "<i", _PE_U2: "<H", _PE_S2: "<h"}


class CFIError(ValueError):
    pass


class Row:
    """The unwind rule at one address.

    cfa: (register, offset) meaning CFA = reg + offset, or None for an expression.
    rules: {register: ("offset", n)} saved at CFA+n, or ("same",), ("undefined",), ("other",).
    """

    def __init__(self, cfa, rules):
        self.cfa = cfa
        self.rules = rules

    def ra_at_cfa_minus_8(self):
        return self.rules.get(RA) == ("offset", -8)

    def __repr__(self):
        return f"Row(cfa={self.cfa}, rules={self.rules})"


def _leb128(d, i, signed):
    """(value, index after it) of the LEB128 number at d[i]."""
    r = shift = 0
    while True:
        b = d[i]
        i += 1
        r |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if signed and b & 0x40:
                r -= 1 << shift
            return r, i


def _uleb(d, i):
    return _leb128(d, i, False)


def _sleb(d, i):
    return _leb128(d, i, True)


def _ptr(d, i, enc, pc_base, data_base=0):
    """Decode an encoded pointer at d[i]; pc_base is the address of d[i]."""
    if enc == _PE_OMIT:
        return None, i
    fmt = enc & 0x0F
    if fmt in _PE_FIXED:
        v = struct.unpack_from(_PE_FIXED[fmt], d, i)[0]
        j = i + struct.calcsize(_PE_FIXED[fmt])
    elif fmt in (_PE_ULEB, _PE_SLEB):
        v, j = _leb128(d, i, fmt == _PE_SLEB)
    else:
        raise CFIError(f"pointer encoding {enc:#x}")
    app = enc & 0x70
    if app == _PE_PCREL:
        v += pc_base
    elif app == _PE_DATAREL:
        v += data_base
    elif app != 0:
        raise CFIError(f"pointer application {enc:#x}")
    return v & 0xFFFFFFFFFFFFFFFF, j


class _CIE:
    pass


class EhFrame:
    """CFI lookup for one x86-64 ELF file (a kit.binaries.elf.Elf)."""

    def __init__(self, elf):
        hdr, eh = elf.section(".eh_frame_hdr"), elf.section(".eh_frame")
        if hdr is None or eh is None:
            raise CFIError("no .eh_frame_hdr")
        if elf.machine != EM_X86_64 or elf.end != "<":
            raise CFIError("CFI rules are read for x86-64 only")
        self.elf = elf
        self.hdr_addr = hdr.addr
        h = elf.section_data(hdr)
        self.eh_section, self.eh_addr = eh, eh.addr
        version, ptr_enc, cnt_enc, tbl_enc = h[0], h[1], h[2], h[3]
        if version != 1:
            raise CFIError(f".eh_frame_hdr version {version}")
        i = 4
        _ehptr, i = _ptr(h, i, ptr_enc, self.hdr_addr + i, self.hdr_addr)
        count, i = _ptr(h, i, cnt_enc, self.hdr_addr + i, self.hdr_addr)
        if tbl_enc != 0x3B:  # datarel | sdata4: what every linker writes
            raise CFIError(f".eh_frame_hdr table encoding {tbl_enc:#x}")
        table = struct.unpack_from(f"<{2 * count}i", h, i)
        self.starts = [self.hdr_addr + table[2 * k] for k in range(count)]
        self.fdes = [self.hdr_addr + table[2 * k + 1] for k in range(count)]
        self._eh = None
        self._cies = {}

    def _data(self):
        if self._eh is None:
            self._eh = self.elf.section_data(self.eh_section)
        return self._eh

    def _entry(self, addr):
        """(body bytes, vaddr of body start, is_cie, cie_pointer_field_addr)."""
        d = self._data()
        i = addr - self.eh_addr
        length = struct.unpack_from("<I", d, i)[0]
        i += 4
        if length == 0xFFFFFFFF:
            raise CFIError("64-bit DWARF CFI")
        body = i
        ident = struct.unpack_from("<I", d, i)[0]
        return d, body, length, ident

    def _cie(self, addr):
        if addr in self._cies:
            return self._cies[addr]
        d, body, length, ident = self._entry(addr)
        if ident != 0:
            raise CFIError("CIE pointer does not point at a CIE")
        c = _CIE()
        i = body + 4
        c.version = d[i]
        i += 1
        end = d.index(b"\0", i)
        aug = d[i:end].decode()
        i = end + 1
        c.code_align, i = _uleb(d, i)
        c.data_align, i = _sleb(d, i)
        if c.version == 1:
            c.ra_reg = d[i]
            i += 1
        else:
            c.ra_reg, i = _uleb(d, i)
        c.fde_enc = _PE_ABS
        c.signal = False
        if aug.startswith("z"):
            alen, i = _uleb(d, i)
            aug_end = i + alen
            for ch in aug[1:]:
                if ch == "R":
                    c.fde_enc = d[i]
                    i += 1
                elif ch == "P":
                    enc = d[i]
                    _p, i = _ptr(d, i + 1, enc, self.eh_addr + i + 1)
                elif ch == "L":
                    i += 1
                elif ch == "S":
                    c.signal = True
                elif ch == "B":
                    pass
                else:
                    break
            i = aug_end
        elif aug:
            raise CFIError(f"CIE augmentation {aug!r}")
        c.insns = d[i: body + length]
        self._cies[addr] = c
        return c

    def function_start(self, pc):
        """Where the function covering ELF virtual address pc starts, by its FDE; None if none covers it.
        Names a function no symbol table lists (an unexported one in a stripped library)."""
        k = bisect.bisect_right(self.starts, pc) - 1
        if k < 0:
            return None
        d, body, _length, ident = self._entry(self.fdes[k])
        cie = self._cie(body + self.eh_addr - ident)
        i = body + 4
        start, i = _ptr(d, i, cie.fde_enc, self.eh_addr + i)
        size, i = _ptr(d, i, cie.fde_enc & 0x0F, 0)
        return start if start <= pc < start + size else None

    def row(self, pc):
        """The unwind Row in effect at ELF virtual address pc, or None if no FDE covers it."""
        k = bisect.bisect_right(self.starts, pc) - 1
        if k < 0:
            return None
        fde = self.fdes[k]
        d, body, length, ident = self._entry(fde)
        cie = self._cie(body + self.eh_addr - ident)
        i = body + 4
        start, i = _ptr(d, i, cie.fde_enc, self.eh_addr + i)
        size, i = _ptr(d, i, cie.fde_enc & 0x0F, 0)
        if not start <= pc < start + size:
            return None
        alen, i = _uleb(d, i)
        i += alen
        insns = d[i: body + length]
        init = self._run(cie, cie.insns, None, start, None)
        return self._run(cie, insns, init, start, pc)

    def _run(self, cie, insns, init, loc, pc):
        """Execute CFA instructions; stop before the first row past pc (pc=None: run all)."""
        if init is None:
            cfa, rules = None, {}
        else:
            cfa, rules = init.cfa, dict(init.rules)
        initial = dict(rules)
        stack = []
        i = 0
        n = len(insns)
        while i < n:
            op = insns[i]
            i += 1
            hi, lo = op & 0xC0, op & 0x3F
            if hi == 0x40:  # advance_loc
                loc += lo * cie.code_align
                if pc is not None and loc > pc:
                    break
                continue
            if hi == 0x80:  # offset
                off, i = _uleb(insns, i)
                rules[lo] = ("offset", off * cie.data_align)
                continue
            if hi == 0xC0:  # restore
                rules.pop(lo, None)
                if lo in initial:
                    rules[lo] = initial[lo]
                continue
            if op == 0x00:  # nop
                continue
            if op in (0x02, 0x03, 0x04):  # advance_loc1/2/4
                w = {0x02: 1, 0x03: 2, 0x04: 4}[op]
                delta = int.from_bytes(insns[i: i + w], "little")
                i += w
                loc += delta * cie.code_align
                if pc is not None and loc > pc:
                    break
                continue
            if op == 0x01:  # set_loc
                new, i = _ptr(insns, i, cie.fde_enc, 0)
                loc = new
                if pc is not None and loc > pc:
                    break
                continue
            if op in (0x05, 0x11):  # offset_extended(_sf)
                reg, i = _uleb(insns, i)
                off, i = (_uleb if op == 0x05 else _sleb)(insns, i)
                rules[reg] = ("offset", off * cie.data_align)
            elif op == 0x06:  # restore_extended
                reg, i = _uleb(insns, i)
                rules.pop(reg, None)
                if reg in initial:
                    rules[reg] = initial[reg]
            elif op == 0x07:  # undefined
                reg, i = _uleb(insns, i)
                rules[reg] = ("undefined",)
            elif op == 0x08:  # same_value
                reg, i = _uleb(insns, i)
                rules[reg] = ("same",)
            elif op == 0x09:  # register
                reg, i = _uleb(insns, i)
                _r2, i = _uleb(insns, i)
                rules[reg] = ("other",)
            elif op == 0x0A:  # remember_state
                stack.append((cfa, dict(rules)))
            elif op == 0x0B:  # restore_state
                if stack:
                    cfa, rules = stack.pop()
            elif op == 0x0C:  # def_cfa
                reg, i = _uleb(insns, i)
                off, i = _uleb(insns, i)
                cfa = (reg, off)
            elif op == 0x12:  # def_cfa_sf
                reg, i = _uleb(insns, i)
                off, i = _sleb(insns, i)
                cfa = (reg, off * cie.data_align)
            elif op == 0x0D:  # def_cfa_register
                reg, i = _uleb(insns, i)
                cfa = (reg, cfa[1] if cfa else 0)
            elif op == 0x0E:  # def_cfa_offset
                off, i = _uleb(insns, i)
                cfa = (cfa[0] if cfa else RSP, off)
            elif op == 0x13:  # def_cfa_offset_sf
                off, i = _sleb(insns, i)
                cfa = (cfa[0] if cfa else RSP, off * cie.data_align)
            elif op == 0x0F:  # def_cfa_expression
                ln, i = _uleb(insns, i)
                i += ln
                cfa = None
            elif op in (0x10, 0x16):  # expression, val_expression
                reg, i = _uleb(insns, i)
                ln, i = _uleb(insns, i)
                i += ln
                rules[reg] = ("other",)
            elif op in (0x14, 0x15):  # val_offset(_sf)
                reg, i = _uleb(insns, i)
                _off, i = (_uleb if op == 0x14 else _sleb)(insns, i)
                rules[reg] = ("other",)
            elif op == 0x2E:  # GNU_args_size
                _sz, i = _uleb(insns, i)
            elif op == 0x2F:  # GNU_negative_offset_extended
                reg, i = _uleb(insns, i)
                off, i = _uleb(insns, i)
                rules[reg] = ("offset", -off * cie.data_align)
            else:
                raise CFIError(f"CFA opcode {op:#x}")
        return Row(cfa, rules)
