"""tcpretrans: read the per-flow counts and attribute flows to their owners."""

import ipaddress
import socket

from kit import btf, features, sockets

TCP_STATES = ["?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"]


def extra(ctx):
    fields = features.tracepoint_format(ctx.hook.target) or []
    addr = ctx.value("addr")
    offs = {"sk_net_off": 0, "net_inum_off": 0}
    if features.btf_available():
        offs = btf.offsets({"sk_net_off": ("sock", "__sk_common.skc_net"), "net_inum_off": ("net", "ns.inum")})
    elif ctx.value("netns") is not None:
        btf.offsets({})  # raises Unsupported with the reason
    return {
        "has_err": int("err" in fields),
        "addr_family": 0 if addr is None else (socket.AF_INET if addr.version == 4 else socket.AF_INET6),
        **offs,
    }


def _addr(raw, family):
    return str(ipaddress.ip_address(bytes(raw[:4] if family == socket.AF_INET else raw[:16])))


def collect(ctx, bpf):
    rows = []
    for k, v in bpf["flows"].items():
        fam = int(k.family)
        rows.append({
            "saddr": _addr(k.saddr, fam), "sport": int(k.sport),
            "daddr": _addr(k.daddr, fam), "dport": int(k.dport),
            "family": 4 if fam == socket.AF_INET else 6,
            "state": TCP_STATES[k.state] if k.state < len(TCP_STATES) else str(k.state),
            "netns": int(k.netns), "count": int(v.count), "failed": int(v.failed),
        })
    notes = []
    note = sockets.attribute(rows) if rows else None
    if note:
        notes.append(note)
    rows.sort(key=lambda r: (-r["count"], -r["failed"]))
    return {"rows": rows, "notes": notes}
