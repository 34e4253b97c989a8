"""The typed layer between user text and C text.

Every parameter a recipe declares has a type from TYPES. A type converts the
user's text into a checked Python value (or raises BadInput saying how to fix
it) and, for parameters that reach the program, emits a C literal: a decimal
or hex integer, a byte initializer, or a token from an allow-list. Nothing the
user typed is ever pasted into C as-is.
"""

import fcntl
import ipaddress
import os
import re
import stat

from kit.host import procfs
from kit.errors import BadInput, Unsupported

COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel truncates comm to 15 bytes


def byte_initializer(raw=b"", size=16):
    """A zero-padded C array initializer of `size` bytes, each a decimal literal: how text and
    addresses reach a template (never as C text)."""
    if len(raw) > size:
        raise ValueError(f"{len(raw)} bytes do not fit a {size}-byte initializer")
    return "{" + ", ".join(str(b) for b in raw.ljust(size, b"\0")) + "}"


class ParamType:
    name = "?"
    c_emitter = True  # False: the value is used by kit itself, never by C text

    def parse(self, text, spec):
        raise NotImplementedError

    def emit(self, value):
        raise NotImplementedError

    def off(self):
        """The C literal that means 'no filter' when the parameter is unset."""
        return "0"


def _int(text, what, lo, hi, fix):
    s = str(text).strip()
    if not re.fullmatch(r"[0-9]+", s):
        raise BadInput(f"{what} must be a whole number, got {str(text)[:40]!r}", fix)
    if len(s) > 30:  # far out of any range; and int() refuses over 4300 digits
        raise BadInput(f"{what} {s[:20]}... is out of range {lo}..{hi}", fix)
    v = int(s)
    if not lo <= v <= hi:
        raise BadInput(f"{what} {v} is out of range {lo}..{hi}", fix)
    return v


def _path_text(text, flag, fix):
    """A path-like argument the OS can take: no NUL, encodable, not absurdly long."""
    s = str(text)
    try:
        ok = bool(s) and "\0" not in s and len(os.fsencode(s)) <= 4096
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise BadInput(f"--{flag} is not a usable path", fix)
    return s


def _proc_status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None


class Integer(ParamType):
    name = "int"

    def parse(self, text, spec):
        return _int(text, f"--{spec.flag}", spec.min, spec.max, f"give a number from {spec.min} to {spec.max}")

    def emit(self, value):
        return f"{int(value)}ULL"


class Pid(ParamType):
    """A live user-space process (tgid). Kernel threads and zombies are refused:
    they have no user stack and no future events worth paying for."""
    name = "pid"
    what = "process"

    def parse(self, text, spec):
        pid = _int(text, f"--{spec.flag}", 1, 2**22, "give a numeric process id, e.g. from `pgrep -n NAME`")
        st = _proc_status(pid)
        if st is None:
            raise BadInput(f"no {self.what} with id {pid}", "check it with `ps -p ID` or scope by --comm instead")
        if st.get("State", "").startswith(("Z", "X")):
            raise BadInput(f"{self.what} {pid} is a zombie (exited, not yet reaped)",
                           "scope by the parent or by --comm instead")
        if procfs.is_kthread(pid):
            raise BadInput(f"{self.what} {pid} ({st.get('Name', '?')}) is a kernel thread",
                           "kit probes user-space processes; pick a process id from `ps -e`")
        if self.name == "pid" and st.get("Tgid") != str(pid):
            raise BadInput(f"{pid} is a thread of process {st.get('Tgid')}, not a process",
                           f"use --pid {st.get('Tgid')} or --tid {pid}")
        return pid

    def emit(self, value):
        return str(int(value))


class Tid(Pid):
    name = "tid"
    what = "thread"


class Comm(ParamType):
    """A task name as the kernel stores it: at most 15 bytes, matched
    exactly. Emitted as a 16-byte initializer so the program compares two
    64-bit words instead of looping over characters. (Which names a scope
    compares it with, thread's or process's, is the prelude's rule.)"""
    name = "comm"

    def parse(self, text, spec):
        s = str(text)
        flag = f"--{spec.flag}"
        shown = "`ps -L -o comm`" if spec.name == "thread_comm" else "`ps -o comm`"
        try:
            raw = s.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise BadInput(f"{flag} is not valid text", f"give the name as {shown} shows it") from None
        if not raw:
            raise BadInput(f"{flag} is empty", f"give the name as {shown} shows it")
        if len(raw) > COMM_LEN:
            raise BadInput(
                f"{flag} {s[:40]!r} is {len(raw)} bytes; the kernel truncates comm to {COMM_LEN}",
                f"use the truncated name {flag} {raw[:COMM_LEN].decode('utf-8', 'replace')!r}"
                f" (as {shown} shows it) or scope by --pid")
        if any(b < 0x20 or b == 0x7F for b in raw):
            raise BadInput(f"{flag} contains control characters or NUL", f"give the name as {shown} shows it")
        return s

    def emit(self, value):
        return byte_initializer(value.encode("utf-8", "surrogateescape"))

    def off(self):
        return byte_initializer()


