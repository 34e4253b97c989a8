"""offcpu's pure logic, without a kernel: unwind tables and symbols against
binutils (readelf, nm) on the real libc, hidden-frame hints, folding, the
flame graph, and the guardrail's refusal of an unscoped sched_switch probe."""

import io
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from kit import catalog, guard
from kit.binaries import cfi, elf
from kit.output import flamegraph, stacks
from kit.userstacks import hidden_frames
from kit.errors import ExitCode, Refused

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
REG = {"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": cfi.RBP, "rsp": cfi.RSP,
       **{f"r{i}": i for i in range(8, 16)}}


@pytest.fixture(scope="module")
def libc():
    with open(LIBC, "rb") as f, elf.Elf(f) as e:  # a file object, as offcpu reads mapped files
        yield e


def _readelf_rows(limit_fdes=400):
    """(address, CFA text, rbp rule, ra rule) for every row of the first FDEs, from readelf."""
    out = subprocess.run(["readelf", "--debug-dump=frames-interp", LIBC], capture_output=True, text=True).stdout
    rows, fdes, cols, in_fde = [], 0, None, False
    for line in out.splitlines():
        if " FDE " in line or " CIE " in line:
            fdes += " FDE " in line
            if fdes > limit_fdes:
                break
            cols, in_fde = None, " FDE " in line
        elif line.strip().startswith("LOC") and in_fde:
            cols = line.split()
        elif cols and re.match(r"^[0-9a-f]{16} ", line):
            vals = dict(zip(cols, line.split()))
            rows.append((int(vals["LOC"], 16), vals["CFA"], vals.get("rbp", "u"), vals.get("ra", "u")))
    return rows


def test_unwind_rules_match_readelf_on_libc(libc):
    eh = cfi.EhFrame(libc)
    rows = _readelf_rows()
    assert len(rows) > 500
    checked = 0
    for addr, cfa, rbp, ra in rows:
        row = eh.row(addr)
        if cfa == "exp":
            assert row.cfa is None
            continue
        reg, off = re.fullmatch(r"(\w+)([+-]\d+)", cfa).groups()
        assert row.cfa == (REG[reg], int(off)), (hex(addr), cfa, row)
        if reg not in ("rsp", "rbp"):  # setcontext and friends: kit's walk stops at these anyway
            continue
        assert (row.rules.get(cfi.RA) == ("offset", int(ra[1:]))) if ra.startswith("c") else True
        if rbp.startswith("c"):
            assert row.rules.get(cfi.RBP) == ("offset", int(rbp[1:])), (hex(addr), rbp, row)
        elif rbp == "u":
            assert cfi.RBP not in row.rules or row.rules[cfi.RBP] == ("undefined",)
        checked += 1
    assert checked > 500


def test_function_symbols_match_nm(libc):
    out = subprocess.run(["nm", "-D", "--defined-only", LIBC], capture_output=True, text=True).stdout
    funcs = {}
    for line in out.splitlines():
        addr, kind, name = line.split()
        if kind in ("T", "W", "i"):
            funcs.setdefault(int(addr, 16), set()).add(name.split("@")[0])
    checked = 0
    for addr, names in list(funcs.items())[::25]:
        got = libc.symbol(addr + 1)
        assert got is not None and got[0] in names and got[1] == 1, (hex(addr), names, got)
        checked += 1
    assert checked > 50


def _row(cfa, rbp=None):
    rules = {cfi.RA: ("offset", -8)}
    if rbp is not None:
        rules[cfi.RBP] = rbp
    return cfi.Row(cfa, rules)


@pytest.mark.parametrize("row, hint", [
    (_row((cfi.RSP, 48)), (48, 0)),                                         # libc: sub $0x28,%rsp
    (_row((cfi.RBP, 16), ("offset", -16)), (0, hidden_frames.HINT_TERMINAL)),  # push rbp; mov rsp,rbp
    (_row((cfi.RSP, 64), ("offset", -24)), (64, hidden_frames.HINT_SAVES_BP | (3 << 8))),
    (_row(None), (0, hidden_frames.HINT_STOP)),                             # CFA expression (PLT)
    (cfi.Row((cfi.RSP, 8), {}), (0, hidden_frames.HINT_STOP)),              # return address not at CFA-8
    (_row((3, 16)), (0, hidden_frames.HINT_STOP)),                          # CFA from rbx: not followed
])
def test_hints_follow_rsp_frames_and_stop_at_frame_pointer_frames(row, hint):
    assert hidden_frames.hint_for(row) == hint


