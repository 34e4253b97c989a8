"""tcplife on the real kernel: in a network namespace the test creates, a client opens connections of
known lifetime and byte counts to a loopback server and some to a closed port; kit's connections match
the client's own records, and its opens match the namespace's ActiveOpens, PassiveOpens and AttemptFails
(nstat)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, KitProc
from workloads import retrans

pytestmark = [pytest.mark.kernel]

N, REFUSED = 6, 3
WORKLOAD = os.path.join(ROOT, "tests", "support", "workloads", "conns.py")


def nstat(ns):
    out = retrans.sh("ip", "netns", "exec", ns, "nstat", "-az", "TcpActiveOpens", "TcpPassiveOpens",
                     "TcpAttemptFails").stdout
    vals = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("Tcp"):
            vals[parts[0]] = int(parts[1])
    return vals


def _run(ns, host, *kit_args):
    w = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, WORKLOAD, host, str(N), str(REFUSED)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert w.stdout.readline().strip() == "ready"
    before = nstat(ns)
    kit = KitProc("run", "tcplife", "--netns", ns, *kit_args, "--for", "60s", "--json")
    kit.wait_attached()
    w.stdin.write("go\n")
    w.stdin.flush()
    line = w.stdout.readline()
    assert line.startswith("done "), line
    w.wait(timeout=20)
    after = nstat(ns)
    kit.stop()
    assert kit.code == 130, kit.stderr
    done = json.loads(line[5:])
    done["pid"] = w.pid  # ip netns exec execs the workload in place
    return kit.json(), done, {k: after[k] - before[k] for k in after}


@pytest.mark.parametrize("hook, host", [("raw_tracepoint", "127.0.0.1"), ("tracepoint", "127.0.0.1"),
                                        ("raw_tracepoint", "::1"), ("tracepoint", "::1")])
def test_connections_match_the_clients_records_and_opens_match_nstat(kernel, no_leftovers, hook, host):
    with retrans.netns(f"kit-l-{os.getpid()}") as ns:
        res, done, counters = _run(ns, host, "--hook", hook)
    assert res["hook"].startswith(hook + " ")
    assert done["refused"] == REFUSED and len(done["conns"]) == N
    assert res["opens"] == {"active_opens": counters["TcpActiveOpens"], "passive_opens": counters["TcpPassiveOpens"],
                            "attempt_fails": counters["TcpAttemptFails"]}
    assert counters["TcpActiveOpens"] == N + REFUSED and counters["TcpAttemptFails"] == REFUSED
    clients = {r["sport"]: r for r in res["rows"] if r["side"] == "client" and r["dport"] == done["port"]}
    servers = {r["dport"]: r for r in res["rows"] if r["side"] == "server" and r["sport"] == done["port"]}
    assert set(clients) == set(servers) == {c["sport"] for c in done["conns"]}
    for c in done["conns"]:
        cl, sv = clients[c["sport"]], servers[c["sport"]]
        assert (cl["tx_bytes"], cl["rx_bytes"]) == (c["sent"], c["received"]), (cl, c)
        assert (sv["rx_bytes"], sv["tx_bytes"]) == (c["sent"], c["received"]), (sv, c)
        assert cl["state"] == "closed" and cl["established"] and cl["saddr"] == host == cl["daddr"]
        # the connection lived at least as long as the client held it, and no longer than it measured
        assert c["hold_ms"] <= cl["duration_ms"] <= c["measured_ms"] + 1.0, (cl, c)
        assert 0 < cl["connect_ms"] <= cl["duration_ms"]
        assert cl["pid"] == done["pid"]  # the process that called connect()
        assert sv["pid"] == done["pid"]  # and the one that accepted and closed it
    refused = [r for r in res["rows"] if r["side"] == "client" and r["dport"] == done["closed_port"]]
    assert len(refused) == REFUSED and not any(r["established"] for r in refused)
    name = f"connect_us to {host}:{done['port']}"
    assert sum(b["count"] for b in res["histograms"][name]) == N


def test_port_scope_keeps_only_that_ports_connections(kernel, no_leftovers):
    with retrans.netns(f"kit-l2-{os.getpid()}") as ns:
        res, done, _c = _run(ns, "127.0.0.1", "--port", "1")
    assert res["rows"] == [] and res["filtered"] > 0, json.dumps(res["rows"])
