"""Injection: user text reaches C only as a checked literal, or not at all.

Property-based on the typed layer (every type, arbitrary text laced with quotes,
backslashes, newlines, comment ends, preprocessor lines, format strings, NULs,
lone surrogates and very long strings), then concrete cases through rendering
and the real CLI for every recipe and every parameter of both catalogs. The
invariant: a value is refused with a one-line BadInput, or the rendered C has
exactly the shape it has without it (same text once every integer literal is
replaced by N), so no input can add a token, a line or a directive.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from fixtures import kitshim
from kit import catalog
from kit.catalog import params
from kit.engine import run
from kit.catalog import ParamSpec
from kit.errors import KitError

NASTY = ['"', "'", "\\", "\n", "\r", "*/", "/*", "//", "#include <linux/sched.h>", "#define X", "%s", "%n",
         "\0", "\x1b[2J", "é", "日本", "\U0001F600", "\u202e", "\ud800", "\udcff", "{{port}}", "}", "{", ";",
         "\\x41", "0x10", "1ULL", "../", "$(reboot)", "`id`", " ", "\t"]
nasty_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(NASTY), max_size=12).map("".join),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=5), st.sampled_from(NASTY), st.text(max_size=5)),
    st.text(alphabet="0123456789", min_size=1, max_size=60),
    st.text(min_size=1000, max_size=3000),
)
# integers, or byte initializers of a comm/address (16 bytes) or a host name (256 bytes)
LITERAL = re.compile(r"\d+(?:ULL|U)?|\{(?:\d{1,3}, ){15}\d{1,3}\}|\{(?:\d{1,3}, ){255}\d{1,3}\}")
ALL_TYPES = sorted(params.TYPES)


def spec_for(type_name):
    return ParamSpec(name=type_name, type=type_name, min=1, max=64, choices=("count", "trace"))


@pytest.mark.parametrize("type_name", ALL_TYPES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=nasty_text)
def test_every_type_refuses_or_yields_a_checked_value_never_raw_text(type_name, text):
    spec = spec_for(type_name)
    t = params.TYPES[type_name]
    try:
        value = t.parse(text, spec)
    except KitError as e:  # refused: one printable line, whatever the text held
        assert e.line().isprintable()
        return
    if t.c_emitter:
        literal = params.emit(spec, value)
        assert LITERAL.fullmatch(literal), (type_name, text, literal)
    elif type_name == "symbol":
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.@$]*", value)
    elif type_name == "duration":
        assert 0 < value <= 7 * 86400
    elif type_name in ("binary", "outpath"):
        assert "\0" not in value and len(value) <= 4096


GOOD = {"binary": "/lib/x86_64-linux-gnu/libc.so.6", "symbol": "getpid"}


def recipes():
    out = []
    for path in (catalog.DEFAULT_CATALOG, kitshim.CATALOG):
        out += list(catalog.load(path).values())
    return out


def base_values(recipe):
    """The values a recipe cannot render without (a binary and its symbols, and a process mapping that
    binary, which a hot-path uprobe recipe needs as its scope), valid and benign."""
    base = {p.name: params.TYPES[p.type].parse(GOOD[p.type], p) for p in recipe.params.values() if p.type in GOOD}
    if "binary" in base and "pid" in recipe.params:
        base["pid"] = os.getpid()  # this test process maps GOOD["binary"], libc
    return base


def shape(text):
    return re.sub(r"\b\d+(?:ULL|U)?\b", "N", text)


CASES = [(r, p) for r in recipes() for p in r.params.values() if p.type != "flag"]


@pytest.mark.kernel
@pytest.mark.parametrize("recipe, spec", CASES, ids=[f"{r.name}-{p.name}" for r, p in CASES])
def test_rendered_c_keeps_its_shape_whatever_each_parameter_is_given(kernel, recipe, spec, tmp_path):
    base = base_values(recipe)
    _ctx, baseline = run.prepare(recipe, base)
    accepted = 0
    elf = tmp_path / 'lib"x*' / '#include <a>\n%s.so'  # a real ELF at a path full of C syntax
    elf.parent.mkdir()
    shutil.copy(GOOD["binary"], elf)
    for text in NASTY + ["".join(NASTY), "a" * 5000, 'x"*/#include', "%s%s%s%n", "fe80::1", "1.2.3.4", "8080",
                         "system.slice", "/", "1", str(elf)]:
        try:
            value = params.TYPES[spec.type].parse(text, spec)
            values = {**base, spec.name: value}
            if spec.type == "binary":  # a binary alone is a scope; the base pid does not map this copy
                values.pop("pid", None)
            _ctx, rendered = run.prepare(recipe, values)
        except KitError as e:
            assert e.line().isprintable()
            continue
        accepted += 1
        assert shape(rendered) == shape(baseline), f"--{spec.flag} {text!r} changed the C text's shape"
        if not spec.in_c:
            assert text not in rendered or text in baseline
    if spec.type in ("comm", "binary", "outpath"):  # values full of C syntax are legal here: the check ran
        assert accepted >= 1


# Every parameter whose value is text rather than a number (new string types are included as they come).
NUMERIC = ("int", "pid", "tid", "port", "micros", "duration", "flag")
STRING_CASES = [c for c in CASES if c[1].type not in NUMERIC]


@pytest.mark.kernel
@pytest.mark.parametrize("recipe, spec", STRING_CASES, ids=[f"{r.name}-{p.name}" for r, p in STRING_CASES])
def test_string_parameters_through_the_cli_are_refused_or_escaped(kernel, recipe, spec, tmp_path):
    pre = [] if recipe.source == catalog.DEFAULT_CATALOG else ["--catalog", kitshim.CATALOG]
    shim = [sys.executable, os.path.join(ROOT, "tests", "support", "fixtures", "kitshim.py")]
    base = [a for p in recipe.params.values() if p.type in GOOD for a in (f"--{p.flag}", GOOD[p.type])]
    if "--binary" in base and "pid" in recipe.params and spec.name != "pid":
        base += ["--pid", str(os.getpid())]  # this process maps GOOD["binary"]: a scope for hot-path uprobes

    def show(*extra):
        return subprocess.run(shim + pre + ["show", recipe.name, *base, *extra], cwd=ROOT, capture_output=True,
                              text=True, errors="surrogateescape", timeout=60)

    baseline = show()
    assert baseline.returncode == 0, baseline.stderr
    for text in ['a"b', "a\\b", "a\nb", "*/x", "#include <x>", "%s%n", "é日", "x" * 5000, "'; rm -rf /; '",
                 "$(id)", "\x1b[31m", "-", "--port=1"]:
        p = show(f"--{spec.flag}={text}")
        if p.returncode == 0:
            assert shape(p.stdout) == shape(baseline.stdout), f"--{spec.flag} {text!r} changed the C text's shape"
        else:
            assert p.returncode == 2, p.stderr
            assert p.stderr.count("\n") == 1 and p.stderr[:-1].isprintable(), repr(p.stderr)


@pytest.mark.kernel
@pytest.mark.slow
def test_a_comm_full_of_c_syntax_matches_exactly_that_process_in_the_kernel(kernel, no_leftovers, tmp_path):
    """The literal kit emits is the exact bytes: the process named x"*/%s\\'# is counted, its twin is not."""
    from harness import ShimProc, Workload
    from workloads.build import build
    target = build("target", str(tmp_path))
    nasty, calls = "x\"*/%s\\'#", 300
    named, twin = Workload(target, str(calls), nasty), Workload(target, str(calls), "kit-target")
    try:
        with open(f"/proc/{named.pid}/comm", "rb") as f:
            assert f.read().rstrip(b"\n") == nasty.encode()
        kit = ShimProc("run", "uprobed", "--binary", target, "--symbol", "kit_target_fn", "--comm", nasty,
                       "--for", "60s", "--json")
        kit.wait_attached()
        assert named.go() == twin.go() == f"done {calls}"
        kit.p.send_signal(2)
        res = kit.finish().json()
    finally:
        named.end()
        twin.end()
    assert res["rows"] == [{"pid": named.pid, "calls": calls}], res["rows"]
    assert res["filtered"] >= calls  # the twin's calls (and any other process running the binary)
    assert res["params"]["comm"] == nasty