def test_usleep_chain_in_libc_unwinds_through_rsp_frames(libc):
    """usleep -> __nanosleep -> clock_nanosleep: each keeps no frame pointer, so each is walked through."""
    eh = cfi.EhFrame(libc)
    for fn in ("usleep", "__nanosleep", "clock_nanosleep"):
        start = _sym_addr(fn)
        off, flags = hidden_frames.hint_for(eh.row(start))
        assert flags == 0 and off == 8  # at entry: only the return address is on the stack


def _sym_addr(name):
    out = subprocess.run(["nm", "-D", "--defined-only", LIBC], capture_output=True, text=True).stdout
    for line in out.splitlines():
        a, _k, n = line.split()
        if n.split("@")[0] == name:
            return int(a, 16)
    raise KeyError(name)


def test_a_fingerprint_two_sites_share_with_different_rules_is_not_used():
    learner = hidden_frames.Learner(symbolizer=None)
    fp = (0x123, 0xE8)
    learner._install(fp, (48, 0))
    learner._install(fp, (48, 0))
    assert learner.hints[fp] == (48, 0)
    learner._install(fp, (16, 0))
    assert learner.hints[fp] == (0, hidden_frames.HINT_STOP)
    assert learner.take_pending() == {fp: (0, hidden_frames.HINT_STOP)}


ROWS = [
    {"comm": "pay-svc", "pid": 1, "tid": 2, "total_us": 700, "count": 7,
     "kernel_stack": ["__schedule", "schedule", "futex_wait"], "user_stack": ["__lll_lock_wait", "charge", "main"]},
    {"comm": "pay-svc", "pid": 1, "tid": 3, "total_us": 300, "count": 3,
     "kernel_stack": ["__schedule", "schedule", "futex_wait"], "user_stack": ["__lll_lock_wait", "charge", "main"]},
    {"comm": "db reader", "pid": 1, "tid": 4, "total_us": 50, "count": 1,
     "kernel_stack": ["__schedule", "pipe_read"], "user_stack": ["read", "query;x"]},
]


def test_folded_lines_are_root_first_merged_and_sorted():
    lines = stacks.folded_lines(ROWS)
    assert lines == ["pay-svc;main;charge;__lll_lock_wait;futex_wait;schedule;__schedule 1000",
                     "db_reader;query:x;read;pipe_read;__schedule 50"]


def test_folded_output_says_its_notes_and_losses_on_stderr_never_on_stdout():
    from kit import output
    res = {"rows": ROWS, "stack_value": "total_us", "notes": ["stacks lost: 1 kernel, 0 user (EEXIST)"],
           "lost_events": 1, "lost": {"map_full": 0, "stack_lost": 1, "buffer": 0, "other": 0}}
    out, err = io.StringIO(), io.StringIO()
    output.folded(res, out, err)
    assert out.getvalue().splitlines() == stacks.folded_lines(ROWS)  # a flame graph tool reads only stacks
    assert err.getvalue().splitlines() == [
        "kit: note: stacks lost: 1 kernel, 0 user (EEXIST)",
        "kit: warning: 1 events were lost, so the results above undercount: 1 because stack captures failed "
        "(stack map full, or a stack that could not be walked)"]


def test_flame_graph_widths_are_proportional_to_time():
    svg = flamegraph.render(ROWS, title="t")
    doc = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    widths = {}
    for g in doc.iter(f"{ns}g"):
        name = g.find(f"{ns}text").get("data-name")
        widths.setdefault(name, float(g.find(f"{ns}rect").get("width")))
    assert widths["charge"] / widths["all"] == pytest.approx(1000 / 1050, rel=1e-3)
    assert widths["pipe_read"] / widths["all"] == pytest.approx(50 / 1050, rel=1e-3)
    assert "pay-svc (1.0 ms, 95.24%)" in svg  # hover text: the frame's time in human units, and its share
    assert "total 1.1 ms; click a frame" in svg


def test_human_listing_names_threads_wait_paths_and_recovered_frames():
    rows = [dict(ROWS[0], recovered=1)]
    text = stacks.human_text({"rows": rows})
    assert "pay-svc (pid 1, tid 2)" in text and "kernel: futex_wait" in text
    assert "charge   [recovered]" in text


def test_offcpu_declares_sched_switch_a_hot_path_that_needs_a_scope():
    """The data the guardrail reads (tests/kernel/test_guard_kernel.py refuses it unscoped on a busy box)."""
    recipe = catalog.load()["offcpu"]
    assert recipe.guard.hot_path and recipe.guard.scope_required
    assert recipe.guard.cost_class == "offcpu_block"
