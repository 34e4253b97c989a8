"""Writes bench/RESULTS.md from the cases' results: the machine, the targets
at a glance (met or missed, and why), then every figure with its median and
spread and the ratio kit / peer taken inside each repetition."""

import datetime
import os
import platform
import subprocess

from bench import explain
from bench.stats import Figure, noise_bound, paired_ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    pkgs = _cmd("dpkg-query", "-W", "-f=${Package} ${Version}\\n", "python3-bpfcc", "bpftrace")
    return {
        "kernel": f"{platform.release()} ({platform.machine()})",
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "packages": ", ".join(pkgs.splitlines()),
        "python": platform.python_version(),
        "kit": _cmd("git", "-C", ROOT, "describe", "--always", "--dirty"),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Verdicts:
    """The targets table: each row says met, missed, or not measurable here, and why."""

    def __init__(self):
        self.rows = []

    def add(self, target, case, kit, peer, ratio, limit, key, lower_is_better=True, noisy=False):
        if noisy:
            verdict = "not resolved (within noise)"
        elif not ratio:
            verdict = "n/a"
        else:
            ok = ratio.median <= limit if lower_is_better else ratio.median >= limit
            verdict = "met" if ok else "**missed**"
        self.rows.append({"target": target, "case": case, "kit": kit, "peer": peer, "ratio": ratio,
                          "limit": limit, "verdict": verdict, "key": key})

    def missed(self):
        return [r for r in self.rows if r["verdict"] == "**missed**"]


def _ratio_cell(fig):
    return fig.fmt(2) if fig else "n/a"


def hook_section(res, verdicts, out):
    c = res.case
    w = out.append
    w(f"### {c.name}\n")
    w(f"Workload: {explain.WORKLOAD[c.name]} Bare run: {res.bare_seconds().fmt()} for "
      f"{res.events().fmt(0)} {c.workload.units}. kit's hook here: `{c.hook}`.\n")
    kit_body, kit_added = res.body_ns(c.kit_label), res.added_ns(c.kit_label)
    w("| tool | program body per event (bpf_stats) | workload CPU added per event | workload slowdown (wall clock) "
      "| kit / tool, body | kit / tool, added |")
    w("|---|---|---|---|---|---|")
    for label in [c.kit_label, *c.peers, *c.extras]:
        if label in res.failed and not res.body_ns(label):
            w(f"| {label} | cannot run here: {explain.failure(label, res.failed[label])} | | | | |")
            continue
        body, added = res.body_ns(label), res.added_ns(label)
        peer = label in c.peers
        rb = paired_ratio(kit_body, body) if peer else None
        ra = paired_ratio(kit_added, added) if peer else None
        noisy = " (within noise)" if noise_bound(added) else ""
        w(f"| {label} | {body.fmt()} | {added.fmt()}{noisy} | {res.slowdown_pct(label).fmt(1)} "
          f"| {_ratio_cell(rb) if rb is not None else '—'} | {_ratio_cell(ra) if ra is not None else '—'} |")
        if label == "bpftrace":
            verdicts.add("per-event cost ≤ the bpftrace equivalent (program body)", c.name, body_fmt(kit_body),
                         body_fmt(body), rb, 1.0, ("per_event_body", c.name))
            verdicts.add("per-event cost ≤ the bpftrace equivalent (CPU added to the workload)", c.name,
                         kit_added.fmt(), added.fmt(), ra, 1.0, ("per_event_added", c.name),
                         noisy=noise_bound(kit_added) or noise_bound(added))
    for label, why in c.unavailable.items():
        w(f"| {label} | none: {why} | | | | |")
    w("")
    w(f"An event kit's scope filters out, against an empty program on the same hook (`{c.hook}`):\n")
    w("| tool | program body per event | workload CPU added per event | × empty, body | × empty, added |")
    w("|---|---|---|---|---|")
    empty_body, empty_added = res.body_ns(c.empty_label), res.added_ns(c.empty_label)
    w(f"| {c.empty_label} | {empty_body.fmt()} | {empty_added.fmt()}"
      f"{' (within noise)' if noise_bound(empty_added) else ''} | 1 | 1 |")
    for label in c.filtered:
        body, added = res.body_ns(label), res.added_ns(label)
        scope = label.split(", ", 1)[-1]
        if res.never_ran(label):
            w(f"| {label} | 0: never ran (kit put no breakpoint in this process) | — | 0 | 0 |")
            for what in ("body", "CPU added"):
                verdicts.add(f"a filtered-out event ≤ 1.2× an empty program ({what}; {scope})", c.name, "0",
                             (empty_body if what == "body" else empty_added).fmt(), Figure([0.0], "×"), 1.2,
                             ("filtered", c.name))
            continue
        rb, ra = paired_ratio(body, empty_body), paired_ratio(added, empty_added)
        w(f"| {label} | {body.fmt()} | {added.fmt()}{' (within noise)' if noise_bound(added) else ''} "
          f"| {_ratio_cell(rb)} | {_ratio_cell(ra)} |")
        verdicts.add(f"a filtered-out event ≤ 1.2× an empty program (body; {scope})", c.name,
                     body.fmt(), empty_body.fmt(), rb, 1.2, ("filtered_body", c.name))
        verdicts.add(f"a filtered-out event ≤ 1.2× an empty program (CPU added; {scope})", c.name, added.fmt(),
                     empty_added.fmt(), ra, 1.2, ("filtered_added", c.name),
                     noisy=noise_bound(added) or noise_bound(empty_added))
    w("")
    checks = []
    for label in res.labels():
        rpe = res.runs_per_event(label)
        if rpe:
            checks.append(f"{label} {rpe.fmt(2)}")
    w(f"Check, program runs per workload event while timed (the probes each event passes: 1 on a tracepoint, 2 or "
      f"3 for a uprobe pair; a little more where the program also saw the box's other {c.workload.units}): "
      + "; ".join(checks) + ".")
    seen = res.kit_seen(c.kit_label)
    filt = [(label, res.kit_seen(label, "kit_filtered")) for label in c.filtered]
    per = explain.KIT_EVENTS_PER.get(c.name)
    of = (f"of its own events per workload event (it counts each of the {per} state changes a connection here "
          f"goes through: {per} expected)" if per else "of the workload's events")
    w(f"Check against the workload's own count: kit recorded {seen.fmt(3)} {of} "
      f"(its `events` over the workload's count, all runs under it); the filtering runs rejected "
      + "; ".join(f"{f.fmt(3)} ({label})" for label, f in filt) + " of them (`filtered`).\n")


def body_fmt(fig):
    return fig.fmt()


def start_section(hooks, references, verdicts, out):
    w = out.append
    w("| recipe | tool | exec → attached | kit / tool |")
    w("|---|---|---|---|")
    for name, res in hooks.items():
        c = res.case
        kit = res.ready_s(c.kit_label)
        for label in [c.kit_label, *c.peers]:
            if label in res.failed and not res.ready_s(label):
                w(f"| {name} | {label} | cannot run here: {explain.failure(label, res.failed[label])} | |")
                continue
            fig = res.ready_s(label)
            ratio = paired_ratio(kit, fig) if label != c.kit_label else None
            w(f"| {name} | {label} | {fig.fmt(2)} | {_ratio_cell(ratio) if ratio is not None else '—'} |")
            if label.startswith("bcc "):
                verdicts.add(f"start to attached ≤ bcc's own tool ({label})", name, kit.fmt(2), fig.fmt(2), ratio,
                             1.0, ("start_bcc", name))
            elif label == "bpftrace":
                verdicts.add("start to attached, toward bpftrace's (reported, no limit)", name, kit.fmt(2),
                             fig.fmt(2), ratio, float("inf"), ("start_bpftrace", name))
        for label, why in c.unavailable.items():
            w(f"| {name} | {label} | none: {why} | |")
        if not any(label.startswith("bcc ") and res.ready_s(label) for label in c.peers):
            verdicts.add("start to attached ≤ bcc's own tool", name, kit.fmt(2), "no bcc tool runs here", None, 1.0,
                         ("start_bcc", name))
    for res in references.values():
        for label, fig in res["figures"].items():
            w(f"| (reference) | {label} | {fig.fmt(2)} | — |")
        for label, why in res["failed"].items():
            w(f"| (reference) | {label} | cannot run here: {explain.failure(label, why)} | |")
    w("")


def footprint_section(results, verdicts, out):
    w = out.append
    w("| recipe | tool | CPU while aggregating (% of one core) | CPU in all, start-up included | peak memory "
      "(RSS) | kit / tool, memory | events kit aggregated |")
    w("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        kit_mem = res.fig("kit", "peak_mb", "MB")
        for label in res.rows:
            if label in res.failed and not res.fig(label, "peak_mb", "MB"):
                w(f"| {name} | {label} | cannot run here: {explain.failure(label, res.failed[label])} | | | | |")
                continue
            cpu = res.fig(label, "steady_cpu_pct", "%")
            mem = res.fig(label, "peak_mb", "MB")
            ratio = paired_ratio(kit_mem, mem) if label != "kit" else None
            ev = res.fig(label, "kit_events", "") if label == "kit" else None
            w(f"| {name} | {label} | {cpu.fmt(2)} | {res.fig(label, 'total_cpu_s', 's').fmt(2)} | {mem.fmt(0)} "
              f"| {_ratio_cell(ratio) if ratio is not None else '—'} | {ev.fmt(0) if ev else ''} |")
            if label == "kit":
                verdicts.add("kit's user-space CPU ≤ 1% of a core while aggregating", name, cpu.fmt(2), "",
                             cpu, 1.0, ("cpu", name))
            elif label.startswith("bcc "):
                verdicts.add(f"peak memory ≤ 1.2× bcc's tool ({label})", name, kit_mem.fmt(0), mem.fmt(0), ratio,
                             1.2, ("memory", name))
        for label, why in res.case.unavailable.items():
            w(f"| {name} | {label} | none: {why} | | | | |")
        if not any(label.startswith("bcc ") and res.fig(label, "peak_mb", "MB") for label in res.rows):
            verdicts.add("peak memory ≤ 1.2× bcc's tool", name, kit_mem.fmt(0), "no bcc tool runs here", None, 1.2,
                         ("memory", name))
    w("")


def _price(hook, label):
    """ns per event of kit's count a tool costs the workload: the hook case's CPU added when it is
    resolved, else the program body (a lower bound), and which of the two it is. Where one workload
    event is several of kit's (explain.KIT_EVENTS_PER), its price is shared among them."""
    per = explain.KIT_EVENTS_PER.get(hook.case.name, 1)
    added = hook.added_ns(label)
    if added and not noise_bound(added):
        return added.median / per, "CPU added" + (f" / {per}" if per > 1 else "")
    body = hook.body_ns(label)
    return (body.median / per, "body, lower bound" + (f", / {per}" if per > 1 else "")) if body else (None, None)


def guard_section(guards, hooks, out):
    w = out.append
    ncpu = os.cpu_count() or 1
    w("| load | estimated events/s in scope | counted events/s in scope | estimated ns per event | measured ns "
      "per event (how) | estimate | kit's meter | programs' run time (bpf_stats, lower bound) | measured "
      "(counted × measured ns) | estimate / measured | estimate / kit's meter | estimate / programs' run time |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    pct = 100.0 / (ncpu * 1e9)
    for key, g in guards.items():
        case = g.case
        stats = g.fig(lambda r: r["stats_body_ns_per_s"] * pct, "%")
        est = g.fig(lambda r: r["estimate"]["cpu_pct"], "%")
        meter = g.fig(lambda r: r["overhead"]["cpu_pct"], "%")
        hook = hooks.get(case.name) if case.measured_by == "hook case" else None
        ns_in, how = _price(hook, hook.case.kit_label) if hook else (None, None)
        if hook:
            filt = next(iter(hook.case.filtered), None)
            ns_out, _how = _price(hook, filt) if filt and not hook.never_ran(filt) else (0.0, None)

            def measured(r):
                s = r["seconds"]
                return (r["events"] / s * ns_in + r["filtered"] / s * (ns_out or 0.0)) * pct
            meas = g.fig(measured, "%") if ns_in is not None else Figure([], "%")
            price = f"{ns_in:.0f} ({how})" if ns_in is not None else "n/a"
        else:  # no hook case on this load: the kernel's run time of the programs is the measure
            meas = stats
            price = f"{g.fig(lambda r: r['stats_body_ns_per_s'] / r['events'] * r['seconds']).fmt(0)} (run time)"
        w(f"| {key} | {g.fig(lambda r: r['estimate']['in_scope_per_s']).fmt(0)} "
          f"| {g.fig(lambda r: r['events'] / r['seconds']).fmt(0)} "
          f"| {g.fig(lambda r: r['estimate']['cost']['in_ns']).fmt(0) if g.has_estimate() else 'n/a'} "
          f"| {price} | {est.fmt(2)} | {meter.fmt(2)} | {stats.fmt(2)} | {meas.fmt(2)} "
          f"| {_ratio_cell(paired_ratio(est, meas))} | {_ratio_cell(paired_ratio(est, meter))} "
          f"| {_ratio_cell(paired_ratio(est, stats))} |")
    w("")
    w(explain.GUARD_NOTES + "\n")


def render(meta, hooks, starts, footprints, guards, mode, section=False):
    """The whole RESULTS.md, or (section) the part a run of some recipes adds to one: its own
    header, machine, targets and figures, every heading one level down, without the method's
    footer and the earlier run's changes to kit."""
    verdicts = Verdicts()
    body = []
    if hooks:
        body.append("## Per-event cost and the workload's slowdown\n")
        body.append(explain.PER_EVENT_METHOD.format(wall_runs=mode.wall_runs) + "\n")
        for res in hooks.values():
            hook_section(res, verdicts, body)
    if hooks:
        body.append("## Start to attached\n")
        body.append(explain.START_METHOD + "\n")
        start_section(hooks, starts, verdicts, body)
    if footprints:
        body.append("## kit's own CPU and memory while it aggregates\n")
        body.append(explain.FOOTPRINT_METHOD.format(seconds=mode.footprint_s) + "\n")
        footprint_section(footprints, verdicts, body)
    if guards:
        body.append("## The guardrail's estimate against the measured cost\n")
        body.append(explain.GUARD_METHOD.format(seconds=mode.guard_s, ncpu=os.cpu_count() or 1) + "\n")
        guard_section(guards, hooks, body)

    recipes = list(hooks or footprints) or list(dict.fromkeys(g.case.name for g in guards.values()))
    names = ", ".join(recipes)
    title = f"# {names}: results of a run of their own\n" if section else "# kit benchmarks: results\n"
    command = meta.get("command") or (f"sudo ./bench/run --only {','.join(recipes)}" if section else "sudo ./bench/run")
    out = [title,
           f"Written by `{command}` on {meta['date']} in {meta['minutes']:.0f} min"
           f"{' (QUICK MODE: one repetition, tiny workloads; not for reading)' if meta['quick'] else ''}. "
           f"Every figure is the median [min–max] over the repetitions; ratios kit / peer are taken inside each "
           f"repetition, where the two ran back to back in alternating order, and then summarized the same way. "
           "Absolute times drift on this shared 2-CPU VM (other sessions run their tests on it); the ratios are "
           "the result." + (SECTION_NOISE if section else "") + "\n",
           "## Machine\n", "| | |", "|---|---|"]
    for k, v in meta["machine"].items():
        out.append(f"| {k} | {v} |")
    out.append(f"| load average | {meta['load_start']} at the start, {meta['load_end']} at the end |")
    out.append(f"| repetitions | per-event and start-up {mode.reps}, footprint {mode.footprint_reps} |")
    if meta.get("sysctl_on"):
        out.append("| note | kernel.bpf_stats_enabled was on during some runs (set by someone else): every "
                   "probed event paid for timing in those, bare runs excepted |")
    out.append("")
    if verdicts.rows or not section:
        out.append("## Targets\n")
        out.append("| target | recipe | kit | peer | kit / peer | limit | verdict |")
        out.append("|---|---|---|---|---|---|---|")
    for r in verdicts.rows:
        limit = "—" if r["limit"] == float("inf") else f"≤ {r['limit']:g}" + ("%" if r["key"][0] == "cpu" else "×")
        ratio = r["ratio"].fmt(2) if r["ratio"] else "n/a"
        verdict = "reported" if r["limit"] == float("inf") else r["verdict"]
        out.append(f"| {r['target']} | {r['case']} | {r['kit']} | {r['peer'] or '—'} | "
                   f"{ratio if r['key'][0] != 'cpu' else '—'} | {limit} | {verdict} |")
    if verdicts.rows or not section:
        out.append("")
    misses = verdicts.missed()
    if misses:
        out.append("### Where kit misses, and why\n")
        seen = set()
        for r in misses:
            if r["key"] in seen:
                continue
            seen.add(r["key"])
            out.append(f"- **{r['target']}, {r['case']}**: {explain.why(r['key'])}")
        out.append("")
    if not section:
        out.append("### Changes to kit\n")
        out.append("Where a miss was cheap to fix in kit, it was fixed (small, local changes), then measured "
                   "against the kit before it, side by side in the same way:\n")
        out.append(explain.CHANGES)
    notes = explain.notes(hooks, starts, footprints, section=section)
    if guards and not any(g.has_estimate() for g in guards.values()):
        notes = ["The guardrail in this kit prices runs from a fixed cost class only; its rate-measuring "
                 "estimate (`kit estimate`) is not in it yet, so the estimate columns of its table are empty."] + notes
    if notes:
        out.append("### Also noticed\n")
        out += [f"- {n}" for n in notes]
        out.append("")
    if section:
        return "\n".join("#" + line if line.startswith("#") else line for line in out + body) + "\n"
    return "\n".join(out + body) + "\n" + explain.METHOD_FOOTER


SECTION_NOISE = (" These recipes were measured in a run of their own, later than the rows above and on a busier "
                 "box (other helpers' sessions were running their tests on it: see the load average), so their "
                 "absolute figures are noisier than the rows above and are not to be compared with them; the "
                 "ratios inside this section, taken in the same repetitions, are the result (the machine table says on "
                 "which CPU they ran; it may not be the one above). The method is the "
                 "one described above; a full `sudo ./bench/run` measures every recipe in one run again.")

MARK_BEGIN, MARK_END = "<!-- bench section: {} -->", "<!-- end of bench section: {} -->"


def merge_section(text, names, section):
    """RESULTS.md with the section of the recipes `names` put in (replacing an earlier one of the same
    recipes), before its Reproducing footer; the rest of the file is kept as it is."""
    key = ",".join(names)
    begin, end = MARK_BEGIN.format(key), MARK_END.format(key)
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1].lstrip("\n")
    footer = "## Reproducing"
    if footer in text:
        head, tail = text.split(footer, 1)
        return head + block + "\n" + footer + tail
    return text.rstrip("\n") + "\n\n" + block


def now():
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def as_json(hooks, starts, footprints, guards):
    def fig(x):
        return x.to_json() if isinstance(x, Figure) else x
    return {
        "hooks": {k: v.to_json() for k, v in hooks.items()},
        "starts": {k: {"figures": {lab: fig(f) for lab, f in v["figures"].items()}, "failed": v["failed"]}
                   for k, v in starts.items()},
        "footprints": {k: v.to_json() for k, v in footprints.items()},
        "guards": {k: v.to_json() for k, v in guards.items()},
    }
