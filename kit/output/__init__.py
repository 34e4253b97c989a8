"""Human and JSON renderings of a run's result."""

import json

from tabulate import tabulate

from kit.errors import printable
from kit.output.units import TIME_UNITS, duration  # noqa: F401 (output.duration is part of its interface)


def heading(field):
    """A column's heading: the field's name, its unit said once (total_ms -> total, its cells say ms)."""
    if field.unit in TIME_UNITS:
        return field.name[: -len(field.unit) - 1] if field.name.endswith("_" + field.unit) else field.name
    return f"{field.name} ({field.unit})" if field.unit else field.name


def cell(field, v):
    """One table cell through its catalog field: times in human units, other numbers fixed-point."""
    if field.unit in TIME_UNITS and isinstance(v, (int, float)) and not isinstance(v, bool):
        return duration(v, field.unit)
    return _cell(v)


def table(fields, rows):
    """Rows as an aligned text table, numbers and times right-aligned."""
    body = [[cell(f, r.get(f.name)) for f in fields] for r in rows]
    align = ["right" if all(isinstance(r.get(f.name), (int, float)) or r.get(f.name) is None for r in rows)
             else "left" for f in fields]
    return tabulate(body, headers=[heading(f) for f in fields], tablefmt="simple", colalign=align,
                    disable_numparse=True)


def to_json(result, stream):
    json.dump(result, stream, default=str, sort_keys=False)
    stream.write("\n")


def log2_hist(buckets, unit, width=40):
    """bcc-style log2 histogram text from [{low, high, count}]."""
    if not buckets:
        return "  (no samples)"
    peak = max(b["count"] for b in buckets) or 1
    lines = [f"  {unit:>21} : count     distribution"]
    for b in buckets:
        bar = "*" * int(round(width * b["count"] / peak))
        lines.append(f"  {b['low']:>9} -> {b['high']:<9}: {b['count']:<9} |{bar:<{width}}|")
    return "\n".join(lines)


