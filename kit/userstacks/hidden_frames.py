"""Recovering the caller a frame-pointer walk skips inside libraries built
without frame pointers (Debian's libc), from the libraries' .eh_frame.

The kernel's user stack walk follows rbp. When a task blocks in a syscall
made by a libc wrapper (usleep -> nanosleep -> clock_nanosleep), rbp still
points at the frame of the function that called the wrapper, so the walk
reports that function's *caller* next and the function itself is lost.

kit's BPF program walks up from the syscall site using per-site hints: the
CFA offset (CFA = sp + N, return address at CFA-8) of each site, keyed by a
fingerprint of the site that needs no per-process base address (its page
offset and the 8 code bytes before it). It stops at the first frame whose
CFA is rbp-based: that frame keeps a frame pointer, so the kernel's walk
continues correctly from there, and every return address read on the way
is a frame the walk skipped. A site without a hint makes the program send
its stack window once; this module computes the hints from that window and
the process's mapped files. Before kit shows a recovered chain it checks it
again against the real CFI of each site, so a fingerprint collision can cost
a frame but never invent one.

A program built without frame pointers has no such frame to stop at: there
the walk keeps the frames the unwind tables gave, up to MAX_HIDDEN, and
says nothing above them (the kernel's walk followed rbp, which such code
uses as an ordinary register). learn() tells the two apart: complete or not.
"""

from kit.binaries import cfi as cfimod
from kit.binaries import elf

HINT_TERMINAL, HINT_SAVES_BP, HINT_STOP = 1, 2, 4
MAX_HIDDEN = 4


def hint_for(row):
    """(cfa_off, flags) for a CFI row, as the BPF walk uses it."""
    if row is None or row.cfa is None or not row.ra_at_cfa_minus_8():
        return 0, HINT_STOP
    reg, off = row.cfa
    if reg == cfimod.RBP and off == 16 and row.rules.get(cfimod.RBP) == ("offset", -16):
        return 0, HINT_TERMINAL  # a frame-pointer frame: the kernel's walk sees it
    if reg != cfimod.RSP or off < 8 or off > 0xFFFF or off % 8:
        return 0, HINT_STOP
    flags = 0
    rbp = row.rules.get(cfimod.RBP)
    if rbp is not None:
        if rbp[0] != "offset" or rbp[1] >= 0 or -rbp[1] > 0xFF * 8:
            return 0, HINT_STOP
        flags = HINT_SAVES_BP | ((-rbp[1] // 8) << 8)  # where the saved rbp sits, below the CFA
    return off, flags


def _after_call(code8):
    """Do the 8 bytes before a return address end with a call instruction?"""
    if code8[3] == 0xE8:  # call rel32
        return True
    for back in (2, 3, 6, 7):  # call *reg / *(mem) forms: ff /2
        if code8[8 - back] == 0xFF and (code8[9 - back] >> 3) & 7 == 2:
            return True
    return False


class Learner:
    def __init__(self, symbolizer):
        self.sym = symbolizer
        self._eh = {}            # (dev, inode) -> EhFrame or None
        self.hints = {}          # fingerprint -> (cfa_off, flags) as pushed to the kernel
        self.values = {}         # fingerprint -> every value any site produced for it
        self.pending = {}        # fingerprint -> value not yet pushed
        self.learned = 0

    def _ehframe(self, m, e):
        key = (m.dev, m.ino)
        if key not in self._eh:
            try:
                self._eh[key] = cfimod.EhFrame(e)
            except (cfimod.CFIError, ValueError, IndexError):
                self._eh[key] = None
        return self._eh[key]

    def site(self, img, addr):
        """(fingerprint, code8, (cfa_off, flags)) for a syscall-return or call-return site, or None."""
        m, e, vaddr = img.locate(addr - 1)
        if e is None or vaddr is None:
            return None
        vaddr += 1
        try:
            code8 = e.read_at(vaddr - 8, 8)
        except elf.ElfError:
            return None
        eh = self._ehframe(m, e)
        try:
            row = eh.row(vaddr - 1) if eh else None
        except (cfimod.CFIError, ValueError, IndexError):
            row = None
        return (addr & 0xFFF, int.from_bytes(code8, "little")), code8, hint_for(row)

    def _install(self, fp, value):
        seen = self.values.setdefault(fp, set())
        seen.add(value)
        final = value if len(seen) == 1 else (0, HINT_STOP)  # two sites, one fingerprint: ambiguous
        if self.hints.get(fp) != final:
            self.hints[fp] = final
            self.pending[fp] = final

    def learn(self, tgid, ip, sp, words):
        """Compute hints for every site on the chain from a syscall at ip, using the stack window.
        Returns (frames the frame-pointer walk skipped for this very stack, complete): complete when
        the chain reached a frame-pointer frame, so the kernel's walk goes on correctly above it; not
        when the unwind tables alone gave the frames (as the kernel's walk does, UNW_CFI). None if
        the chain could not be followed at all."""
        img = self.sym.covering(tgid, ip)  # the block is in progress: the process is alive to re-read
        if img is None:
            return None
        addr, cur, chain = ip, sp, []
        for i in range(MAX_HIDDEN + 1):
            s = self.site(img, addr)
            if s is None:
                return None
            fp, _code, (off, flags) = s
            self._install(fp, (off, flags))
            if flags & HINT_TERMINAL:
                return chain, True
            if flags & HINT_STOP or i == MAX_HIDDEN:
                return (chain, False) if chain else None
            idx = (cur + off - 8 - sp) // 8
            if idx >= len(words):
                return None
            addr, cur = words[idx], cur + off
            chain.append(addr)
            self.learned += 1
        return None

    def take_pending(self):
        out, self.pending = self.pending, {}
        return out

    def verify(self, img, ip, hidden, complete=True):
        """True if a chain the kernel recovered agrees with the real CFI of every site on it.
        complete: it ends at a frame-pointer frame; else (UNW_CFI) the last frame is only a return
        address the previous site's rule found, whatever its own rule."""
        if img is None or not hidden:
            return False
        s = self.site(img, ip)
        if s is None or s[1][6:] != b"\x0f\x05":
            return False
        chain = [ip] + list(hidden)
        for i, addr in enumerate(chain):
            s = self.site(img, addr)
            if s is None:
                return False
            fp, code8, value = s
            if i > 0 and not _after_call(code8):
                return False
            last = i == len(chain) - 1
            if not complete and last:
                return True
            if self.values.get(fp) != {value}:
                return False
            terminal = bool(value[1] & HINT_TERMINAL)
            if terminal != (complete and last) or value[1] & HINT_STOP:
                return False
        return True
