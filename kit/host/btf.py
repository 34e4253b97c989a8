"""Reads struct member offsets from the running kernel's BTF.

BCC here compiles against the closest installed headers, which may be for
another kernel, so a template must never trust struct layouts from them.
When a template needs a field (task_struct.pid, sock's netns), kit looks the
offset up in /sys/kernel/btf/vmlinux and passes it as an integer literal.
"""

import functools
import struct

from kit.errors import Unsupported

VMLINUX = "/sys/kernel/btf/vmlinux"
_ENUM, _ENUM64 = 6, 19
_PTR, _STRUCT, _UNION, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC_PROTO, _TYPE_TAG = 2, 4, 5, 8, 9, 10, 11, 13, 18
# bytes of kind-specific data after each 12-byte type header: (fixed, per vlen item)
_TRAILER = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
            9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0),
            17: (4, 0), 18: (0, 0), 19: (0, 12)}


class BTF:
    """Index of a BTF blob. One pass records where each type starts and which
    structs, unions and typedefs carry which name (as string-table offsets);
    names and members are decoded only for the few types a lookup touches, so
    opening the kernel's ~130k types costs ~0.1 s instead of ~0.7 s (kit's
    start-up, measured by bench/)."""

    _HDR = struct.Struct("<III")

    def __init__(self, data):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != 0xEB9F:
            raise ValueError("not BTF")
        self.data = data
        self.strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.pos = [0]       # type id -> byte offset of its header (ids start at 1)
        self._named = {}     # (is_typedef, name offset) -> first type id of that kind with that name
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack, pos_append, named = self._HDR.unpack_from, self.pos.append, self._named
        while pos < end:
            name_off, info, _size_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            pos_append(pos)
            if name_off and kind in (_STRUCT, _UNION, _TYPEDEF):
                named.setdefault((kind == _TYPEDEF, name_off), len(self.pos) - 1)
            elif name_off and kind in (_ENUM, _ENUM64):
                named.setdefault(("enum", name_off), len(self.pos) - 1)
            fixed, per = _TRAILER[kind]
            pos += 12 + fixed + per * (info & 0xFFFF)

    def _str(self, off):
        return self.strs[off: self.strs.index(b"\0", off)].decode()

    def _header(self, tid):
        """(kind, vlen, kflag, size_or_type) of type tid."""
        _name, info, size_type = self._HDR.unpack_from(self.data, self.pos[tid])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_type

    def _members(self, tid):
        """[(name, type id, bit offset)] of a struct or union."""
        kind, vlen, kflag, _ = self._header(tid)
        base = self.pos[tid] + 12
        out = []
        for i in range(vlen):
            m_name, m_type, m_off = self._HDR.unpack_from(self.data, base + 12 * i)
            out.append((self._str(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off))
        return out

    def _find(self, name, typedef):
        """Type id of the first struct/union (or typedef) called name, or None."""
        needle = b"\0" + name.encode() + b"\0"
        at = self.strs.find(needle)
        while at >= 0:  # strings are normally stored once; look at every copy anyway
            tid = self._named.get((typedef, at + 1))
            if tid is not None:
                return tid
            at = self.strs.find(needle, at + 1)
        return None

    def _resolve(self, tid):
        while self._header(tid)[0] in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
            tid = self._header(tid)[3]
        return tid

    def _member(self, tid, name):
        """(bit offset, type id) of member name, looking through anonymous structs/unions."""
        for m_name, m_type, m_off in self._members(self._resolve(tid)):
            if m_name == name:
                return m_off, m_type
            if not m_name and self._header(self._resolve(m_type))[0] in (_STRUCT, _UNION):
                found = self._member(m_type, name)
                if found:
                    return m_off + found[0], found[1]
        return None

    def enum(self, name):
        """{enumerator: value} of enum `name` (e.g. skb_drop_reason), or None."""
        tid = self._find(name, typedef="enum")
        if tid is None:
            return None
        kind, vlen, kflag, _ = self._header(tid)
        base, step = self.pos[tid] + 12, 8 if kind == _ENUM else 12
        out = {}
        for i in range(vlen):
            n_off, lo = struct.unpack_from("<II", self.data, base + step * i)
            hi = struct.unpack_from("<I", self.data, base + step * i + 8)[0] if kind == _ENUM64 else 0
            v = hi << 32 | lo
            if kflag and kind == _ENUM and v >= 1 << 31:  # signed enum
                v -= 1 << 32
            out[self._str(n_off)] = v
        return out

    def offsetof(self, struct_name, path):
        """Byte offset of a dotted member path, e.g. offsetof('sock', '__sk_common.skc_net')."""
        tid = self._find(struct_name, typedef=False)
        if tid is None:
            raise KeyError(f"struct {struct_name} not in BTF")
        bits = 0
        for part in path.split("."):
            found = self._member(tid, part)
            if found is None:
                raise KeyError(f"{struct_name}.{path}: no member {part}")
            bits += found[0]
            tid = found[1]
        if bits % 8:
            raise KeyError(f"{struct_name}.{path} is a bitfield")
        return bits // 8

    def sizeof(self, struct_name):
        """Size in bytes of a struct (e.g. to step through an array of them)."""
        tid = self._find(struct_name, typedef=False)
        if tid is None:
            raise KeyError(f"struct {struct_name} not in BTF")
        return self._header(tid)[3]

    def raw_tracepoint_args(self, name):
        """Arguments of raw tracepoint `name` (its TP_PROTO, without the leading
        __data), or None when the kernel has no such tracepoint. The kernel
        declares each as `typedef void (*btf_trace_<name>)(void *__data, ...)`."""
        tid = self._find(f"btf_trace_{name}", typedef=True)
        if tid is None:
            return None
        tid = self._resolve(self._header(tid)[3])
        if self._header(tid)[0] == _PTR:
            tid = self._resolve(self._header(tid)[3])
        kind, vlen, _kflag, _ = self._header(tid)
        if kind != _FUNC_PROTO:
            return None
        return vlen - 1


@functools.lru_cache(maxsize=1)
def kernel():
    try:
        with open(VMLINUX, "rb") as f:
            return BTF(f.read())
    except (OSError, ValueError):
        return None


def offsets(wanted):
    """{placeholder: (struct, member path)} -> {placeholder: byte offset}, or Unsupported."""
    btf = kernel()
    if btf is None:
        raise Unsupported(f"this kernel has no usable BTF at {VMLINUX}", "needs CONFIG_DEBUG_INFO_BTF=y")
    try:
        return {k: btf.offsetof(s, m) for k, (s, m) in wanted.items()}
    except KeyError as e:
        raise Unsupported(f"kernel BTF lacks {e.args[0]}", "this recipe's hook needs another kernel") from None
