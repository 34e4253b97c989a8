"""getaddrinfo: reading the per-(process, function, host) counts."""

from kit.engine import prelude, uprobes
from kit.guard import costs
from kit.host import procfs
from kit.engine.contract import Hooks

FUNCTIONS = ("getaddrinfo", "gethostbyname", "gethostbyname2")


def collect(ctx, bpf):
    rows = []
    for k, v in bpf["calls"].items():
        count = int(v.count)
        pid = int(k.tgid)
        stored = bytes(k.comm).split(b"\0", 1)[0].decode("utf-8", "replace")
        rows.append({
            "pid": pid,
            "comm": procfs.comm_of(pid) or stored,
            "function": FUNCTIONS[k.fn] if k.fn < len(FUNCTIONS) else str(k.fn),
            # the name is data read from the process: decoded for display, never interpreted
            "host": bytes(k.host).split(b"\0", 1)[0].decode("utf-8", "backslashreplace"),
            "count": count,
            "failed": int(v.failed),
            "total_us": round(v.total_ns / 1000.0, 1),
            "avg_us": round(v.total_ns / 1000.0 / count, 1) if count else 0.0,
            "max_us": round(v.max_ns / 1000.0, 1),
        })
    rows.sort(key=lambda r: (-r["total_us"], -r["count"]))
    return {"rows": rows, "histograms": {"latency_us": prelude.from_table(bpf["latency_hist"])},
            "uprobes": uprobes.summary(ctx),
            "cost_ns_per_lookup": uprobes.cycle_cost_ns(ctx.attached_uprobes, {"getaddrinfo"},
                                                         cal=costs.load_calibration()[0])}


HOOKS = Hooks(collect=collect)
