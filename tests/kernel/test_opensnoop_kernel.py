"""opensnoop on the real kernel: a workload opens known files (present, missing, denied, and one behind a
path longer than kit keeps), and kit's per-path counts and errnos equal its own books and strace's."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ACCURACY_BUDGET, ROOT, KitProc

pytestmark = [pytest.mark.kernel]

WORKLOAD = os.path.join(ROOT, "tests", "support", "workloads", "opens.py")


@pytest.fixture
def tree():
    import pathlib
    import shutil
    import tempfile
    top = pathlib.Path(tempfile.mkdtemp(prefix="kit-opens-", dir="/tmp"))  # uid 65534 must reach it
    os.chmod(top, 0o755)
    try:
        yield _make(top)
    finally:
        shutil.rmtree(top)


def _make(tmp_path):
    d = tmp_path / "o"
    long_dir = d.joinpath(*(["d" * 60] * 5))
    long_dir.mkdir(parents=True)
    (long_dir / "deep").write_text("x")
    (d / "present").write_text("x")
    (d / "secret").write_text("x")
    os.chmod(d / "secret", 0o600)
    for p in [tmp_path, d] + [d.joinpath(*(["d" * 60] * i)) for i in range(1, 6)]:
        os.chmod(p, 0o755)
    os.chmod(d / "present", 0o644)
    os.chmod(long_dir / "deep", 0o644)
    return str(d)


def strace_counts(text):
    """{syscall: (calls, errors)} from strace -c's table."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s+(\w+)\s*$", line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def test_counts_and_errnos_per_path_equal_the_workloads_books_and_strace(kernel, no_leftovers, tree):
    w = subprocess.Popen([sys.executable, WORKLOAD, tree], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert w.stdout.readline().strip() == "ready"
    st = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=open,openat,openat2", "-p", str(w.pid)],
                          stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # strace attaches
    kit = KitProc("run", "opensnoop", "--pid", str(w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)
    kit.wait_attached()
    w.stdin.write("go\n")
    w.stdin.flush()
    line = w.stdout.readline()
    assert line.startswith("done "), line
    books = json.loads(line[5:])
    st.send_signal(signal.SIGINT)
    strace = strace_counts(st.communicate(timeout=30)[1])
    kit.stop()
    w.stdin.write("\n")
    w.stdin.flush()
    w.wait(timeout=10)
    assert kit.code == 130, kit.stderr
    res = kit.json()
    seen = {}
    for r in res["rows"]:
        assert r["pid"] == w.pid
        seen[f"{r['path']}|{r['error']}"] = seen.get(f"{r['path']}|{r['error']}", 0) + r["count"]
    long_key = next(k for k in books if "deep" in k)
    cut = [k for k in seen if k.endswith("...|" + long_key.split("|")[1])]
    assert len(cut) == 1 and long_key.startswith(cut[0].split("...|")[0]), (cut, long_key)
    assert [r["cut"] for r in res["rows"] if r["path"].endswith("...")] == [1]
    seen[long_key] = seen.pop(cut[0])
    assert seen == books
    assert {k.split("|")[1] for k in books} == {"", "ENOENT", "EACCES"}
    calls = sum(c for c, _e in strace.values())
    errors = sum(e for _c, e in strace.values())
    assert (calls, errors) == (sum(books.values()), sum(n for k, n in books.items() if k.split("|")[1]))


# ---- the stream form: kit run opensnoop --stream

STRACE_OPEN = re.compile(r'^(?:\[pid\s+\d+\]\s+|\d+\s+)?(open|openat|openat2)\((?:AT_FDCWD|-?\d+), "((?:[^"\\]|\\.)*)", '
                         r'([A-Z0-9_|x]+)(?:, \d+)?\) = (-?\d+)(?: (E\w+))?')


def strace_opens(path):
    """Every open strace saw, in order: (path, set of flag names, return value, errno name or "")."""
    out = []
    with open(path) as f:
        for line in f:
            m = STRACE_OPEN.match(line)
            if m:
                out.append((m.group(2), set(m.group(3).split("|")), int(m.group(4)), m.group(5) or ""))
    return out


class Opens:
    """The workload, strace on it (-f, every open with its whole path), and a kit run around its opens
    (kit_args: its arguments, given the workload's pid)."""

    def __init__(self, tree, tmp_path, kit_args, name=None, kit=KitProc):
        self.w = subprocess.Popen([sys.executable, WORKLOAD, tree, *([name] if name else [])], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.w.stdout.readline().strip() == "ready"
        self.strace_out = str(tmp_path / "strace.txt")
        self.st = subprocess.Popen(["strace", "-qq", "-f", "-s", "4096", "-e", "trace=open,openat,openat2", "-o",
                                    self.strace_out, "-p", str(self.w.pid)], stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # strace attaches
        self.kit = kit("run", "opensnoop", *kit_args(self.w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)

    def run(self):
        try:
            self.kit.wait_attached()
            self.w.stdin.write("go\n")
            self.w.stdin.flush()
            done, log = self.w.stdout.readline(), self.w.stdout.readline()
            assert done.startswith("done ") and log.startswith("log "), (done, log)
            self.st.send_signal(signal.SIGINT)
            self.st.wait(timeout=30)
            self.kit.stop()
        finally:
            for p in (self.st, self.kit.p):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.w.stdin.write("\n")
            self.w.stdin.flush()
            self.w.wait(timeout=10)
        assert self.kit.code == 130, self.kit.stderr
        return json.loads(done[5:]), json.loads(log[4:]), strace_opens(self.strace_out)

    def events(self):
        objs = [json.loads(line) for line in self.kit.stdout.splitlines() if line.startswith("{")]
        assert objs and objs[-1]["type"] == "summary", self.kit.stdout[-2000:]
        return [o for o in objs[:-1] if o["type"] == "event"], objs[-1]


def test_stream_shows_every_open_once_with_its_errno_fd_and_flags_as_the_workload_and_strace_saw_it(
        kernel, no_leftovers, tree, tmp_path):
    run = Opens(tree, tmp_path, lambda pid: ["--stream", "--pid", str(pid), "--limit", "0"])
    _books, log, strace = run.run()
    events, summary = run.events()
    assert summary["hook"] == "tracepoint syscalls:sys_enter_openat" and summary["stream"]["buffer"] == "ring buffer"
    # the oracles agree with each other: strace saw the workload's opens, in its order, with its results
    assert [(p, r if r < 0 else 0, e) for p, _f, r, e in strace] == \
        [(o["path"], -1 if o["error"] else 0, o["error"]) for o in log], strace
    # every open once, in order (one thread, one ring buffer), with its errno and descriptor
    assert all(e["pid"] == e["tid"] == run.w.pid and e["call"] == "openat" for e in events)
    kept = [(o["path"] if len(o["path"]) <= 255 else o["path"][:255], o["error"], o["fd"], int(len(o["path"]) > 255))
            for o in log]
    assert [(e["path"], e["error"], e["fd"], e["cut"]) for e in events] == kept
    # the flags as strace decoded them (Python's os.open adds O_CLOEXEC: strace shows what was passed)
    assert [set(e["flags"].split("|")) for e in events] == [f for _p, f, _r, _e in strace]
    assert {e["flags"] for e in events} >= {"O_RDONLY|O_CLOEXEC", "O_RDONLY|O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC",
                                           "O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC"}
    s = summary["stream"]
    assert s["received"] == summary["events"] == len(log) and s["lost_in_kernel"] == 0 and s["errors"] == 0
    assert s["failed"] == sum(1 for o in log if o["error"]) and s["nonzero"] == {"cut": 2}
    assert any("2 path(s) longer than 255 bytes were cut" in n for n in summary["notes"]), summary["notes"]
    by_path = {r["path"]: r for r in summary["groups"]["path"]}
    assert by_path[os.path.join(tree, "missing")] == {"path": os.path.join(tree, "missing"), "events": 6, "failed": 6}


class PerfBufferKit(KitProc):
    """kit as on a kernel without BPF ring buffers (the feature check patched): the perf buffer rung."""

    def __init__(self, *args):
        self.args = args
        code = ("import sys; from kit.engine import stream; stream.ringbuf_available = lambda: False; "
                "from kit import cli; sys.exit(cli.main(sys.argv[1:]))")
        self.p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.err_lines = []


def test_the_perf_buffer_gives_the_same_opens(kernel, no_leftovers, tree, tmp_path):
    run = Opens(tree, tmp_path, lambda pid: ["--stream", "--pid", str(pid), "--limit", "0"], kit=PerfBufferKit)
    _books, log, _strace = run.run()
    events, summary = run.events()
    assert summary["stream"]["buffer"] == "perf buffer" and summary["stream"]["lost_in_kernel"] == 0
    kept = sorted((o["path"][:255], o["error"], o["fd"]) for o in log)  # per-CPU buffers: order across CPUs may differ
    assert sorted((e["path"], e["error"], e["fd"]) for e in events) == kept


def test_failed_keeps_only_the_failed_opens_in_both_forms_under_a_comm_scope(kernel, no_leftovers, tree, tmp_path):
    name = f"kit-opens-{os.getpid() % 10000}"[:15]
    run = Opens(tree, tmp_path, lambda _pid: ["--stream", "--comm", name, "--failed", "--limit", "0"], name=name)
    _books, log, strace = run.run()
    events, summary = run.events()
    failed = [o for o in log if o["error"]]
    assert [(e["path"], e["error"], e["fd"]) for e in events] == [(o["path"], o["error"], -1) for o in failed]
    assert len(failed) == sum(1 for _p, _f, r, _e in strace if r < 0) == summary["stream"]["received"]
    assert {e["comm"] for e in events} == {name}
    assert summary["filtered"] >= len(log) - len(failed)  # the successful ones, dropped in the kernel

    run = Opens(tree, tmp_path, lambda _pid: ["--comm", name, "--failed"], name=name)
    books, log, _strace = run.run()
    res = run.kit.json()
    got = {(r["path"], r["error"]): r["count"] for r in res["rows"]}
    assert got == {tuple(k.split("|")): n for k, n in books.items() if k.split("|")[1]}
