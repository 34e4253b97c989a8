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


def test_doctor_says_when_headers_match_the_running_kernel_and_when_not():
    match = features.headers_text("/usr/src/linux-headers-6.1.0-57-amd64", "6.1.0-57-amd64", True, "6.1.0-57-amd64")
    assert "— match the running kernel" in match and "NOT" not in match
    other = features.headers_text("/usr/src/linux-headers-6.1.0-57-amd64", "6.1.0-57-amd64", False, "6.18.44")
    assert "do NOT match the running kernel 6.18.44" in other and "BTF" in other
    assert features.headers_text(None, None, False, "6.18.44") == "none for 6.18.44: run ./setup.sh"


def test_a_kprobe_rung_needs_kprobes_no_lockdown_and_its_function(monkeypatch):
    rung = next(h for h in catalog.load()["tcpretrans"].hooks if h.type == "kprobe")
    monkeypatch.setattr(features, "kprobes_available", lambda: False)
    assert "compiled out" in features.hook_supported(rung)
    monkeypatch.setattr(features, "kprobes_available", lambda: True)
    monkeypatch.setattr(features, "lockdown", lambda: "integrity")
    assert features.hook_supported(rung) == "lockdown=integrity blocks kprobes"
    monkeypatch.setattr(features, "lockdown", lambda: "none")
    # the function is this kernel's (kallsyms), or the rung is skipped saying so
    assert features.hook_supported(rung) is None
    gone = dataclasses.replace(rung, target="no_such_function_anywhere")
    assert features.hook_supported(gone) == \
        "no kernel function no_such_function_anywhere to probe on this kernel (/proc/kallsyms)"


def test_a_forced_rung_the_kernel_lacks_names_the_rungs_that_work_here(monkeypatch):
    r = catalog.load()["tcpretrans"]
    monkeypatch.setattr(features, "kprobes_available", lambda: False)
    try:
        features.choose_hook(r, forced="kprobe")
    except features.Unsupported as e:
        assert e.message.startswith("tcpretrans --hook kprobe cannot run on this kernel: kprobe tcp_retransmit_skb")
        assert e.hint.startswith("drop --hook (the ladder picks raw_tracepoint here)") and e.recipe_runs
    else:
        raise AssertionError("a forced kprobe rung on a kernel without kprobes was chosen")