class Duration(ParamType):
    """20s, 500ms, 2m, 1h or a bare number of seconds. Value in seconds."""
    name = "duration"
    c_emitter = False
    UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

    @classmethod
    def seconds(cls, text, what="--for"):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)?\s*", str(text))
        if not m:
            raise BadInput(f"{what} {text!r} is not a duration", "write it like 20s, 500ms or 2m")
        v = float(m.group(1)) * cls.UNITS[m.group(2) or "s"]
        if v <= 0:
            raise BadInput(f"{what} must be longer than zero", "write it like 20s, 500ms or 2m")
        if v > 7 * 86400:  # also catches digit strings so long that float() gives inf
            raise BadInput(f"{what} {str(text).strip()[:20]} is far too long", "write it like 20s, 500ms or 2m")
        return v

    def parse(self, text, spec):
        return self.seconds(text, f"--{spec.flag}")


class Micros(ParamType):
    """A time threshold for in-kernel filtering, emitted as whole microseconds."""
    name = "micros"

    def parse(self, text, spec):
        m = re.fullmatch(r"\s*([0-9]{1,15})\s*(us|ms|s)?\s*", str(text))
        if not m:
            raise BadInput(f"--{spec.flag} {text!r} is not a time", "write it like 100us, 1ms or 2s")
        us = int(m.group(1)) * {"us": 1, "ms": 1000, "s": 1000000}[m.group(2) or "us"]
        if us > 3600 * 1000000:
            raise BadInput(f"--{spec.flag} is over an hour", "give a threshold under an hour, e.g. 1ms")
        return us

    def emit(self, value):
        return f"{int(value)}ULL"


class Hertz(ParamType):
    """Samples per second (per CPU), e.g. 49 or 99Hz, within the catalog's min..max. Used by kit to
    open the perf event, never written into C."""
    name = "hertz"
    c_emitter = False

    def parse(self, text, spec):
        s = re.sub(r"(?i)\s*hz\s*$", "", str(text).strip())
        lo = max(spec.min, 1)
        return _int(s, f"--{spec.flag}", lo, spec.max, f"give a rate from {lo} to {spec.max} samples per second")


class Port(ParamType):
    name = "port"

    def parse(self, text, spec):
        return _int(text, f"--{spec.flag}", 1, 65535, "give a TCP port from 1 to 65535")

    def emit(self, value):
        return str(int(value))


class IPAddr(ParamType):
    """An IPv4 or IPv6 address, emitted as a 16-byte initializer (IPv4 in the
    first four bytes, as the tcp tracepoints store it)."""
    name = "ipaddr"

    def parse(self, text, spec):
        try:
            addr = ipaddress.ip_address(str(text).strip())
        except ValueError:
            raise BadInput(f"--{spec.flag} {str(text)[:60]!r} is not an IP address",
                           "give one like 10.0.0.5 or 2001:db8::1") from None
        if getattr(addr, "scope_id", None) is not None:  # free text after '%' would reach the output
            raise BadInput(f"--{spec.flag} {str(text)[:60]!r} has a zone id", "give the address without %ZONE")
        return addr

    def emit(self, value):
        return byte_initializer(value.packed)

    def off(self):
        return byte_initializer()


NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: its CLONE_NEW* type
CLONE_NEWNET = 0x40000000


class Netns(ParamType):
    """A network namespace: a name from `ip netns`, a path to an nsfs file
    (/proc/PID/ns/net, /run/netns/NAME) or a pid. Emitted as its inode number."""
    name = "netns"

    def parse(self, text, spec):
        s = str(text)
        if re.fullmatch(r"[0-9]{1,10}", s):
            path = f"/proc/{s}/ns/net"
        elif re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", s):
            path = f"/run/netns/{s}"
        else:
            path = s
        fix = "give a name from `ip netns list`, a pid, or /proc/PID/ns/net"
        _path_text(s, spec.flag, fix)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise BadInput(f"--{spec.flag} {s[:80]!r}: no network namespace at {path[:80]}", fix) from None
        except OSError as e:
            raise BadInput(f"--{spec.flag} {s[:80]!r}: cannot open {path[:80]}: {e.strerror}", fix) from None
        try:  # any file has an inode number: make sure this one is a network namespace
            st = os.fstat(fd)
            try:
                nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
            except OSError:
                nstype = None
        finally:
            os.close(fd)
        if nstype != CLONE_NEWNET:
            raise BadInput(f"--{spec.flag} {s[:80]!r}: {path[:80]} is not a network namespace", fix)
        return st.st_ino

    def emit(self, value):
        return f"{int(value)}U"


