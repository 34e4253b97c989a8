"""opensnoop: which open syscalls this kernel has (the template attaches each), marking cut paths, and
(the stream form) what the run's tallies say to do next."""

import shlex

from kit.engine import contract, prelude
from kit.host import features
from kit.engine.contract import Hooks

PATH_LEN = 256  # KIT_PATH_LEN in probes/opensnoop.c


def extra(ctx):
    return {"has_open": int(features.tracepoint_format("syscalls:sys_enter_open") is not None),
            "has_openat2": int(features.tracepoint_format("syscalls:sys_enter_openat2") is not None)}


def _cut_note(n):
    return (f"{n} path(s) longer than {PATH_LEN - 1} bytes were cut: kit keeps the first {PATH_LEN - 1}")


def collect(ctx, bpf):
    if ctx.recipe.output == "stream":
        return collect_stream(ctx, bpf)
    out = contract.default_collect(ctx, bpf)
    cut = [r for r in out["rows"] if r["cut"]]
    for r in cut:
        r["path"] += "..."
    if cut:
        out["notes"] = [_cut_note(len(cut)) + " and end in '...', so different long paths with one prefix "
                        "share a row"]
    return out


def collect_stream(ctx, bpf):
    """The stream's hints: where the failures are, and how to keep every line when some were not shown."""
    s = ctx.stream
    if s is None:
        return {}
    summary = s.summary(prelude.read_stats(bpf))
    stream, groups = summary["stream"], summary["groups"]
    hints, notes = [], []
    failing = sorted((r for r in groups.get("path", []) if r.get("failed") and not str(r["path"]).startswith("(")),
                     key=lambda r: -r["failed"])
    if failing:
        r = failing[0]
        hints.append({"text": f"{r['path']} failed {r['failed']} of {r['events']} times: the table form counts "
                              "every failing path and errno", "command": _cmd(ctx, table=True, failed=True)})
    if stream.get("lost_in_kernel") or stream.get("capped"):
        hints.append({"text": "events were dropped or not shown: narrow the scope and keep every line",
                      "command": _cmd(ctx, limit=0, json=True) + " > opens.jsonl"})
    cut = stream.get("nonzero", {}).get("cut", 0)
    if cut:
        notes.append(_cut_note(cut) + " (cut=1 on their lines)")
    return {"hints": hints, "notes": notes}


def _cmd(ctx, table=False, failed=False, limit=None, json=False):
    words = ["kit", "run", "opensnoop"] + ([] if table else ["--stream"])
    for p in ctx.recipe.scope_params():
        v = ctx.values.get(p.name)
        if v is not None:
            words += [f"--{p.flag}", str(v)]
    if failed or ctx.values.get("failed"):
        words.append("--failed")
    if limit is not None:
        words += ["--limit", str(limit)]
    if json:
        words.append("--json")
    return " ".join(shlex.quote(w) for w in words)


HOOKS = Hooks(extra=extra, collect=collect)
