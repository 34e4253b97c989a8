"""`kit merge`: many hosts' results of one recipe as one result.

Inputs are run results (`kit run ... --json`, one host each) or a fleet run's
output (kit/fleet/__init__.py: every host's result and every host that gave none).
The merge keeps every row, each with its `host`; sums what adds up (counts,
totals, bytes) per field and per row key across hosts; takes the maximum of
maxima; recomputes means from the sums; merges log2 histograms bucket by
bucket; and ranks the hosts per metric. Results of different recipes, kit or
catalog versions, time boxes or parameters do not add up: merging them is an
error that names the files.
"""

import json
import os

from kit.engine import prelude
from kit.errors import BadInput

FLEET_KIND = "KitFleetRun"
MERGED_KIND = "KitMergedResult"
# Parameters whose value each host resolves for itself (a netns or cgroup inode, a pid): the same
# argument gives different values on different hosts, so they are not compared.
HOST_LOCAL = {"netns", "pid", "tid", "cgroup", "disk"}
# What must agree for sums to mean something.
SAME = ("recipe", "kit_version", "catalog_version", "requested_s")
ADDITIVE = {"count", "failed", "errors", "in_progress", "bytes", "rx_bytes", "tx_bytes", "samples", "waits"}
IDENTITY = {"pid", "tid", "host"}   # per-host identifiers: not part of a row key across hosts
TOP = 5


def additive(name):
    return name in ADDITIVE or name.startswith("total_")


def maximum(name):
    return name.startswith("max_")


def mean(name):
    return name.startswith("avg_")


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read(path):
    """(path, document) from a JSON file; a clear line when it is not one."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}", "give the JSON files `kit run --json` or "
                       "`kit fleet run` wrote") from None
    except ValueError as e:
        raise BadInput(f"{path} is not JSON ({e})", "give the output of `kit run --json` or `kit fleet run`") from None


def host_results(docs):
    """[(file, host, result)] and [failed host entries] from run results and fleet outputs."""
    results, failed = [], []
    for path, doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == FLEET_KIND:
            for h in doc.get("hosts", []):
                if h.get("status") == "ok":
                    results.append((f"{path}[{h['host']}]", h["host"], h["result"]))
                else:
                    failed.append(dict(h, file=path))
        elif isinstance(doc, dict) and doc.get("kind") == MERGED_KIND:
            raise BadInput(f"{path} is already a merged result", "merge the hosts' own results or fleet outputs")
        elif isinstance(doc, dict) and "recipe" in doc and "rows" in doc:
            if doc.get("dry_run"):
                raise BadInput(f"{path} is an estimate (--dry-run), not a run's result", "merge results of `kit run`")
            host = doc.get("host") or os.path.splitext(os.path.basename(path))[0]
            results.append((path, host, doc))
        else:
            raise BadInput(f"{path} is neither a kit run result nor a fleet run's output",
                           "give the output of `kit run --json` or `kit fleet run`")
    return results, failed


def _comparable_params(result):
    return {k: v for k, v in (result.get("params") or {}).items() if k not in HOST_LOCAL}


def check_compatible(results):
    """Raises BadInput naming the files whose results do not add up with the first one's."""
    if not results:
        raise BadInput("no host returned a result to merge", "see each host's reason above")
    f0, _h0, r0 = results[0]
    for f, _h, r in results[1:]:
        for key in SAME:
            if r.get(key) != r0.get(key):
                raise BadInput(f"cannot merge {f0} and {f}: {key} {r0.get(key)!r} vs {r.get(key)!r}",
                               "merge results of the same recipe, kit.pyz and catalog, run with the same arguments")
        p0, p = _comparable_params(r0), _comparable_params(r)
        if p != p0:
            diff = sorted(k for k in set(p) | set(p0) if p.get(k) != p0.get(k))
            raise BadInput(f"cannot merge {f0} and {f}: parameters differ ({', '.join(diff)})",
                           "merge results of runs with the same arguments")
    seen = {}
    for f, h, _r in results:
        if h in seen:
            raise BadInput(f"{seen[h]} and {f} are both host {h!r}", "give each host's result once")
        seen[h] = f


def merge_histograms(per_host):
    """{name: buckets} from each host's {name: [{low, high, count}]}, summed bucket by bucket."""
    slot = {prelude.slot_range(k): k for k in range(65)}
    acc = {}
    for hists in per_host:
        for name, buckets in (hists or {}).items():
            counts = acc.setdefault(name, {})
            for b in buckets:
                k = slot.get((b["low"], b["high"]))
                if k is None:
                    raise BadInput(f"histogram {name!r}: bucket {b['low']}..{b['high']} is not a log2 slot",
                                   "merge histograms kit wrote")
                counts[k] = counts.get(k, 0) + int(b["count"])
    return {name: prelude.buckets(c) for name, c in acc.items()}


def _row_key(row):
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in row.items()
                        if k not in IDENTITY and not (additive(k) or maximum(k) or mean(k))))


def _fold(acc, row):
    for k, v in row.items():
        if additive(k) and _number(v):
            acc[k] = acc.get(k, 0) + v
        elif maximum(k) and _number(v):
            acc[k] = max(acc.get(k, v), v)


UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def _means(row):
    """avg_<unit> from total_<unit'> / count (units converted), the only mean that survives a merge."""
    totals = [k for k in row if k.startswith("total_") and k[6:] in UNITS]
    for k in [k for k in row if mean(k)]:
        n = row.get("count")
        total = row.get(totals[0]) if totals else None
        if _number(total) and n and k[4:] in UNITS:
            row[k] = round(total * UNITS[totals[0][6:]] / UNITS[k[4:]] / n, 3)
        else:
            row[k] = None
    return row


