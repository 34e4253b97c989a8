"""Least privilege on the real kernel: kit as a non-root user holding only CAP_BPF,
CAP_PERFMON and CAP_DAC_READ_SEARCH (through capsh, as an operator would grant
them); without them kit names what is missing (exit 5) and loads nothing; without
tracefs (a private mount namespace, the host untouched) kit says what is blocked
and which recipes still work, and those do work.

The non-root user `kituser` is created if missing. kit runs from a copy of this
checkout in a world-readable temporary directory with the distro's python (which
has python3-bpfcc), since a fresh clone may live under a directory kituser cannot
enter. Ground truth: the namespace's TcpRetransSegs, the workload's own call
count, the kernel's view of the process (/proc/PID/status Uid and CapEff), and
strace's record of the bpf() and perf_event_open() syscalls kit made.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT
from fixtures import kitshim
from kit.host import features
from workloads import retrans
from workloads.build import build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

USER = "kituser"
CAPS = ("cap_bpf", "cap_perfmon", "cap_dac_read_search")
PYTHON = getattr(sys, "_base_executable", None) or "/usr/bin/python3"
CAP_BITS = {"cap_dac_read_search": 2, "cap_sys_admin": 21, "cap_perfmon": 38, "cap_bpf": 39}


@pytest.fixture(scope="module")
def kit_copy():
    """A copy of kit (code, catalog, templates, the test catalog) that kituser can read, and the user."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    base = tempfile.mkdtemp(prefix="kit-leastpriv-", dir="/tmp")  # /tmp is world-searchable; pytest's tmp is not
    dest = os.path.join(base, "kit-checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("kit", "probes", "docs", "tests/support/fixtures"):
        shutil.copytree(os.path.join(ROOT, item), os.path.join(dest, item), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "incident_recipes.yaml"), dest)
    target = build("target", dest)
    for root, dirs, files in os.walk(base):
        os.chmod(root, 0o755)
        for n in files:
            path = os.path.join(root, n)
            os.chmod(path, 0o755 if path == target else 0o644)
    yield {"dir": dest, "target": target}
    shutil.rmtree(base)


