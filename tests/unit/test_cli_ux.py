"""What a user meets in a terminal, pinned as text: refusals and their ways out, help at every level,
`kit show` taking a pasted run line, conflicting outputs, durations as typed, tables in human units,
`kit list` and `kit doctor` in 100 columns, and frames named where the files allow. No kernel needed."""

import io
import os
import re
import shutil
import subprocess

import pytest

from kit import catalog, cli, output
from kit.binaries import elf
from kit.guard import suggest
from kit.host import doctor
from kit.output import flamegraph, stacks
from kit.userstacks import usersyms
from kit.catalog import Field
from kit.cli import main
from kit.errors import ExitCode, Refused
from kit.engine.contract import Context
from kit.engine.run import Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kit(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def width(text):
    return max(len(line) for line in text.splitlines())


# -- refusals: one renderer, lines not a literal \n -----------------------------------------------

DD_STORM = {
    "budget_pct": 2.0, "scoped": False, "filtered_pct": 0.0,
    "suggestions": [
        {"command": "kit run syscalls --comm dd --budget 40", "events_per_s": 2.8e6, "cpu_pct": 31.2,
         "fits": False, "kind": "scope", "budget": 40.0},
        {"command": "kit run syscalls --pid 4242", "events_per_s": 120.0, "cpu_pct": 2.4, "fits": False,
         "kind": "scope", "budget": 3.0, "label": "python: kit runs under that name too"},
        {"command": "kit run syscalls --tid 4243", "events_per_s": 900.0, "cpu_pct": 0.4, "fits": True,
         "kind": "narrower", "label": "one thread of dd (pid 4200)"},
        {"command": "kit run syscalls --comm dd --for 3s --budget 40", "events_per_s": 2.8e6, "cpu_pct": 31.2,
         "fits": False, "kind": "short", "budget": 40.0, "duration_s": 3.0, "cpu_s": 1.87},
    ],
    "kernel_threads": [{"comm": "kworker/1:1-events", "pid": 34, "events_per_s": 484.0}],
}

DD_STORM_TEXT = """\
scope it to one of the busiest on that hook:
  kit run syscalls --comm dd --budget 40  # 2.80M/s, ~31.20% of CPU; over the 2% budget: the command raises it to 40
  kit run syscalls --pid 4242             # python: kit runs under that name too; 120/s, ~2.40% of CPU; over the 2% budget: the command raises it to 3
kernel threads busy on that hook (kit probes user-space processes only): kworker/1:1-events (pid 34) 484/s
nothing above fits the 2% budget; what would:
  kit run syscalls --tid 4243                      # one thread of dd (pid 4200); 900/s, ~0.40% of CPU
  kit run syscalls --comm dd --for 3s --budget 40  # a 3s look at ~31.20% of CPU (1.87 CPU-seconds in all), held to --budget 40 by the breaker
or --force to run anyway (recorded in the result)"""


def test_ways_out_of_a_refusal_render_as_aligned_commands_with_their_cost():
    assert "\n".join(suggest.render(DD_STORM)) == DD_STORM_TEXT


def test_the_refusal_and_kit_estimate_print_the_same_lines(monkeypatch):
    from kit import guard
    monkeypatch.setattr(guard, "estimate", lambda ctx, opts: guard.Estimate(DD_STORM, reason="x"))
    monkeypatch.setattr(suggest, "suggestions", lambda ctx, opts, est: (DD_STORM["suggestions"],
                                                                        DD_STORM["kernel_threads"]))
    monkeypatch.setattr(guard, "verdict", lambda ctx, est: "syscalls hooks a hot path and needs a scope")
    r = catalog.load()["syscalls"]
    c = Context(recipe=r, hook=r.hooks[0], values={p: None for p in r.params})
    with pytest.raises(Refused) as e:
        guard.check_before(c, Options(duration=10.0), io.StringIO())
    err = io.StringIO()
    monkeypatch.setattr(cli, "_recipe_args", lambda *a: (_ for _ in ()).throw(e.value))
    assert main(["run", "syscalls"], out=io.StringIO(), err=err) == ExitCode.REFUSED
    printed = err.getvalue()
    assert printed == ("kit: error: syscalls hooks a hot path and needs a scope\n"
                       + "".join(f"  {line}\n" for line in DD_STORM_TEXT.splitlines()))
    assert "\\n" not in printed
    est = guard.check_before(c, Options(duration=10.0, dry_run=True), io.StringIO())
    text = guard.format_estimate({"recipe": "syscalls", "hook": "raw_tracepoint", "estimate": est})
    assert "\n".join("  " + line for line in DD_STORM_TEXT.splitlines()) in text


@pytest.mark.parametrize("pct, budget, needed", [
    (31.2, 2, 39.0), (1.7, 2, 2.2), (0.1, 2, 2), (80, 2, 100), (9.9, 5, 13),
])
def test_a_suggestion_over_budget_asks_for_what_it_needs_with_room(pct, budget, needed):
    assert suggest.needed_budget(pct, budget) == needed


def _rate(threads):
    from kit.guard import rate
    hook = rate.RateHook("tracepoint", "raw_syscalls:sys_enter")
    return rate.Rate(hook=hook, window_s=0.2, total=sum(t.rate for t in threads), in_scope=sum(t.rate for t in threads),
                     scope_measured=True, scoped=False, threads=threads, samples=500, lost=0)


def test_suggestions_name_kernel_threads_and_never_kit_or_a_name_kit_would_refuse():
    """Real processes: pid 2 is kthreadd (always a kernel thread), this test is a user process; the comm
    checks are kit's own typed layer."""
    from kit.guard import rate
    me, parent = os.getpid(), os.getppid()
    with open(f"/proc/{me}/comm") as f:
        my_comm = f.read().strip()
    threads = [
        rate.Thread(pid=2, tid=2, comm="kthreadd", rate=900, in_scope=True),
        rate.Thread(pid=parent, tid=parent, comm="a-name-longer-than-15", rate=800, in_scope=True),
        rate.Thread(pid=me, tid=me, comm=my_comm, rate=700, in_scope=True),  # kit itself
        rate.Thread(pid=parent, tid=parent, comm=my_comm, rate=600, in_scope=True),  # kit's name, not kit
        rate.Thread(pid=parent, tid=parent + 1, comm="worker", rate=10, in_scope=True),
    ]
    r = catalog.load()["syscalls"]
    c = Context(recipe=r, hook=r.hooks[0], values={p: None for p in r.params})
    found, kthreads = suggest.scopes(c, _rate(threads), me=me)
    assert kthreads == [{"comm": "kthreadd", "pid": 2, "events_per_s": 900}]
    assert [(s.flag, s.value) for s in found] == [("pid", parent), ("pid", parent), ("comm", "worker")]
    assert "cannot name it" in found[0].label and "kit runs under that name" in found[1].label
    for s in found:  # each passes the typed layer as `kit run` would parse it
        code, _out, err = kit("show", "syscalls", f"--{s.flag}", str(s.value))
        assert code == 0, err


def test_the_busiest_line_names_kernel_threads_and_tasks_gone():
    comms = [{"comm": "kthreadd", "events_per_s": 900, "pids": [2]},
             {"comm": "python", "events_per_s": 800, "pids": [os.getpid()]},
             {"comm": "?", "events_per_s": 12, "pids": [123456789]}]
    assert suggest.busiest_text(comms) == "kthreadd (kernel thread) 900/s, python 800/s, ? (gone) 12/s"


# -- help at every level ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "-h"], ["show", "--help"], ["estimate", "--help"],
                                  ["show", "-h"]])
