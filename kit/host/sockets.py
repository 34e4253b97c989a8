"""Which process owns a TCP socket, through the kernel's sock_diag (pyroute2).

sock_diag answers for the network namespace the netlink socket was opened
in, so for a flow seen in another namespace kit opens the netlink socket from
a thread that has joined that namespace (setns affects only that thread).
"""

import ctypes
import ipaddress
import os
import socket
import threading

from kit.host import procfs

CLONE_NEWNET = 0x40000000


def _netns_path(inode):
    """A file naming the network namespace with this inode: a process in it, or /run/netns."""
    if not inode:
        return None
    candidates = [os.path.join("/run/netns", n) for n in _listdir("/run/netns")]
    candidates += [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
    for path in candidates:
        try:
            if os.stat(path).st_ino == inode:
                return path
        except OSError:
            continue
    return None


def _listdir(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def _diag_inodes(families):
    """{(family, src, sport, dst, dport): inode} for every TCP socket in this thread's netns."""
    from pyroute2 import DiagSocket
    out = {}
    with DiagSocket() as ds:
        ds.bind()
        for fam in families:
            for msg in ds.get_sock_stats(family=fam, states=0xFFF):
                src = msg["idiag_src"] if "idiag_src" in msg else msg.get_attr("idiag_src")
                dst = msg["idiag_dst"] if "idiag_dst" in msg else msg.get_attr("idiag_dst")
                key = (fam, str(ipaddress.ip_address(src)), msg["idiag_sport"],
                       str(ipaddress.ip_address(dst)), msg["idiag_dport"])
                out[key] = msg["idiag_inode"]
    return out


def _in_netns(path, fn):
    """Run fn() in a thread that joined the netns at path; returns its result (or raises)."""
    box = {}

    def body():
        try:
            if path:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
            box["v"] = fn()
        except Exception as e:  # reported by the caller as "owner unknown"
            box["e"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def _owners(inodes):
    """{inode: (pid, comm)} by scanning /proc/*/fd for socket:[inode]."""
    want = {f"socket:[{i}]": i for i in inodes}
    found = {}
    for pid in _listdir("/proc"):
        if not pid.isdigit() or len(found) == len(want):
            continue
        fd_dir = f"/proc/{pid}/fd"
        for fd in _listdir(fd_dir):
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link in want and want[link] not in found:
                found[want[link]] = (int(pid), procfs.comm_of(pid) or "?")
    return found


def attribute(flows):
    """flows: list of dicts with netns, family, saddr, sport, daddr, dport.
    Sets pid/comm on each (None when the socket is gone). Returns a note or None."""
    by_ns = {}
    for f in flows:
        by_ns.setdefault(f.get("netns") or 0, []).append(f)
    unknown = 0
    for ns, group in by_ns.items():
        path = _netns_path(ns) if ns and ns != _own_netns() else None
        if ns and ns != _own_netns() and path is None:
            continue
        fams = sorted({socket.AF_INET if f["family"] == 4 else socket.AF_INET6 for f in group})
        try:
            table = _in_netns(path, lambda: _diag_inodes(fams))
        except Exception:
            continue
        for f in group:
            fam = socket.AF_INET if f["family"] == 4 else socket.AF_INET6
            f["_inode"] = table.get((fam, f["saddr"], f["sport"], f["daddr"], f["dport"]))
    owners = _owners({f["_inode"] for f in flows if f.get("_inode")})
    for f in flows:
        pid, comm = owners.get(f.pop("_inode", None), (None, None))
        f["pid"], f["comm"] = pid, comm
        if pid is None:
            unknown += 1
    if unknown:
        return f"{unknown} flow(s) have no owner: the socket closed before the run ended, or its netns is gone"
    return None


def _own_netns():
    return os.stat("/proc/self/ns/net").st_ino
