"""Boots the Debian kernel from tests/support/qemu/kernel.sh under qemu with virtme-ng
and runs one command in it. The guest sees the host's filesystem read-only
(writes go to a throw-away overlay) except OUT, shared read-write: the command
reads its inputs from OUT and leaves its results there.

Software emulation (--disable-kvm): this host's /dev/kvm cannot run a guest
(nested virtualization is not offered), and TCG works wherever qemu does.
There is no udev for virtio ports, so the command's output shares the serial
console with the kernel's; --verbose sends that console to vng's stderr, kept
in OUT/console.log: when a guest hangs, its last lines say where.

vng runs qemu through a shell and virtme-run: killing vng alone would leave
qemu running (and emulating two busy CPUs) for the rest of the suite, so the
whole process group goes on a time-out.

One CPU by default. With two, emulated CPUs livelocked (seen here: both in
bpf_trace_run2 at a static branch for 500 s, the soft-lockup watchdog firing)
when kit's BPF_ENABLE_STATS flipped the bpf_stats static key while the other
CPU ran the patched site hot: the kernel's int3 handler finds the breakpoint
already gone from memory and restarts the instruction, which TCG's stale
translation then traps on again. Real CPUs refetch; only the emulator loops.
"""

import dataclasses
import os
import shlex
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def pinned_kernel():
    """(abi, Debian package version) of the guest's kernel, as tests/support/qemu/guest_kernel pins it."""
    with open(os.path.join(HERE, "guest_kernel")) as f:
        abi, ver = next(line.split() for line in f if line.strip() and not line.startswith("#"))
    return abi, ver


def kernel_image():
    """Path of the unpacked vmlinuz, fetched first if absent (idempotent; what setup.sh runs too)."""
    p = subprocess.run([os.path.join(HERE, "kernel.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"tests/support/qemu/kernel.sh failed (exit {p.returncode}): {p.stderr.strip()}")
    return os.path.join(ROOT, p.stdout.strip().splitlines()[-1])


@dataclasses.dataclass
class Boot:
    returncode: int      # vng's, not the command's (vng exits 255 even when the command succeeded)
    timed_out: bool
    console: str         # path of the guest's console log

    def tail(self, lines=60):
        try:
            with open(self.console, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"(no console log: {e})"


def boot(kimg, out, argv, append=(), cpus=1, memory="2G", timeout=1200):
    """Runs argv as root in the guest; kills qemu with vng after `timeout` seconds."""
    bindir = os.path.dirname(sys.executable)  # .venv/bin: vng runs virtme-run from PATH
    vng = os.path.join(bindir, "vng")
    if not os.path.exists(vng):
        raise RuntimeError(f"{vng} is missing: run ./setup.sh (it installs virtme-ng into .venv)")
    cmd = [vng, "--disable-kvm", "--verbose", "--cpus", str(cpus), "--memory", memory, "-r", kimg,
           "--rwdir", out, "--exec", shlex.join(argv)]
    for a in append:
        cmd += ["--append", a]
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    console = os.path.join(out, "console.log")
    with open(console, "wb") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
        try:
            return Boot(p.wait(timeout=timeout), False, console)
        except BaseException as e:
            # vng is not reaped yet, so its group id still names only what it started: qemu too
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            return Boot(p.returncode, True, console)


def run_guest(script, out, how_extra=lambda out: "", **boot_kw):
    """Boots the pinned kernel on `tests/support/qemu/SCRIPT OUT` and reads what it left in OUT/results.json:
    (results, how it ended, wall seconds, the Boot). A guest that left no results fails the test, with its
    console's end. how_extra(out) adds to the line that says how vng ended (load, where the console is kept)."""
    import json
    import time
    import pytest
    t0 = time.monotonic()
    b = boot(kernel_image(), out, [sys.executable, os.path.join(HERE, script), out], **boot_kw)
    wall = time.monotonic() - t0
    how = (f"vng killed after {wall:.0f} s" if b.timed_out else f"vng exited {b.returncode} after {wall:.0f} s") + \
        how_extra(out)
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        pytest.fail(f"the qemu guest left no results ({how}); its console's end:\n{b.tail()}")
    with open(path) as f:
        return json.load(f), how, wall, b
