"""lockhold: the lock-pair policy that is not data, and reading the maps."""

import os

from kit import costs, elf, histo, targets, uprobes
from kit.errors import Refused
from kit.output import duration

STACKS_TOP = 10


def prepare(ctx):
    """--binary counts as a scope only when it narrows: a libc is mapped by
    every process, so --binary LIBC without --pid/--comm is the box-wide hot
    path the guardrail exists to refuse."""
    binary = ctx.value("binary")
    if binary and ctx.value("pid") is None and ctx.value("comm") is None and \
            (targets.is_libc(binary) or targets.is_libpthread(binary)):
        raise Refused(f"--binary {binary} is mapped by every process: {ctx.value('lock')} there is a hot path "
                      "across the box",
                      "scope it with --pid PID or --comm NAME (kit finds the libc the process maps); "
                      "`kit run lockhold --force` traces every process anyway")


def attach(ctx, bpf):
    desc = uprobes.attach(ctx, bpf)
    if ctx.value("stacks"):
        for pid in sorted({p.pid for p in ctx.state["uprobes_attached"] if p.pid > 0}):
            _warm_symbols(bpf, pid, ctx.state["uprobes_attached"])
    return desc


def _warm_symbols(bpf, pid, probes):
    """BCC reads a process's maps and a module's symbols the first time it
    symbolizes there; doing it now for the executable and the probed files
    keeps their names for a process that exits before the run ends."""
    text = targets.read_text(f"/proc/{pid}/maps") or ""
    inodes = set()
    try:
        inodes.add(os.stat(f"/proc/{pid}/exe").st_ino)
    except OSError:
        pass
    for p in probes:
        try:
            inodes.add(os.stat(p.open_path).st_ino)
        except OSError:
            pass
    for line in targets.parse_maps(text):
        if "x" in line.perms and line.ino in inodes:
            bpf.sym(line.start, pid)


def _comm(pid, stored):
    return targets.comm_of(pid) or stored


def collect(ctx, bpf):
    rows = []
    totals = {"hold": {"count": 0, "total_us": 0.0, "max_us": 0.0}, "wait": {"count": 0, "total_us": 0.0, "max_us": 0.0}}
    for k, v in bpf["stats"].items():
        what = "hold" if k.kind == 0 else "wait"
        count, total_us, max_us = int(v.count), v.total_ns / 1000.0, v.max_ns / 1000.0
        rows.append({"what": what, "pid": int(k.tgid), "comm": _comm(k.tgid, v.comm.decode("utf-8", "replace")),
                     "count": count, "total_us": round(total_us, 1), "max_us": round(max_us, 1),
                     "avg_us": round(total_us / count, 1) if count else 0.0})
        t = totals[what]
        t["count"] += count
        t["total_us"] = round(t["total_us"] + total_us, 1)
        t["max_us"] = max(t["max_us"], round(max_us, 1))
    rows.sort(key=lambda r: (r["what"] != "hold", -r["total_us"]))
    unmatched = bpf["unmatched"]
    no_hold, no_entry = (int(sum(unmatched[unmatched.Key(i)])) for i in (0, 1))
    attached = ctx.state.get("uprobes_attached", [])
    cost_ns = uprobes.cycle_cost_ns(attached, cal=costs.load_calibration()[0])
    notes = [f"each lock/unlock cost the traced threads ~{cost_ns / 1000:.1f} us in probes "
             f"(x {totals['hold']['count']} holds = ~{cost_ns * totals['hold']['count'] / 1e6:.1f} ms)"]
    if no_hold:
        notes.append(f"{no_hold} unlocks had no recorded hold (taken before the run, by trylock, "
                     "or not paired by the first argument: try --match thread)")
    out = {"rows": rows, "totals": totals,
           "histograms": {"hold_us": histo.from_table(bpf["hold_hist"]),
                          "wait_us": histo.from_table(bpf["wait_hist"])},
           "unmatched": {"unlock_without_hold": no_hold, "return_without_entry": no_entry},
           "uprobes": uprobes.summary(ctx), "cost_ns_per_lock": cost_ns, "notes": notes}
    if ctx.value("stacks"):
        out["stacks"] = _stacks(ctx, bpf)
        out["text"] = [_stacks_text(out["stacks"])]
    return out


def _fallback_symbolizer(ctx, bpf, pid):
    """For a process that is gone: name frames in the file that defines the lock
    function, from its load base (where the lock function ran, minus its
    address in the file) and the file's own symbol table."""
    lock = next((p for p in ctx.state.get("uprobes_attached", []) if p.fn == "lock_entry"), None)
    ips = bpf["lock_ips"]
    try:
        ip = ips[ips.Key(pid)].value
    except KeyError:
        return None
    if lock is None or not os.path.exists(lock.open_path):
        return None
    try:
        return elf.Symbolizer(lock.open_path, ip - lock.addr, lock.shown.split(" (")[0])
    except elf.ElfError:
        return None


def _stacks(ctx, bpf):
    """Top holder stacks by total hold, symbolized by BCC (live or warmed
    processes) or, for frames BCC cannot name, from the probed file."""
    entries = sorted(bpf["hold_stacks"].items(), key=lambda kv: -kv[1].total_ns)[:STACKS_TOP]
    table = bpf["stacks"]
    fallbacks = {}
    out = []
    for k, v in entries:
        pid = int(k.tgid)
        frames = []
        try:
            addrs = list(table.walk(k.stackid))
        except KeyError:
            addrs = []
            frames.append("[stack evicted]")
        for addr in addrs:
            name = bpf.sym(addr, pid, show_module=True, show_offset=True).decode("utf-8", "replace")
            if name.startswith("[unknown]"):
                if pid not in fallbacks:
                    fallbacks[pid] = _fallback_symbolizer(ctx, bpf, pid)
                name = (fallbacks[pid] and fallbacks[pid](addr)) or f"{addr:#x}"
            frames.append(name)
        out.append({"pid": pid, "comm": targets.comm_of(pid) or "", "count": int(v.count),
                    "total_us": round(v.total_ns / 1000.0, 1), "max_us": round(v.max_ns / 1000.0, 1),
                    "frames": frames})
    return out


def _stacks_text(stacks):
    if not stacks:
        return "holder stacks: (none recorded)"
    lines = ["holder stacks by total hold (stack where the lock was taken):"]
    for s in stacks:
        lines.append(f"  {duration(s['total_us'])} total, {s['count']} holds, max {duration(s['max_us'])}"
                     f" -- pid {s['pid']} {s['comm']}")
        lines += [f"      {f}" for f in s["frames"]] or ["      [no frames]"]
    return "\n".join(lines)
