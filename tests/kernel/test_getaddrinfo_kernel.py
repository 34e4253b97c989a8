"""getaddrinfo on the real kernel: lookups per process and name against the
workload's own counts and bpftrace. Names resolve from /etc/hosts (or the
container's own), so no network is involved; failures use AI_NUMERICHOST."""

import os

import pytest

from workloads import lockwork

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return lockwork.build(str(tmp_path_factory.mktemp("gai")), f"gai{os.getpid() % 100000}")


def by_name(rows, pid):
    return {(r["function"], r["host"]): (r["count"], r["failed"]) for r in rows if r["pid"] == pid}


def test_counts_per_host_equal_the_workload_and_bpftrace_for_a_process_started_after_attach(
        kernel, no_leftovers, binary):
    comm = os.path.basename(binary)
    res, book, bt, w = lockwork.under_kit(
        ["getaddrinfo", "--comm", comm, "--for", "10s"],
        lambda: lockwork.Workload(binary, threads=3, fast=10, slow=0, slow_ms=1,
                                  lookups=["localhost:7", "vm:4", "vm:3:ghbn", "kit-no-such.invalid:2:fail"]),
        peer=f'uprobe:{LIBC}:getaddrinfo /comm == "{comm}"/ {{ @gai[str(arg0)] = count(); }} '
             f'uprobe:{LIBC}:gethostbyname /comm == "{comm}"/ {{ @ghbn[str(arg0)] = count(); }}')
    want = {}
    for job in book["lookups"]:
        count, failed = want.get((job["function"], job["name"]), (0, 0))
        want[(job["function"], job["name"])] = (count + job["count"], failed + job["failed"])
    assert want == {("getaddrinfo", "localhost"): (7, 0), ("getaddrinfo", "vm"): (4, 0),
                    ("gethostbyname", "vm"): (3, 0), ("getaddrinfo", "kit-no-such.invalid"): (2, 2)}
    assert by_name(res["rows"], w.pid) == want
    assert lockwork.bpftrace_counts(bt, "gai") == {"localhost": 7, "vm": 4, "kit-no-such.invalid": 2}
    assert lockwork.bpftrace_counts(bt, "ghbn") == {"vm": 3}
    assert sum(b["count"] for b in res["histograms"]["latency_us"]) == 16
    assert all(r["comm"] == comm for r in res["rows"] if r["pid"] == w.pid)
    assert res["lost_events"] == 0


def test_lookups_in_a_container_are_found_through_its_own_libc(kernel, no_leftovers, binary, tmp_path):
    root = lockwork.rootfs(str(tmp_path), binary, {"localhost": "127.0.0.1", "kit-db.internal": "10.9.8.7"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    w = lockwork.Workload(binary, threads=2, fast=0, slow=0, slow_ms=1, lookups=["kit-db.internal:5", "vm:2"],
                          gate=True, hold_gate=True, container=(root, str(mnt)))
    res, book, _, _ = lockwork.under_kit(["getaddrinfo", "--pid", str(w.pid), "--for", "6s"], w)
    # the container's hosts file knows kit-db.internal and not vm: its libc, not the host's, answered
    assert [(j["name"], j["count"], j["failed"]) for j in book["lookups"]] == [("kit-db.internal", 5, 0), ("vm", 2, 2)]
    assert by_name(res["rows"], w.pid) == {("getaddrinfo", "kit-db.internal"): (5, 0), ("getaddrinfo", "vm"): (2, 2)}
    assert {p["binary"] for p in res["uprobes"]} == {f"/lib/x86_64-linux-gnu/libc.so.6 (in the root of pid {w.pid})"}


def test_host_filter_counts_only_that_name_and_filters_the_rest_in_the_kernel(kernel, no_leftovers, binary):
    comm = os.path.basename(binary)
    res, _, _, w = lockwork.under_kit(
        ["getaddrinfo", "--comm", comm, "--host", "vm", "--for", "8s"],
        lambda: lockwork.Workload(binary, threads=2, fast=0, slow=0, slow_ms=1,
                                  lookups=["localhost:5", "vm:3", "vm:2:ghbn"]))
    assert by_name(res["rows"], w.pid) == {("getaddrinfo", "vm"): (3, 0), ("gethostbyname", "vm"): (2, 0)}
    assert res["filtered"] >= 5  # the localhost lookups, rejected in the kernel (plus other processes' calls)
