"""Human and JSON renderings of a run's result."""

import json

from tabulate import tabulate


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
    if rows and recipe.output in ("table", "stacks"):
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
      f"{lost['stack_lost']} stacks, {lost['other']} other | stopped by {result['stopped_by']}\n")
    if result.get("forced"):
        w("warning: the guardrail was overridden with --force\n")
    if recipe.next:
        w("next: " + " | ".join(recipe.next) + "\n")
    from kit.guard import summary_line
    w(summary_line(ov))


def _cell(v):
    if isinstance(v, list):
        return ";".join(map(str, v))
    return "" if v is None else v
