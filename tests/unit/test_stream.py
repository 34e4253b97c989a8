"""The stream engine's pure logic (kit/engine/stream.py, kit/output/__init__.py's stream lines): the catalog's stream
entries, decoding a record by the catalog's fields, the per-second cap and the tallies, the lines, the
cgroup limit lookup, and the hints computed from a summary. The records are ctypes structures laid
out as the templates send them: the engine's input, not a kernel."""

import ctypes
import io
import json
import os

import pytest

from kit import catalog, output
from kit.engine import stream
from kit.engine.contract import Context
from kit.errors import CatalogError

SHIPPED = catalog.load()
EXECSNOOP = SHIPPED["execsnoop"]


class ExecEvent(ctypes.Structure):
    """struct event of probes/execsnoop.c, as BCC would parse it."""
    _fields_ = [("ts_ns", ctypes.c_ulonglong), ("run_ns", ctypes.c_ulonglong), ("cgroup", ctypes.c_ulonglong),
                ("kind", ctypes.c_uint), ("pid", ctypes.c_uint), ("ppid", ctypes.c_uint), ("uid", ctypes.c_uint),
                ("exit_status", ctypes.c_uint), ("before_run", ctypes.c_uint), ("args_len", ctypes.c_uint),
                ("args_cut", ctypes.c_uint), ("comm", ctypes.c_ubyte * 16), ("pcomm", ctypes.c_ubyte * 16),
                ("filename", ctypes.c_ubyte * 256), ("args", ctypes.c_ubyte * 4096)]


def _set(arr, data):
    ctypes.memmove(arr, data, len(data))


def exec_event(pid, comm, argv, pcomm=b"cron", ppid=1, cut=0):
    e = ExecEvent(kind=0, pid=pid, ppid=ppid, ts_ns=5_000_000_000)
    raw = b"".join(a + b"\0" for a in argv)
    _set(e.comm, comm)
    _set(e.pcomm, pcomm)
    _set(e.filename, b"/bin/" + comm)
    _set(e.args, raw)
    e.args_len, e.args_cut = len(raw) - (1 if cut else 0), cut
    return e


def exit_event(pid, comm, status, run_ns=2_500_000, pcomm=b"cron"):
    e = ExecEvent(kind=1, pid=pid, ppid=1, exit_status=status, run_ns=run_ns, ts_ns=6_000_000_000)
    _set(e.comm, comm)
    _set(e.pcomm, pcomm)
    return e


class Table:
    """What BCC's table object offers the engine: a way to register the callback."""

    def open_ring_buffer(self, cb):
        self.cb = cb

    def open_perf_buffer(self, cb, page_cnt, lost_cb, wakeup_events=1):
        self.cb, self.pages = cb, page_cnt


class Opts:
    def __init__(self, json=False, limit=None):
        self.json, self.limit = json, limit


def streamer(recipe=EXECSNOOP, json_out=False, limit=None, ring=1, values=None):
    ctx = Context(recipe=recipe, hook=recipe.hooks[0], values=values or {}, extra={"kit_ringbuf": ring})
    out, err = io.StringIO(), io.StringIO()
    t = Table()
    s = stream.Streamer(ctx, {recipe.stream.buffer: t}, Opts(json_out, limit), out=out, err=err,
                        clock=lambda: 100.0, wall=lambda: 1_000_000.0, event_type=ExecEvent)
    return s, out, err, t


# ---- the catalog ---------------------------------------------------------------

BASE = """\
apiVersion: kit/v1
kind: RecipeCatalog
recipes:
  - name: execsnoop
    summary: s
    example: kit run execsnoop
    hooks:
      - {type: tracepoint, target: "sched:sched_process_exec"}
    duration: {default: 20s, max: 10m}
    guard: {hot_path: false, cost_class: tracepoint_output, scope_required: false}
    runbook: r
"""
STREAM = """\
    output: stream
    stream: {buffer: events, kind: event, group: [comm]}
    fields:
      - {name: event, from: event.kind, values: [exec, exit], help: h}
      - {name: comm, from: event.comm, help: h}
      - {name: argv, from: event.args, len: event.args_len, decode: strings, kinds: [exec], help: h}
"""


def parse(extra):
    return catalog.parse(BASE + extra, "cat.yaml", probes_dir=catalog.PROBES_DIR)["execsnoop"]