def as_kituser(kit_copy, args, caps=CAPS, trace=None):
    """Popen of `python -m kit ARGS` as kituser holding exactly `caps` (ambient, so they survive exec)."""
    cmd = "exec " + " ".join(shlex.quote(a) for a in [PYTHON, "-m", "kit", *args])
    capsh = ["capsh", f"--user={USER}"]
    if caps:
        capsh += [f"--caps={','.join(caps)}+eip", f"--addamb={','.join(caps)}"]
    argv = capsh + ["--", "-c", cmd]
    if trace:
        argv = ["strace", "-f", "-qq", "-e", "trace=bpf,perf_event_open", "-o", trace] + argv
    return subprocess.Popen(argv, cwd=kit_copy["dir"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_line(p, words, timeout=60):
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        if words in line:
            return lines
    raise AssertionError(f"never saw {words!r}: {''.join(lines)}{p.stderr.read() if p.poll() is not None else ''}")


def _status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _retrans_as_kituser(kit_copy):
    ns = f"kit-h-priv-{os.getpid()}"
    with retrans.netns(ns):
        p = as_kituser(kit_copy, ["run", "tcpretrans", "--netns", ns, "--for", "120s", "--json"])
        _wait_line(p, " attached to ")
        st = _status(p.pid)
        eff = int(st["CapEff"], 16)
        assert st["Uid"].split()[0] == str(pwd.getpwnam(USER).pw_uid)
        assert eff == sum(1 << CAP_BITS[c] for c in CAPS), hex(eff)  # no CAP_SYS_ADMIN, nothing else
        _cport, delta = retrans.provoke(ns, port=5621, hold=lambda pid: p.send_signal(signal.SIGINT))
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    res = json.loads(out)
    assert delta >= 3
    assert res["lost_events"] == 0, res["lost"]
    return res, delta


@retrans.retake_on_disagreement
def test_runs_as_non_root_with_only_bpf_perfmon_and_dac_read_search(kernel, no_leftovers, kit_copy):
    res, delta = _retrans_as_kituser(kit_copy)
    retrans.counts_agree(res["rows"], delta, {**res["lost"], "filtered": res["filtered"]})


@pytest.mark.parametrize("caps, hook, missing", [
    ((), "tracepoint", "CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"),
    (("cap_bpf",), "tracepoint", "CAP_PERFMON and CAP_DAC_READ_SEARCH"),
    (("cap_bpf", "cap_perfmon"), "tracepoint", "CAP_DAC_READ_SEARCH"),
    ((), "raw_tracepoint", "CAP_BPF and CAP_PERFMON"),  # a raw tracepoint reads no tracefs format
], ids=["none", "bpf-only", "no-dac-read-search", "raw-tracepoint-needs-no-tracefs"])
def test_without_capabilities_names_the_missing_ones_exit_5_and_loads_nothing(kernel, kit_copy, tmp_path,
                                                                             caps, hook, missing):
    trace = str(tmp_path / "strace.out")
    p = as_kituser(kit_copy, ["run", "tcpretrans", "--hook", hook, "--for", "5s"], caps=caps, trace=trace)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 5, err
    assert err.count("\n") == 1 and f"kit needs {missing} to load and attach probes" in err, err
    assert out == ""
    calls = open(trace).read()
    assert "BPF_PROG_LOAD" not in calls and "perf_event_open(" not in calls, calls


def test_doctor_as_non_root_says_which_capabilities_are_missing(kernel, kit_copy):
    p = as_kituser(kit_copy, ["doctor"], caps=("cap_bpf",))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    caps = next(line for line in out.splitlines() if line.startswith("capabilities"))
    assert "NO" in caps and "missing CAP_PERFMON, CAP_DAC_READ_SEARCH" in caps
    assert "readable only by root" in next(line for line in out.splitlines() if line.startswith("tracefs"))


# Inside a private mount namespace: unmount tracefs (and debugfs, whose tracing/ would automount it).
NO_TRACEFS = "umount -l /sys/kernel/debug 2>/dev/null; umount -l /sys/kernel/tracing 2>/dev/null; exec \"$@\""


def without_tracefs(*argv):
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", NO_TRACEFS, "sh", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_without_tracefs_says_what_is_blocked_and_which_recipes_still_work(kernel, no_leftovers):
    shipped = without_tracefs(sys.executable, "-m", "kit", "run", "tcpretrans", "--hook", "tracepoint", "--for", "5s")
    assert shipped.returncode == 5, shipped.stderr
    assert shipped.stderr.count("\n") == 1
    assert "tracefs is not mounted" in shipped.stderr
    # the raw tracepoint rung reads no tracefs format, so the recipe still works without the forced rung
    assert "drop --hook (the ladder picks raw_tracepoint here)" in shipped.stderr, shipped.stderr
    raw = without_tracefs(sys.executable, "-m", "kit", "run", "tcpretrans", "--for", "1s")
    assert raw.returncode == 0 and "via raw_tracepoint" in raw.stderr, raw.stderr
    test_cat = without_tracefs(sys.executable, "tests/support/fixtures/kitshim.py", "--catalog", kitshim.CATALOG,
                               "run", "fillup", "--pid", "1", "--for", "5s")
    assert test_cat.returncode == 5, test_cat.stderr
    assert "tracefs is not mounted" in test_cat.stderr
    assert "recipes that still work here: uprobed" in test_cat.stderr
    listing = without_tracefs(sys.executable, "-m", "kit", "list")
    assert re.search(r"tcpretrans .* yes \(raw_tracepoint\)", listing.stdout), listing.stdout
    doctor = without_tracefs(sys.executable, "-m", "kit", "doctor")
    assert re.search(r"tracefs +NO +tracefs is not mounted", doctor.stdout), doctor.stdout
    assert re.search(r"raw_tracepoint +ok", doctor.stdout) and re.search(r"uprobe +ok", doctor.stdout)
    assert features.tracefs() is not None, "the host lost its tracefs mount"


def test_a_uprobe_recipe_still_works_without_tracefs(kernel, no_leftovers, tmp_path):
    target = build("target", str(tmp_path))
    calls = 500
    w = subprocess.Popen([target, str(calls)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout.readline().strip() == "ready"
        script = (f"{shlex.quote(sys.executable)} tests/support/fixtures/kitshim.py --catalog {shlex.quote(kitshim.CATALOG)}"
                  f" run uprobed --binary {shlex.quote(target)} --symbol kit_target_fn --pid {w.pid} --for 60s"
                  " --json & kit=$!; read go; kill -INT $kit; wait $kit")
        p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              NO_TRACEFS.replace('exec "$@"', script)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_line(p, " attached to ")
        w.stdin.write("go\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == f"done {calls}"
        out, err = p.communicate("go\n", timeout=60)
    finally:
        w.kill()
        w.wait()
    res = json.loads(out)
    assert res["rows"] == [{"pid": w.pid, "calls": calls}], (res["rows"], err)


DETACH_SNIPPET = r"""
import os, sys
sys.path[:0] = ["tests", "tests/support"]
from bcc import BPF
from kit.engine import teardown
from leaks import held
b = BPF(text=b"int a(void *ctx) { return 0; } int c(void *ctx) { return 0; }")
b.attach_uprobe(name=sys.argv[1], sym="kit_target_fn", fn_name="a")
b.attach_uretprobe(name=sys.argv[1], sym="kit_target_fn", fn_name="c")
during = held()[0]["perf_event"]
problems = teardown.detach_all(b)
print(during, held()[0]["perf_event"], len(b.uprobe_fds), problems)
"""


def test_detach_closes_every_uprobe_even_where_bcc_cleanup_would_stop_half_way(kernel, tmp_path):
    """Without tracefs BCC 0.26's cleanup() raises after the first uprobe; kit's detach closes them all."""
    target = build("target", str(tmp_path))
    p = without_tracefs(sys.executable, "-c", DETACH_SNIPPET, target)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "0", "0", "[]"], (p.stdout, p.stderr)
