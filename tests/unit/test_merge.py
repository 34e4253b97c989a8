"""kit merge: many hosts' results as one (pure logic, no kernel)."""

import json

import pytest

from kit import cli
from kit.fleet import merge
from kit.output import stacks
from kit.errors import BadInput, ExitCode


def result(recipe="syscalls", rows=(), hist=None, **kw):
    r = {"recipe": recipe, "kit_version": "0.1.0", "catalog_version": "kit/v1+abc", "requested_s": 30.0,
         "hook": "tracepoint x", "params": {"comm": "pay-svc"}, "scope": {}, "duration_s": 30.0,
         "stopped_by": "timeout", "events": sum(r.get("count", 0) for r in rows), "filtered": 1, "lost_events": 0,
         "lost": {"map_full": 0, "stack_lost": 0, "buffer": 0, "other": 0}, "rows": list(rows),
         "histograms": hist or {}}
    r.update(kw)
    return r


def sys_row(name, count, total_ms, max_us, pid=10):
    return {"pid": pid, "comm": "pay-svc", "syscall": name, "count": count, "errors": 1, "total_ms": total_ms,
            "avg_us": round(total_ms * 1000 / count, 2), "max_us": max_us}


def test_every_row_names_its_host_and_counts_sum_per_key_across_hosts():
    a = result(rows=[sys_row("read", 10, 5.0, 900), sys_row("write", 4, 1.0, 300)])
    b = result(rows=[sys_row("read", 30, 15.0, 2000, pid=77)])
    m = merge.merge([("a.json", a), ("b.json", b)])
    assert sorted((r["host"], r["syscall"]) for r in m["rows"]) == [("a", "read"), ("a", "write"), ("b", "read")]
    read = next(r for r in m["summed"] if r["syscall"] == "read")
    assert (read["count"], read["errors"], read["total_ms"], read["max_us"]) == (40, 2, 20.0, 2000)
    assert read["avg_us"] == 500.0 and read["hosts"] == ["a", "b"] and "pid" not in read
    assert m["totals"]["count"] == 44 and m["totals"]["max_us"] == 2000
    assert m["top_hosts"]["count"][0] == {"host": "b", "value": 30}
    assert m["events"] == 44


def test_log2_histograms_merge_bucket_by_bucket():
    a = result(hist={"latency_us": [{"low": 1, "high": 1, "count": 2}, {"low": 2, "high": 3, "count": 5}]})
    b = result(hist={"latency_us": [{"low": 8, "high": 15, "count": 1}]})
    h = merge.merge([("a.json", a), ("b.json", b)])["histograms"]["latency_us"]
    assert h == [{"low": 1, "high": 1, "count": 2}, {"low": 2, "high": 3, "count": 5},
                 {"low": 4, "high": 7, "count": 0}, {"low": 8, "high": 15, "count": 1}]


def test_a_bucket_that_is_not_a_log2_slot_is_refused():
    a = result(hist={"x": [{"low": 3, "high": 9, "count": 1}]})
    with pytest.raises(BadInput, match="not a log2 slot"):
        merge.merge([("a.json", a)])


@pytest.mark.parametrize("change, what", [
    ({"recipe": "tcplife"}, "recipe"),
    ({"catalog_version": "kit/v1+other"}, "catalog_version"),
    ({"kit_version": "9.9"}, "kit_version"),
    ({"requested_s": 10.0}, "requested_s"),
    ({"params": {"comm": "nginx"}}, "parameters differ"),
])
def test_results_that_do_not_add_up_are_an_error_naming_both_files(change, what):
    with pytest.raises(BadInput) as e:
        merge.merge([("hostA.json", result()), ("hostB.json", result(**change))])
    assert "hostA.json" in e.value.message and "hostB.json" in e.value.message and what in e.value.message


def test_host_local_parameters_may_differ():
    a = result(recipe="tcpretrans", params={"netns": 4026531840, "port": 443})
    b = result(recipe="tcpretrans", params={"netns": 4026532999, "port": 443})
    assert merge.merge([("a.json", a), ("b.json", b)])["params"] == {"port": 443}


def test_the_same_host_twice_is_an_error():
    with pytest.raises(BadInput, match="both host 'x'"):
        merge.merge([("one/x.json", result()), ("two/x.json", result())])


def test_a_fleet_run_output_keeps_the_hosts_without_a_result():
    doc = {"kind": merge.FLEET_KIND, "hosts": [
        {"host": "h1", "status": "ok", "code": 0, "result": result(rows=[sys_row("read", 3, 1.0, 5)])},
        {"host": "h2", "status": "refused", "code": 4, "reason": "syscalls would cost more than its budget"},
        {"host": "h3", "status": "unreachable", "code": None, "reason": "ssh: connect: Connection refused"}]}
    m = merge.merge([("fleet.json", doc)])
    assert [r["host"] for r in m["rows"]] == ["h1"]
    assert [(f["host"], f["status"]) for f in m["failed_hosts"]] == [("h2", "refused"), ("h3", "unreachable")]