def test_a_stream_recipe_declares_its_buffer_kinds_and_fields_in_the_catalog():
    r = parse(STREAM)
    assert r.output == "stream" and r.stream.buffer == "events" and r.stream.kind == "event"
    assert r.stream.limit == 1000 and r.stream.pages == 64
    argv = r.fields[2]
    assert (argv.source, argv.length, argv.decode, argv.kinds) == ("event.args", "event.args_len", "strings", ("exec",))


@pytest.mark.parametrize("bad, says", [
    (STREAM.replace("    stream: {buffer: events, kind: event, group: [comm]}\n", ""), "needs stream:"),
    (STREAM.replace("from: event.comm", "from: key.comm"), "must be event.MEMBER"),
    (STREAM.replace("kinds: [exec]", "kinds: [fork]"), "kind 'fork' is not one of the stream's kinds"),
    (STREAM.replace("group: [comm]", "group: [nope]"), "names no field"),
    (STREAM.replace("{buffer: events,", "{buffer: events, pages: 48,"), "power of 2"),
    (STREAM.replace("{buffer: events,", "{buffer: 'ev ents',"), "not a C identifier"),
    (STREAM.replace("decode: strings", "decode: shell"), "unknown decode"),
    (STREAM.replace("kind: event,", "kind: comm,"), "must name a field with values"),
])
def test_bad_stream_entries_name_the_line_and_what_is_wrong(bad, says):
    with pytest.raises(CatalogError) as e:
        parse(bad)
    assert says in e.value.message and "cat.yaml:" in e.value.message


def test_stream_field_keys_belong_to_stream_fields_only():
    with pytest.raises(CatalogError, match="unknown key 'values'"):
        parse(STREAM.replace("output: stream", "output: table").replace("event.", "key.")
              .replace("    stream: {buffer: events, kind: event, group: [comm]}\n", "    table: {map: m}\n"))


TABLE = ("    output: table\n    table: {map: m}\n"
         "    fields:\n      - {name: comm, from: key.comm, help: h}\n")
FORM = ("    stream:\n      buffer: events\n      cost_class: tracepoint_pair_output\n      group: [comm]\n"
        "      fields:\n        - {name: comm, from: event.comm, width: 16, help: h}\n"
        "        - {name: cut, from: event.cut, show: nonzero, help: h}\n")


def test_a_table_recipe_with_stream_fields_also_runs_as_a_stream_priced_by_its_own_class():
    r = parse(TABLE + FORM)
    assert r.output == "table" and r.stream is None and r.form == ""
    f = r.stream_form
    assert f.output == "stream" and f.form == "stream" and f.name == r.name and f.params is r.params
    assert [x.name for x in f.fields] == ["comm", "cut"] and f.stream.buffer == "events" and f.table is None
    assert f.guard.cost_class == "tracepoint_pair_output" and r.guard.cost_class == "tracepoint_output"
    assert parse(TABLE + FORM.replace("      cost_class: tracepoint_pair_output\n", "")).stream_form.guard \
        .cost_class == "tracepoint_output"  # without one, the table's


@pytest.mark.parametrize("bad, says", [
    (TABLE + "    stream: {buffer: events}\n", "needs fields: of its own"),
    (TABLE + FORM.replace("event.comm", "key.comm"), "must be event.MEMBER"),
    (TABLE + FORM.replace("tracepoint_pair_output", "tracepoint_nope"), "unknown cost_class 'tracepoint_nope'"),
    (TABLE.replace("output: table\n    table: {map: m}", "output: histograms") + FORM, "and to table recipes"),
])
def test_a_bad_stream_form_names_its_line(bad, says):
    with pytest.raises(CatalogError) as e:
        parse(bad)
    assert says in e.value.message and "cat.yaml:" in e.value.message


def test_shipped_stream_recipes_use_both_buffer_integers_in_their_templates():
    for name in ("execsnoop", "oomkill", "opensnoop"):
        text = open(SHIPPED[name].template_path).read()
        assert "{{kit_ringbuf}}" in text and "{{kit_stream_pages}}" in text
        assert "BPF_RINGBUF_OUTPUT" in text and "BPF_PERF_OUTPUT" in text
    assert "{{kit_stream}}" in open(SHIPPED["opensnoop"].template_path).read()  # the one with two forms


# ---- which buffer ------------------------------------------------------------------

@pytest.mark.parametrize("release, ok", [("6.18.0-kit", True), ("5.8.0", True), ("5.7.19", False),
                                         ("4.19.0-23-amd64", False), ("junk", False)])
def test_ring_buffer_by_kernel_version_when_the_kernel_cannot_be_asked(release, ok):
    assert stream._kernel_at_least(5, 8, release) is ok


