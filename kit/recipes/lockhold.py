"""lockhold: the lock-pair policy that is not data, and reading the maps."""

import os

from kit.binaries import elf
from kit.engine import prelude, uprobes
from kit.guard import costs
from kit.host import procfs, targets
from kit.errors import Refused
from kit.engine.contract import Hooks
from kit.output.units import duration

STACKS_TOP = 10

# Lock functions whose first argument is the lock object by definition: under --match auto
# these pair by it alone, so a mutex taken by trylock (unprobed) cannot end another's hold.
LOCK_ARG_FUNCTIONS = frozenset({
    "pthread_mutex_lock", "pthread_mutex_timedlock", "pthread_mutex_clocklock", "pthread_mutex_unlock",
    "pthread_spin_lock", "pthread_spin_unlock", "pthread_rwlock_rdlock", "pthread_rwlock_wrlock",
    "pthread_rwlock_timedrdlock", "pthread_rwlock_timedwrlock", "pthread_rwlock_clockrdlock",
    "pthread_rwlock_clockwrlock", "pthread_rwlock_unlock"})
# the `paired` counters of probes/lockhold.c, by index
PAIRED = ("either", "by_argument", "by_thread")


def prepare(ctx):
    """--binary counts as a scope only when it narrows: a libc is mapped by
    every process, so --binary LIBC without --pid/--comm/--thread-comm is the box-wide hot
    path the guardrail exists to refuse."""
    binary = ctx.value("binary")
    if binary and all(ctx.value(n) is None for n in ("pid", "comm", "thread_comm")) and \
            (targets.is_libc(binary) or targets.is_libpthread(binary)):
        raise Refused(f"--binary {binary} is mapped by every process: {ctx.value('lock')} there is a hot path "
                      "across the box",
                      "scope it with --pid PID or --comm NAME (kit finds the libc the process maps); "
                      "`kit run lockhold --force` traces every process anyway")


def _known_lock_arg(symbol):
    name = symbol.split("@", 1)[0]
    return name in LOCK_ARG_FUNCTIONS or name.lstrip("_") in LOCK_ARG_FUNCTIONS


def pair_rule(ctx):
    """The rule the program pairs by: --match as given, and auto for a pair known to take
    its lock as first argument is lock."""
    match = ctx.value("match")
    if match == "auto" and _known_lock_arg(ctx.value("lock")) and _known_lock_arg(ctx.value("unlock")):
        return "lock"
    return match


def extra(ctx):
    return {"lock_arg_known": int(pair_rule(ctx) == "lock" and ctx.value("match") == "auto"),
            "inside_on": int(ctx.value("inside") is not None)}


def attach(ctx, bpf):
    desc = uprobes.attach(ctx, bpf)
    if ctx.value("stacks"):
        for pid in sorted({p.pid for p in ctx.attached_uprobes if p.pid > 0}):
            _warm_symbols(bpf, pid, ctx.attached_uprobes)
    return desc


def _warm_symbols(bpf, pid, probes):
    """BCC reads a process's maps and a module's symbols the first time it
    symbolizes there; doing it now for the executable and the probed files
    keeps their names for a process that exits before the run ends."""
    text = procfs.read_text(f"/proc/{pid}/maps") or ""
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
    return procfs.comm_of(pid) or stored


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
    no_hold, no_entry = (prelude.percpu_sum(unmatched, i) for i in (0, 1))
    attached = ctx.attached_uprobes
    cost_ns = uprobes.cycle_cost_ns(attached, cal=costs.load_calibration()[0])
    pairing = _pairing(ctx, bpf)
    notes = [f"each lock/unlock cost the traced threads ~{cost_ns / 1000:.1f} us in probes "
             f"(x {totals['hold']['count']} holds = ~{cost_ns * totals['hold']['count'] / 1e6:.1f} ms)",
             pairing_note(ctx, pairing)]
    if no_hold:
        notes.append(f"{no_hold} unlocks had no recorded hold ({_no_hold_why(ctx, pairing)})")
    out = {"rows": rows, "totals": totals,
           "histograms": {"hold_us": prelude.from_table(bpf["hold_hist"]),
                          "wait_us": prelude.from_table(bpf["wait_hist"])},
           "unmatched": {"unlock_without_hold": no_hold, "return_without_entry": no_entry},
           "pairing": pairing,
           "uprobes": uprobes.summary(ctx), "cost_ns_per_lock": cost_ns, "notes": notes}
    if ctx.value("inside") is not None:
        out["inside"] = _inside(ctx, bpf, totals["hold"]["count"])
        notes.append(inside_note(out["inside"]))
    if ctx.value("stacks"):
        out["stacks"] = _stacks(ctx, bpf)
        out["text"] = [_stacks_text(out["stacks"])]
    return out


