"""Runs the kernel skipped are counted, never hidden: a BPF program that is already running on a CPU is
not run again there (the kernel's recursion guard), so its event is lost with no counter inside the
program able to say so. kit reads the kernel's recursion_misses of each of its programs after a run and
puts them in `lost.skipped`. Ground truth: a program made to re-enter itself exactly once per call the
test makes."""

import os

import pytest

from kit.guard import bpfstats

pytestmark = [pytest.mark.kernel]

GETPPID = 110  # x86_64
CALLS = 50

# The outer program fires once per getppid() of this process and prints; the inner one runs on that print
# and prints again, which re-enters it: the kernel skips that run, one per call.
TEXT = """
RAW_TRACEPOINT_PROBE(sys_enter) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID || ctx->args[1] != GETPPID) return 0;
    bpf_trace_printk("kit-outer\\n");
    return 0;
}
RAW_TRACEPOINT_PROBE(bpf_trace_printk) {
    bpf_trace_printk("kit-inner\\n");
    return 0;
}
"""


def test_runs_the_kernel_skipped_are_read_per_program_and_equal_the_reentries(kernel, no_leftovers):
    from bcc import BPF
    b = BPF(text=TEXT, cflags=[f"-DPID={os.getpid()}", f"-DGETPPID={GETPPID}"])
    try:
        assert bpfstats.skipped_runs(b) == 0
        for _ in range(CALLS):
            os.getppid()
        assert bpfstats.skipped_runs(b) == CALLS
    finally:
        b.cleanup()


def test_a_run_reports_its_skipped_runs_with_its_losses(kernel, no_leftovers):
    from conftest import run_kit
    import json
    r = run_kit("run", "execsnoop", "--for", "1s", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["lost"]["skipped"] == 0 and res["lost_events"] == sum(res["lost"].values())