# ---- one record, by the catalog's fields ----------------------------------------------

def test_argv_is_exact_with_empty_and_spaced_arguments():
    s, *_ = streamer()
    v = s.handle(exec_event(42, b"echo", [b"/bin/echo", b"", b"a b", b"c"]), now=100.0)
    assert v["argv"] == ["/bin/echo", "", "a b", "c"] and v["argv_cut"] == 0
    assert v["event"] == "exec" and v["comm"] == "echo" and v["pcomm"] == "cron" and v["filename"] == "/bin/echo"
    assert "exit_code" not in v and "run_ms" not in v  # exit fields belong to exits


def test_a_cut_argv_keeps_its_partial_last_argument_and_says_how_much_is_missing():
    s, *_ = streamer()
    v = s.handle(exec_event(42, b"echo", [b"/bin/echo", b"abcdef"], cut=900), now=100.0)
    assert v["argv"] == ["/bin/echo", "abcdef"] and v["argv_cut"] == 900


@pytest.mark.parametrize("status, code, sig", [(0, 0, None), (3 << 8, 3, None), (255 << 8, 255, None),
                                               (9, None, "SIGKILL"), (0x80 | 11, None, "SIGSEGV (core dumped)")])
def test_exit_status_decodes_as_waitpid_would(status, code, sig):
    s, *_ = streamer()
    v = s.handle(exit_event(7, b"sh", status), now=100.0)
    assert (v["exit_code"], v["signal"]) == (code, sig)
    assert v["run_ms"] == 2.5 and "argv" not in v


def test_time_is_the_kernel_clock_turned_into_wall_clock():
    s, *_ = streamer()  # monotonic 100 s is wall 1_000_000 s; the event happened at monotonic 5 s
    v = s.handle(exit_event(7, b"sh", 0), now=100.0)
    import datetime
    assert datetime.datetime.fromisoformat(v["time"]).timestamp() == pytest.approx(1_000_000 - 100 + 6, abs=0.001)


# ---- the cap and the tallies ---------------------------------------------------------

def test_events_over_the_limit_are_counted_and_tallied_but_not_shown():
    s, out, err, _ = streamer(json_out=True, limit=3)
    for i in range(10):
        s.handle(exit_event(i, b"false" if i % 2 else b"true", (1 << 8) if i % 2 else 0), now=100.2)
    for i in range(2):
        s.handle(exit_event(100 + i, b"true", 0), now=101.5)  # the next second shows again
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 5 and all(x["type"] == "event" for x in lines)
    assert (s.received, s.shown, s.capped) == (12, 5, 7)
    assert "7 events over the limit of 3/s not shown" in err.getvalue()
    summ = s.summary({"events": 12, "buffer_lost": 0})
    assert summ["stream"]["received"] == 12 and summ["stream"]["capped"] == 7
    by = {r["comm"]: r for r in summ["groups"]["comm"]}
    assert by["true"]["events"] == 7 and by["false"]["events"] == 5 and by["false"]["failed"] == 5
    assert summ["stream"]["failed"] == 5 and summ["stream"]["by_kind"] == {"exit": 12}
    assert any("7 events over the limit" in n for n in summ["notes"])


def test_limit_zero_shows_everything():
    s, out, _, _ = streamer(json_out=True, limit=0)
    for i in range(2500):
        s.handle(exit_event(i, b"true", 0), now=100.0)
    assert s.shown == 2500 and s.capped == 0 and len(out.getvalue().splitlines()) == 2500


def test_events_the_kernel_sent_that_never_arrived_are_said():
    s, *_ = streamer()
    s.handle(exit_event(1, b"true", 0), now=100.0)
    assert any("never arrived" in n for n in s.summary({"events": 3, "buffer_lost": 2})["notes"])


def test_a_record_that_cannot_be_decoded_is_counted_not_raised():
    s, *_ = streamer()

    def broken(ev):
        raise ValueError("a member BCC laid out differently")
    s.handle = broken
    e = exit_event(1, b"true", 0)
    s._record(ctypes.addressof(e), ctypes.sizeof(e))  # inside a buffer callback: must not raise
    assert s.errors == 1
    assert any("could not be decoded" in n for n in s.summary({"events": 0})["notes"])


def test_a_closed_reader_ends_the_stream():
    class Closed(io.StringIO):
        def write(self, _):
            raise BrokenPipeError

    s, *_ = streamer(json_out=True)
    s.out = Closed()
    e = exit_event(1, b"true", 0)
    s._record(ctypes.addressof(e), ctypes.sizeof(e))
    assert s.stopped == "output_closed"