def cgroup2_roots(mountinfo="/proc/self/mountinfo"):
    """Mount points of the cgroup v2 hierarchy (/sys/fs/cgroup, or .../unified on hybrid systems)."""
    roots = []
    try:
        with open(mountinfo) as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                if post.split()[:1] == ["cgroup2"]:
                    roots.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), pre.split()[4]))
    except OSError:
        pass
    return roots


class Cgroup(ParamType):
    """A cgroup v2 directory; its inode number is the id bpf_get_current_cgroup_id returns.
    Only the v2 hierarchy has those ids: a v1 directory's inode would silently match nothing."""
    name = "cgroup"

    def parse(self, text, spec):
        s = str(text)
        roots = cgroup2_roots()
        if not roots:
            raise Unsupported("--cgroup needs the cgroup v2 hierarchy, which is not mounted",
                              "mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or scope by --pid or --comm")
        root = roots[0]
        fix = f"give a directory under {root}, e.g. system.slice/nginx.service (from /proc/PID/cgroup)"
        _path_text(s, spec.flag, fix)
        under = [r for r in roots if s == r or s.startswith(r.rstrip("/") + "/")]
        path = s if under or s.startswith("/sys/") else os.path.join(root, s.lstrip("/"))
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            if os.path.exists(real):
                raise BadInput(f"--cgroup {s[:80]!r} resolves to {real[:120]}, outside the cgroup v2 hierarchy at "
                               f"{root}", fix)
            raise BadInput(f"--cgroup {s[:80]!r}: no cgroup at {path[:120]}", fix)
        if not os.path.isfile(os.path.join(real, "cgroup.procs")):
            raise BadInput(f"--cgroup {s[:80]!r}: no cgroup at {real[:120]}", fix)
        return CgroupId(os.stat(real).st_ino, real)

    def emit(self, value):
        return f"{int(value)}ULL"


class CgroupId(int):
    """A cgroup's id (its directory's inode, what the kernel compares) that shows as its directory, so a
    command kit prints (a refusal's way out, a report's) names the cgroup as --cgroup takes it."""

    def __new__(cls, ino, path):
        obj = super().__new__(cls, ino)
        obj.path = path
        return obj

    def __str__(self):
        return self.path


class Disk(ParamType):
    """A block device by name (loop0, /dev/nvme0n1) or MAJ:MIN, as the kernel's internal dev_t
    (major << 20 | minor), which is what block tracepoints carry (not the userspace makedev)."""
    name = "disk"
    FIX = "give a name from `lsblk -d -o NAME` (e.g. sda, nvme0n1, loop0) or MAJ:MIN from /sys/block/NAME/dev"

    def parse(self, text, spec):
        s = str(text).strip()
        m = re.fullmatch(r"([0-9]{1,4}):([0-9]{1,7})", s)
        if m:
            major, minor = int(m.group(1)), int(m.group(2))
            if major >= 1 << 12 or minor >= 1 << 20:
                raise BadInput(f"--{spec.flag} {s!r} is out of range (major < 4096, minor < 1048576)", self.FIX)
            return DiskId(major << 20 | minor, s)
        name = s[5:] if s.startswith("/dev/") else s
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", name):
            raise BadInput(f"--{spec.flag} {s[:40]!r} is not a block device name", self.FIX)
        try:
            with open(f"/sys/class/block/{name}/dev") as f:
                major, minor = (int(x) for x in f.read().strip().split(":"))
        except (OSError, ValueError):
            raise BadInput(f"--{spec.flag} {name!r}: no such block device", self.FIX) from None
        return DiskId(major << 20 | minor, name)

    def emit(self, value):
        return f"{int(value)}U"


class DiskId(int):
    """A kernel dev_t that shows as the device's name (in a run's scope line and JSON params)."""

    def __new__(cls, dev, name):
        obj = super().__new__(cls, dev)
        obj.name = name
        return obj

    def __str__(self):
        return self.name


