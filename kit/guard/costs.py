"""What one event costs: the recipe's cost class, priced from this host's
calibration (`kit calibrate`) or, without one, from defaults measured on the
development VM.

Costs are per event of the recipe's rate hook (what kit/guard/rate.py counts):
`in_ns` for an event in scope (the whole program runs), `out_ns` for an event
the in-kernel filter rejects. Both are built from primitives: the cost of a
program of a given shape on a hook type (empty, hash counter, rejecting
filter), a stack capture, and a uprobe priced by the kind of its target's
first instruction (kit/binaries/insn.py).
"""

import dataclasses
import json
import os
import platform

from kit.binaries import insn

CALIBRATION_VERSION = 1

# offcpu, measured by kit/guard/calibrate_offcpu.py on the development VM: the program body per block of a Python
# ping-pong pinned to one CPU, back to back and paced, and the shape of those blocks (kit/guard/blockshape.py).
OFFCPU_HOT_BODY = 2550
OFFCPU_COLD_BODY = 4600
# A switch offcpu filters out is more than a comm compare: the --comm rule reads the process's name too, and
# the switch-in half looks the next task up. Its body, measured the same way (the program while nothing in
# scope runs, and around a ping-pong out of scope), and the switches per second per CPU it was measured at.
OFFCPU_FILTERED_HOT_BODY = 95
OFFCPU_FILTERED_COLD_BODY = 250
FILTERED_HOT_RATE = 230000
FILTERED_COLD_RATE = 2300
OFFCPU_REF = {"hot_rate": 90000, "cold_rate": 1350, "kernel_depth": 8.0, "user_depth": 2.0, "walk_share": 1.0,
              "filtered_hot_rate": FILTERED_HOT_RATE, "filtered_cold_rate": FILTERED_COLD_RATE}
# The CPU a block takes beyond its body (the tracepoint's dispatch, the caches it evicts): the bench's C
# ping-pong gained 4013 ns of CPU per block for a 3657 ns body.
OFFCPU_OVERHEAD = 1.1
# How a block's cost falls as blocks come faster on a CPU: paced ping-pongs here cost ~6.6 us per block at
# 1.1k/s, 4.3 at 3.3k/s, 3.6 at 7.9k/s, 2.9 at 17k/s, 2.3 back to back (290k/s): warmth 1 / (1 + rate / R0).
OFFCPU_WARM_RATE = 1500.0
# A paced block costs at most this many back-to-back ones (2.4-3.3x measured here): a calibration that says
# more was spoilt by a crowded moment, and is priced at this bound (its frames and walk scaled alike).
OFFCPU_COLD_MAX = 4.0

