"""biolatency on the real kernel: O_DIRECT I/O of known count and size on a loop device the test
creates, against the workload's own counts and the device's own counters (/sys/block/loopN/stat)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ACCURACY_BUDGET, ROOT, KitProc
from kit.engine import prelude

pytestmark = [pytest.mark.kernel]

WRITES, READS, BLOCK = 120, 80, 8192
WORKLOAD = os.path.join(ROOT, "tests", "support", "workloads", "dio.py")


@pytest.fixture
def loopdev(tmp_path):
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def device_stat(dev):
    """(reads completed, writes completed, flushes completed) from the block layer's own counters."""
    with open(f"/sys/block/{os.path.basename(dev)}/stat") as f:
        v = [int(x) for x in f.read().split()]
    return {"read": v[0], "write": v[4], "flush": v[15] if len(v) > 15 else 0}


class Dio:
    def __init__(self, dev):
        self.p = subprocess.Popen([sys.executable, WORKLOAD, dev, str(WRITES), str(READS), str(BLOCK)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"
        self.pid = self.p.pid

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line.startswith("done "), line
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        self.p.wait(timeout=30)
        return json.loads(line[5:])


def _run(dev, *scope):
    w = Dio(dev)
    before = device_stat(dev)
    kit = KitProc("run", "biolatency", "--disk", os.path.basename(dev), *scope, "--for", "60s", "--json",
                  *ACCURACY_BUDGET)
    kit.wait_attached()
    done = w.go()
    after = device_stat(dev)
    kit.stop()
    assert kit.code in (0, 130), kit.stderr
    return kit.json(), done, {k: after[k] - before[k] for k in after}, w


def _by_op(rows, pid=None):
    out = {}
    for r in rows:
        if pid is None or r["pid"] == pid:
            o = out.setdefault(r["op"], {"count": 0, "bytes": 0})
            o["count"] += r["count"]
            o["bytes"] += r["bytes"]
    return out


def test_counts_per_operation_equal_the_devices_own_counters_and_the_workloads(loopdev, no_leftovers):
    res, done, dev_delta, w = _run(loopdev)
    assert done["writes"] == WRITES and done["reads"] == READS
    ops = _by_op(res["rows"])
    # everything the device completed during the run, from every issuer, is counted: nothing invented
    assert ops.get("read", {}).get("count", 0) == dev_delta["read"], (ops, dev_delta)
    assert ops.get("write", {}).get("count", 0) == dev_delta["write"], (ops, dev_delta)
    mine = _by_op(res["rows"], w.pid)
    assert mine["write"] == {"count": WRITES, "bytes": done["bytes_written"]}
    assert mine["read"] == {"count": READS, "bytes": done["bytes_read"]}
    assert {r["disk"] for r in res["rows"]} == {os.path.basename(loopdev)}
    # one histogram per (disk, operation), holding every request counted
    hist = res["histograms"]
    name = os.path.basename(loopdev)
    assert sum(b["count"] for b in hist[f"latency_us disk={name} op=write"]) == ops["write"]["count"]
    assert sum(b["count"] for b in hist[f"latency_us disk={name} op=read"]) == ops["read"]["count"]
    assert res["events"] == dev_delta["read"] + dev_delta["write"] + dev_delta["flush"]




def test_scoped_to_the_workloads_pid_it_sees_exactly_its_requests(loopdev, no_leftovers):
    w = Dio(loopdev)
    kit = KitProc("run", "biolatency", "--disk", os.path.basename(loopdev), "--pid", str(w.pid), "--for", "60s",
                  "--json", *ACCURACY_BUDGET)
    kit.wait_attached()
    noise = subprocess.run(["dd", f"if={loopdev}", "of=/dev/null", "bs=4096", "count=30", "iflag=direct",
                            "status=none"], check=True)
    assert noise.returncode == 0
    done = w.go()
    kit.finish()  # the target exits: kit ends by itself
    assert kit.code == 0, kit.stderr
    res = kit.json()
    assert _by_op(res["rows"]) == {"write": {"count": WRITES, "bytes": done["bytes_written"]},
                                   "read": {"count": READS, "bytes": done["bytes_read"]}}
    assert {r["pid"] for r in res["rows"]} == {w.pid}
    assert res["filtered"] >= 30  # dd's reads were seen and rejected in the kernel


def test_latency_lands_in_buckets_bounded_by_the_workloads_own_clock(loopdev, no_leftovers):
    res, done, _delta, w = _run(loopdev)
    name = os.path.basename(loopdev)
    total_us = done["seconds"] * 1e6
    for op in ("read", "write"):
        buckets = res["histograms"][f"latency_us disk={name} op={op}"]
        # no request can take longer than the whole I/O loop the workload timed
        assert max(b["low"] for b in buckets if b["count"]) <= total_us
        assert prelude.slot_of(0) == 0 and all(b["high"] >= b["low"] for b in buckets)
