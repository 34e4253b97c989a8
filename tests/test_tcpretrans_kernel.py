"""tcpretrans on the real kernel, against the namespace's own TcpRetransSegs."""

import os

import pytest

from conftest import KitProc
from workloads import retrans

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _ns(tag):
    return f"kit-t-{tag}-{os.getpid()}"


def test_counts_equal_kernel_counter_and_flow_is_attributed_to_its_owner(kernel, no_leftovers):
    with retrans.netns(_ns("a")) as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--for", "9s", "--json")
        kit.wait_attached()
        seen = {}

        def hold(pid):
            with open(f"/proc/{pid}/comm") as f:
                seen["comm"] = f.read().strip()
            seen["pid"] = pid
            kit.finish()

        cport, delta = retrans.provoke(ns, port=5601, hold=hold)
    res = kit.json()
    assert kit.code == 0, kit.stderr
    assert delta >= 3, f"the workload should provoke retransmits, kernel counted {delta}"
    flows = [r for r in res["rows"] if r["sport"] == cport and r["dport"] == 5601]
    assert len(flows) == 1, res["rows"]
    assert flows[0]["count"] == delta
    assert flows[0]["saddr"] == "127.0.0.1" and flows[0]["state"] == "ESTABLISHED"
    assert (flows[0]["pid"], flows[0]["comm"]) == (seen["pid"], seen["comm"])
    assert res["lost_events"] == 0 and res["scope"] == {"netns": ns} or res["scope"]["netns"]


def test_port_scope_filters_in_the_kernel(kernel, no_leftovers):
    with retrans.netns(_ns("b")) as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--port", "5999", "--for", "9s", "--json")
        kit.wait_attached()
        _cport, delta = retrans.provoke(ns, port=5602, hold=lambda pid: kit.finish())
    res = kit.json()
    assert delta >= 3
    assert res["rows"] == []
    # Other tests on the box may retransmit in their own namespaces meanwhile: those are filtered too.
    assert res["events"] == 0 and res["filtered"] >= delta


def test_netns_scope_excludes_other_namespaces(kernel, no_leftovers):
    with retrans.netns(_ns("c")) as ns, retrans.netns(_ns("d")) as other:
        kit = KitProc("run", "tcpretrans", "--netns", other, "--for", "9s", "--json")
        kit.wait_attached()
        _cport, delta = retrans.provoke(ns, port=5603, hold=lambda pid: kit.finish())
    res = kit.json()
    assert delta >= 3
    assert res["rows"] == [] and res["filtered"] >= delta