# ns per event: `kit calibrate` on the 2-core 6.18 development VM (extra CPU time per event, medians of 5
# rounds). Used when this host has no calibration of its own.
DEFAULT_NS = {
    "tracepoint_empty": 104, "tracepoint_hash": 146, "tracepoint_filter": 163,
    "tracepoint_pair": 668, "tracepoint_pair_filter": 278,
    "raw_tracepoint_empty": 79, "raw_tracepoint_hash": 113, "raw_tracepoint_filter": 120,
    "raw_tracepoint_pair": 561, "raw_tracepoint_pair_filter": 207,
    "stack": 1704,
    "uprobe_emulated": 630, "uprobe_stepped": 11500, "uretprobe_extra": 980,
    "perf_tracepoint": 120,
    # offcpu's whole in-scope path per block (kit/guard/calibrate_offcpu.py): around a ping-pong back to back (warm
    # caches) and paced (cold); then what one more frame of a kernel or user stack, and the hidden-caller walk,
    # add to a cold block (measured with stacks 1..120 frames deep and with the walk switched off)
    "offcpu_block": OFFCPU_HOT_BODY * OFFCPU_OVERHEAD, "offcpu_block_cold": OFFCPU_COLD_BODY * OFFCPU_OVERHEAD,
    "offcpu_kernel_frame": 180 * OFFCPU_OVERHEAD, "offcpu_user_frame": 40 * OFFCPU_OVERHEAD,
    "offcpu_walk": 600 * OFFCPU_OVERHEAD,
    # body only: the dispatch around it is the {f}_filter primitive's (kit/guard/costs.py offcpu_priced)
    "offcpu_filtered": OFFCPU_FILTERED_HOT_BODY, "offcpu_filtered_cold": OFFCPU_FILTERED_COLD_BODY,
    # the scope check and a 256-byte record to the stream buffer (kit/engine/stream.py): `kit calibrate` here measured it
    # ~85 ns over the empty program on the same hook (2 runs, 2026-12-03); priced as that over the empty above
    "tracepoint_output": 190, "raw_tracepoint_output": 165,
    # a kprobe rung's entry trap and program, and its kretprobe's return trampoline, around a body priced as
    # the tracepoint's: not measured here (this VM has no kprobes); bcc's and the kernel's own figures put a
    # kprobe at ~0.1-0.3 us and a kretprobe at about twice that, so this errs high
    "kprobe_traps": 900,
}
# What bpf_stats sees of each (the program body, not dispatch or trap), with its own ~30 ns per run of clock reads.
DEFAULT_BODY_NS = {
    "tracepoint_empty": 55, "tracepoint_hash": 95, "tracepoint_filter": 100,
    "tracepoint_pair": 560, "tracepoint_pair_filter": 192,
    "raw_tracepoint_empty": 54, "raw_tracepoint_hash": 96, "raw_tracepoint_filter": 105,
    "raw_tracepoint_pair": 516, "raw_tracepoint_pair_filter": 184,
    "stack": 1749, "uprobe_emulated": 55, "uprobe_stepped": 69, "uretprobe_extra": 450,
    "perf_tracepoint": 0,
    "offcpu_block": OFFCPU_HOT_BODY, "offcpu_block_cold": OFFCPU_COLD_BODY,
    "offcpu_kernel_frame": 180, "offcpu_user_frame": 40, "offcpu_walk": 600,
    "offcpu_filtered": OFFCPU_FILTERED_HOT_BODY, "offcpu_filtered_cold": OFFCPU_FILTERED_COLD_BODY,
    "tracepoint_output": 135, "raw_tracepoint_output": 130,
    "kprobe_traps": 60,
}

# cost class -> (terms paid per event in scope, terms paid per filtered event, programs run per event).
# "{f}" is the hook family actually attached (tracepoint or raw_tracepoint); "uprobe" is priced by instruction kind.
CLASSES = {
    "tracepoint_count": (("{f}_empty",), ("{f}_filter",), 1),
    "tracepoint_hash": (("{f}_hash",), ("{f}_filter",), 1),
    "tracepoint_pair": (("{f}_pair",), ("{f}_pair_filter",), 2),
    # a pair plus the submitter's own program, which stores who asked even for a request the scope rejects
    # (biolatency: block_getrq, then block_rq_issue and block_rq_complete)
    "tracepoint_pair_owner": (("{f}_pair", "{f}_hash"), ("{f}_pair_filter", "{f}_hash"), 3),
    "tracepoint_stack": (("{f}_hash", "stack"), ("{f}_filter",), 1),
    # offcpu: a block's switch-out (stacks, caller recovery) and switch-in (aggregation), calibrated whole;
    # priced cold until the rate and the blocks' shape are known (offcpu_priced)
    "offcpu_block": (("offcpu_block_cold",), ("{f}_filter",), 1),
    # a stream event (kit/engine/stream.py): the tracepoint and one record output to the buffer
    "tracepoint_output": (("{f}_output",), ("{f}_filter",), 1),
    # a syscall's entry and exit as a stream (opensnoop --stream): the pair, then a record out at exit.
    # Priced as the pair plus a whole output event, one dispatch more than it pays (an over-estimate)
    "tracepoint_pair_output": (("{f}_pair", "{f}_output"), ("{f}_pair_filter",), 2),
    "uprobe_count": (("uprobe",), ("uprobe",), 1),
    "uprobe_pair": (("uprobe", "uretprobe_extra"), ("uprobe", "uretprobe_extra"), 2),
    "uprobe_pair_stack": (("uprobe", "uretprobe_extra", "stack"), ("uprobe", "uretprobe_extra"), 2),
    # profile: a timer sample on a CPU running a task in scope takes its kernel and user stacks and counts
    # them in a hash; idle and out-of-scope samples pay the filter
    "perf_sample_stack": (("{f}_hash", "stack"), ("{f}_filter",), 1),
    # runqlat, per sched_switch (its rate hook): the wakeup that queued the task switching in, and that
    # switch-in (lookup, histogram, worst wait); out of scope, both programs' filters
    "runq_pair": (("{f}_pair",), ("{f}_pair_filter",), 2),
    # lock entry + its return + unlock entry, per lock/unlock cycle (lockhold)
    "uprobe_lock_cycle": (("uprobe", "uretprobe_extra", "uprobe"), ("uprobe", "uretprobe_extra", "uprobe"), 3),
}


