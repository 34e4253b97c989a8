"""tcplife: BTF offsets for struct sock and tcp_sock, and the connections as rows."""

import ipaddress
import socket
import time

from kit.engine import prelude
from kit.host import btf, features
from kit.engine.contract import Hooks
from kit.errors import Unsupported

SOCK_FIELDS = {
    "sk_net_off": ("sock", "__sk_common.skc_net"), "net_inum_off": ("net", "ns.inum"),
    "bytes_received_off": ("tcp_sock", "bytes_received"), "bytes_acked_off": ("tcp_sock", "bytes_acked"),
    "sk_protocol_off": ("sock", "sk_protocol"),
    "sk_family_off": ("sock", "__sk_common.skc_family"), "inet_sport_off": ("inet_sock", "inet_sport"),
    "sk_dport_off": ("sock", "__sk_common.skc_dport"), "sk_daddr_off": ("sock", "__sk_common.skc_daddr"),
    "sk_saddr_off": ("sock", "__sk_common.skc_rcv_saddr"),
    "sk_daddr6_off": ("sock", "__sk_common.skc_v6_daddr"), "sk_saddr6_off": ("sock", "__sk_common.skc_v6_rcv_saddr"),
}
OPENS = ("active_opens", "passive_opens", "attempt_fails")  # the opens array, as nstat names them


def extra(ctx):
    if not features.btf_available():
        raise Unsupported("tcplife reads bytes and namespaces from struct tcp_sock, which needs kernel BTF",
                          "a kernel with CONFIG_DEBUG_INFO_BTF=y; tcpretrans works without it")
    addr = ctx.value("addr")
    return {**btf.offsets(SOCK_FIELDS),
            "addr_family": 0 if addr is None else (socket.AF_INET if addr.version == 4 else socket.AF_INET6)}


def _addr(raw, family):
    return str(ipaddress.ip_address(bytes(raw[:4] if family == socket.AF_INET else raw[:16])))


def _row(c, now_ns):
    f = c.flow
    fam = int(f.family)
    end = c.end_ns if c.closed else now_ns
    return {
        "pid": int(c.pid) or None, "comm": c.comm.decode("utf-8", "replace") or None,
        "saddr": _addr(f.saddr, fam), "sport": int(f.sport), "daddr": _addr(f.daddr, fam), "dport": int(f.dport),
        "family": 4 if fam == socket.AF_INET else 6, "netns": int(f.netns),
        "side": "client" if c.active else "server",
        "state": "closed" if c.closed else "open",
        "established": bool(c.established),
        "duration_ms": round((end - c.birth_ns) / 1e6, 3),
        "connect_ms": round(c.connect_ns / 1e6, 3) if c.connect_ns else None,
        "rx_bytes": int(c.rx) if c.closed else None, "tx_bytes": int(c.tx) if c.closed else None,
    }


def collect(ctx, bpf):
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns's clock
    rows = [_row(v, now) for _k, v in bpf["done"].items()]
    rows += [_row(v, now) for _k, v in bpf["conns"].items()]
    rows.sort(key=lambda r: (r["state"] != "closed", -r["duration_ms"]))
    table = bpf["opens"]
    opens = {name: int(sum(table[table.Key(i)])) for i, name in enumerate(OPENS)}
    hist = {}
    for k, v in bpf["connect_hist"].items():
        fam = int(k.family)
        label = f"connect_us to {_addr(k.daddr, fam)}:{int(k.dport)}"
        hist.setdefault(label, {})[int(k.slot)] = int(v.value)
    notes = [f"opens: {opens['active_opens']} active, {opens['passive_opens']} passive, "
             f"{opens['attempt_fails']} failed attempts (as nstat's ActiveOpens, PassiveOpens, AttemptFails)"]
    still = sum(1 for r in rows if r["state"] == "open")
    if still:
        notes.append(f"{still} connection(s) still open at the end: their duration is so far, bytes unknown")
    return {"rows": rows, "opens": opens, "notes": notes,
            "histograms": {name: prelude.buckets(c) for name, c in sorted(hist.items())}}


HOOKS = Hooks(extra=extra, collect=collect)
