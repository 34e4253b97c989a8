"""Watching the processes a stack recipe sees, so that their user frames can
be named after they exit (offcpu, profile).

A template that takes user stacks also sends each new process in scope once
through its `first_sight` perf buffer (and marks it in its `seen` hash). A
background thread polls that buffer and snapshots the process's memory maps
and mapped files at once (kit/userstacks/usersyms.py), re-reads young processes' maps
(first sight can come before ld.so has mapped libc) and every live one's
about once a second (dlopen). Processes already in scope when the run starts
are snapshotted before attaching.
"""

import ctypes
import threading
import time

from kit.host import targets
from kit.userstacks import usersyms

POLL_MS = 50            # how fast a new process is snapshotted after its first sample
REFRESH_S = 1.0         # how often live processes' maps are re-read (dlopen)


class Watcher:
    """Background thread: snapshot processes on first sight. It owns the perf buffers' polling;
    stop() ends it before BCC frees them. Subclasses open more buffers and act after each poll."""

    name = "kit-procwatch"

    def __init__(self, bpf):
        self.bpf = bpf
        self.sym = usersyms.Symbolizer()
        self.lost_sightings = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        bpf["first_sight"].open_perf_buffer(self._on_sight, page_cnt=8, lost_cb=self._on_lost_sight)
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def prewarm(self, pids):
        for pid in pids:
            self.sym.see(pid)

    def start(self):
        self.thread.start()

    def _on_sight(self, cpu, data, size):
        tgid = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32)).contents.value
        try:
            self.sym.see(tgid)
        except Exception:  # one odd process must not stop the watcher; its frames show as [unknown]
            self.errors += 1

    def _on_lost_sight(self, n):
        self.lost_sightings += n

    def after_poll(self):
        """Called with the lock held after every poll (offcpu pushes unwind hints here)."""

    def poll_once(self, timeout_ms):
        with self._lock:
            self.bpf.perf_buffer_poll(timeout=timeout_ms)
            self.after_poll()

    def _loop(self):
        last_refresh = time.monotonic()
        while not self._stop.is_set():
            self.poll_once(POLL_MS)
            with self._lock:
                if time.monotonic() - last_refresh >= REFRESH_S:
                    self.sym.refresh_live()
                    last_refresh = time.monotonic()
                else:
                    self.sym.refresh_young(REFRESH_S)

    def stop(self):
        """Idempotent; after it returns nothing touches the BPF object from another thread."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def close(self):
        self.stop()
        self.sym.close()

    def finish(self, tgids):
        """At collection: stop, drain the buffers, and try once more for processes whose sighting was
        lost (a full buffer) and that still live."""
        self.stop()
        self.poll_once(0)
        for tgid in set(tgids):
            if self.sym.image(tgid) is None:
                self.sym.see(tgid)


def in_scope_now(values):
    """Processes in scope that already run, so they are snapshotted before they can exit."""
    pid, tid, comm = values.get("pid"), values.get("tid"), values.get("comm")
    if pid:
        return [pid]
    if tid:
        try:
            with open(f"/proc/{tid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        return [int(line.split()[1])]
        except OSError:
            return []
    thread_comm = values.get("thread_comm")
    if comm is not None or thread_comm is not None:  # the prelude's --comm/--thread-comm rule
        return [s.pid for s in targets.pids_by_comm(comm, thread_comm)]
    return []


# The Hooks steps of a recipe whose module keeps a Watcher in ctx.private.

def start(ctx, watcher):
    ctx.private = watcher
    watcher.prewarm(in_scope_now(ctx.values))
    watcher.start()


def detach(ctx, bpf):
    w = ctx.private
    if w is not None:
        w.stop()


def cleanup(ctx):
    w, ctx.private = ctx.private, None
    if w is not None:
        w.close()