@dataclasses.dataclass
class Costs:
    in_ns: float
    out_ns: float
    progs_per_event: int
    body_in_ns: float
    body_out_ns: float
    source: str          # "calibration" or "cost class defaults"
    terms: dict          # primitive -> ns, what in/out were built from
    kind: str = ""       # uprobes: kind of the target's first instruction
    note: str = ""
    measure_ns: float = 0.0  # what kit's rate measurement (a perf event on the hook) adds per event
    detail: dict = None      # offcpu: what the block price was made of (offcpu_priced)

    def as_dict(self):
        d = {"in_ns": round(self.in_ns), "out_ns": round(self.out_ns), "body_in_ns": round(self.body_in_ns),
             "body_out_ns": round(self.body_out_ns), "source": self.source,
             "terms": {k: round(v) for k, v in self.terms.items()}}
        if self.kind:
            d["uprobe_first_insn"] = self.kind
        if self.detail:
            d["offcpu"] = self.detail
        return d


def cache_path():
    env = os.environ.get("KIT_CALIBRATION")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/cache/kit/calibration.json"
    return os.path.join(os.path.expanduser("~"), ".cache", "kit", "calibration.json")


def host_key():
    """What a calibration is valid for: the same kernel on the same CPUs."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"kernel": platform.release(), "machine": platform.machine(), "cpu": model, "ncpu": os.cpu_count() or 1}


def load_calibration(path=None):
    """(calibration dict or None, note). A calibration for another kernel or CPU is ignored."""
    path = path or cache_path()
    try:
        with open(path) as f:
            cal = json.load(f)
    except FileNotFoundError:
        return None, "no calibration for this host: costs are the cost-class defaults (run `kit calibrate`)"
    except (OSError, ValueError) as e:
        return None, f"calibration {path} is unreadable ({e}); using cost-class defaults"
    if cal.get("version") != CALIBRATION_VERSION or cal.get("host") != host_key():
        return None, f"calibration {path} is for another kernel or CPU; run `kit calibrate` again"
    if cal.get("partial"):
        return cal, (f"{', '.join(cal['partial'])} calibrated {cal.get('created', '?')} (on first use); other costs "
                     "are the cost-class defaults (run `kit calibrate`)")
    return cal, f"calibrated {cal.get('created', '?')}"


def save_calibration(cal, path=None):
    path = path or cache_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cal, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def _primitive(name, cal, kind):
    """(ns, body ns, from calibration?) of one primitive."""
    if name == "uprobe":
        default = "uprobe_emulated" if insn.emulated(kind or "other") else "uprobe_stepped"
        if cal:
            up = cal.get("uprobe", {})
            k = kind if kind in up else ("other" if "other" in up else None)
            if k:
                return up[k], cal.get("uprobe_body", {}).get(k, DEFAULT_BODY_NS[default]), True
        return DEFAULT_NS[default], DEFAULT_BODY_NS[default], False
    if cal and name in cal.get("ns", {}):
        return cal["ns"][name], cal.get("body_ns", {}).get(name, DEFAULT_BODY_NS[name]), True
    return DEFAULT_NS[name], DEFAULT_BODY_NS[name], False


def uprobe_ns(kind, cal=None):
    """What one uprobe hit costs the traced thread, by the kind of its first instruction."""
    return _primitive("uprobe", cal, kind)[0]


def uretprobe_extra_ns(cal=None):
    """What a uretprobe's return trampoline adds to its function's entry trap."""
    return _primitive("uretprobe_extra", cal, "")[0]


def for_class(cost_class, hook_type, kind="", cal=None, note=""):
    ins, outs, progs = CLASSES[cost_class]
    family = "raw_tracepoint" if hook_type == "raw_tracepoint" else "tracepoint"
    terms, calibrated = {}, []

    def total(names):
        ns = body = 0.0
        for n in names:
            n = n.format(f=family)
            v, b, c = _primitive(n, cal, kind)
            label = f"uprobe[{kind or 'other'}]" if n == "uprobe" else n
            terms[label] = v
            calibrated.append(c)
            ns, body = ns + v, body + b
        return ns, body

    if hook_type in ("kprobe", "kretprobe"):  # every call pays the traps, in scope or not
        ins, outs = ins + ("kprobe_traps",), outs + ("kprobe_traps",)
    in_ns, body_in = total(ins)
    out_ns, body_out = total(outs)
    source = "calibration" if calibrated and all(calibrated) else (
        "calibration + cost class defaults" if any(calibrated) else "cost class defaults")
    if cost_class.startswith("uprobe"):
        trap, body, _ = _primitive("uprobe", cal, kind)
        measure_ns = max(trap - body, 0.0)  # a perf uprobe event pays the trap, not the program
    else:
        measure_ns = _primitive("perf_tracepoint", cal, kind)[0]
    return Costs(in_ns=in_ns, out_ns=out_ns, progs_per_event=progs, body_in_ns=body_in, body_out_ns=body_out,
                 source=source, terms=terms, kind=kind, note=note, measure_ns=measure_ns)


# --- offcpu: a block priced by how warm the caches are and how deep its stacks go ----------------------

def warmth(rate):
    """1 for a block on a CPU where blocks are rare (cold caches), towards 0 as they come back to back."""
    return 1.0 / (1.0 + max(rate, 0.0) / OFFCPU_WARM_RATE)


def between(rate, hot, cold, hot_rate, cold_rate):
    """A price measured hot (at hot_rate per second) and cold (at cold_rate), at `rate`: following warmth()
    between the two, and no further either way (see offcpu_block_body)."""
    w_hot, w_cold = warmth(hot_rate), warmth(cold_rate)
    if w_cold - w_hot < 0.02:  # measured at about the same rate: nothing to interpolate
        return (hot + cold) / 2
    w = min(max(warmth(rate), w_hot), w_cold)
    return hot + (cold - hot) * (w - w_hot) / (w_cold - w_hot)


def offcpu_calibration(body_hot, body_cold, ref, filtered=None):
    """The calibration entries for offcpu from its measured body per block, hot and cold, and the
    calibration ping-pong's rates and shape (ref); filtered: (hot, cold) body of a switch it filters out.
    The per-frame and walk terms are the development VM's, scaled by how much dearer a cold block is on
    this host than there."""
    host = body_cold / OFFCPU_COLD_BODY
    body = {"offcpu_block": body_hot, "offcpu_block_cold": body_cold}
    for k in ("offcpu_kernel_frame", "offcpu_user_frame", "offcpu_walk"):
        body[k] = DEFAULT_BODY_NS[k] * host
    ns = {k: max(1.0, round(v * OFFCPU_OVERHEAD, 1)) for k, v in body.items()}
    if filtered is not None:
        body["offcpu_filtered"], body["offcpu_filtered_cold"] = filtered
        ns.update(offcpu_filtered=round(filtered[0], 1), offcpu_filtered_cold=round(filtered[1], 1))
    return {"ns": ns, "body_ns": {k: round(v, 1) for k, v in body.items()}, "offcpu": dict(ref)}


def offcpu_block_body(rate, shape, prim, ref):
    """Body ns of one block on a CPU where in-scope blocks come at `rate` per second, for blocks of
    `shape` (kit/guard/blockshape.py; None: the calibration ping-pong's). prim: primitive -> body ns.
    Between the hot and the cold measurement the price follows warmth(); blocks rarer than the cold
    measurement's are priced as it (a ping-pong paced slower, whose CPU idles between its blocks, costs
    more still, but the demo's CPUs at half that rate paid no more than the cold ping-pong: its CPUs do
    other work in between; and so rare blocks cost little in all). A shape differs from the
    calibration's by frames and walks, each priced cold and scaled by the same warmth."""
    cold = prim["offcpu_block_cold"]
    base = between(rate, prim["offcpu_block"], cold, ref["hot_rate"], ref["cold_rate"])
    if shape is None:
        return base
    extra = (prim["offcpu_kernel_frame"] * (shape.kernel_depth - ref["kernel_depth"])
             + prim["offcpu_user_frame"] * (shape.user_depth - ref["user_depth"])
             + prim["offcpu_walk"] * (shape.walk_share - ref["walk_share"]))
    return max(base + extra * base / cold, 0.3 * base)


