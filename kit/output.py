"""Human and JSON renderings of a run's result."""

import json

from tabulate import tabulate

from kit.errors import printable


TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def duration(value, unit="us"):
    """A time given in `unit` as fixed-point text in the unit that reads best: 4.89 s, 12.3 ms, 850 µs."""
    if value is None:
        return ""
    if not value:
        return "0"
    secs = float(value) * TIME_UNITS[unit]
    if secs >= 1.0:
        return f"{secs:.2f} s"
    if secs >= 1e-3:
        return f"{secs * 1e3:.1f} ms"
    us = secs * 1e6
    return f"{us:.1f} µs" if us >= 1 else f"{us:.2f} µs"


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
        from kit import stacks
        w(stacks.human_text(result, top=top // 2, value=result.get("stack_value", "total_us")))
    elif rows and recipe.output in ("table", "histograms"):
        w(table(recipe.fields, rows[:top]) + "\n")
        if len(rows) > top:
            w(f"... {len(rows) - top} more rows (use --json for all)\n")
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
      f" | stopped by {result['stopped_by']}\n")
    if result.get("lost_events"):
        w(lost_warning(result) + "\n")
    if result.get("forced"):
        w("warning: the guardrail was overridden with --force\n")
    if recipe.next:
        w("next: " + " | ".join(recipe.next) + "\n")
    from kit.guard import summary_line
    w(summary_line(ov))


def lost_warning(result):
    """Says loudly that the numbers above undercount, and what to do about each kind of loss."""
    lost = result["lost"]
    why = {"map_full": "a map was full (scope the run more narrowly)",
           "stack_lost": "stack captures failed (stack map full, or a stack that could not be walked)",
           "buffer": "the event buffer overflowed (kit could not keep up; scope the run more narrowly)",
           "other": "events the probe could not record"}
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


def folded(result, stream):
    """Folded stacks, one per line, for flame graph tools (kit.stacks.folded_lines)."""
    from kit import stacks
    for line in stacks.folded_lines(result.get("rows") or [], result.get("stack_value", "total_us")):
        stream.write(line + "\n")


def write_flamegraph(result, recipe, path, err):
    from kit import flamegraph
    scope = ", ".join(f"{k}={v}" for k, v in result.get("scope", {}).items()) or "no scope"
    title = f"kit {recipe.name}: off-CPU time, {scope}, {result.get('duration_s', 0):.0f}s"
    flamegraph.write(path, result.get("rows") or [], title=title, value=result.get("stack_value", "total_us"))
    err.write(f"kit: flame graph written to {path}\n")
