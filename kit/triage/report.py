"""The incident report bundle: one directory with report.md (verdict, steps, tables, commands: pastes
cleanly into an incident doc or a chat), report.json (every step's full result), a flame graph per
stack step (SVG), and the host's facts from `kit doctor`. Written by `kit triage` and `kit run --out`.

Nothing a pasted report would be embarrassed by: no terminal control codes (text a traced process
chose, its comm or a frame name, is escaped), the same order every time, a unit on every number.
"""

import datetime
import json
import os
import re
import socket
import stat

from kit import __version__
from kit.errors import BadInput, printable
from kit.output import cell, heading, log2_hist
from kit.triage import verdict as words

TOP_ROWS = 10


# --- the directory ------------------------------------------------------------------------------------

def default_dir(now=None, cwd=None):
    """kit-report-YYYYmmdd-HHMMSS under the current directory."""
    now = now or datetime.datetime.now()
    return os.path.join(cwd or os.getcwd(), now.strftime("kit-report-%Y%m%d-%H%M%S"))


def check_dir(path):
    """Before anything is attached: the bundle's directory must be new, or an empty directory of ours to
    fill (never a link, never a file: kit runs as root). Returns the absolute path."""
    p = os.path.abspath(str(path))
    parent = os.path.dirname(p)
    if not os.path.isdir(parent):
        raise BadInput(f"--out {printable(path)[:120]}: directory {parent[:120]} does not exist",
                       "give a new directory under an existing one")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if not os.access(parent, os.W_OK):
            raise BadInput(f"--out {printable(path)[:120]}: {parent[:120]} is not writable",
                           "give a directory you can write, e.g. under /tmp") from None
        return p
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"--out {printable(path)[:120]} exists and is not a directory",
                       "give a new directory for the report")
    if os.listdir(p):
        raise BadInput(f"--out {printable(path)[:120]} is not empty", "give a new directory, so no report is mixed "
                       "with another's files")
    return p


def _open(d, name):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "w", encoding="utf-8")


def write(d, report, recipes):
    """Writes the bundle into directory d (made if new); returns the file names, in writing order."""
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        pass
    files = []
    for i, step in enumerate(report["steps"], 1):
        recipe = recipes.get(step["recipe"])
        res = step.get("result")
        if recipe is not None and recipe.output == "stacks" and res and res.get("rows"):
            name = f"{i:02d}-{step['recipe']}.svg"
            _flamegraph(os.path.join(d, name), step, recipe)
            step["svg"] = name
            files.append(name)
    report["files"] = ["report.md", "report.json", "host.txt"] + files
    with _open(d, "host.txt") as f:
        f.write(host_text(report["host"]))
    with _open(d, "report.json") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    with _open(d, "report.md") as f:
        f.write(markdown(report, recipes))
    return report["files"]


def _flamegraph(path, step, recipe):
    from kit.output import flamegraph
    res = step["result"]
    value = res.get("stack_value", "total_us")
    scope = ", ".join(f"{k}={v}" for k, v in res.get("scope", {}).items()) or "no scope"
    from kit.output.stacks import measure_of
    title = f"kit {recipe.name}: {measure_of(value).title}, {scope}, {res.get('duration_s', 0):.0f}s"
    flamegraph.write(path, res.get("rows") or [], title=title, value=value)


# --- facts of the host -----------------------------------------------------------------------------------

def host_facts(recipes):
    """{hostname, kernel, ncpu, doctor: [{check, ok, detail}]}: kit doctor's rows, as doctor finds them."""
    from kit import guard
    from kit.host import doctor
    rows = doctor.report(recipes)
    return {"hostname": socket.gethostname(), "kernel": os.uname().release, "ncpu": guard.ncpu(),
            "doctor": [{"check": k, "ok": bool(ok), "detail": str(v)} for k, v, ok in rows]}


def host_text(host):
    from kit.host import doctor
    return doctor.render([(r["check"], r["detail"], r["ok"]) for r in host["doctor"]])


# --- the report as data -------------------------------------------------------------------------------------

def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def cost(steps, ncpu):
    """{cpu_s, by step}: what the probes cost, from each step's measured overhead (CPU % x seconds)."""
    total = 0.0
    for s in steps:
        ov = (s.get("result") or {}).get("overhead") or {}
        if "cpu_pct" in ov:
            total += ov["cpu_pct"] / 100.0 * ncpu * ov.get("seconds", 0.0)
    return round(total, 4)


