"""Lockdown in confidentiality mode, at the unit level.

Raising lockdown on the test host is irreversible, so here the reading of
/sys/kernel/security/lockdown is injected. The real-kernel counterpart is
tests/kernel/test_lockdown_qemu_kernel.py: Debian's 6.1 booted under qemu with
lockdown=confidentiality, where kit's claims below were measured against what
that kernel refuses. What is tested here: the reading of the lockdown file, and
— with that reading injected — that kit refuses exactly the rungs the kernel
refuses (tracefs for tracepoints: LOCKDOWN_TRACEFS; bpf_probe_read_kernel for
rungs that read kernel structs: LOCKDOWN_BPF_READ_KERNEL; kprobes:
LOCKDOWN_KPROBES, already at integrity), keeps raw tracepoints and uprobes,
says in `run`, `list` and `doctor` what is blocked (every rung's reason) and
which recipes still work, and detaches uprobes without BCC's tracefs step.
"""
import io

import pytest

from fixtures import kitshim
from kit import catalog
from kit.host import doctor, features
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
    """Set at boot: tracefs is mounted but empty (measured on 6.1 under qemu), so no events/ directory."""
    monkeypatch.setattr(features, "lockdown", lambda *a: "confidentiality")
    monkeypatch.setattr(features, "tracefs", lambda: None)
    monkeypatch.setattr(features, "missing_caps", lambda *a, **k: [])  # isolate from who runs the test


@pytest.mark.parametrize("hook, blocked", [
    (Hook(type="tracepoint", target="sched:sched_switch"), "blocks tracefs"),
    (Hook(type="raw_tracepoint", target="sched_switch", requires=("btf",)), "bpf_probe_read_kernel"),
    (Hook(type="raw_tracepoint", target="sched_switch", requires=("kernel_read",)), "bpf_probe_read_kernel"),
    (Hook(type="kprobe", target="tcp_retransmit_skb"), "blocks kprobes"),
    (Hook(type="uprobe", binary="binary"), None),
    (Hook(type="raw_tracepoint", target="sched_switch"), None),
])
def test_confidentiality_blocks_tracefs_kernel_reads_and_kprobes_only(confidentiality, monkeypatch, hook, blocked):
    monkeypatch.setattr(features, "raw_tracepoints_available", lambda: True)
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
    monkeypatch.setattr(features, "kprobes_available", lambda: True)
    why = features.hook_supported(hook)
    if blocked is None:
        assert why is None
    else:
        assert "lockdown=confidentiality" in why and blocked in why


def test_run_under_confidentiality_says_what_is_blocked_and_what_still_works(confidentiality, monkeypatch):
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
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
    main(["list", "-v"], out=listing, err=io.StringIO())  # `kit list` wraps it; -v has it on one line
    block = listing.getvalue().split("tcpretrans:", 1)[1]
    row = next(line for line in block.splitlines() if line.startswith("  runs here:"))
    # both rungs named: a reader must not think that mounting tracefs would help
    assert ("no: raw_tracepoint: lockdown=confidentiality blocks bpf_probe_read_kernel, which this rung needs; "
            "tracepoint: lockdown=confidentiality blocks tracefs") in row


@pytest.mark.parametrize("level, blocked", [("integrity", True), ("confidentiality", True), ("none", False)])
def test_kprobes_are_blocked_from_integrity_up_when_compiled_in(monkeypatch, level, blocked):
    monkeypatch.setattr(features, "lockdown", lambda *a: level)
    monkeypatch.setattr(features, "kprobes_available", lambda: True)
    why = features.hook_supported(Hook(type="kprobe", target="tcp_retransmit_skb"))
    assert why == (f"lockdown={level} blocks kprobes" if blocked else None)


