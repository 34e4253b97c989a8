"""syscalls: read the per-(process, thread name, syscall) counters into rows."""

def _name(nr):
    from bcc.syscall import syscall_name  # late: `kit show` works without bcc
    name = syscall_name(nr)
    return name.decode() if isinstance(name, bytes) else str(name)


def collect(ctx, bpf):
    rows = []
    for k, v in bpf["counts"].items():
        count = int(v.count)
        if not count:
            continue
        rows.append({
            "pid": int(k.tgid),
            "comm": k.comm.decode("utf-8", "replace"),
            "nr": int(k.nr),
            "syscall": _name(int(k.nr)),
            "count": count,
            "errors": int(v.errors),
            "total_ms": round(v.total_ns / 1e6, 3),
            "avg_us": round(v.total_ns / count / 1e3, 2),
            "max_us": round(v.max_ns / 1e3, 2),
        })
    rows.sort(key=lambda r: (-r["total_ms"], -r["count"]))
    return {"rows": rows}
