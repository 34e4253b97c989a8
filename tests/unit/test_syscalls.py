"""syscalls without a kernel: what it renders, and its bad input."""

import io
import re

import pytest

from kit.cli import main
from kit.errors import ExitCode


def kit(*argv):
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_show_renders_the_raw_tracepoint_rung_with_the_comm_filter_as_bytes():
    code, out, _ = kit("show", "syscalls", "--comm", "nginx")
    assert code == 0
    assert "#define KIT_HOOK_RAW_TRACEPOINT 1" in out
    assert "RAW_TRACEPOINT_PROBE(sys_enter)" in out and "RAW_TRACEPOINT_PROBE(sys_exit)" in out
    assert re.search(r"#define KIT_SCOPE_COMM_ON +1\n", out)
    assert "{110, 103, 105, 110, 120, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}" in out  # "nginx", never as text
    assert "nginx" not in out


@pytest.mark.parametrize("argv, words", [
    (["run", "syscalls", "--comm", "a-name-longer-than-15"], "truncates comm to 15"),
    (["run", "syscalls", "--pid", "0"], "out of range"),
    (["run", "syscalls", "--comm", "x", "--budget", "0"], "--budget 0 is out of range"),
    (["run", "syscalls", "--comm", "x", "--for", "6m"], "over syscalls's maximum of 300s"),
    (["run", "syscalls", "--comm", "x", "--hook", "kprobe"], "invalid choice: 'kprobe'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words):
    code, out, err = kit(*argv)
    assert code == ExitCode.BAD_INPUT, err
    assert words in err and err.count("\n") == 1 and out == ""