def summed_rows(rows):
    """Rows with the same key (everything but the numbers that add up and the per-host ids) on several
    hosts as one row, its numbers summed, with the hosts it came from."""
    groups = {}
    for r in rows:
        key = _row_key(r)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {k: v for k, v in r.items() if k not in IDENTITY}
            for k in [k for k in g if additive(k) and _number(g[k])]:
                g[k] = 0
            g["hosts"] = []
        _fold(g, r)
        if r["host"] not in g["hosts"]:
            g["hosts"].append(r["host"])
    out = [_means(g) for g in groups.values()]
    metric = next((m for m in ("total_us", "total_ms", "count", "samples", "waits") if any(m in g for g in out)), None)
    if metric:
        out.sort(key=lambda g: -(g.get(metric) or 0))
    return out


def totals(rows):
    """Every additive field summed, every max_ field's maximum, means from the sums."""
    acc = {}
    for r in rows:
        _fold(acc, r)
    if any(mean(k) for r in rows for k in r):
        for k in {k for r in rows for k in r if mean(k)}:
            acc[k] = None
        _means(acc)
    return acc


def top_hosts(hosts, metrics, n=TOP):
    """{metric: [{host, value}]}, largest first, for each metric some host has."""
    out = {}
    for m in metrics:
        ranked = sorted(((h[m] if m in h and m not in h["totals"] else h["totals"].get(m, 0), h["host"])
                         for h in hosts),   # a host without such rows counts 0: it is in the ranking, last
                        key=lambda t: (-(t[0] or 0), t[1]))
        ranked = [{"host": h, "value": v} for v, h in ranked if _number(v)]
        if ranked:
            out[m] = ranked[:n]
    return out


def merge(docs):
    """One merged result from [(file, document)]."""
    results, failed = host_results(docs)
    check_compatible(results)
    r0 = results[0][2]
    rows, hosts = [], []
    for f, h, r in results:
        host_rows = [dict(row, host=h) for row in r.get("rows") or []]
        rows += host_rows
        hosts.append({"host": h, "file": f, "hook": r.get("hook"), "duration_s": r.get("duration_s"),
                      "stopped_by": r.get("stopped_by"), "events": r.get("events", 0),
                      "filtered": r.get("filtered", 0), "lost_events": r.get("lost_events", 0),
                      "forced": r.get("forced", False), "rows": len(host_rows), "totals": totals(host_rows),
                      "notes": r.get("notes", [])})
    all_totals = totals(rows)
    lost = {}
    for _f, _h, r in results:
        for k, v in (r.get("lost") or {}).items():
            lost[k] = lost.get(k, 0) + v
    merged = {
        "kind": MERGED_KIND,
        "recipe": r0["recipe"],
        "kit_version": r0.get("kit_version"),
        "catalog_version": r0.get("catalog_version"),
        "requested_s": r0.get("requested_s"),
        "params": _comparable_params(r0),
        "hosts": hosts,
        "failed_hosts": [{k: h.get(k) for k in ("host", "status", "code", "reason", "file")} for h in failed],
        "events": sum(h["events"] for h in hosts),
        "filtered": sum(h["filtered"] for h in hosts),
        "lost_events": sum(h["lost_events"] for h in hosts),
        "lost": lost,
        "totals": all_totals,
        "top_hosts": top_hosts(hosts, [m for m in all_totals if not mean(m)] + ["events", "lost_events"]),
        "rows": rows,
        "summed": summed_rows(rows),
        "histograms": merge_histograms(r.get("histograms") for _f, _h, r in results),
    }
    if "stack_value" in r0:
        merged["stack_value"] = r0["stack_value"]
    return merged


def human(merged, stream, top=20):
    """The merged result as text: the top hosts first, then the hosts that gave nothing, then rows."""
    from kit import output
    w = stream.write
    hosts = merged["hosts"]
    missing = f", {len(merged['failed_hosts'])} without a result" if merged["failed_hosts"] else ""
    w(f"{merged['recipe']} on {len(hosts)} host{'s' if len(hosts) != 1 else ''}{missing}"
      f" | {merged['requested_s']:g}s each | {merged['events']} events, {merged['lost_events']} lost\n")
    for metric, ranked in merged["top_hosts"].items():
        w(f"top hosts by {metric}: " + ", ".join(f"{output._cell(r['host'])} {output._cell(r['value'])}"
                                                  for r in ranked) + "\n")
    for h in merged["failed_hosts"]:
        w(f"host {output._cell(h['host'])}: {h['status']}"
          + (f" (exit {h['code']})" if h.get("code") is not None else "") + f": {output._cell(h['reason'])}\n")
    if merged["totals"]:
        w("fleet totals: " + ", ".join(f"{k} {output._cell(v)}" for k, v in merged["totals"].items()) + "\n")
    rows = merged["rows"]
    if rows and not any("kernel_stack" in r for r in rows):
        from tabulate import tabulate
        cols = ["host"] + [k for k in rows[0] if k != "host"]
        w("\n" + tabulate([[output._cell(r.get(c)) for c in cols] for r in rows[:top]], headers=cols,
                          disable_numparse=True) + "\n")
        if len(rows) > top:
            w(f"... {len(rows) - top} more rows (use --json for all)\n")
    elif rows:
        w(f"\n{len(rows)} stacks from {len(hosts)} hosts: use --folded [--by-host] or --svg FILE\n")
    for name, buckets in merged["histograms"].items():
        w(f"\n{name} (all hosts):\n{output.log2_hist(buckets, name)}\n")


def folded_lines(merged, by_host=False):
    from kit.output import stacks
    return stacks.folded_lines(merged["rows"], merged.get("stack_value", "total_us"), by_host=by_host)
