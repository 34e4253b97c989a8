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

WORKLOAD = os.path.join(ROOT, "tests", "workloads", "opens.py")


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
