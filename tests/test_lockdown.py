"""Lockdown in confidentiality mode, at the unit level.

Raising lockdown on this host is irreversible, and the second kernel under qemu
is not used here, so the kernel-level confidentiality test is NOT done. What is
tested: the reading of /sys/kernel/security/lockdown, and — with that reading
injected as "confidentiality" — that kit refuses exactly the rungs the kernel
would refuse (tracefs for tracepoints: LOCKDOWN_TRACEFS; bpf_probe_read_kernel
for rungs that read kernel structs: LOCKDOWN_BPF_READ_KERNEL), keeps raw
tracepoints and uprobes, and says in `run`, `list` and `doctor` what is blocked
and which recipes still work.
"""

import io

import pytest

from fixtures import kitshim
from kit import catalog, doctor, features
from kit.catalog import Hook
from kit.cli import main
from kit.errors import ExitCode


@pytest.mark.parametrize("text, level", [
    ("none [integrity] confidentiality\n", "integrity"),
    ("none integrity [confidentiality]\n", "confidentiality"),
    ("[none] integrity confidentiality\n", "none"),
])
def test_lockdown_level_is_the_bracketed_word(tmp_path, text, level):
    f = tmp_path / "lockdown"
    f.write_text(text)
    assert features.lockdown(str(f)) == level


def test_unreadable_lockdown_is_unknown(tmp_path):
    assert features.lockdown(str(tmp_path / "absent")) is None


@pytest.fixture
def confidentiality(monkeypatch):
    monkeypatch.setattr(features, "lockdown", lambda *a: "confidentiality")
    monkeypatch.setattr(features, "missing_caps", lambda *a, **k: [])  # isolate from who runs the test


@pytest.mark.parametrize("hook, blocked", [
    (Hook(type="tracepoint", target="sched:sched_switch"), "blocks tracefs"),
    (Hook(type="raw_tracepoint", target="sched_switch", requires=("btf",)), "bpf_probe_read_kernel"),
    (Hook(type="raw_tracepoint", target="sched_switch", requires=("kernel_read",)), "bpf_probe_read_kernel"),
    (Hook(type="uprobe", binary="binary"), None),
    (Hook(type="raw_tracepoint", target="sched_switch"), None),
])
def test_confidentiality_blocks_tracefs_and_kernel_reads_only(confidentiality, monkeypatch, hook, blocked):
    monkeypatch.setattr(features, "raw_tracepoints_available", lambda: True)
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
    why = features.hook_supported(hook)
    if blocked is None:
        assert why is None
    else:
        assert "lockdown=confidentiality" in why and blocked in why


def test_run_under_confidentiality_says_what_is_blocked_and_what_still_works(confidentiality, monkeypatch):
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
    kitshim.enable()
    out, err = io.StringIO(), io.StringIO()
    code = main(["--catalog", kitshim.CATALOG, "run", "fillup", "--pid", "1", "--for", "2s"], out=out, err=err)
    assert code == ExitCode.UNSUPPORTED
    line = err.getvalue()
    assert line.count("\n") == 1
    assert "lockdown=confidentiality blocks tracefs" in line
    assert "recipes that still work here: uprobed" in line


def test_shipped_recipes_under_confidentiality(confidentiality, monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    assert main(["run", "tcpretrans", "--for", "2s"], out=out, err=err) == ExitCode.UNSUPPORTED
    assert "lockdown=confidentiality blocks tracefs" in err.getvalue()
    listing = io.StringIO()
    main(["list"], out=listing, err=io.StringIO())
    assert "no: lockdown=confidentiality blocks tracefs" in listing.getvalue()


def test_doctor_under_confidentiality_names_blocked_recipes_and_what_works(confidentiality, monkeypatch):
    monkeypatch.setattr(doctor, "try_attach", lambda: {})
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
    kitshim.enable()
    rows = {k: (v, ok) for k, v, ok in doctor.report(catalog.load(kitshim.CATALOG))}
    assert rows["lockdown"] == ("confidentiality", False)
    assert "confidentiality blocks tracefs" in rows[""][0] and "uprobes still work" in rows[""][0]
    assert rows["tracefs"][1] is False and "confidentiality" in rows["tracefs"][0]
    assert rows["recipes"][0].startswith("runnable here: uprobed; blocked: fillup (lockdown=confidentiality")
