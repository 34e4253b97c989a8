"""Hook choice follows the recipe's ladder and what this kernel really has."""

import dataclasses

from kit import catalog
from kit.host import btf, features


def test_raw_tracepoint_prototype_comes_from_the_running_kernels_btf():
    k = btf.kernel()
    assert k is not None, "this kernel has BTF (/sys/kernel/btf/vmlinux)"
    # sched_switch(bool preempt, prev, next, unsigned int prev_state) since 5.18;
    # sys_enter(struct pt_regs *regs, long id) forever.
    assert k.raw_tracepoint_args("sys_enter") == 2
    assert k.raw_tracepoint_args("sched_switch") == 4
    assert k.raw_tracepoint_args("no_such_tracepoint_anywhere") is None


def test_a_rung_the_kernel_lacks_is_skipped_with_its_reason():
    r = catalog.load()["tcpretrans"]
    bogus = dataclasses.replace(r.hooks[0], target="no_such_tracepoint_anywhere")
    assert "no raw tracepoint no_such_tracepoint_anywhere" in features.hook_supported(bogus)
    ladder = dataclasses.replace(r, hooks=[bogus, r.hooks[1]])
    assert features.choose_hook(ladder).type == "tracepoint"