def disk_name(dev):
    """The name of a kernel dev_t (major << 20 | minor), or MAJ:MIN when it has none."""
    major, minor = dev >> 20, dev & ((1 << 20) - 1)
    try:
        with open(f"/sys/dev/block/{major}:{minor}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return f"{major}:{minor}"


class Binary(ParamType):
    """An ELF file to attach uprobes to. Used by kit, never written into C."""
    name = "binary"
    c_emitter = False

    def parse(self, text, spec):
        s = _path_text(text, spec.flag, "give the path of an executable or library")
        try:
            st = os.stat(s)
            if stat.S_ISDIR(st.st_mode):
                raise BadInput(f"--{spec.flag} {s[:120]} is a directory", "give an executable or shared library")
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or mislead the ELF check
                raise BadInput(f"--{spec.flag} {s[:120]} is not a regular file", "give an executable or shared library")
            fd = os.open(s, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                magic = os.read(fd, 4)
            finally:
                os.close(fd)
        except OSError as e:
            raise BadInput(f"--{spec.flag} {s[:120]}: {e.strerror}",
                           "give the path of an executable or library that exists and is readable") from None
        if magic != b"\x7fELF":
            raise BadInput(f"--{spec.flag} {s[:120]} is not an ELF binary",
                           "give the executable or shared library itself, not a script or wrapper")
        return os.path.realpath(s)


class Symbol(ParamType):
    """A function name in an ELF symbol table. Used by kit to attach, never in C."""
    name = "symbol"
    c_emitter = False

    def parse(self, text, spec):
        s = str(text)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.@$]{0,255}", s):
            raise BadInput(f"--{spec.flag} {s[:60]!r} is not a symbol name",
                           "give a function name as `nm -D BINARY` shows it")
        return s


class Hostname(ParamType):
    """A host name as a program passes it to the resolver (or an address
    literal), matched byte for byte in the kernel. Emitted as a zero-padded
    byte initializer of HOST_LEN bytes, never as C text."""
    name = "hostname"
    HOST_LEN = 256  # a DNS name is at most 253 bytes

    def parse(self, text, spec):
        s = str(text)
        if not 1 <= len(s) <= 253:
            raise BadInput(f"--{spec.flag} must be 1 to 253 characters, got {len(s)}",
                           "give the name exactly as the program resolves it, e.g. db.internal")
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", s, re.ASCII):  # checked as text: nothing else reaches bytes
            raise BadInput(f"--{spec.flag} {s[:60]!r} is not a host name",
                           "use letters, digits, '.', '-', '_' (or an address literal)")
        return s

    def emit(self, value):
        return byte_initializer(value.encode(), self.HOST_LEN)

    def off(self):
        return byte_initializer(size=self.HOST_LEN)


class Enum(ParamType):
    """One of an allow-list; the C token comes from the catalog, not the user."""
    name = "enum"

    def parse(self, text, spec):
        s = str(text)
        if s not in spec.choices:
            raise BadInput(f"--{spec.flag} {s[:40]!r} is not one of {', '.join(spec.choices)}",
                           f"use one of: {', '.join(spec.choices)}")
        return s

    def emit(self, value):
        raise AssertionError("enums are emitted by index through params.emit")


class Flag(ParamType):
    name = "flag"

    def parse(self, text, spec):
        if isinstance(text, bool):
            return text
        s = str(text).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise BadInput(f"--{spec.flag} takes no value or true/false, got {text!r}", f"write --{spec.flag}")

    def emit(self, value):
        return "1" if value else "0"


class OutPath(ParamType):
    """A file kit writes (a flame graph). Never in C."""
    name = "outpath"
    c_emitter = False

    def parse(self, text, spec):
        s = _path_text(text, spec.flag, "give a file name like /tmp/offcpu.svg")
        d = os.path.dirname(os.path.abspath(s))
        if not os.path.isdir(d):
            raise BadInput(f"--{spec.flag}: directory {d[:120]} does not exist", "write to an existing directory")
        try:
            st = os.lstat(s)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):  # root: never write through a link or into a device
            raise BadInput(f"--{spec.flag} {s[:120]} exists and is not a regular file",
                           "give a new file name or an existing regular file")
        _check_writable(s, spec.flag, existed=st is not None)
        return s


def _check_writable(path, flag, existed):
    """Opens the file for writing now, before anything is attached, so a run never ends unable to
    write it: /proc and /sys refuse new files, a read-only mount or an immutable file refuses all.
    An existing file is not truncated here; a new one is removed again."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (0 if existed else os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise BadInput(f"--{flag} {path[:120]} cannot be written: {e.strerror}",
                       "give a file in a writable directory, e.g. /tmp/offcpu.svg") from None
    os.close(fd)
    if not existed:
        os.unlink(path)


def open_output(path):
    """Opens an OutPath value for writing without following a symlink planted after parse()."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{path[:120]} is not a regular file", "give a new file name")
    return os.fdopen(fd, "w")


TYPES = {t.name: t() for t in (Integer, Pid, Tid, Comm, Duration, Micros, Port, IPAddr, Netns, Cgroup, Disk,
                               Binary, Symbol, Enum, Flag, OutPath, Hostname, Hertz)}


def emit(spec, value):
    """The C literal for a parameter's value, or its 'off' literal when unset."""
    t = TYPES[spec.type]
    if value is None:
        return t.off() if spec.default is None else _emit_value(t, spec, spec.default_value)
    return _emit_value(t, spec, value)


def _emit_value(t, spec, value):
    if spec.type == "enum":  # the index into the catalog's allow-list, never the user's text
        return str(spec.choices.index(value))
    return t.emit(value)
