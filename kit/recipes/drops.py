"""drops: BTF offsets for reading a dropped packet's flow, and names for reasons and locations."""

import ipaddress
import socket

from kit.host import btf, features
from kit.engine.contract import Hooks

SKB_FIELDS = {
    "skb_head_off": ("sk_buff", "head"), "skb_network_header_off": ("sk_buff", "network_header"),
    "skb_dev_off": ("sk_buff", "dev"), "dev_net_off": ("net_device", "nd_net"), "net_inum_off": ("net", "ns.inum"),
}
REASON_PREFIX = "SKB_DROP_REASON_"
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def extra(ctx):
    raw = ctx.hook.type == "raw_tracepoint"
    offs = dict.fromkeys(SKB_FIELDS, 0)
    flow = features.btf_available()
    if flow:
        offs = btf.offsets(SKB_FIELDS)
    elif raw or any(ctx.value(n) is not None for n in ("port", "addr", "netns")):
        btf.offsets({})  # raises Unsupported with the reason: a flow scope cannot work without BTF
    if raw:
        has_reason = (btf.kernel().raw_tracepoint_args(ctx.hook.target) or 0) >= 3
    else:
        has_reason = "reason" in (features.tracepoint_format(ctx.hook.target) or [])
    addr = ctx.value("addr")
    return {"flow": int(flow), "has_reason": int(has_reason), **offs,
            "addr_family": 0 if addr is None else (socket.AF_INET if addr.version == 4 else socket.AF_INET6)}


def reason_names():
    """Drop reason numbers -> names, from the running kernel's BTF (they change between kernels)."""
    k = btf.kernel() if features.btf_available() else None
    values = (k.enum("skb_drop_reason") if k else None) or {}
    return {v: n[len(REASON_PREFIX):] if n.startswith(REASON_PREFIX) else n for n, v in values.items()}


def _addr(raw, family):
    if family == socket.AF_INET:
        return str(ipaddress.ip_address(bytes(raw[:4])))
    if family == socket.AF_INET6:
        return str(ipaddress.ip_address(bytes(raw[:16])))
    return ""


def collect(ctx, bpf):
    names = reason_names() if ctx.extra.get("has_reason") else {}
    rows = []
    for k, v in bpf["drops"].items():
        fam = int(k.family)
        rows.append({
            "reason": names.get(int(k.reason), str(int(k.reason))) if ctx.extra.get("has_reason") else "",
            "location": bpf.ksym(k.location, show_offset=False).decode("utf-8", "replace") if k.location else "",
            "proto": PROTOS.get(int(k.proto), str(int(k.proto))) if fam else "",
            "saddr": _addr(k.saddr, fam), "sport": int(k.sport) if fam else "",
            "daddr": _addr(k.daddr, fam), "dport": int(k.dport) if fam else "",
            "netns": int(k.netns), "count": int(v.value),
        })
    rows.sort(key=lambda r: -r["count"])
    notes = []
    if not ctx.extra.get("has_reason"):
        notes.append("this kernel's kfree_skb carries no drop reason (added in 5.17): drops are by location only")
    if not ctx.extra.get("flow"):
        notes.append("no kernel BTF: flows are not read, drops are by reason and location only")
    return {"rows": rows, "notes": notes}


HOOKS = Hooks(extra=extra, collect=collect)