def test_help_after_a_verb_lists_every_recipe(argv):
    code, out, err = kit(*argv)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: kit {argv[0]} RECIPE [options]")
    for name, r in catalog.load().items():
        assert re.search(rf"^  {name} +{re.escape(r.summary.split()[0])} ", out, re.M), name
    assert " ".join(out.split()).count("per process and host, with latency and failures") == 1  # wrapped, whole
    assert width(out) <= 100


@pytest.mark.parametrize("argv", [["run", "offcpu", "--help"], ["run", "-h", "offcpu"],
                                  ["estimate", "offcpu", "-h"], ["show", "offcpu", "--help"]])
def test_help_after_a_recipe_lists_its_parameters(argv):
    code, out, _ = kit(*argv)
    assert code == 0 and f"usage: kit {argv[0]} offcpu" in out
    for flag in ("--comm", "--pid", "--tid", "--cgroup", "--min-block", "--for", "--json", "--folded", "--svg"):
        assert flag in out, flag


def test_kit_help_still_works():
    code, out, _ = kit("--help")
    assert code == 0 and "usage: kit" in out and "examples:" in out


# -- show takes a pasted run line -------------------------------------------------------------------

def test_show_takes_a_pasted_run_line_and_says_which_options_only_run_uses():
    pid = str(os.getpid())
    _, plain, _ = kit("show", "offcpu", "--pid", pid)
    code, out, err = kit("show", "offcpu", "--pid", pid, "--for", "5s", "--json", "--budget", "3", "--svg", "/x.svg")
    assert code == 0 and out == plain
    assert err == "kit: show prints the C text only; only `kit run` uses --for, --json, --budget, --svg\n"
    assert not os.path.exists("/x.svg")