def test_kprobes_compiled_out_is_said_before_lockdown(monkeypatch):
    monkeypatch.setattr(features, "lockdown", lambda *a: "integrity")
    monkeypatch.setattr(features, "kprobes_available", lambda: False)
    assert "compiled out" in features.hook_supported(Hook(type="kprobe", target="tcp_retransmit_skb"))


class FakeBPF:
    """What detach_all touches of a BCC object: its uprobe fds and cleanup()."""

    def __init__(self, fds):
        self.uprobe_fds = dict(fds)
        self.cleaned = False

    def _del_uprobe_fd(self, ev):
        del self.uprobe_fds[ev]

    def cleanup(self):
        if self.uprobe_fds:  # BCC 0.26 writes to uprobe_events per probe; locked-down tracefs refuses it
            raise Exception("Failed to detach BPF from uprobe")
        self.cleaned = True


def test_confidentiality_raised_after_boot_keeps_tracepoints_whose_formats_stay_readable(monkeypatch):
    """Raised after boot, tracefs keeps the files it had (measured on 6.1): tracepoints work, kernel reads do not."""
    monkeypatch.setattr(features, "lockdown", lambda *a: "confidentiality")
    monkeypatch.setattr(features, "tracefs", lambda: "/sys/kernel/tracing")
    monkeypatch.setattr(features, "tracepoint_format", lambda target: ["skaddr"])
    assert features.tracefs_problem() is None
    assert features.hook_supported(Hook(type="tracepoint", target="tcp:tcp_retransmit_skb")) is None
    assert "bpf_probe_read_kernel" in features.hook_supported(
        Hook(type="raw_tracepoint", target="tcp_retransmit_skb", requires=("btf",)))
    text = doctor._confidentiality_text()
    assert "blocks bpf_probe_read_kernel" in text and "tracepoints too" in text and "blocks tracefs" not in text


def test_detach_closes_uprobes_itself_under_confidentiality_even_with_tracefs_files(monkeypatch):
    """Raised after boot, tracefs keeps its files but refuses opening uprobe_events (measured on 6.1), where
    BCC's cleanup would stop at the first uprobe: BCC's tracefs step is skipped."""
    from bcc import lib
    from kit.engine import teardown
    closed = []
    monkeypatch.setattr(features, "lockdown", lambda *a: "confidentiality")
    monkeypatch.setattr(features, "tracefs", lambda: "/sys/kernel/tracing")
    monkeypatch.setattr(lib, "bpf_close_perf_event_fd", lambda fd: closed.append(fd) or 0)
    b = FakeBPF({b"kit_p0": 11, b"kit_r1": 12})
    assert teardown.detach_all(b) == []
    assert closed == [11, 12] and b.cleaned


def test_doctor_under_confidentiality_names_blocked_recipes_and_what_works(confidentiality, monkeypatch):
    monkeypatch.setattr(doctor, "try_attach", lambda: {})
    monkeypatch.setattr(features, "uprobes_available", lambda: True)
    rows = {k: (v, ok) for k, v, ok in doctor.report(catalog.load(kitshim.CATALOG))}
    assert rows["lockdown"] == ("confidentiality", False)
    assert "confidentiality blocks tracefs" in rows[""][0] and "uprobes still work" in rows[""][0]
    assert "and kprobes" in rows[""][0]
    assert rows["tracefs"][1] is False and "confidentiality" in rows["tracefs"][0]
    assert rows["recipes"][0].startswith("runnable here: uprobed; blocked: fillup (lockdown=confidentiality")


def test_doctor_does_not_claim_offcpu_recovers_callers_where_offcpu_cannot_run(confidentiality, monkeypatch):
    monkeypatch.setattr(doctor, "try_attach", lambda: {})
    rows = {k: (v, ok) for k, v, ok in doctor.report(catalog.load(catalog.DEFAULT_CATALOG))}
    detail, ok = rows["frame pointers"]
    assert not ok and "offcpu cannot run here (raw_tracepoint: lockdown=confidentiality" in detail
    assert "recovers that caller from" not in detail