def offcpu_filtered_body(totals, rates, prim, ref):
    """Body ns of a switch offcpu filters out, on CPUs where the program runs totals {cpu: per second}
    (rates: the in-scope part): each CPU's price by how often the program runs there, weighed by the
    switches it filters there. Unknown rates: cold."""
    hot, cold = prim["offcpu_filtered"], prim["offcpu_filtered_cold"]
    out = {cpu: max(t - rates.get(cpu, 0.0), 0.0) for cpu, t in (totals or {}).items()}
    n = sum(out.values())
    if not n:
        return max(hot, cold)
    return sum(f * between(totals[cpu], hot, cold, ref["filtered_hot_rate"], ref["filtered_cold_rate"])
               for cpu, f in out.items()) / n


def offcpu_priced(c, rates, shape, cal=None, totals=None):
    """Costs c (cost class offcpu_block) with the in-scope price set for in-scope blocks coming at
    rates {cpu: per second} and looking like shape: the rate-weighted mean over CPUs; and the filtered
    price for the program's runs coming at totals {cpu: per second} (kit/guard/rate.py: every switch there)."""
    names = ("offcpu_block", "offcpu_block_cold", "offcpu_kernel_frame", "offcpu_user_frame", "offcpu_walk",
             "offcpu_filtered", "offcpu_filtered_cold")
    got = {n: _primitive(n, cal, "") for n in names}
    body_prim = {n: b for n, (_v, b, _c) in got.items()}
    spoilt = body_prim["offcpu_block_cold"] / max(OFFCPU_COLD_MAX * body_prim["offcpu_block"], 1.0)
    if spoilt > 1:
        for n in ("offcpu_block_cold", "offcpu_kernel_frame", "offcpu_user_frame", "offcpu_walk"):
            body_prim[n] /= spoilt
    ratio = {n: v / b if b else OFFCPU_OVERHEAD for n, (v, b, _c) in got.items()}
    ref = dict(OFFCPU_REF, **((cal or {}).get("offcpu") or {}))
    total = sum(r for r in rates.values() if r > 0)
    weights = {cpu: r / total for cpu, r in rates.items() if r > 0} if total else {None: 1.0}
    body = sum(wt * offcpu_block_body(rates.get(cpu, 0.0) if cpu is not None else 0.0, shape, body_prim, ref)
               for cpu, wt in weights.items())
    body_out = offcpu_filtered_body(totals, rates, body_prim, ref)
    out_ns = body_out + max(c.out_ns - c.body_out_ns, 0.0)  # the dispatch around it: the filter primitive's
    body = max(body, body_out)  # a block does at least what a filtered switch does
    in_ns = body * ratio["offcpu_block_cold"]
    calibrated = [ok for _v, _b, ok in got.values()]
    calibrated += [_primitive(t, cal, "")[2] for t in c.terms if not t.startswith("offcpu_")]  # the dispatch
    source = "calibration" if all(calibrated) else "calibration + cost class defaults" if any(calibrated) else \
        "cost class defaults"
    busiest = max(rates.values(), default=0.0)
    detail = {"blocks_per_s_per_cpu": round(busiest, 1), "warmth": round(warmth(busiest), 2),
              "switches_per_s_per_cpu": round(max((totals or {}).values(), default=0.0), 1),
              "shape": shape.as_dict() if shape else None, "reference": ref}
    terms = {"offcpu_block": in_ns, "offcpu_filtered": out_ns}
    return dataclasses.replace(c, in_ns=in_ns, body_in_ns=body, out_ns=out_ns, body_out_ns=body_out, terms=terms,
                               source=source, detail=detail)