def test_show_with_hook_prints_that_rungs_text():
    code, out, _ = kit("show", "offcpu", "--comm", "x", "--hook", "tracepoint")
    assert code == 0 and "#define KIT_HOOK_TRACEPOINT 1" in out


# -- bad input the way users type it: one line ----------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["run", "offcpu", "--comm", "x", "--json", "--folded"], "--json and --folded both write to stdout"),
    (["run", "offcpu", "--for", "-5s"], "--for '-5s' is not a duration"),
    (["run", "syscalls", "--for", "-5s"], "--for '-5s' is not a duration"),
    (["run", "offcpu", "--pid", "-1"], "--pid must be a whole number, got '-1'"),
    (["run", "offcpu", "--for", "99h"], "--for 99h is over offcpu's maximum of 300s"),
    (["show", "offcpu", "--for", "99h"], "--for 99h is over offcpu's maximum of 300s"),
    (["run", "tcpretrans", "--for", "11m"], "--for 11m is over tcpretrans's maximum of 600s"),
])
def test_bad_values_are_one_line_echoing_what_was_typed(argv, words):
    code, out, err = kit(*argv)
    assert code == ExitCode.BAD_INPUT and out == ""
    assert err.startswith("kit: error: ") and err.count("\n") == 1 and words in err, err


# -- tables in human units ----------------------------------------------------------------------

@pytest.mark.parametrize("value, unit, text", [
    (4889500.3, "us", "4.89 s"), (14071189, "us", "14.07 s"), (1234.5, "us", "1.2 ms"), (850, "us", "850.0 µs"),
    (0.4, "us", "0.40 µs"), (0, "us", "0"), (12.5, "ms", "12.5 ms"), (4889.5, "ms", "4.89 s"), (999, "ns", "1.00 µs"),
])
def test_times_read_in_the_unit_that_suits_them(value, unit, text):
    assert output.duration(value, unit) == text


LOCKHOLD_TEXT = """\
what      pid  comm        count     total       avg     max
------  -----  --------  -------  --------  --------  ------
hold     4242  lockdemo   123456    4.89 s   39.6 µs  1.2 ms
wait     4242  lockdemo      980  320.0 ms  326.5 ms  2.00 s"""


def test_lockhold_table_has_fixed_point_times_and_no_exponents():
    fields = catalog.load()["lockhold"].fields
    rows = [{"what": "hold", "pid": 4242, "comm": "lockdemo", "count": 123456, "total_us": 4889500.3,
             "avg_us": 39.6, "max_us": 1234.0},
            {"what": "wait", "pid": 4242, "comm": "lockdemo", "count": 980, "total_us": 320000.0,
             "avg_us": 326530.6, "max_us": 2000000.0}]
    text = output.table(fields, rows)
    assert "e+0" not in text
    assert text == LOCKHOLD_TEXT


def test_syscalls_headings_say_each_unit_once():
    fields = catalog.load()["syscalls"].fields
    heads = output.table(fields, [{"pid": 1, "comm": "a", "syscall": "read", "count": 3, "errors": 0,
                                   "total_ms": 4889.5, "avg_us": 12.25, "max_us": 100.0}]).splitlines()[0].split()
    assert heads == ["pid", "comm", "syscall", "count", "errors", "total", "avg", "max"]


def test_a_field_with_a_non_time_unit_keeps_it_in_the_heading():
    assert output.heading(Field(name="size", unit="bytes")) == "size (bytes)"
    assert output.cell(Field(name="ratio"), 4889500.25) == "4889500.25"


def test_flame_graph_footer_is_in_seconds():
    rows = [{"comm": "a", "pid": 1, "tid": 1, "total_us": 14071189, "count": 1, "kernel_stack": ["x"],
             "user_stack": ["f"]}]
    svg = flamegraph.render(rows)
    assert "total 14.07 s; click a frame to zoom" in svg and "14071189" not in svg


# -- kit list and kit doctor in 100 columns -------------------------------------------------------

@pytest.fixture
def every_rung_runs(monkeypatch):
    from kit.host import features
    monkeypatch.setattr(features, "hook_supported", lambda hook: None)
    monkeypatch.setattr(features, "why_not", lambda recipe: None)