def test_the_perf_buffer_is_opened_with_the_catalogs_pages_per_cpu():
    s, _, _, table = streamer(ring=0)
    assert s.kind == "perf buffer" and table.pages == EXECSNOOP.stream.pages


# ---- the lines ------------------------------------------------------------------------

def test_human_lines_are_columns_then_this_kinds_details_shell_quoted_and_escaped():
    s, out, _, _ = streamer()
    s.handle(exec_event(42, b"ec\x1b[2Jho", [b"/bin/echo", b"a b", b"\x1b]0;x\x07"]), now=100.0)
    s.handle(exit_event(42, b"echo", 3 << 8), now=100.0)
    head, first, second = out.getvalue().splitlines()
    assert head.split()[:6] == ["time", "event", "pid", "ppid", "comm", "pcomm"]
    assert "\x1b" not in first and "\x07" not in first
    assert "argv=/bin/echo 'a b'" in first and "argv_cut" not in first  # 0 is not shown
    assert second.split()[1:3] == ["exit", "42"] and "exit_code=3" in second and "run_ms=2.5" in second
    assert "signal" not in second and "uid" not in second and "cgroup" not in second  # none, json only


def test_the_summary_text_has_drops_groups_and_hints():
    result = {"stream": {"received": 3, "buffer": "ring buffer", "lost_in_kernel": 2, "capped": 1, "limit": 10,
                         "failed": 1, "by_kind": {"exec": 2, "exit": 1}},
              "groups": {"comm": [{"comm": "sh", "events": 3, "exec": 2, "exit": 1, "failed": 1}]},
              "hints": [{"text": "look", "command": "kit run syscalls --comm sh"}]}
    text = output.stream_summary(result, EXECSNOOP)
    assert "3 events via the ring buffer (exec 2, exit 1) | 2 dropped in the kernel | 1 over the 10/s" in text
    assert "by comm:" in text and "look: kit run syscalls --comm sh" in text


# ---- cgroups ---------------------------------------------------------------------------

def _tree(tmp_path, limits):
    for rel, v in limits.items():
        d = tmp_path / rel if rel else tmp_path
        d.mkdir(parents=True, exist_ok=True)
        if v is not None:
            (d / "memory.max").write_text(f"{v}\n")
    return stream.Cgroups(str(tmp_path))


def test_the_limit_is_the_nearest_limited_cgroup_at_or_above(tmp_path):
    cg = _tree(tmp_path, {"": None, "svc": 33554432, "svc/job": "max", "svc/job/step": "max", "free": "max"})
    step = os.stat(tmp_path / "svc/job/step").st_ino
    assert cg.path(step) == "/svc/job/step"
    assert cg.limit(step) == ("/svc", 33554432)
    assert cg.limit(os.stat(tmp_path / "free").st_ino) is None
    assert cg.path(123456789) is None  # an id no directory has


def test_v1_unlimited_is_no_limit(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "memory.limit_in_bytes").write_text("1048576\n")
    cg = stream.Cgroups(str(tmp_path))
    assert cg.limit(os.stat(tmp_path / "a").st_ino) == ("/", 1048576)


