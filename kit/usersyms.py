"""User-space symbols for live processes and for processes that have exited.

BCC's per-pid symbol cache reads /proc/PID/maps and the mapped files when it
is asked, so it cannot name frames of a process that exited during the run.
kit instead snapshots /proc/PID/maps as soon as it first sees a process and
opens every mapped ELF file then (through /proc/PID/map_files, so a file
deleted or in another mount namespace still resolves). The open files are
what resolve the frames later, after the process is gone.
"""

import os
import time

from kit import elf, targets


def read_maps(pid):
    """Executable mappings (targets.MapsLine) of a live process, or None if it is gone."""
    text = targets.read_text(f"/proc/{pid}/maps")
    if text is None:
        return None
    return [m for m in targets.parse_maps(text, files_only=False) if m.perms[2] == "x"]


class ElfCache:
    """One open Elf per (device, inode), shared by every process that maps it."""

    def __init__(self):
        self.files = {}

    def get(self, pid, m):
        key = (m.dev, m.ino)
        if key in self.files:
            return self.files[key]
        found = None
        if m.ino and m.path.startswith("/"):
            for cand in (f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", f"/proc/{pid}/root{m.path}", m.path):
                try:
                    with open(cand, "rb") as f:
                        if os.fstat(f.fileno()).st_ino == m.ino:
                            found = elf.Elf(f)  # keeps its own descriptor of the file
                            break
                except (OSError, elf.ElfError):
                    pass
        self.files[key] = found
        return found

    def close(self):
        for e in self.files.values():
            if e is not None:
                e.close()
        self.files.clear()


class ProcessImage:
    """What kit keeps of one process to resolve its user addresses, live or exited."""

    def __init__(self, pid, cache):
        self.pid = pid
        self.cache = cache
        self.maps = []
        self.alive = True
        self.snapshots = 0
        self.seen_at = time.monotonic()

    def refresh(self):
        """Re-read the maps while the process lives (it may have loaded libraries). False once it is gone."""
        if not self.alive:
            return False
        maps = read_maps(self.pid)
        if maps is None:
            self.alive = False
            return False
        known = {(m.start, m.end, m.ino) for m in self.maps}
        for m in maps:
            if (m.start, m.end, m.ino) not in known:
                self.cache.get(self.pid, m)  # open the file now, while /proc/PID still exists
        # keep old mappings that were unmapped since: stacks may still point into them
        keep = [m for m in self.maps if not any(n.start < m.end and m.start < n.end for n in maps)]
        self.maps = sorted(maps + keep, key=lambda m: m.start)
        self.snapshots += 1
        return True

    def find(self, addr):
        for m in self.maps:
            if m.start <= addr < m.end:
                return m
        return None

    def locate(self, addr):
        """(mapping, Elf or None, ELF virtual address or None) for a user address."""
        m = self.find(addr)
        if m is None:
            return None, None, None
        e = self.cache.get(self.pid, m)
        if e is None:
            return m, None, None
        return m, e, e.offset_to_vaddr(addr - m.start + m.offset)

    def symbol(self, addr, is_return=False):
        """Frame name for a user address. Return addresses are looked up at addr-1 (the call)."""
        m, e, vaddr = self.locate(addr - 1 if is_return else addr)
        if m is None:
            return "[unknown]"
        where = m.name if m.name.startswith("[") else f"[{m.name}]"  # [vdso] is named so already
        if e is None or vaddr is None:
            return where
        sym = e.symbol(vaddr)
        return sym[0] if sym else where

    def module(self, addr):
        m = self.find(addr)
        return m.name if m else None


class Symbolizer:
    """ProcessImage per tgid, kept after the process exits."""

    def __init__(self):
        self.cache = ElfCache()
        self.procs = {}

    def see(self, pid):
        """First sight of a process: snapshot it now. Returns False if it had already exited."""
        p = self.procs.get(pid)
        if p is None:
            p = self.procs[pid] = ProcessImage(pid, self.cache)
            return p.refresh()
        return p.alive

    def refresh_live(self):
        for p in self.procs.values():
            if p.alive:
                p.refresh()

    def refresh_young(self, max_age_s):
        """Re-read the maps of processes first seen less than max_age_s ago: first sight can come
        before the dynamic loader has mapped libc, and a short-lived process may be gone by the
        next refresh_live."""
        now = time.monotonic()
        for p in self.procs.values():
            if p.alive and now - p.seen_at < max_age_s:
                p.refresh()

    def covering(self, pid, addr):
        """The process's image, re-read once if `addr` is outside every mapping it knows."""
        if pid not in self.procs:
            self.see(pid)
        img = self.procs.get(pid)
        if img is not None and img.find(addr) is None:
            img.refresh()
        return img

    def image(self, pid):
        return self.procs.get(pid)

    def close(self):
        self.cache.close()
