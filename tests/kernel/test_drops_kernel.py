"""drops on the real kernel: in a network namespace the test creates, nftables drops a known number of
one flow's packets; the rule's own counter is the oracle for kit's NETFILTER_DROP count of that flow."""

import json
import os
import subprocess
import sys

import pytest

from conftest import KitProc
from workloads import retrans

pytestmark = [pytest.mark.kernel]

SENDER = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((host, 0))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
for i in range(n):
    s.sendto(b"kit", (host, port))
print("sent", flush=True)
"""


def nft(ns, *args):
    return retrans.sh("ip", "netns", "exec", ns, "nft", *args)


def rule_packets(ns):
    """Packets the drop rule's counter saw: the kernel's own number for what it dropped."""
    out = json.loads(nft(ns, "-j", "list", "table", "inet", "kit_d").stdout)
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    return e["counter"]["packets"]
    raise AssertionError(f"no counter in {out}")


def _drop_and_count(ns, host, port, n, *kit_args):
    nft(ns, "add", "table", "inet", "kit_d")
    nft(ns, "add", "chain", "inet", "kit_d", "in", "{ type filter hook input priority 0; }")
    nft(ns, "add", "rule", "inet", "kit_d", "in", "udp", "dport", str(port), "counter", "drop")
    sender = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, host, str(port), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sport = int(sender.stdout.readline())
    kit = KitProc("run", "drops", "--netns", ns, *kit_args, "--for", "60s", "--json")
    kit.wait_attached()
    sender.stdin.write("go\n")
    sender.stdin.flush()
    assert sender.stdout.readline().strip() == "sent"
    sender.wait(timeout=10)
    dropped = rule_packets(ns)
    kit.stop()
    assert kit.code == 130, kit.stderr
    return kit.json(), dropped, sport


@pytest.mark.parametrize("hook, host", [("raw_tracepoint", "127.0.0.1"), ("tracepoint", "127.0.0.1"),
                                        ("raw_tracepoint", "::1")])
def test_netfilter_drops_of_one_flow_equal_the_rules_own_counter(kernel, no_leftovers, hook, host):
    with retrans.netns(f"kit-d-{os.getpid()}") as ns:
        res, dropped, sport = _drop_and_count(ns, host, 5701, 40, "--hook", hook)
    assert dropped == 40
    assert res["hook"].startswith(hook + " ")
    flow = [r for r in res["rows"] if r["proto"] == "udp" and r["dport"] == 5701 and r["sport"] == sport]
    assert len(flow) == 1, res["rows"]
    assert flow[0]["reason"] == "NETFILTER_DROP" and flow[0]["count"] == dropped
    assert flow[0]["saddr"] == host and flow[0]["daddr"] == host
    assert flow[0]["location"] in ("nf_hook_slow", "nft_do_chain")  # netfilter frees it (6.1: nf_hook_slow)
    assert res["lost_events"] == 0


def test_port_scope_counts_only_that_port_in_the_kernel(kernel, no_leftovers):
    with retrans.netns(f"kit-d2-{os.getpid()}") as ns:
        res, dropped, _sport = _drop_and_count(ns, "127.0.0.1", 5702, 25, "--port", "5999")
    assert dropped == 25
    assert res["rows"] == [] and res["filtered"] >= 25
