"""Next steps of biolatency, drops, tcplife and opensnoop on real runs of their own workloads: each hint's
claim is checked against the workload's own books or a kernel counter, every kit command it suggests
runs with --dry-run (exit 0) while its target lives, and the other tools' commands run for real.

Oracles kit did not produce: dio.py's requests and its own clock per call, the nftables rule's counter
and the namespace's TcpRetransSegs and TcpAttemptFails (nstat), conns.py's and searchpath.py's records,
the files' own modes (os.stat), the interpreter the test started, ss, namei and strace."""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

from conftest import ACCURACY_BUDGET, ROOT, KitProc
from kit.output import hints
from test_biolatency_kernel import loopdev  # noqa: F401 (a fixture)
from test_drops_kernel import _drop_and_count, rule_packets
from test_hints_kernel import dry_run_ok, kit_commands
from test_opensnoop_kernel import tree  # noqa: F401 (a fixture)
from test_tcplife_kernel import nstat
from workloads import retrans

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

WORKLOADS = os.path.join(ROOT, "tests", "support", "workloads")


def gated(*argv):
    p = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def say(p, line=""):
    p.stdin.write(line + "\n")
    p.stdin.flush()


def done_of(p):
    line = p.stdout.readline()
    assert line.startswith("done "), line
    return json.loads(line[5:])


def end(p):
    if p.poll() is None:
        try:
            say(p)
            say(p)
            p.wait(timeout=20)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()


# --- biolatency ------------------------------------------------------------------------------------