def build(kind, command, scope_text, steps, verdict_lines, notes, host, time_box_s=None, budget_pct=None,
          elapsed_s=None, state=None, started=None, look=None):
    """The report as one JSON-able dict (report.json). steps: triage Steps (their words are added)."""
    steps = [dict(s.as_dict(), lines=words.step_lines(s)) for s in steps]
    ncpu = host.get("ncpu") or 1
    cpu_s = cost(steps, ncpu)
    return {"kind": kind, "kit_version": __version__, "command": command, "scope": scope_text,
            "started_utc": started or now_utc(), "time_box_s": time_box_s, "budget_pct": budget_pct,
            "elapsed_s": round(elapsed_s, 1) if elapsed_s is not None else None, "state": state,
            "verdict": verdict_lines, "look": look, "probe_cpu_s": cpu_s,
            "probe_cpu_pct": round(100.0 * cpu_s / (elapsed_s * ncpu), 4) if elapsed_s else None,
            "steps": steps, "notes": notes, "host": host}


# --- report.md ------------------------------------------------------------------------------------------

TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def md_text(v, cell=False):
    """Text for a Markdown line: printable (no control codes), and nothing Markdown would act on, with as
    few escapes as will do (a chat shows them literally): a backtick becomes a quote, a `<` that could
    open an HTML tag gets a space, a `*` its backslash, a table cell's `|` too."""
    s = printable(v).replace("`", "'").replace("*", "\\*")
    s = TAG_START.sub("< ", s)
    return s.replace("|", "\\|") if cell else s


def md_code(v):
    """Text inside a code span or block: printable, no backtick runs that could close it."""
    return printable(v).replace("`", "'")


