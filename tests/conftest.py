"""Shared test fixtures. Kernel tests never skip silently: when they cannot run
(not root, no bcc, no tracefs) they fail, unless KIT_ALLOW_SKIP=1 is set by a
developer on a machine that cannot load BPF (never in CI, where CI=true)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def kernel_unavailable():
    if os.geteuid() != 0:
        return "kernel tests need root (or run them through test.sh as root)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable: run ./setup.sh (Debian's python3-bpfcc in a --system-site-packages venv)"
    from kit.host import features
    if features.tracefs() is None:
        return "tracefs is not mounted: run ./setup.sh"
    return None


@pytest.fixture(scope="session")
def kernel():
    why = kernel_unavailable()
    if why:
        # CI=true wins over KIT_ALLOW_SKIP: in CI a kernel test that cannot run is a failure.
        if os.environ.get("KIT_ALLOW_SKIP") == "1" and os.environ.get("CI", "").lower() not in ("true", "1"):
            pytest.skip(why)
        pytest.fail(f"kernel test cannot run: {why}")


# Tests of what kit measures pass this budget: on a box crowded by other work, filtering everybody
# else's events can cost more than the default 2% and the guardrail would (rightly) refuse or stop the
# run. The guardrail itself is tested with the default budget in test_guard_kernel.py.
ACCURACY_BUDGET = ("--budget", "50")


# How much slower than this host the box is (KIT_TEST_TIME_SCALE): the qemu guest, emulated in software,
# compiles a program in tens of seconds. Waits for kit to start scale by it; the measurements do not.
TIME_SCALE = float(os.environ.get("KIT_TEST_TIME_SCALE", "1"))


def kit_cmd(*args):
    return [sys.executable, "-m", "kit", *args]


class KitProc:
    """A `kit` subprocess; waits for its 'attached' line so workloads start after attach."""

    def __init__(self, *args, env=None, preexec_fn=None):
        self.args = args
        self.p = subprocess.Popen(kit_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, preexec_fn=preexec_fn)
        self.err_lines = []

    def wait_attached(self, timeout=30):
        deadline = time.time() + timeout * TIME_SCALE
        while time.time() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            self.err_lines.append(line)
            if " attached to " in line:
                return
        rest = self.p.stderr.read() if self.p.poll() is not None else ""
        raise AssertionError(f"kit did not attach: {''.join(self.err_lines)}{rest}")

    def stop(self, timeout=120):
        """Ctrl-C once the workload is done, so no event can fall outside the run's time box
        however slow the box is; kit prints its results and exits 130."""
        self.p.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout=120):
        out, err = self.p.communicate(timeout=timeout)
        self.stdout, self.stderr = out, "".join(self.err_lines) + err
        self.code = self.p.returncode
        return self

    def json(self):
        assert self.stdout.strip(), f"no stdout; exit {self.code}; stderr: {self.stderr}"
        return json.loads(self.stdout)


def run_kit(*args, timeout=120, env=None):
    p = subprocess.run(kit_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return p


def loaded_prog_ids():
    """IDs of every BPF program loaded on the box (the kernel's own view)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def owned_prog_ids():
    """Program ids some live process holds an fd for (from /proc/*/fdinfo)."""
    owned = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("prog_id:"):
                            owned.add(int(line.split()[1]))
            except OSError:
                continue
    return owned


def orphan_progs(before):
    """Programs loaded since `before` that no process holds: what a leak looks like.
    (Programs of other kit runs going on at the same time are owned, so they do not count.)"""
    return (loaded_prog_ids() - before) - owned_prog_ids()


@pytest.fixture
def no_leftovers(kernel):
    """Asserts the test leaves no orphaned BPF program and no uprobe/kprobe event behind."""
    before = loaded_prog_ids()

    def events():
        from kit.host import features
        d = features.tracefs()
        out = []
        for f in ("uprobe_events", "kprobe_events"):
            try:
                with open(os.path.join(d, f)) as fh:
                    out += fh.read().splitlines()
            except OSError:
                pass
        return out

    ev_before = events()
    yield
    for _ in range(100):  # program teardown is asynchronous after close(), and slow on a crowded box
        if not orphan_progs(before):
            break
        time.sleep(0.1)
    assert orphan_progs(before) == set(), "BPF programs left loaded with no owner"
    assert events() == ev_before, "probe events left in tracefs"


def pytest_configure(config):
    """The kernel matrix's recorder (tests/support/qemu/matrix.py): outcomes and kit's hooks, for docs/kernels.md."""
    from qemu import matrix
    matrix.register(config)
