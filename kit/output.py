"""Human and JSON renderings of a run's result."""

import json

from tabulate import tabulate

from kit.errors import printable


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
    cols = [f.name for f in recipe.fields]
    rows = result.get("rows") or []
    if recipe.output == "stacks":
        from kit import stacks
        w(stacks.human_text(result, top=top // 2, value=result.get("stack_value", "total_us")))
    elif rows and recipe.output in ("table", "histograms"):
        heads = [f"{f.name} ({f.unit})" if f.unit else f.name for f in recipe.fields]
        body = [[_cell(r.get(c)) for c in cols] for r in rows[:top]]
        w(tabulate(body, headers=heads, tablefmt="simple") + "\n")
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
    for h in result.get("hints") or []:  # computed from the result; frame names come from traced files
        w("hint: " + printable(h["text"]) + (f"\n  {printable(h['command'])}" if h.get("command") else "") + "\n")
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
    return "" if v is None else v


def folded(result, stream):
    """Folded stacks, one per line, for flame graph tools (kit.stacks.folded_lines)."""
    from kit import stacks
    for line in stacks.folded_lines(result.get("rows") or [], result.get("stack_value", "total_us")):
        stream.write(line + "\n")


def write_flamegraph(result, recipe, path, err):
    from kit import flamegraph
    scope = ", ".join(f"{k}={v}" for k, v in result.get("scope", {}).items()) or "no scope"
    from kit.stacks import measure_of
    value = result.get("stack_value", "total_us")
    title = f"kit {recipe.name}: {measure_of(value).title}, {scope}, {result.get('duration_s', 0):.0f}s"
    flamegraph.write(path, result.get("rows") or [], title=title, value=value)
    err.write(f"kit: flame graph written to {path}\n")
