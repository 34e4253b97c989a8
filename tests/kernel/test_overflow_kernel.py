"""Overflow is counted and shown, never silent: a test fills a map, a stack map and a
perf buffer on purpose and compares kit's loss counts with the workload's own counts.

Uses the test-only recipe `fillup` (tests/support/fixtures/catalog) rather than a hidden size
knob on a shipped recipe: the shipped recipes keep their behaviour and their
user-facing parameters, while fillup runs through the same engine (prelude
counters, read_stats, JSON and human output). tests/support/workloads/fill.c makes
THREADS threads of CALLS getppid each (one map key per thread), PAIRS getpgid
pairs from two call sites (two user stacks for a one-bucket stack map) and
EVENTS getsid (for a one-page perf buffer that kit drains only at the end).
"""

import re

import pytest

from harness import ShimProc, Workload
from workloads.build import build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

THREADS, CALLS, PAIRS, EVENTS, ENTRIES = 20, 5, 50, 2000, 8


@pytest.fixture(scope="module")
def fill_bin(tmp_path_factory):
    return build("fill", str(tmp_path_factory.mktemp("overflow")))


def _run(fill_bin, *out):
    w = Workload(fill_bin, str(THREADS), str(CALLS), str(PAIRS), str(EVENTS))
    try:
        kit = ShimProc("run", "fillup", "--pid", str(w.pid), "--entries", str(ENTRIES), "--for", "60s", *out)
        kit.wait_attached()
        assert w.go() == "done"
        kit.p.send_signal(2)
        kit.finish()
    finally:
        w.end()
    assert kit.code == 130, kit.stderr
    return kit


def test_full_map_lost_stacks_and_buffer_overflow_are_counted_exactly_in_json(kernel, no_leftovers, fill_bin):
    res = _run(fill_bin, "--json").json()
    lost = res["lost"]
    assert lost["map_full"] == (THREADS - ENTRIES) * CALLS      # every call of a thread that found the map full
    assert len(res["rows"]) == ENTRIES and all(r["calls"] == CALLS for r in res["rows"])
    assert lost["stack_lost"] == PAIRS                          # every capture of the second stack
    assert lost["buffer"] > 0 and res["received"] + lost["buffer"] == EVENTS
    assert lost["other"] == 0
    assert res["lost_events"] == sum(lost.values())
    assert res["events"] == ENTRIES * CALLS + PAIRS + res["received"]


def test_losses_are_shown_and_explained_in_human_output(kernel, no_leftovers, fill_bin):
    out = _run(fill_bin).stdout
    m = re.search(r"lost: (\d+) map full, (\d+) stacks, (\d+) buffer, (\d+) other", out)
    assert m, out
    map_full, stacks, buffer, other = map(int, m.groups())
    assert (map_full, stacks, other) == ((THREADS - ENTRIES) * CALLS, PAIRS, 0) and buffer > 0
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning and f"{map_full + stacks + buffer} events were lost" in warning[0]
    assert "a map was full" in warning[0] and "stack captures failed" in warning[0] and "buffer" in warning[0]
