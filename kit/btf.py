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
_PTR, _STRUCT, _UNION, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC_PROTO, _TYPE_TAG = 2, 4, 5, 8, 9, 10, 11, 13, 18
# bytes of kind-specific data after each 12-byte type header: (fixed, per vlen item)
_TRAILER = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
            9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0),
            17: (4, 0), 18: (0, 0), 19: (0, 12)}


class BTF:
    def __init__(self, data):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != 0xEB9F:
            raise ValueError("not BTF")
        self.strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types = [None]  # ids start at 1
        self.by_name = {}
        self.typedefs = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_type = struct.unpack_from("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            fixed, per = _TRAILER[kind]
            members = []
            if kind in (_STRUCT, _UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 + 12 * i)
                    members.append((self._str(m_name), m_type, (m_off & 0xFFFFFF) if kflag else m_off))
            name = self._str(name_off)
            self.types.append((kind, name, size_type, members))
            if kind == _FUNC_PROTO:  # members holds only the parameter count
                members = [None] * vlen
                self.types[-1] = (kind, name, size_type, members)
            if name and kind in (_STRUCT, _UNION):
                self.by_name.setdefault(name, len(self.types) - 1)
            elif name and kind == _TYPEDEF:
                self.typedefs.setdefault(name, len(self.types) - 1)
            pos += 12 + fixed + per * vlen

    def _str(self, off):
        return self.strs[off: self.strs.index(b"\0", off)].decode()

    def _resolve(self, tid):
        while self.types[tid][0] in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
            tid = self.types[tid][2]
        return tid

    def _member(self, tid, name):
        """(bit offset, type id) of member name, looking through anonymous structs/unions."""
        for m_name, m_type, m_off in self.types[self._resolve(tid)][3]:
            if m_name == name:
                return m_off, m_type
            if not m_name and self.types[self._resolve(m_type)][0] in (_STRUCT, _UNION):
                found = self._member(m_type, name)
                if found:
                    return m_off + found[0], found[1]
        return None

    def offsetof(self, struct_name, path):
        """Byte offset of a dotted member path, e.g. offsetof('sock', '__sk_common.skc_net')."""
        tid = self.by_name.get(struct_name)
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


    def raw_tracepoint_args(self, name):
        """Arguments of raw tracepoint `name` (its TP_PROTO, without the leading
        __data), or None when the kernel has no such tracepoint. The kernel
        declares each as `typedef void (*btf_trace_<name>)(void *__data, ...)`."""
        tid = self.typedefs.get(f"btf_trace_{name}")
        if tid is None:
            return None
        tid = self._resolve(self.types[tid][2])
        if self.types[tid][0] == _PTR:
            tid = self._resolve(self.types[tid][2])
        if self.types[tid][0] != _FUNC_PROTO:
            return None
        return len(self.types[tid][3]) - 1


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
