"""Properties of kit's own code and templates that no input should be able to break:
no shell ever sees user text, YAML is only ever loaded safely, every template
counts every write that can fail (so a loss is never silent), and what a traced
process chose (its comm) cannot drive the operator's terminal."""

import ast
import io
import os
import re

import pytest
import yaml

from fixtures import kitshim
from kit import catalog, output

KIT = os.path.join(catalog.ROOT, "kit")


def _sources():
    for d, _dirs, files in os.walk(KIT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                yield os.path.relpath(path, catalog.ROOT), ast.parse(open(path).read(), path)


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_shell_anywhere_in_kit():
    bad = []
    for path, tree in _sources():
        for node, name in _calls(tree):
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                bad.append(f"{path}:{node.lineno} {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    bad.append(f"{path}:{node.lineno} {name}(shell=...)")
    assert bad == []


def test_yaml_is_only_loaded_through_a_safe_loader():
    bad = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node) in (
                    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.Loader",
                    "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.unsafe_load_all"):
                bad.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert bad == []
    # SafeLoader, or libyaml's CSafeLoader (the same safe constructor over the C parser)
    assert issubclass(catalog._Loader, (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    assert not issubclass(catalog._Loader, yaml.constructor.FullConstructor)


# Writes that can fail and must be checked, and BCC helpers that drop a failure silently.
FALLIBLE = re.compile(r"\.(lookup_or_try_init|update|insert|get_stackid|perf_submit|ringbuf_output|"
                      r"ringbuf_reserve)\s*\(|bpf_map_update_elem\s*\(|bpf_get_stackid\s*\(")


def _templates():
    for path in (catalog.DEFAULT_CATALOG, kitshim.CATALOG):
        for r in catalog.load(path).values():
            yield pytest.param(r.template_path, id=r.name)


@pytest.mark.parametrize("template", list(_templates()))
def test_every_write_that_can_fail_counts_its_failure(template):
    text = open(template).read()
    lines = text.splitlines()
    # Arrays (histograms included) never fill up: a slot in bounds always exists. Hashes do.
    arrays = set(re.findall(r"BPF_(?:HISTOGRAM|ARRAY|PERCPU_ARRAY)\(\s*(\w+)", text))
    for m in re.finditer(r"(\w+)\.(?:increment|atomic_increment)\s*\(", text):
        assert m.group(1) in arrays, \
            f"{template}: {m.group(1)}.increment() drops a full map silently; use lookup_or_try_init"
    for i, line in enumerate(lines):
        # A write the template retries until it succeeds says so on its line: "not lost: retried".
        if FALLIBLE.search(line) and not line.lstrip().startswith(("*", "/*", "//")) \
                and "/* not lost: retried" not in line:
            after = "\n".join(lines[i:i + 8])
            assert re.search(r"kit_count\(KIT_(MAP_FULL|STACK_LOST|BUFFER_LOST|LOST_OTHER)\)", after), \
                f"{os.path.basename(template)}:{i + 1}: {line.strip()} — its failure is not counted"


def _result(**lost):
    base = {"map_full": 0, "stack_lost": 0, "buffer": 0, "other": 0}
    base.update(lost)
    return {"recipe": "tcpretrans", "hook": "tracepoint x", "scope": {}, "duration_s": 1.0, "events": 3,
            "filtered": 0, "lost": base, "lost_events": sum(base.values()), "stopped_by": "timeout",
            "rows": [{"pid": 1, "comm": "\x1b]0;owned\x07\x1b[2J", "count": 3}], "overhead": {}, "notes": []}


def test_human_output_escapes_what_a_traced_process_chose():
    out = io.StringIO()
    output.human(_result(), catalog.load()["tcpretrans"], out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "\\x1b]0;owned" in out.getvalue()


def test_no_losses_no_warning_and_any_loss_a_warning():
    recipe = catalog.load()["tcpretrans"]
    clean, lossy = io.StringIO(), io.StringIO()
    output.human(_result(), recipe, clean)
    output.human(_result(other=2), recipe, lossy)
    assert "warning:" not in clean.getvalue()
    assert "warning: 2 events were lost" in lossy.getvalue()
