"""tcpretrans: read the per-flow counts and attribute flows to their owners."""

import ipaddress
import socket

from kit.host import btf, features, sockets
from kit.errors import Unsupported
from kit.engine.contract import Hooks

TCP_STATES = ["?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"]


# struct sock members the raw tracepoint rung reads, and the netns scope needs.
SOCK_FIELDS = {
    "sk_net_off": ("sock", "__sk_common.skc_net"), "net_inum_off": ("net", "ns.inum"),
    "sk_family_off": ("sock", "__sk_common.skc_family"), "sk_state_off": ("sock", "__sk_common.skc_state"),
    "sk_num_off": ("sock", "__sk_common.skc_num"), "sk_dport_off": ("sock", "__sk_common.skc_dport"),
    "sk_daddr_off": ("sock", "__sk_common.skc_daddr"), "sk_saddr_off": ("sock", "__sk_common.skc_rcv_saddr"),
    "sk_daddr6_off": ("sock", "__sk_common.skc_v6_daddr"), "sk_saddr6_off": ("sock", "__sk_common.skc_v6_rcv_saddr"),
}


def extra(ctx):
    raw = ctx.hook.type == "raw_tracepoint"
    reads_sock = raw or ctx.hook.type == "kprobe"  # the kprobe rung reads struct sock as the raw rung does
    addr = ctx.value("addr")
    offs = dict.fromkeys(SOCK_FIELDS, 0)
    if features.btf_available():
        offs = btf.offsets(SOCK_FIELDS)
    elif reads_sock or ctx.value("netns") is not None:
        btf.offsets({})  # raises Unsupported with the reason
    fields = features.tracepoint_format(ctx.hook.target) or [] if ctx.hook.type == "tracepoint" else []
    nargs = btf.kernel().raw_tracepoint_args(ctx.hook.target) if raw else 0
    return {
        "has_err": int("err" in fields),
        "raw_has_err": int(bool(nargs) and nargs >= 3),
        "addr_family": 0 if addr is None else (socket.AF_INET if addr.version == 4 else socket.AF_INET6),
        **offs,
        **sock_head(offs, reads_sock),
    }


# The fields the raw rung reads together: sock_common keeps them side by side at its
# start (skc_addrpair, skc_portpair, skc_family, skc_state), so one read fetches them all.
HEAD_FIELDS = {"sk_daddr_off": 4, "sk_saddr_off": 4, "sk_dport_off": 2, "sk_num_off": 2, "sk_family_off": 2,
               "sk_state_off": 1}
HEAD_MAX = 64


def sock_head(offs, reads_sock):
    """{sk_head_off, sk_head_len}: the window of struct sock one read fetches for HEAD_FIELDS."""
    if not reads_sock:
        return {"sk_head_off": 0, "sk_head_len": 8}  # unused by the tracepoint rung
    start = min(offs[k] for k in HEAD_FIELDS)
    end = max(offs[k] + n for k, n in HEAD_FIELDS.items())
    if end - start > HEAD_MAX:
        raise Unsupported(f"struct sock_common on this kernel spreads the flow over {end - start} bytes "
                          f"(kit reads at most {HEAD_MAX} at once)", "use --hook tracepoint")
    return {"sk_head_off": start, "sk_head_len": (end - start + 7) // 8 * 8}


def _addr(raw, family):
    return str(ipaddress.ip_address(bytes(raw[:4] if family == socket.AF_INET else raw[:16])))


def sees_failed(ctx):
    """Whether the rung attached sees failed attempts: the kprobe's return value, or a tracepoint with err."""
    x = ctx.extra
    return ctx.hook.type == "kprobe" or bool(x.get("raw_has_err") if ctx.hook.type == "raw_tracepoint"
                                             else x.get("has_err"))


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
    if not sees_failed(ctx):
        notes.append("this kernel's tcp_retransmit_skb tracepoint does not report an attempt's result, so "
                     "`failed` is not measured here (0); `--hook kprobe` sees failed attempts where kprobes exist")
    note = sockets.attribute(rows) if rows else None
    if note:
        notes.append(note)
    rows.sort(key=lambda r: (-r["count"], -r["failed"]))
    return {"rows": rows, "notes": notes}


HOOKS = Hooks(extra=extra, collect=collect)