def human(result, recipe, stream, top=20):
    w = stream.write
    w(f"{recipe.name}: {recipe.summary}\n")
    w(f"hook {result['hook']} | {result['duration_s']:.1f}s | scope "
      f"{', '.join(f'{k}={v}' for k, v in result['scope'].items()) or 'none'}\n\n")
    rows = result.get("rows") or []
    if recipe.output == "stacks":
        from kit.output import stacks
        w(stacks.human_text(result, top=top // 2, value=result.get("stack_value", "total_us")))
    elif rows and recipe.output in ("table", "histograms"):
        w(table(recipe.fields, rows[:top]) + "\n")
        if len(rows) > top:
            w(f"... {len(rows) - top} more rows (use --json for all)\n")
    elif recipe.output == "stream":
        w(stream_summary(result, recipe, top=top))
    elif recipe.output != "histograms":
        w("(no events in scope)\n")
    for name, buckets in (result.get("histograms") or {}).items():
        w(f"\n{name}:\n{log2_hist(buckets, name)}\n")
    for extra in result.get("text", []):
        w("\n" + extra.rstrip("\n") + "\n")
    w("\n")
    for note in result.get("notes", []):
        w(f"note: {note}\n")
    ov = result.get("overhead", {})
    lost = result["lost"]
    w(f"{result['events']} events, {result['filtered']} filtered out, lost: {lost['map_full']} map full, "
      f"{lost['stack_lost']} stacks, {lost.get('buffer', 0)} buffer, {lost['other']} other"
      + (f", {lost['skipped']} skipped by the kernel" if lost.get("skipped") else "")
      + f" | stopped by {result['stopped_by']}\n")
    if result.get("lost_events"):
        w(lost_warning(result) + "\n")
    if result.get("forced"):
        w("warning: the guardrail was overridden with --force\n")
    from kit.output.hints import text as hints_text
    w(hints_text(result))  # computed from these results; nothing when they support no next step
    w(summary_line(ov))


def lost_warning(result):
    """Says loudly that the numbers above undercount, and what to do about each kind of loss."""
    lost = result["lost"]
    why = {"map_full": "a map was full (scope the run more narrowly)",
           "stack_lost": "stack captures failed (stack map full, or a stack that could not be walked)",
           "buffer": "the event buffer overflowed (kit could not keep up; scope the run more narrowly)",
           "other": "events the probe could not record",
           "skipped": "the kernel skipped kit's program while that program was already running on the CPU"}
    parts = [f"{lost[k]} because {why[k]}" for k in why if lost.get(k)]
    return f"warning: {result['lost_events']} events were lost, so the results above undercount: " + "; ".join(parts)


def _cell(v):
    """Table cells may hold what a traced process chose (its comm): never let it drive the terminal."""
    if isinstance(v, list):
        return printable(";".join(map(str, v)))
    if isinstance(v, str):
        return printable(v)
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1e15 else f"{v:.0f}"
    return "" if v is None else str(v)


def folded(result, stream, err):
    """Folded stacks, one per line, for flame graph tools (kit.output.stacks.folded_lines). stdout
    stays pure folded lines; the notes and any loss go to stderr, since a flame graph cannot say
    that it undercounts."""
    from kit.output import stacks
    for line in stacks.folded_lines(result.get("rows") or [], result.get("stack_value", "total_us")):
        stream.write(line + "\n")
    for note in result.get("notes", []):
        err.write(f"kit: note: {note}\n")
    if result.get("lost_events"):
        err.write(f"kit: {lost_warning(result)}\n")


def write_flamegraph(result, recipe, path, err):
    from kit.output import flamegraph
    scope = ", ".join(f"{k}={v}" for k, v in result.get("scope", {}).items()) or "no scope"
    from kit.output.stacks import measure_of
    value = result.get("stack_value", "total_us")
    title = f"kit {recipe.name}: {measure_of(value).title}, {scope}, {result.get('duration_s', 0):.0f}s"
    flamegraph.write(path, result.get("rows") or [], title=title, value=value)
    err.write(f"kit: flame graph written to {path}\n")


# ---- streams: a line per event as it arrives (kit/engine/stream.py), then a summary

def _stream_columns(recipe):
    """Fields every event has, shown as columns (the rest are the line's details)."""
    return [f for f in recipe.fields if not f.kinds and f.show == "always"]


def _stream_text(f, v):
    if v is None:
        return ""
    if isinstance(v, list):
        import shlex
        return printable(shlex.join(v))
    if f.decode == "wallclock" and isinstance(v, str):
        return v[11:23]  # HH:MM:SS.mmm of the ISO time
    return printable(v) if isinstance(v, str) else str(v)


def stream_header(recipe):
    cols = _stream_columns(recipe)
    head = " ".join(f"{f.name:<{max(f.width, len(f.name))}}" for f in cols)
    return head + (" details" if len(cols) < len(recipe.fields) else "")


def stream_line(recipe, values, kind=None):
    """One human line: the columns, then this kind's other fields as name=value (what a traced process
    chose, its comm and argv, escaped; argv shell-quoted so it pastes)."""
    cols = _stream_columns(recipe)
    parts = [f"{_stream_text(f, values.get(f.name)):<{max(f.width, len(f.name))}}" for f in cols]
    for f in recipe.fields:
        if f in cols or f.show == "json" or f.name not in values:
            continue
        v = values[f.name]
        if v is None or (f.show == "nonzero" and not v):
            continue
        unit = f" {f.unit}" if f.unit and not f.name.endswith(f"_{f.unit}") else ""
        parts.append(f"{f.name}={_stream_text(f, v)}{unit}")
    return " ".join(parts).rstrip()


def stream_json(values):
    """One JSON Lines object per event; the run's summary is the last line (to_json)."""
    return json.dumps({"type": "event", **values}, default=str)


def stream_summary(result, recipe, top=20):
    """What the run saw, after its lines: events per kind, drops, counts per group, hints."""
    s = result.get("stream") or {}
    kinds = ", ".join(f"{k} {n}" for k, n in (s.get("by_kind") or {}).items())
    n = s.get("received", 0)
    lines = [f"--- {n} event{'' if n == 1 else 's'} via the {s.get('buffer', 'buffer')}" + (f" ({kinds})" if kinds else "")
             + f" | {s.get('lost_in_kernel', 0)} dropped in the kernel | {s.get('capped', 0)} over the "
             f"{s.get('limit') or 'no'}/s limit not shown" + (f" | {s['failed']} failed" if s.get("failed") else "")]
    for name, rows in (result.get("groups") or {}).items():
        if not rows:
            continue
        cols = [name] + [k for k in rows[0] if k != name]
        for r in rows:
            cols += [k for k in r if k not in cols]
        body = [[_cell(r.get(c, 0)) for c in cols] for r in rows[:top]]
        lines.append(f"\nby {name}:\n" + tabulate(body, headers=cols, tablefmt="simple"))
    hints = result.get("hints") or []
    if hints:
        lines.append("\nhints:")
        for h in hints:
            lines.append(f"  {printable(h.get('text', ''))}" + (f": {printable(h['command'])}" if h.get("command") else ""))
    return "\n".join(lines) + "\n"


def summary_line(ov):
    """The last line of a human result: what the run cost."""
    if "cpu_pct" not in ov:
        return ""
    est = ov.get("estimate_cpu_pct")
    est_txt = f"; estimated {est:.3f}% before attaching" if est is not None else ""
    forced = " (guardrail overridden with --force)" if ov.get("forced") else ""
    return (f"cost: {ov['events']} events x {ov['ns_per_event']} ns + {ov['filtered']} filtered x "
            f"{ov['ns_per_filtered']} ns = {ov['cpu_pct']:.3f}% of CPU over {ov['seconds']:.1f}s "
            f"(peak {ov['peak_cpu_pct']:.3f}%, budget {ov['budget_pct']:g}%){est_txt}{forced}\n")
