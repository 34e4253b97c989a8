"""CLI error paths: one line, the fix, a distinct exit code. No kernel needed."""

import io

import pytest

from kit.cli import main
from kit.errors import ExitCode


def kit(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, code, words", [
    (["run", "nosuch"], ExitCode.BAD_INPUT, "unknown recipe 'nosuch'"),
    (["run", "tcpretranz"], ExitCode.BAD_INPUT, "did you mean tcpretrans?"),
    (["run", "tcpretrans", "--colour", "x"], ExitCode.BAD_INPUT, "unrecognized arguments: --colour"),
    (["run", "tcpretrans", "--port", "http"], ExitCode.BAD_INPUT, "--port must be a whole number"),
    (["run", "tcpretrans", "--port", "70000"], ExitCode.BAD_INPUT, "out of range 1..65535"),
    (["run", "tcpretrans", "--for", "0s"], ExitCode.BAD_INPUT, "longer than zero"),
    (["run", "tcpretrans", "--for=-5s"], ExitCode.BAD_INPUT, "not a duration"),
    (["run", "tcpretrans", "--for", "soon"], ExitCode.BAD_INPUT, "not a duration"),
    (["run", "tcpretrans", "--for", "11m"], ExitCode.BAD_INPUT, "over tcpretrans's maximum of 600s"),
    (["run", "tcpretrans", "--addr", "10.0.0.300"], ExitCode.BAD_INPUT, "is not an IP address"),
    (["run", "tcpretrans", "--netns", "no-such-ns"], ExitCode.BAD_INPUT, "no network namespace"),
    (["run", "tcpretrans", "--budget", "lots"], ExitCode.BAD_INPUT, "--budget 'lots' is not a number"),
    (["--catalog", "/nonexistent.yaml", "list"], ExitCode.CATALOG, "cannot read catalog"),
    (["run"], ExitCode.BAD_INPUT, "no recipe named"),
    (["run", "opensnoop", "--limit", "5"], ExitCode.BAD_INPUT, "--limit is for the stream form of opensnoop"),
    (["run", "opensnoop", "--stream", "--limit", "lots"], ExitCode.BAD_INPUT, "--limit must be a whole number"),
    (["run", "tcpretrans", "--stream"], ExitCode.BAD_INPUT, "unrecognized arguments: --stream"),
    (["fleet", "run", "opensnoop", "--stream", "--hosts", "h1,"], ExitCode.BAD_INPUT,
     "opensnoop --stream is a stream"),
    (["fleet", "run", "execsnoop", "--hosts", "h1,"], ExitCode.BAD_INPUT, "execsnoop is a stream"),
])
def test_bad_input_is_one_line_with_a_fix_and_its_exit_code(argv, code, words):
    c, out, err = kit(*argv)
    assert c == code, err
    assert words in err
    assert err.count("\n") == 1 and err.startswith("kit: error: ") and " — " in err
    assert out == ""


def test_show_prints_the_c_text():
    c, out, _ = kit("show", "tcpretrans", "--port", "443")
    assert c == 0 and "TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)" in out and "#define KIT_PORT        443" in out


def test_list_says_what_runs_here():
    c, out, _ = kit("list")
    assert c == 0 and "tcpretrans" in out


def test_show_stream_prints_the_stream_form_and_the_table_form_without_it():
    _c, stream_text, _e = kit("show", "opensnoop", "--stream", "--pid", "1")
    _c, table_text, _e = kit("show", "opensnoop", "--pid", "1", "--failed")
    assert "#define KIT_STREAM      1" in stream_text and "#define KIT_FAILED_ONLY 0" in stream_text
    assert "#define KIT_STREAM      0" in table_text and "#define KIT_FAILED_ONLY 1" in table_text
    c, _out, err = kit("show", "opensnoop", "--stream", "--limit", "0")
    assert c == ExitCode.OK and "only `kit run` uses --limit" in err


def test_a_suggested_command_keeps_the_stream_form_and_its_limit():
    from kit import catalog
    from kit.guard import suggest
    from kit.engine.contract import Context
    from kit.engine.run import Options
    r = catalog.load()["opensnoop"].stream_form
    ctx = Context(recipe=r, hook=r.hooks[0], values={"failed": True})
    line = suggest.command(ctx, Options(duration=r.duration_default, limit=0), "comm", "nginx")
    assert line == "kit run opensnoop --stream --failed --comm nginx --limit 0"