def md_table(headers, rows):
    out = ["| " + " | ".join(md_text(h, cell=True) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(md_text(c, cell=True) for c in r) + " |")
    return out


def _rows_table(recipe, res):
    """The recipe's own table (catalog fields, units in the cells and headings), its top rows."""
    rows = res.get("rows") or []
    if not rows or recipe is None:
        return []
    if recipe.output == "stacks":
        return _stack_table(res)
    fields = [f for f in recipe.fields if any(r.get(f.name) is not None for r in rows)]
    body = [[cell(f, r.get(f.name)) for f in fields] for r in rows[:TOP_ROWS]]
    out = md_table([heading(f) for f in fields], body)
    if len(rows) > TOP_ROWS:
        out.append(f"\n({len(rows) - TOP_ROWS} more rows in report.json)")
    return out


def _stack_table(res):
    from kit.output.stacks import wait_path
    value = res.get("stack_value", "total_us")
    rows = res.get("rows") or []
    total = sum(int(r.get(value) or 0) for r in rows) or 1
    groups = {}
    for r in rows:
        k = (r["pid"], r["comm"], tuple(r.get("kernel_stack") or []), tuple(r.get("user_stack") or []))
        g = groups.setdefault(k, {"v": 0, "tids": set()})
        g["v"] += int(r.get(value) or 0)
        g["tids"].add(r["tid"])
    top = sorted(groups.items(), key=lambda kv: (-kv[1]["v"], kv[0][0], kv[0][1], kv[0][3], kv[0][2]))[:TOP_ROWS]
    body = []
    for (pid, comm, kst, ust), g in top:
        amount = words.plural(g["v"], "sample") if value == "samples" else words.us(g["v"])
        body.append([amount, words.pct(g["v"] / total), f"{comm} (pid {pid}, {words.plural(len(g['tids']), 'thread')})",
                     " < ".join([f for f in ust][:5]) or "-", " < ".join(wait_path(list(kst))[:3]) or "-"])
    head = "samples" if value == "samples" else "off-CPU time"
    out = md_table([head, "share", "who", "user stack (innermost first)", "kernel"], body)
    if len(groups) > TOP_ROWS:
        out.append(f"\n({len(groups) - TOP_ROWS} more stacks in report.json and the flame graph)")
    return out


def _look_table(look):
    body = []
    for t in sorted(look["threads"], key=lambda t: (t["state"] != "busy", t["state"] == "idle",
                                                    -(t["off_us"] or 0), -t["on_us"], t["tid"]))[:12]:
        known = t["off_share"] is not None
        body.append([f"{t['comm']} (pid {t['pid']}, tid {t['tid']})", t["state"], words.pct(t["on_share"]),
                     words.pct(t["off_share"]) if known else "not measured",
                     f"{t['wakeups_per_s']:.1f}/s" if known else "not measured"])
    return md_table(["thread", "state", "on CPU", "off CPU", "wakeups"], body)


def _sites_table(look):
    body = [[words.site_text(s), f"{s['comm']} (pid {s['pid']}, {words.plural(len(s['tids']), 'thread')})",
             words.us(s["us"]), words.pct(s["share"]), words.plural(s["blocks"], "block")] for s in look["sites"]]
    return md_table(["waiting for", "who", "off-CPU time", "share of their time", "blocks"], body)


def markdown(report, recipes):
    host = report["host"]
    L = []
    L.append(f"# {md_text(report['kind'])}: {md_text(report['scope'])}")
    L.append("")
    L.append(f"- command: `{md_code(report['command'])}`")
    L.append(f"- host: {md_text(host['hostname'])}, kernel {md_text(host['kernel'])}, "
             f"{words.plural(host['ncpu'], 'CPU')}; kit {md_text(report['kit_version'])}")
    when = f"- started {md_text(report['started_utc'])}"
    if report.get("elapsed_s") is not None:
        when += f", took {report['elapsed_s']:.1f} s"
    if report.get("time_box_s"):
        when += f" (time box {report['time_box_s']:g} s)"
    L.append(when)
    if report.get("probe_cpu_s") is not None:
        budget = f", budget {report['budget_pct']:g}%" if report.get("budget_pct") is not None else ""
        avg = f" ({report['probe_cpu_pct']:.3f}% of the CPUs over the run{budget})" \
            if report.get("probe_cpu_pct") is not None else ""
        L.append(f"- the probes cost {report['probe_cpu_s']:.3f} CPU-seconds{avg}")
    L.append("")
    if report.get("verdict"):
        L += ["## Verdict", ""]
        L += [f"- {md_text(v)}" for v in report["verdict"]]
        L.append("")
    look = report.get("look")
    if look:
        L += ["## First look", "", f"{look['window_s']:.1f} s; on-CPU time from "
              + ("profile's samples" if look["on_cpu_from"] == "profile" else
                 "what the window leaves after off-CPU time (no profile)") + ".", ""]
        L += _look_table(look)
        if look["sites"]:
            L += ["", "Where they wait (the threads that are not idle):", ""] + _sites_table(look)
        if look.get("hot"):
            whose = "the busy threads" if look["state"] == "busy" else "the scope's threads"
            L += ["", f"Hottest functions (self samples of {whose}):", ""]
            L += md_table(["function", "samples", "share"], [[h["function"], words.plural(h["samples"], "sample"),
                                                              words.pct(h["share"])] for h in look["hot"]])
        L.append("")
    L += ["## Steps", ""]
    for i, step in enumerate(report["steps"], 1):
        L += _step_md(i, step, recipes.get(step["recipe"]), report)
    if report.get("notes"):
        L += ["## Notes", ""]
        L += [f"- {md_text(n)}" for n in report["notes"]]
        L.append("")
    L += ["## Host (kit doctor)", ""]
    L += md_table(["check", "status", "detail"], [[r["check"], "ok" if r["ok"] else "NO", r["detail"]]
                                                   for r in host["doctor"]])
    L += ["", f"Files: {', '.join(md_text(f) for f in report.get('files', []))}", ""]
    return "\n".join(L)


def _step_md(i, step, recipe, report):
    status = words.STATUS.get(step["status"], step["status"])
    L = [f"### {i}. {md_text(step['recipe'])}: {md_text(status)}", ""]
    if step.get("why"):
        L += [f"Why: {md_text(step['why'])}", ""]
    L += ["```sh", md_code(step["command"]), "```", ""]
    res = step.get("result")
    if step.get("reason"):
        L.append(f"- {md_text(step['reason'])}")
    for d in step.get("details") or []:
        L.append(f"- {md_text(d.strip())}")
    if res is None:
        L.append("")
        return L
    for line in step.get("lines") or []:
        L.append(f"- {md_text(line)}")
    table = _rows_table(recipe, res)
    if table:
        L += [""] + table
    for name, buckets in sorted((res.get("histograms") or {}).items()):
        if buckets:  # the name carries the unit of its buckets (hold_us: microseconds)
            L += ["", f"{md_text(name)}:", "", "```"] + [md_code(x) for x in log2_hist(buckets, name).splitlines()] \
                + ["```"]
    if step.get("svg"):
        L += ["", f"Flame graph: {md_text(step['svg'])}"]
    for n in res.get("notes") or []:
        L.append(f"- note: {md_text(n)}")
    for h in res.get("hints") or []:  # a recipe's own computed next steps, where it has them
        L.append(f"- hint: {md_text(h.get('text', ''))}" + (f" (`{md_code(h['command'])}`)" if h.get("command")
                                                             else ""))
    ov = res.get("overhead") or {}
    if "cpu_pct" in ov:
        L.append(f"- cost: {ov['events']} events and {ov['filtered']} filtered in {ov['seconds']:.1f} s, "
                 f"{ov['cpu_pct']:.3f}% of the CPUs (peak {ov['peak_cpu_pct']:.3f}%, budget {ov['budget_pct']:g}%)")
    L.append("")
    return L