def test_folded_stacks_merge_and_by_host_puts_the_host_at_the_root():
    row = {"pid": 1, "tid": 1, "comm": "pay-svc", "kernel_stack": ["schedule", "do_nanosleep"],
           "user_stack": ["usleep", "main"], "total_us": 100, "count": 1}
    a = result(recipe="offcpu", rows=[row], stack_value="total_us")
    b = result(recipe="offcpu", rows=[dict(row, total_us=50, pid=9)], stack_value="total_us")
    m = merge.merge([("a.json", a), ("b.json", b)])
    assert merge.folded_lines(m) == ["pay-svc;main;usleep;do_nanosleep;schedule 150"]
    assert merge.folded_lines(m, by_host=True) == ["a;pay-svc;main;usleep;do_nanosleep;schedule 100",
                                                   "b;pay-svc;main;usleep;do_nanosleep;schedule 50"]
    assert stacks.folded_lines([row]) == ["pay-svc;main;usleep;do_nanosleep;schedule 100"]  # unchanged alone


def test_merged_folded_output_keeps_stdout_pure_and_says_losses_and_missing_hosts_on_stderr():
    import argparse
    import io
    from kit import fleet
    row = {"pid": 1, "tid": 1, "comm": "pay-svc", "kernel_stack": ["schedule"], "user_stack": ["main"],
           "total_us": 100, "count": 1}
    a = result(recipe="offcpu", rows=[row], stack_value="total_us", lost_events=3,
               lost={"map_full": 0, "stack_lost": 3, "buffer": 0, "other": 0})
    doc = {"kind": merge.FLEET_KIND, "hosts": [{"host": "a", "status": "ok", "code": 0, "result": a},
                                 {"host": "b", "status": "refused", "code": 4, "reason": "hot path"}]}
    m = merge.merge([("fleet.json", doc)])
    out, err = io.StringIO(), io.StringIO()
    fleet.emit(m, argparse.Namespace(folded=True, json=False, by_host=False), None, out, err)
    assert out.getvalue() == "pay-svc;main;schedule 100\n"
    assert "3 events were lost" in err.getvalue() and "host b gave no result: refused" in err.getvalue()



def test_profile_samples_and_runqlat_waits_add_up_across_hosts():
    row = {"pid": 1, "tid": 1, "comm": "api", "samples": 40, "kernel_stack": [], "user_stack": ["hot", "main"]}
    a = result(recipe="profile", rows=[row], stack_value="samples")
    b = result(recipe="profile", rows=[dict(row, samples=10, pid=9, tid=9)], stack_value="samples")
    m = merge.merge([("a.json", a), ("b.json", b)])
    assert [(r["samples"], r["hosts"]) for r in m["summed"]] == [(50, ["a", "b"])]
    assert m["totals"]["samples"] == 50 and merge.folded_lines(m) == ["api;main;hot 50"]
    # runqlat's rows carry their worst wait's circumstances (who had the CPU, which CPU): part of the key
    wait = {"pid": 1, "tid": 2, "comm": "api", "waits": 7, "avg_us": 30.0, "max_us": 900.0, "ran_instead": "batch",
            "ran_instead_pid": 77, "cpu": 0}
    a = result(recipe="runqlat", rows=[wait])
    b = result(recipe="runqlat", rows=[dict(wait, waits=3, max_us=4000.0, pid=5, tid=6)])
    m = merge.merge([("a.json", a), ("b.json", b)])
    assert [(r["waits"], r["max_us"]) for r in m["summed"]] == [(10, 4000.0)]
    assert (m["totals"]["waits"], m["totals"]["max_us"]) == (10, 4000.0)

def test_kit_merge_command_writes_json_and_svg(tmp_path):
    row = {"pid": 1, "tid": 1, "comm": "pay-svc", "kernel_stack": ["schedule"], "user_stack": ["main"],
           "total_us": 100, "count": 1}
    files = []
    for h in ("web1", "web2"):
        p = tmp_path / f"{h}.json"
        p.write_text(json.dumps(result(recipe="offcpu", rows=[row], stack_value="total_us")))
        files.append(str(p))
    import io
    out, err = io.StringIO(), io.StringIO()
    svg = tmp_path / "fleet.svg"
    assert cli.main(["merge", "--json", "--by-host", "--svg", str(svg)] + files, out, err) == ExitCode.OK
    assert json.loads(out.getvalue())["totals"]["total_us"] == 200
    assert ">web1<" in svg.read_text() and ">web2<" in svg.read_text()


def test_kit_merge_of_different_recipes_exits_bad_input_naming_the_files(tmp_path):
    import io
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result()))
    b.write_text(json.dumps(result(recipe="tcplife")))
    err = io.StringIO()
    assert cli.main(["merge", str(a), str(b)], io.StringIO(), err) == ExitCode.BAD_INPUT
    assert str(a) in err.getvalue() and str(b) in err.getvalue()


def test_merge_human_text_puts_top_hosts_and_missing_hosts_first():
    import io
    doc = {"kind": merge.FLEET_KIND, "hosts": [
        {"host": "h1", "status": "ok", "code": 0, "result": result(rows=[sys_row("read", 3, 1.0, 5)])},
        {"host": "h2", "status": "ok", "code": 0, "result": result(rows=[sys_row("read", 9, 1.0, 5)])},
        {"host": "h3", "status": "unreachable", "code": None, "reason": "Connection refused"}]}
    out = io.StringIO()
    merge.human(merge.merge([("fleet.json", doc)]), out)
    text = out.getvalue().splitlines()
    assert text[0].startswith("syscalls on 2 hosts, 1 without a result")
    assert any(line.startswith("top hosts by count: h2 9, h1 3") for line in text[:6])
    assert any(line == "host h3: unreachable: Connection refused" for line in text)