LIST_HEAD = """\
recipe       what it shows                              scope                   runs here
-----------  -----------------------------------------  ----------------------  --------------------
tcpretrans   TCP retransmits per flow, with the         optional: port, addr,   yes (raw_tracepoint)
             process that owns the socket               netns

offcpu       where a process blocks, as off-CPU time    required: comm,         yes (raw_tracepoint)
             per kernel and user stack                  thread_comm, pid, tid,
                                                        cgroup

"""
LIST_TAIL = "`kit list -v` for every recipe in full; `kit run RECIPE --help` for its options\n"


def test_kit_list_fits_100_columns_with_no_blank_cell(every_rung_runs):
    code, out, _ = kit("list")
    assert code == 0 and out.startswith(LIST_HEAD) and out.endswith(LIST_TAIL) and width(out) <= 100
    firsts = [line for line in out.splitlines()[2:-1] if line and not line.startswith(" ")]
    assert [line.split()[0] for line in firsts] == list(catalog.load())  # every recipe, in catalog order
    for line in firsts:  # no blank cell: what, scope and runs-here all start on the recipe's first line
        assert line[13:].strip() and line[56:].strip() and line[80:].startswith("yes ("), line


def test_kit_list_fits_100_columns_when_a_recipe_cannot_run(monkeypatch):
    from kit.host import features
    why = ("raw_tracepoint: lockdown=confidentiality blocks bpf_probe_read_kernel, which this rung needs; "
           "tracepoint: lockdown=confidentiality blocks tracefs, which tracepoints need")
    monkeypatch.setattr(features, "why_not", lambda recipe: why)
    code, out, _ = kit("list")
    assert code == 0 and width(out) <= 100
    assert "lockdown=confidentiality" in out  # words are wrapped, never broken


def test_kit_list_verbose_has_every_recipe_in_full(every_rung_runs):
    code, out, _ = kit("list", "-v")
    assert code == 0
    for r in catalog.load().values():
        block = out.split(f"{r.name}: {r.summary}\n", 1)[1].split("\n\n", 1)[0]
        assert f"  example:   {r.example}" in block and f"  runbook:   {r.runbook}" in block
        assert "  runs here: yes (" in block and "  guardrail: " in block and "  scopes:    --" in block


DOCTOR_TEXT = """\
check           status    detail
--------------  --------  ------------------------------------------------------------------------
kernel          ok        6.18.44
                NO        confidentiality blocks tracefs
frame pointers  ok        Debian's libc is built without them: a frame-pointer stack walk from
                          inside a libc wrapper (usleep, read, pthread_mutex_lock) skips the
                          function that called the wrapper; kit's offcpu recovers that caller from
                          libc's .eh_frame (bpf_task_pt_regs is available)
"""


def test_kit_doctor_has_a_status_heading_and_wraps_long_details():
    rows = [("kernel", "6.18.44", True), ("", "confidentiality blocks tracefs", False),
            ("frame pointers", "Debian's libc is built without them: a frame-pointer stack walk from inside a libc "
             "wrapper (usleep, read, pthread_mutex_lock) skips the function that called the wrapper; kit's offcpu "
             "recovers that caller from libc's .eh_frame (bpf_task_pt_regs is available)", True)]
    text = doctor.render(rows)
    assert text == DOCTOR_TEXT and width(text) <= 100


# -- the README's examples -------------------------------------------------------------------------

def readme_examples():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return [line.split("#")[0].split() for line in re.findall(r"^(kit [^\n]+)$", text, re.M)]


@pytest.mark.parametrize("words", readme_examples(), ids=lambda w: " ".join(w))
def test_the_readmes_examples_parse_as_written(words):
    """Every `kit ...` line of the README parses with kit's own parsers: the verb, the recipe, each option
    (values that name this box's processes, like --pid 1234, are the reader's to fill in)."""
    args = cli._base_parser().parse_args(words[1:])
    if args.cmd in cli.VERBS:
        recipe = catalog.load()[args.recipe]
        ns = cli.recipe_parser(recipe, args.cmd).parse_args(args.rest)
        if ns.duration is not None:
            from kit.catalog.params import Duration
            assert Duration.seconds(ns.duration) <= recipe.duration_max


def test_the_readme_has_examples():
    assert {w[1] for w in readme_examples()} >= {"list", "run", "show", "doctor", "estimate", "calibrate"}


# -- frames named where the files allow --------------------------------------------------------------

SRC = r"""
#include <unistd.h>
static __attribute__((noinline)) int hidden_helper(int x) { return x * 3 + getpid(); }
int exported_fn(int x) { return hidden_helper(x) + 1; }
int main(int argc, char **argv) { return exported_fn(argc); }
"""