def test_biolatency_names_the_busiest_operation_its_issuer_and_whether_the_disk_is_slow(kernel, no_leftovers,
                                                                                         loopdev):  # noqa: F811
    name = os.path.basename(loopdev)
    w = gated(sys.executable, os.path.join(WORKLOADS, "dio.py"), loopdev, "120", "80", "8192")
    try:
        kit = KitProc("run", "biolatency", "--disk", name, "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        say(w, "go")
        done = done_of(w)
        res = kit.stop().json()
        assert kit.code == 130, kit.stderr
        for cmd in kit_commands(res):  # the issuer still lives: its pid is checked for real
            dry_run_ok(cmd)
    finally:
        end(w)
    first = res["hints"][0]
    m = re.match(rf"(read|write)s to {name}: (\d+) requests, \d+% of the device time \(avg ", first["text"])
    assert m, first
    op = m.group(1)
    mine = {"read": done["reads"], "write": done["writes"]}[op]
    # the issuer and its count are the workload's own: every one of its requests of that operation
    assert f"(pid {w.pid}) issued {mine} of them" in first["text"], first
    assert int(m.group(2)) >= mine
    rows = [r for r in res["rows"] if r["op"] == op and r["pid"] == w.pid]
    kit_max_us = max(r["max_us"] for r in rows)
    # a request's time on the device is inside the workload's own call: kit's numbers cannot exceed it
    assert kit_max_us <= done["max_us"][op] + 1000, (kit_max_us, done["max_us"])
    assert sum(r["total_ms"] for r in rows) <= done[f"{op}_seconds"] * 1000 + 1
    own_avg_us = done[f"{op}_seconds"] * 1e6 / mine
    slow = "slow for any disk" in first["text"]
    if slow:  # kit called it slow: the workload's own clock saw calls at least that slow
        assert done["max_us"][op] >= hints.SLOW_IO_MAX_US or own_avg_us >= hints.SLOW_IO_AVG_US, done
        assert [h["command"] for h in res["hints"]] == [f"kit run offcpu --pid {w.pid}",
                                                        f"kit run opensnoop --pid {w.pid}"]
    else:
        assert "the device answers fast, so the disk is not what is slow" in first["text"]
        assert [h["command"] for h in res["hints"]] == [f"kit run offcpu --pid {w.pid}"]
    if done["max_us"][op] < hints.SLOW_IO_MAX_US and own_avg_us < hints.SLOW_IO_AVG_US:
        assert not slow, (first, done)  # no call of the workload took that long, so no request did


# --- drops -----------------------------------------------------------------------------------------

def test_drops_a_firewall_drop_is_followed_to_the_ruleset_that_counted_it(kernel, no_leftovers):
    with retrans.netns(f"kit-dh-{os.getpid()}") as ns:
        res, dropped, sport = _drop_and_count(ns, "127.0.0.1", 5711, 30)
        cmds = [h["command"] for h in res["hints"]]
        listing = subprocess.run(shlex.split(cmds[0]), capture_output=True, text=True, timeout=30)
        assert rule_packets(ns) == dropped
    assert dropped == 30
    assert cmds == [f"ip netns exec {ns} nft list ruleset"], res["hints"]
    # the hint's count is the rule's own counter, and the listing it suggests shows that rule with it
    assert re.match(rf"NETFILTER_DROP is {dropped} of {dropped} drops, most of them udp 127\.0\.0\.1:{sport} -> "
                    rf"127\.0\.0\.1:5711 \({dropped}, in ", res["hints"][0]["text"]), res["hints"][0]
    assert listing.returncode == 0, listing.stderr
    assert re.search(rf"udp dport 5711 counter packets {dropped} bytes \d+ drop", listing.stdout), listing.stdout


def test_drops_of_a_tcp_flow_lead_to_tcpretrans_on_it_and_the_kernel_counted_its_retransmits(kernel, no_leftovers):
    seen = {}
    with retrans.netns(f"kit-dt-{os.getpid()}") as ns:
        kit = KitProc("run", "drops", "--netns", ns, "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()

        def hold(pid):
            seen["res"] = kit.stop().json()
            for cmd in kit_commands(seen["res"]):
                dry_run_ok(cmd)

        _cport, delta = retrans.provoke(ns, port=5712, hold=hold)
    res = seen["res"]
    flows = [r for r in res["rows"] if r["proto"] == "tcp" and r["dport"] == 5712 and r["reason"] == "NETFILTER_DROP"]
    assert flows and delta >= 1  # segments were dropped, and the kernel resent (TcpRetransSegs)
    cmds = [h["command"] for h in res["hints"]]
    assert cmds == [f"ip netns exec {ns} nft list ruleset",
                    f"kit run tcpretrans --port 5712 --addr 127.0.0.1 --netns {ns}"], res["hints"]
    assert "TCP sends a dropped segment again" in res["hints"][1]["text"]


# --- tcplife ---------------------------------------------------------------------------------------

def test_tcplife_refused_connects_and_one_connection_per_request_lead_to_ss_and_getaddrinfo(kernel, no_leftovers):
    n, refused = 6, 3
    with retrans.netns(f"kit-lh-{os.getpid()}") as ns:
        w = gated("ip", "netns", "exec", ns, sys.executable, os.path.join(WORKLOADS, "conns.py"), "127.0.0.1",
                  str(n), str(refused), "hold")
        try:
            before = nstat(ns)
            kit = KitProc("run", "tcplife", "--netns", ns, "--for", "60s", "--json", *ACCURACY_BUDGET)
            kit.wait_attached()
            say(w, "go")
            done = done_of(w)
            after = nstat(ns)
            res = kit.stop().json()
            assert kit.code == 130, kit.stderr
            cmds = [h["command"] for h in res["hints"]]
            for cmd in kit_commands(res):  # the client still lives
                dry_run_ok(cmd)
            ss_closed = subprocess.run(shlex.split(cmds[0]), capture_output=True, text=True, timeout=30)
            ss_open = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltn", f"sport = :{done['port']}"],
                                     capture_output=True, text=True, timeout=30)
        finally:
            end(w)
    assert done["refused"] == refused and after["TcpAttemptFails"] - before["TcpAttemptFails"] == refused
    assert cmds == [f"ip netns exec {ns} ss -ltn 'sport = :{done['closed_port']}'",
                    f"kit run getaddrinfo --pid {w.pid}"], res["hints"]
    assert re.search(rf"{refused} of {refused} connects by \S+ \(pid {w.pid}\) to 127\.0\.0\.1:{done['closed_port']} "
                     "failed within", res["hints"][0]["text"]), res["hints"][0]
    # the workload bound that port and never listened: ss there lists nothing, where its server port is listed
    assert ss_closed.returncode == 0 and len(ss_closed.stdout.strip().splitlines()) == 1, ss_closed.stdout
    assert f"127.0.0.1:{done['port']}" in ss_open.stdout
    # its connections, from its own records: how many, and the median of how long it held them
    m = re.search(rf"\(pid {w.pid}\) opened (\d+) connections to 127\.0\.0\.1:{done['port']} that lived a "
                  r"median (\d+) ms", res["hints"][1]["text"])
    assert m and int(m.group(1)) == len(done["conns"]) == n, res["hints"][1]
    held = sorted(c["hold_ms"] for c in done["conns"])[n // 2]
    measured = sorted(c["measured_ms"] for c in done["conns"])[n // 2]
    assert held - 1 <= int(m.group(2)) <= measured + 1, (m.group(2), held, measured)


SLOW_CLIENT = r"""
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
print(srv.getsockname()[1], flush=True)
sys.stdin.readline()
t0 = time.monotonic()
c = socket.create_connection(("127.0.0.1", srv.getsockname()[1]), timeout=10)
print((time.monotonic() - t0) * 1000, flush=True)
sys.stdin.readline()
"""


def test_tcplife_a_connect_slowed_by_a_lost_syn_leads_to_tcpretrans_on_that_remote(kernel, no_leftovers):
    with retrans.netns(f"kit-ls-{os.getpid()}") as ns:
        w = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SLOW_CLIENT], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            port = int(w.stdout.readline())
            nft = ("ip", "netns", "exec", ns, "nft")
            retrans.sh(*nft, "add", "table", "inet", "kit_s")
            retrans.sh(*nft, "add", "chain", "inet", "kit_s", "in", "{ type filter hook input priority 0; }")
            retrans.sh(*nft, "add", "rule", "inet", "kit_s", "in", "tcp", "dport", str(port), "tcp", "flags", "syn",
                       "counter", "drop")
            before = retrans.retrans_segs(ns)
            kit = KitProc("run", "tcplife", "--netns", ns, "--for", "60s", "--json", *ACCURACY_BUDGET)
            kit.wait_attached()
            say(w)
            timer = threading.Timer(0.4, retrans.sh, (*nft, "delete", "table", "inet", "kit_s"))
            timer.start()  # the first SYN is dropped; the kernel's resend after 1 s gets through
            took_ms = float(w.stdout.readline())
            timer.join()
            resent = retrans.retrans_segs(ns) - before
            time.sleep(0.2)
            res = kit.stop().json()
            assert kit.code == 130, kit.stderr
            for cmd in kit_commands(res):
                dry_run_ok(cmd)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert resent >= 1 and took_ms >= 900, (resent, took_ms)  # the kernel resent the SYN; the client waited
    client = [r for r in res["rows"] if r["side"] == "client" and r["dport"] == port]
    assert len(client) == 1 and client[0]["connect_ms"] <= took_ms + 1
    first = res["hints"][0]
    assert re.search(rf"1 of 1 connection to 127\.0\.0\.1:{port} took over 200 ms to establish \(up to (\d+) ms\)",
                     first["text"]), first
    assert first["command"] == f"kit run tcpretrans --port {port} --addr 127.0.0.1 --netns {ns}"


# --- opensnoop -------------------------------------------------------------------------------------

def test_opensnoop_failing_opens_name_the_process_its_binary_and_each_errno_s_step(kernel, no_leftovers,
                                                                                    tree):  # noqa: F811
    w = gated(sys.executable, os.path.join(WORKLOADS, "opens.py"), tree)
    try:
        kit = KitProc("run", "opensnoop", "--pid", str(w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        say(w, "go")
        books = done_of(w)
        res = kit.stop().json()
        assert kit.code == 130, kit.stderr
    finally:
        end(w)
    total = sum(books.values())
    by_err = {}
    for k, v in books.items():
        by_err[k.split("|")[1]] = by_err.get(k.split("|")[1], 0) + v
    exe = os.path.realpath(sys.executable)  # what the test started: the binary the hint must name
    who = f"(pid {w.pid}, {exe}) failed"
    texts = [h["text"] for h in res["hints"]]

    def most(err, path):  # the workload's own books: how the hint must name its top path for that errno
        n = books.get(f"{path}|{err}", 0)
        return "all of them " + path if n == by_err[err] else f"most of them {path} ({n})"
    assert f"{who} {by_err['ENOENT']} of {total} opens with ENOENT, {most('ENOENT', tree + '/missing')}" \
        in texts[0], texts
    assert f"{who} {by_err['EACCES']} of {total} opens with EACCES, {most('EACCES', tree + '/secret')}" \
        in texts[1], texts
    assert res["hints"][0]["command"] == (f"timeout 5 strace -f -k -e trace=open,openat,openat2 -e status=failed "
                                          f"-p {w.pid}")
    assert res["hints"][1]["command"] == f"namei -l {tree}/secret"
    namei = subprocess.run(shlex.split(res["hints"][1]["command"]), capture_output=True, text=True, timeout=30)
    st = os.stat(f"{tree}/secret")
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o600
    assert namei.returncode == 0 and re.search(r"-rw------- root\s+root\s+secret", namei.stdout), namei.stdout


def test_opensnoop_an_enoent_storm_on_a_search_path_is_traced_to_the_code_that_searches(kernel, no_leftovers,
                                                                                         tmp_path):
    dirs, rounds, name = 6, 5, "libkit-wanted.so"
    for i in range(dirs):
        (tmp_path / f"d{i}").mkdir()
    (tmp_path / f"d{dirs - 1}" / name).write_text("x")
    w = gated(sys.executable, os.path.join(WORKLOADS, "searchpath.py"), str(tmp_path), name, str(dirs), str(rounds))
    try:
        kit = KitProc("run", "opensnoop", "--pid", str(w.pid), "--for", "60s", "--json", *ACCURACY_BUDGET)
        kit.wait_attached()
        say(w, "go")
        books = done_of(w)
        res = kit.stop().json()
        assert kit.code == 130, kit.stderr
        say(w)  # it searches again, for the tracer the hint suggests
        first = res["hints"][0]
        trace = subprocess.run(shlex.split(first["command"]), capture_output=True, text=True, timeout=60)
    finally:
        end(w)
    missing = sum(v for k, v in books.items() if k.endswith("|ENOENT"))
    assert missing == (dirs - 1) * rounds
    assert (f"(pid {w.pid}, {os.path.realpath(sys.executable)}) failed {missing} of {sum(books.values())} opens "
            f"with ENOENT, looking for {name} in {dirs - 1} directories: a search path") in first["text"], first
    # strace -k, as suggested: the failing opens of that name, each with the stack of the code that made it
    assert trace.returncode == 124, trace.stderr[-2000:]  # `timeout 5` ended it
    failed = re.findall(rf'openat\(AT_FDCWD, "{re.escape(str(tmp_path))}/d\d/{name}", O_RDONLY[^)]*\) = -1 ENOENT',
                        trace.stderr)
    assert failed, trace.stderr[-2000:]
    after = trace.stderr.split(failed[0], 1)[1].splitlines()[1:4]
    assert after and all(line.startswith(" > ") for line in after), after  # its stack, frame by frame
