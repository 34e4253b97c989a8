"""The incident report bundle, without a kernel: the files it writes, no terminal control codes even
from text a traced process chose, the same bytes for the same findings, a unit on every number, and a
directory checked before anything attaches."""

import json
import os
import random
import re

import pytest

import test_triage as t
from kit import catalog, triage
from kit.triage import report, verdict
from kit.errors import BadInput

RECIPES = catalog.load(catalog.DEFAULT_CATALOG)
HOST = {"hostname": "box", "kernel": "6.18", "ncpu": 2,
        "doctor": [{"check": "kernel", "ok": True, "detail": "6.18"}, {"check": "kprobe", "ok": False,
                                                                         "detail": "compiled out"}]}
EVIL = "pay\x1b[31m|*<b>`x"


def outcome(offcpu_rows=None, comm="pay-svc"):
    clock = t.Clock()
    off = t.waiting_service()
    for r in off["rows"]:
        r["comm"] = comm
    if offcpu_rows is not None:
        off["rows"] = offcpu_rows
    runner = t.FakeRunner(clock, {"offcpu": dict(off, stack_value="total_us", scope={"comm": comm},
                                                 notes=[f"a note about {comm}"]),
                                  "profile": t.profile([t.row(101, 0, 0, [], ["busy_us", "checkout_conn"],
                                                              comm=comm) | {"samples": 3}]),
                                  "lockhold": t.lockhold_result(10) | {"notes": ["holds paired by thread"]},
                                  "getaddrinfo": {"rows": [{"pid": 100, "comm": comm, "function": "getaddrinfo",
                                                            "host": "db.internal", "count": 10, "failed": 0,
                                                            "total_us": 400.0, "avg_us": 40.0, "max_us": 90.0}],
                                                  "duration_s": 10.0,
                                                  "histograms": {"latency_us": [{"low": 32, "high": 63,
                                                                                 "count": 10}]}}})
    return triage.chain(t.plan(), RECIPES, runner, t.FakeSystem(imports={"getaddrinfo"}), clock=clock)


def build(out, scope="--comm pay-svc"):
    return report.build("kit triage", f"kit triage {scope}", scope, out["steps"], verdict.verdict(out, scope),
                        out["notes"], HOST, time_box_s=60, budget_pct=2, elapsed_s=out["elapsed_s"],
                        state=out["state"], started="2026-12-03T10:00:00+00:00", look=out["look"])


def test_the_bundle_has_the_report_its_data_the_host_facts_and_a_flame_graph_per_stack_step(tmp_path):
    d = str(tmp_path / "incident")
    files = report.write(d, build(outcome()), RECIPES)
    assert files == ["report.md", "report.json", "host.txt", "01-offcpu.svg", "02-profile.svg"]
    assert sorted(os.listdir(d)) == sorted(files)
    data = json.load(open(os.path.join(d, "report.json")))
    assert [s["recipe"] for s in data["steps"]] == ["offcpu", "profile", "lockhold", "getaddrinfo"]
    assert data["steps"][2]["result"]["inside"]["holds_with_calls"] == 10  # every step's full result
    assert data["steps"][2]["command"].startswith("kit run lockhold --pid 100 --lock pool_lock")
    assert "compiled out" in open(os.path.join(d, "host.txt")).read()
    md = open(os.path.join(d, "report.md")).read()
    assert "## Verdict" in md and "## Host (kit doctor)" in md and "Flame graph: 01-offcpu.svg" in md
    assert "```sh\nkit run getaddrinfo --pid 100 --for 10s --budget 2\n```" in md
    assert "for db.internal (10 lookups) inside the lock in 10 of 300 holds" in md


def test_text_a_traced_process_chose_reaches_the_report_without_control_codes_or_markup():
    rows = [t.row(101, 5_000_000, 100, t.FUTEX, t.POOL, comm=EVIL),
            t.row(101, 4_000_000, 100, t.SLEEP, ["nanosleep", "evil\x07<script>frame", "main"], comm=EVIL)]
    md = report.markdown(build(outcome(rows, comm=EVIL)), RECIPES)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", md)  # no ESC, BEL or other control character
    assert "\\x1b[31m" in md and "<script>" not in md and "< script>" in md
    for line in md.splitlines():
        if line.startswith("| "):  # a table row keeps its columns: a '|' from the text is escaped
            assert len(re.findall(r"(?<!\\)\|", line)) == line.count(" | ") + 2 - line.count("\\| ")


def test_the_same_findings_give_the_same_report_whatever_order_the_kernel_gave_them_in():
    a = report.markdown(build(outcome()), RECIPES)
    rows = t.waiting_service()["rows"]
    random.Random(7).shuffle(rows)
    b = report.markdown(build(outcome(rows)), RECIPES)
    assert a == b


UNITS = r"(%|/s|(?:s|ms|µs|ns|CPUs?|(?:[\w.-]+ )?threads?|holds?|waits?|calls?|lookups?|samples?|blocks?|" \
        r"connections?|retransmits?|failures?|rows?|stacks?|events|filtered|times|CPU-seconds|" \
        r"getaddrinfo calls?)\b)"


def test_every_number_in_the_verdict_and_the_findings_has_its_unit():
    rep = build(outcome())
    lines = list(rep["verdict"]) + [x for s in rep["steps"] for x in s["lines"]]
    assert lines
    for line in lines:
        for m in re.finditer(r"(?<![\w.:/-])(\d+(?:\.\d+)?)(?![\w.:])", line):
            before, after = line[:m.start()], line[m.end():]
            if re.search(r"\b(pid|tid)\s$", before) or re.match(r"\s+of\s+\d", after):
                continue  # an id, or "10 of 300 holds": the unit follows the second number
            assert re.match(r"\s?" + UNITS, after), f"{m.group(1)!r} has no unit in: {line}"


def test_the_bundle_directory_is_checked_before_anything_attaches(tmp_path):
    assert report.check_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.check_dir(str(empty)) == str(empty)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    os.symlink(str(empty), str(tmp_path / "link"))
    for bad, words in ((full, "is not empty"), (tmp_path / "file", "is not a directory"),
                       (tmp_path / "link", "is not a directory"), (tmp_path / "no" / "such", "does not exist")):
        with pytest.raises(BadInput, match=words):
            report.check_dir(str(bad))


def test_the_default_directory_is_timestamped_under_the_current_one():
    import datetime
    d = report.default_dir(datetime.datetime(2026, 12, 3, 10, 4, 5), cwd="/srv/x")
    assert d == "/srv/x/kit-report-20261203-100405"
