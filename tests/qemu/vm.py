"""Boots the Debian kernel from tests/qemu/kernel.sh under qemu with virtme-ng
and runs one command in it. The guest sees the host's filesystem read-only
(writes go to a throw-away overlay) except OUT, shared read-write: the command
reads its inputs from OUT and leaves its results there.

Software emulation (--disable-kvm): this host's /dev/kvm cannot run a guest
(nested virtualization is not offered), and TCG works wherever qemu does. The
guest's console is not the command's stdout here (no udev for virtio ports),
so results go through OUT, never through the console.
"""

import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def kernel_image():
    """Path of the unpacked vmlinuz, fetched first if absent (idempotent; what setup.sh runs too)."""
    p = subprocess.run([os.path.join(HERE, "kernel.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"tests/qemu/kernel.sh failed (exit {p.returncode}): {p.stderr.strip()}")
    return os.path.join(ROOT, p.stdout.strip().splitlines()[-1])


def boot(kimg, out, argv, append=(), cpus=2, memory="2G", timeout=1800):
    """Runs argv as root in the guest; returns vng's CompletedProcess (its exit code is not the command's)."""
    bindir = os.path.dirname(sys.executable)  # .venv/bin: vng runs virtme-run from PATH
    vng = os.path.join(bindir, "vng")
    if not os.path.exists(vng):
        raise RuntimeError(f"{vng} is missing: run ./setup.sh (it installs virtme-ng into .venv)")
    cmd = [vng, "--disable-kvm", "--cpus", str(cpus), "--memory", memory, "-r", kimg, "--rwdir", out,
           "--exec", shlex.join(argv)]
    for a in append:
        cmd += ["--append", a]
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    return subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
