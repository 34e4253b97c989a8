"""tcpretrans on the real kernel, against the namespace's own TcpRetransSegs."""

import os

import pytest

from conftest import KitProc, run_kit
from kit import catalog
from kit.errors import ExitCode
from kit.host import features
from workloads import retrans

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _ns(tag):
    return f"kit-t-{tag}-{os.getpid()}"


def _kprobe_rung():
    return next(h for h in catalog.load(catalog.DEFAULT_CATALOG)["tcpretrans"].hooks if h.type == "kprobe")


@pytest.mark.parametrize("hook, host", [("raw_tracepoint", "127.0.0.1"), ("tracepoint", "127.0.0.1"),
                                        ("raw_tracepoint", "::1"), ("tracepoint", "::1"),
                                        ("kprobe", "127.0.0.1"), ("kprobe", "::1")])
@retrans.retake_on_disagreement
def test_counts_equal_kernel_counter_and_flow_is_attributed_to_its_owner(kernel, no_leftovers, hook, host):
    why = features.hook_supported(_kprobe_rung()) if hook == "kprobe" else None
    if why:  # a kernel without kprobes (this project's host): refused before anything attaches, saying why
        r = run_kit("run", "tcpretrans", "--hook", "kprobe", "--for", "5s", "--json")
        assert r.returncode == ExitCode.UNSUPPORTED and why in r.stderr and "drop --hook" in r.stderr, r.stderr
        assert r.stdout == "" and " attached to " not in r.stderr
        return
    with retrans.netns(_ns("a")) as ns:
        inode = os.stat(f"/run/netns/{ns}").st_ino
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--hook", hook, "--for", "60s", "--json")
        kit.wait_attached()
        seen = {}

        def hold(pid):
            with open(f"/proc/{pid}/comm") as f:
                seen["comm"] = f.read().strip()
            seen["pid"] = pid
            kit.stop()

        cport, delta = retrans.provoke(ns, port=5601, hold=hold, host=host)
    res = kit.json()
    assert kit.code == 130, kit.stderr  # stopped by Ctrl-C once the workload's books were closed
    assert res["hook"].startswith(hook + " ")
    assert delta >= 3, f"the workload should provoke retransmits, kernel counted {delta}"
    flows = [r for r in res["rows"] if r["sport"] == cport and r["dport"] == 5601]
    assert len(flows) == 1, res["rows"]
    retrans.counts_agree(flows, delta, {**res["lost"], "filtered": res["filtered"]})
    assert flows[0]["saddr"] == host and flows[0]["daddr"] == host and flows[0]["state"] == "ESTABLISHED"
    assert flows[0]["family"] == (6 if ":" in host else 4)
    assert (flows[0]["pid"], flows[0]["comm"]) == (seen["pid"], seen["comm"])
    assert res["lost_events"] == 0
    assert res["scope"] == {"netns": inode}


def test_port_scope_filters_in_the_kernel(kernel, no_leftovers):
    with retrans.netns(_ns("b")) as ns:
        kit = KitProc("run", "tcpretrans", "--netns", ns, "--port", "5999", "--for", "60s", "--json")
        kit.wait_attached()
        _cport, delta = retrans.provoke(ns, port=5602, hold=lambda pid: kit.stop())
    res = kit.json()
    assert delta >= 3
    assert res["rows"] == []
    # filtered also counts retransmits of other namespaces on this shared box (the port check comes first)
    assert res["events"] == 0 and res["filtered"] >= delta


def test_netns_scope_excludes_other_namespaces(kernel, no_leftovers):
    with retrans.netns(_ns("c")) as ns, retrans.netns(_ns("d")) as other:
        kit = KitProc("run", "tcpretrans", "--netns", other, "--for", "60s", "--json")
        kit.wait_attached()
        _cport, delta = retrans.provoke(ns, port=5603, hold=lambda pid: kit.stop())
    res = kit.json()
    assert delta >= 3
    assert res["rows"] == [] and res["filtered"] >= delta, (res["filtered"], delta, retrans.EPISODE)
