"""A probe tool under test (kit, bpftrace, a bcc tool, an empty program) as a
child process: started, timed to its "ready" line, measured, and stopped.

Each output stream is drained by a thread that stamps every line as it
arrives, so the ready time is when the line reached us, and a chatty tool
never blocks on a full pipe.
"""

import collections
import os
import re
import signal
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ToolFailed(RuntimeError):
    pass


class _Lines(threading.Thread):
    KEEP = 5000  # lines kept: a tool that prints every event (bcc's gethostlatency) must not grow the bench

    def __init__(self, stream, t0, ready_re, ready_event, sink):
        super().__init__(daemon=True)
        self.stream, self.t0, self.ready_re, self.ready_event, self.sink = stream, t0, ready_re, ready_event, sink
        self.lines = collections.deque(maxlen=self.KEEP)

    def run(self):
        for line in iter(self.stream.readline, ""):
            t = time.monotonic() - self.t0
            self.lines.append(line)
            if self.ready_re and not self.ready_event.is_set() and self.ready_re.search(line):
                self.sink.append(t)
                self.ready_event.set()
        self.stream.close()


class Tool:
    """A command that prints a line matching `ready` once its probes are attached."""

    def __init__(self, label, argv, ready, env=None, cwd=None, grace=1.5):
        self.label, self.argv, self.ready = label, list(argv), re.compile(ready)
        self.grace = grace   # seconds to wait after each SIGINT before sending another
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.p = None
        self.ready_s = None
        self.rusage = None
        self.code = None
        self.cleanups = []   # run once the process is reaped (e.g. stop a process the tool was scoped to)
        self.hwm_kb = None   # the process's own peak RSS (VmHWM), last read before it exited

    def start(self, timeout=60):
        """Starts the tool and waits for its ready line; returns seconds from exec to that line."""
        ready = threading.Event()
        hit = []
        t0 = time.monotonic()
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd,
                                  errors="replace")
        self._out = _Lines(self.p.stdout, t0, self.ready, ready, hit)
        self._err = _Lines(self.p.stderr, t0, self.ready, ready, hit)
        self._out.start()
        self._err.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            exited = self._reap()
            if exited or time.monotonic() > deadline:
                self.stop()
                why = "exited" if exited else "timed out"
                raise ToolFailed(f"{self.label} {why} before it was ready (exit {self.code}): "
                                 f"{self.stderr.strip()[-400:] or self.stdout.strip()[-400:]}")
        self.ready_s = hit[0]
        return self.ready_s

    @property
    def pid(self):
        return self.p.pid

    def cpu_s(self):
        """User + system CPU seconds the process has used so far (its threads included)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def read_hwm(self):
        """VmHWM: the peak RSS of the program since it was exec'd (its own memory only; ru_maxrss
        would also count the forking parent's, which exec carries over into the child's maximum)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm_kb = max(self.hwm_kb or 0, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        return self.hwm_kb

    def stop(self, grace=None, tries=5):
        """SIGINT (repeated: bpftrace 0.17 loses one that arrives just after it is ready),
        then SIGTERM, then SIGKILL. Reaps the child with its rusage. Idempotent."""
        if self._reap():
            return self.code
        grace = self.grace if grace is None else grace
        sigs = [signal.SIGINT] * tries + [signal.SIGTERM, signal.SIGKILL]
        for sig in sigs:
            try:
                # os.kill, not Popen.send_signal: that polls first, and a poll that reaps the child
                # drops its rusage (and leaves wait4 nothing to find). Unreaped, the pid stays ours.
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + (grace if sig != signal.SIGKILL else 30)
            while time.monotonic() < deadline:
                self.read_hwm()  # it may still grow while the tool writes its report
                if self._reap():
                    return self.code
                time.sleep(0.02)
        raise ToolFailed(f"{self.label} (pid {self.p.pid}) did not exit")

    def _reap(self):
        """Reaps the child if it has exited, keeping its rusage (Popen.poll would drop it)."""
        if self.code is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the exit code survives, the rusage does not
            pid, status, ru = self.p.pid, None, None
        if not pid:
            return False
        self.rusage = ru
        self.code = os.waitstatus_to_exitcode(status) if status is not None else self.p.returncode
        self.p.returncode = self.code
        self._out.join(5)
        self._err.join(5)
        while self.cleanups:
            self.cleanups.pop()()
        return True

    @property
    def stdout(self):
        return "".join(self._out.lines) if self.p else ""

    @property
    def stderr(self):
        return "".join(self._err.lines) if self.p else ""

    def peak_rss_mb(self):
        """Peak resident memory of the tool's own program (VmHWM, KiB), in MB."""
        return self.hwm_kb / 1024.0 if self.hwm_kb else None

    def total_cpu_s(self):
        return (self.rusage.ru_utime + self.rusage.ru_stime) if self.rusage else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p is not None and self.code is None:
            self.stop()


def run_json(argv, timeout=600):
    """Runs a workload that prints one JSON object; returns (that object, the CPU seconds it used).

    The CPU time is the reaped child's utime + stime, its threads and waited-for children
    included: the scheduler's precise runtime, which unlike the wall clock leaves out the time
    other processes held the CPU (most of the noise on a shared machine)."""
    import json
    import tempfile
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            out = p.stdout.read()
            _pid, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
            p.stdout.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {err.read().strip()[-300:]}")
    return json.loads(out.strip().splitlines()[-1]), ru.ru_utime + ru.ru_stime