def test_memory_root_is_v2_when_memory_is_enabled_there_else_v1s_memory_hierarchy(tmp_path):
    v2 = tmp_path / "unified"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu io pids\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n"
                    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")
    assert stream.memory_root(str(info)) == "/sys/fs/cgroup/memory"
    (v2 / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert stream.memory_root(str(info)) == str(v2)


# ---- hints -------------------------------------------------------------------------------

def test_execsnoop_hints_name_the_failing_command_and_the_busiest_parent():
    from kit.recipes import execsnoop
    ctx = Context(recipe=EXECSNOOP, hook=EXECSNOOP.hooks[0], values={})
    hints = execsnoop.hints(ctx, {"received": 9}, {
        "comm": [{"comm": "curl", "events": 6, "exec": 3, "exit": 3, "failed": 3}, {"comm": "ls", "events": 2}],
        "pcomm": [{"pcomm": "cron", "events": 8, "exec": 4}]})
    cmds = [h["command"] for h in hints]
    assert "kit run syscalls --comm curl --for 30s" in cmds and "kit run execsnoop --comm cron" in cmds
    assert execsnoop.hints(ctx, {"received": 0}, {})[0]["command"] == "kit run execsnoop --for 60s"


def test_oomkill_hints_read_the_limited_cgroup_or_the_kernel_log():
    from kit.recipes import oomkill
    hints = oomkill.hints({"received": 2}, {"limit": [{"limit": "/app", "events": 1}, {"limit": None, "events": 1}]})
    assert "/app/memory.stat" in hints[0]["command"] and "reached its limit" in hints[0]["text"]
    assert "invoked oom-killer" in hints[1]["command"]
    assert "kit run oomkill --for 30m" in oomkill.hints({"received": 0}, {})[0]["command"]


# ---- opensnoop --stream -------------------------------------------------------------------

OPENSNOOP = SHIPPED["opensnoop"].stream_form


class OpenEvent(ctypes.Structure):
    """struct event of probes/opensnoop.c (KIT_STREAM), as BCC would parse it."""
    _fields_ = [("ts_ns", ctypes.c_ulonglong), ("flags", ctypes.c_ulonglong), ("tgid", ctypes.c_uint),
                ("tid", ctypes.c_uint), ("fd", ctypes.c_int), ("err", ctypes.c_uint), ("cut", ctypes.c_uint),
                ("call", ctypes.c_uint), ("comm", ctypes.c_ubyte * 16), ("path", ctypes.c_ubyte * 256)]


def open_streamer(**kw):
    ctx = Context(recipe=OPENSNOOP, hook=OPENSNOOP.hooks[0], values={}, extra={"kit_ringbuf": 1})
    out, err = io.StringIO(), io.StringIO()
    s = stream.Streamer(ctx, {"events": Table()}, Opts(**kw), out=out, err=err, clock=lambda: 100.0,
                        wall=lambda: 1_000_000.0, event_type=OpenEvent)
    return s, out


def open_event(path, fd=3, err=0, flags=os.O_RDONLY | os.O_CLOEXEC, cut=0):
    e = OpenEvent(ts_ns=5_000_000_000, flags=flags, tgid=7, tid=8, fd=fd, err=err, cut=cut, call=0)
    _set(e.comm, b"nginx")
    _set(e.path, path)
    return e


@pytest.mark.parametrize("flags, text", [
    (os.O_RDONLY | os.O_CLOEXEC, "O_RDONLY|O_CLOEXEC"),
    (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "O_WRONLY|O_CREAT|O_TRUNC"),
    (os.O_RDWR | os.O_SYNC, "O_RDWR|O_SYNC"),            # O_SYNC holds O_DSYNC's bit: one name, as strace says
    (os.O_RDWR | os.O_TMPFILE, "O_RDWR|O_TMPFILE"),      # and O_TMPFILE O_DIRECTORY's
    (os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, "O_RDONLY|O_DIRECTORY|O_NOFOLLOW"),
    (os.O_RDONLY | 1 << 30, "O_RDONLY|0x40000000"),      # a bit without a name is kept, in hex
])
def test_open_flags_decode_by_name_and_keep_unknown_bits(flags, text):
    assert stream.DECODERS["open_flags"](flags, None) == text


def test_an_open_line_has_its_result_flags_and_path_and_marks_a_cut_path():
    s, out = open_streamer()
    s.handle(open_event(b"/etc/nginx/nginx.conf"), now=100.0)
    s.handle(open_event(b"/x/" + b"d" * 252, fd=-1, err=2, cut=1), now=100.0)
    head, ok, cut = out.getvalue().splitlines()
    assert head.split() == ["time", "pid", "comm", "fd", "error", "flags", "path", "details"]
    assert ok.split()[1:] == ["7", "nginx", "3", "O_RDONLY|O_CLOEXEC", "/etc/nginx/nginx.conf"]
    assert cut.split()[1:6] == ["7", "nginx", "-1", "ENOENT", "O_RDONLY|O_CLOEXEC"] and cut.endswith(" cut=1")
    summary = s.summary({"events": 2})["stream"]
    assert summary["failed"] == 1 and summary["nonzero"] == {"cut": 1}


def test_an_open_as_json_has_every_field():
    s, out = open_streamer(json=True)
    s.handle(open_event(b"/etc/hosts"), now=100.0)
    e = json.loads(out.getvalue())
    assert {k: e[k] for k in ("pid", "tid", "comm", "fd", "error", "flags", "path", "cut", "call")} == {
        "pid": 7, "tid": 8, "comm": "nginx", "fd": 3, "error": "", "flags": "O_RDONLY|O_CLOEXEC", "path": "/etc/hosts",
        "cut": 0, "call": "openat"}