@pytest.fixture(scope="module")
def stripped(tmp_path_factory):
    """A binary stripped of its symbol table, and its debug symbols kept apart by build id."""
    if not (shutil.which("gcc") and shutil.which("objcopy")):
        pytest.fail("these tests need gcc and objcopy (./setup.sh installs them)")
    d = tmp_path_factory.mktemp("syms")
    src, full = d / "t.c", d / "t-full"
    src.write_text(SRC)
    subprocess.run(["gcc", "-O1", "-g", "-Wl,--build-id", "-rdynamic", "-o", str(full), str(src)], check=True)
    with elf.Elf(str(full)) as e:
        bid = e.build_id()
        helper = next(a for a, n in zip(e.functions().starts, e.functions().names) if n == "hidden_helper")
    debug = d / "debug" / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(full), str(debug)], check=True)
    binary = d / "t"
    subprocess.run(["objcopy", "--strip-all", "--keep-symbol=exported_fn", str(full), str(binary)], check=True)
    return str(binary), str(d / "debug"), helper


def _image(path, debug_root):
    from kit.host.targets import MapsLine
    st = os.stat(path)
    with elf.Elf(path) as e:
        seg = e.segments[0]
    cache = usersyms.ElfCache(debug_root=debug_root)
    img = usersyms.ProcessImage(os.getpid(), cache)
    # mapped at 0x400000 + its own layout, as a loader would
    img.maps = [MapsLine(start=0x400000, end=0x400000 + 0x100000, perms="r-xp", offset=seg.offset,
                         dev=st.st_dev, ino=st.st_ino, path=path, deleted=False)]
    return img, 0x400000 - seg.vaddr + seg.offset


def test_an_unexported_function_is_named_from_the_files_debug_symbols(stripped):
    binary, debug_root, helper = stripped
    img, base = _image(binary, debug_root)
    assert img.symbol(base + helper + 4) == "hidden_helper"


def test_without_debug_symbols_an_unexported_function_is_named_by_where_it_starts(stripped, tmp_path):
    binary, _debug_root, helper = stripped
    img, base = _image(binary, str(tmp_path))  # nothing installed there
    assert img.symbol(base + helper + 4) == f"[t+{helper:#x}]"
    assert img.symbol(base + helper + 1) == f"[t+{helper:#x}]"  # every address of it folds into one frame
    rows = [{"pid": os.getpid(), "user_stack": ["getpid", f"[t+{helper:#x}]", "exported_fn"]}]
    sym = usersyms.Symbolizer()
    sym.cache = img.cache
    sym.procs[os.getpid()] = img
    (note,) = usersyms.explain(rows, sym)
    assert note.startswith(f"frames shown as [t+0xSTART] are in functions t does not export")
    assert f"by build id under {tmp_path}" in note


def test_an_interpreter_is_named_and_told_what_would_name_its_frames():
    from kit.host.targets import MapsLine
    img = usersyms.ProcessImage(4242, usersyms.ElfCache())
    img.maps = [MapsLine(0x1000, 0x2000, "r-xp", 0, 1, 2, "/usr/bin/python3.11", False)]
    sym = usersyms.Symbolizer()
    sym.procs[4242] = img
    rows = [{"pid": 4242, "user_stack": ["clock_nanosleep", "[unknown]"]}]
    (note,) = usersyms.explain(rows, sym)
    assert note.startswith("pid 4242 runs a Python interpreter: 1 of its stacks have [unknown] frames")
    assert "py-spy dump --pid 4242" in note and "-X perf" in note


def test_glibcs_public_name_wins_over_its_internal_aliases():
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        pytest.fail("this test reads Debian's libc")
    with elf.Elf(libc) as e:
        (sym,) = e.find("pthread_mutex_lock")
        assert e.symbol(sym.addr)[0] == "pthread_mutex_lock"
        (w,) = e.find("write")
        assert e.symbol(w.addr)[0] == "write"


def test_the_human_listing_says_what_recovered_means():
    rows = [{"comm": "a", "pid": 1, "tid": 1, "total_us": 5, "count": 1, "kernel_stack": ["futex_wait"],
             "user_stack": ["__lll_lock_wait", "pthread_mutex_lock", "worker"], "recovered": 2}]
    text = stacks.human_text({"rows": rows})
    assert "pthread_mutex_lock   [recovered]" in text and "worker   [recovered]" in text
    assert "code that keeps no frame pointers (libc, or a program built without them)" in text