def _inside(ctx, bpf, holds):
    """The --inside function's calls, inside a hold and outside any, from the per-CPU counters."""
    fn = ctx.value("inside")
    attached = any(p.fn == "inside_entry" for p in ctx.attached_uprobes)
    stats = bpf["inside_stats"]
    where = {}
    for i, name in enumerate(("outside", "inside")):
        per_cpu = stats[stats.Key(i)]
        count = sum(int(v.count) for v in per_cpu)
        total = sum(int(v.total_ns) for v in per_cpu) / 1000.0
        where[name] = {"count": count, "total_us": round(total, 1),
                       "avg_us": round(total / count, 1) if count else 0.0,
                       "max_us": round(max((int(v.max_ns) for v in per_cpu), default=0) / 1000.0, 1)}
    table = bpf["inside_holds"]
    return {"function": fn, "attached": attached, "holds": holds,
            "holds_with_calls": int(sum(table[table.Key(0)])), **where}


def inside_note(s):
    """One line: how often the --inside function ran while a lock was held."""
    fn = s["function"]
    if not s["attached"]:
        return f"--inside {fn}: no file the traced processes map defines it; its calls were not counted"
    i, o = s["inside"], s["outside"]
    return (f"{fn} was called {i['count']} times while a lock was held (in {s['holds_with_calls']} of "
            f"{s['holds']} holds; {duration(i['avg_us'])} on average, at most {duration(i['max_us'])}) and "
            f"{o['count']} times outside any hold")


def _pairing(ctx, bpf):
    """Which rule paired the holds: what was asked, the rule the program ran, and per hold
    whether the first argument and the thread's newest hold agreed (either), or only one
    of them chose it."""
    table = bpf["paired"]
    holds = prelude.percpu_counts(table, PAIRED)
    return {"match": ctx.value("match"), "rule": pair_rule(ctx), "used": used_pairing(holds), "holds": holds}


def used_pairing(holds):
    """argument, thread, mixed or none, from the `paired` counts: a hold both rules agree on
    supports either, so it is the holds only one rule chose that say which was used."""
    if not sum(holds.values()):
        return "none"
    if not holds["by_thread"]:
        return "argument"
    return "thread" if not holds["by_argument"] else "mixed"


def pairing_note(ctx, p):
    """One line saying how unlocks were matched to holds, and why."""
    h = p["holds"]
    n = sum(h.values())
    lock, unlock = ctx.value("lock"), ctx.value("unlock")
    if p["rule"] == "lock":
        why = (f"{lock} and {unlock} take the lock as their first argument" if p["match"] == "auto"
               else "--match lock")
        return f"holds paired by lock object ({why}): an unlock ended the hold its thread took on the same one"
    if p["rule"] == "thread":
        return "holds paired by thread (--match thread): an unlock ended its thread's newest hold"
    if p["used"] == "none":
        return "no hold ended during the run (pairing: by lock object, else by thread)"
    if p["used"] == "argument":
        if not h["by_argument"]:
            return (f"holds paired by lock argument, the same as by thread here: each of the {n} unlocks passed "
                    "the first argument of its thread's newest hold")
        return (f"holds paired by lock argument: each of the {n} unlocks passed the first argument of a hold "
                f"its thread had open ({h['by_argument']} released out of order)")
    if p["used"] == "thread":
        agreed = f"; the other {h['either']} passed the newest hold's anyway" if h["either"] else ""
        return (f"holds paired by thread (the functions take no lock argument): {h['by_thread']} of {n} unlocks "
                f"passed no first argument of a hold their thread had open, so each ended its thread's newest "
                f"hold{agreed}")
    return (f"holds paired by lock argument ({h['either'] + h['by_argument']}, {h['by_argument']} released out of "
            f"order) and by thread ({h['by_thread']}, whose unlock passed no first argument of an open hold); if "
            f"{lock}/{unlock} take their lock as first argument, --match lock pairs by it alone; if they take "
            "none, --match thread")


def _no_hold_why(ctx, p):
    if p["rule"] == "lock" and p["match"] == "lock":
        return ("taken before the run or by a trylock; or the functions take no lock argument: "
                "--match auto pairs those by thread")
    return "taken before the run or by a trylock"


def _fallback_symbolizer(ctx, bpf, pid):
    """For a process that is gone: name frames in the file that defines the lock
    function, from its load base (where the lock function ran, minus its
    address in the file) and the file's own symbol table."""
    lock = next((p for p in ctx.attached_uprobes if p.fn == "lock_entry"), None)
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
        out.append({"pid": pid, "comm": procfs.comm_of(pid) or "", "count": int(v.count),
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


HOOKS = Hooks(prepare=prepare, extra=extra, attach=attach, collect=collect)
