"""What a uprobe costs depends on the probed instruction: x86-64 kernels
emulate a few instructions after the breakpoint trap (push of a register,
nops, jmp/call/jcc with a relative target) and single-step every other one
out of line, which costs an extra trap and a return to user space.

Measured on the 6.18 development VM, thread CPU time added per hit: push,
nop, jmp about 0.5 us; endbr64, mov, sub, lea about 10 us. So a function
built with -fcf-protection (first instruction endbr64) is twenty times more
expensive to probe than one that starts with `push %rbp`.

kind() names the first instruction's kind; `kit calibrate` measures each kind
on this host (kit/guard/calibrate.py) and the guardrail prices a uprobe by the kind
of its actual target instruction. Without a calibration, EMULATED decides
between the two default costs.
"""

import os

# Kinds the kernel emulates (arch/x86/kernel/uprobes.c: branch_setup_xol_ops, push_setup_xol_ops).
EMULATED = frozenset({"push", "nop", "jmp", "call", "jcc"})
KINDS = ("push", "nop", "jmp", "call", "jcc", "endbr64", "other")

# The kernel's own nops (x86_nops[len]): only these, or prefixes + 0x90, count as nops there.
X86_NOPS = (b"\x90", b"\x66\x90", b"\x0f\x1f\x00", b"\x0f\x1f\x40\x00", b"\x0f\x1f\x44\x00\x00",
            b"\x66\x0f\x1f\x44\x00\x00", b"\x0f\x1f\x80\x00\x00\x00\x00",
            b"\x0f\x1f\x84\x00\x00\x00\x00\x00")
_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})


def kind(code):
    """The kind of the x86-64 instruction at the start of `code` (bytes), by the kernel's rules for
    which instructions it emulates at a uprobe."""
    b = bytes(code[:16])
    if b[:4] == b"\xf3\x0f\x1e\xfa":
        return "endbr64"
    if any(b.startswith(n) for n in X86_NOPS):
        return "nop"
    i = 0
    prefixes = set()
    while i < len(b) and b[i] in _LEGACY_PREFIXES:
        prefixes.add(b[i])
        i += 1
    rex = 0
    if i < len(b) and 0x40 <= b[i] <= 0x4F:
        rex = b[i]
        i += 1
    if i >= len(b):
        return "other"
    op = b[i]
    nxt = b[i + 1] if i + 1 < len(b) else None
    if op == 0x90 and not rex & 0x1:
        return "nop"  # prefix* + nop, pause included (xchg with REX.B is a real exchange)
    if 0x50 <= op <= 0x57:
        # push reg: one byte, or two with REX 0x41 (r8-r15); any other prefix is single-stepped
        return "push" if not prefixes and rex in (0, 0x41) else "other"
    if 0x66 in prefixes:
        return "other"  # 16-bit branch overrides are refused emulation
    if op in (0xEB, 0xE9):
        return "jmp"
    if op == 0xE8:
        return "call"
    if 0x70 <= op <= 0x7F or (op == 0x0F and nxt is not None and 0x80 <= nxt <= 0x8F):
        return "jcc"  # bnd-prefixed (f2) branches included, as the kernel allows
    return "other"


def emulated(k):
    return k in EMULATED


def first_bytes(path, offset, n=16):
    """The bytes at a file offset (where BCC's resolver says the symbol's code starts)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def symbol_kind(path, offset):
    try:
        return kind(first_bytes(path, offset))
    except OSError:
        return "other"


# Machine code kit calibrate probes, one function per kind, each returning at once.
# Called through ctypes from a throwaway process; kept tiny so the probe dominates.
SAMPLES = {
    "push": bytes([0x55, 0x5D, 0xC3]),                         # push %rbp; pop %rbp; ret
    "nop": bytes([0x0F, 0x1F, 0x40, 0x00, 0xC3]),              # nopl 0x0(%rax); ret
    "jmp": bytes([0xEB, 0x00, 0xC3]),                          # jmp .+2; ret
    "call": bytes([0xE8, 0x01, 0, 0, 0, 0xC3, 0xC3]),          # call .+6 (a ret); ret
    "jcc": bytes([0x74, 0x00, 0xC3]),                          # je .+2; ret
    "endbr64": bytes([0xF3, 0x0F, 0x1E, 0xFA, 0xC3]),          # endbr64; ret
    "other": bytes([0x48, 0x89, 0xF8, 0xC3]),                  # mov %rdi,%rax; ret
}


def sample_blob():
    """(code, {kind: offset}) with each sample function 16-byte aligned."""
    code, offsets = b"", {}
    for k, fn in SAMPLES.items():
        code += b"\xcc" * (-len(code) % 16)
        offsets[k] = len(code)
        code += fn
    return code, offsets


def machine_supported():
    return os.uname().machine == "x86_64"
