"""The words of a triage: the verdict on top, and what each step found, as plain lines with a unit on
every number (a time, a share, or the things counted). Read from the chain's outcome (kit/triage/__init__.py)
and the readings of kit/triage/evidence.py; nothing here decides what to run.
"""

from kit.triage import evidence
from kit.output.units import duration


def pct(share):
    """A share (0..1) as a percentage that reads: 44%, 3.2%, 0.04%."""
    v = 100.0 * share
    if v >= 10 or v == 0:
        return f"{v:.0f}%"
    return f"{v:.1f}%" if v >= 0.1 else f"{v:.2f}%"


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else (many or word + 's')}"


def us(v):
    return duration(v, "us") if v else "0 µs"


def secs(v):
    return f"{v:.1f} s"


def _who(site, look):
    comm = site["comm"]
    return f"{plural(len(site['tids']), comm + ' thread')} (pid {site['pid']})"


def site_text(site):
    """What a wait site is, in words: 'the lock taken in pool_lock (...)', 'reading a Unix socket in query_db'."""
    kind, where = site["kind"], site.get("frame") or site.get("kernel_frame") or "?"
    if kind == "lock":
        s = site.get("site")
        if not s:
            return f"a lock (futex) in {where}"
        callers = [f for f in s["callers"] if f not in (s["lock"], s["frame"])][:2]
        frm = f", called from {' < '.join(callers)}" if callers else ""
        if s["wrapper"]:
            return (f"the lock taken through {s['lock']}()/{s['unlock']}() (the application's own pair, "
                    f"around {s['call'] or 'a futex'}){frm}")
        return f"the lock {s['lock']}() takes in {s['frame']}{frm}"
    if kind == "resolver":
        return f"a name lookup ({where})"
    if site.get("frame") is None and kind in evidence.PER_PROCESS:
        return evidence.LABELS[kind]
    caller = site.get("caller")
    return f"{evidence.LABELS[kind]}, in {where}" + (f" < {caller}" if caller else "")


# --- the first look ---------------------------------------------------------------------------------

def look_lines(look, scope_text):
    """The first look in words: busy, waiting or idle, by the numbers, then the biggest waits."""
    window = look["window_s"]
    threads = look["threads"]
    idle = [t for t in threads if t["state"] == "idle"]
    active = [t for t in threads if t["state"] != "idle"]
    src = "" if look["on_cpu_from"] == "profile" else " (on-CPU time: what the window leaves after off-CPU time)"
    if look["state"] == "idle":
        wake = sum(t["blocks"] for t in threads) / window if window else 0.0
        on = sum(t["on_us"] for t in threads) / (window * 1e6 * max(len(threads), 1)) if window else 0.0
        return [f"{scope_text} is idle: its {plural(len(threads), 'thread')} were on CPU {pct(on)} of the "
                f"{secs(window)} look and woke {wake:.1f} times a second in all{src}; nothing to follow."]
    lines = []
    on = sum(t["on_us"] for t in active) / (window * 1e6 * len(active)) if window and active else 0.0
    off = sum(min(t["off_us"] or 0, window * 1e6) for t in active) / (window * 1e6 * len(active)) \
        if window and active else 0.0
    rest = f" ({plural(len(idle), 'more thread')} idle)" if idle else ""
    if look["state"] == "busy":
        busy = sorted((t for t in threads if t["state"] == "busy"), key=lambda t: (-t["on_share"], t["tid"]))
        top = busy[0]
        who = (f"{top['comm']} (pid {top['pid']}, tid {top['tid']}) was" if len(busy) == 1 else
               f"{plural(len(busy), 'thread')} were, {top['comm']} (tid {top['tid']}) the most,")
        runq = f" and runnable, waiting for a CPU, {pct(top['runq_share'])} more" if top.get("runq_share") else ""
        lines.append(f"{scope_text} is busy: {who} on CPU {pct(top['on_share'])} of the {secs(window)} look{runq}"
                     f"{src}.")
        if look["hot"]:
            h = look["hot"][0]
            lines.append(f"The hottest function is {h['function']}: {pct(h['share'])} of the busy threads' "
                         f"on-CPU samples ({plural(h['samples'], 'sample')}).")
    elif look["state"] == "not busy":
        lines.append(f"{scope_text} is not busy: its {plural(len(threads), 'thread')} were on CPU {pct(on)} of the "
                     f"{secs(window)} look; where they wait is not known (offcpu did not run).")
    else:
        lines.append(f"{scope_text} is waiting, not busy: its {plural(len(active), 'active thread')} were on CPU "
                     f"{pct(on)} and off CPU {pct(off)} of the {secs(window)} look{rest}{src}.")
    worth = [s for s in look["sites"] if s["share"] >= evidence.FOLLOW_SHARE]
    # the biggest wait kit can follow leads; the other big ones are named after it
    lead = next((s for s in worth if s["kind"] in FOLLOWED), None)
    if lead is not None:
        one = len(lead["tids"]) == 1
        lines.append(f"{_who(lead, look)} {'spends' if one else 'spend'} {pct(lead['share'])} of "
                     f"{'its' if one else 'their'} time waiting for {site_text(lead)}.")
    others = [s for s in worth if s is not lead][:OTHER_SITES]
    if others:
        lines.append("Other waits: " + "; ".join(f"{_who(s, look)} {pct(s['share'])} for {site_text(s)}"
                                                 for s in others) + ".")
    return lines


FOLLOWED = ("lock", "resolver", "tcp", "disk", "runqueue")  # the kinds kit/triage/__init__.py's FOLLOW names
OTHER_SITES = 3


# --- what each step found -----------------------------------------------------------------------------

def _lockhold(step):
    r = step.result
    lock = _flag(step.args, "--lock") or "pthread_mutex_lock"
    h, w = r["totals"]["hold"], r["totals"]["wait"]
    lines = [f"{lock}: {plural(h['count'], 'hold')} in {secs(r['duration_s'])}, "
             f"{us(h['total_us'] / h['count'] if h['count'] else 0)} on average, at most {us(h['max_us'])}; "
             f"{plural(w['count'], 'wait')}, {us(w['total_us'] / w['count'] if w['count'] else 0)} on average, "
             f"at most {us(w['max_us'])}"]
    inside = r.get("inside")
    if inside and inside.get("attached"):
        i, o = inside["inside"], inside["outside"]
        if i["count"]:
            lines.append(f"the holder called {inside['function']} inside the lock in {inside['holds_with_calls']} "
                         f"of {plural(inside['holds'], 'hold')} ({plural(i['count'], 'call')}, {us(i['avg_us'])} "
                         f"on average, at most {us(i['max_us'])}); {plural(o['count'], 'call')} outside it")
        else:
            lines.append(f"{inside['function']} was not called inside the lock ({plural(o['count'], 'call')} "
                         "outside it)")
    slow = _longest_bucket((r.get("histograms") or {}).get("hold_us"))
    if slow and h["count"] and slow["count"] < h["count"]:
        lines.append(f"the longest {plural(slow['count'], 'hold')} lasted {us(slow['low'])} to {us(slow['high'])} each")
    for s in (r.get("stacks") or [])[:1]:
        frames = [f.split("+")[0] for f in s["frames"][:4]]
        lines.append(f"longest-holding stack: {' < '.join(frames)} ({plural(s['count'], 'hold')}, "
                     f"{us(s['total_us'])} in all, at most {us(s['max_us'])})")
    return lines


def _longest_bucket(buckets):
    nonzero = [b for b in buckets or [] if b["count"]]
    return nonzero[-1] if nonzero else None


def _getaddrinfo(step):
    rows = step.result.get("rows") or []
    if not rows:
        return [f"no name lookups in {secs(step.result['duration_s'])}"]
    out = []
    for r in rows[:5]:
        out.append(f"{r['host'] or '(no host)'}: {plural(r['count'], r['function'] + ' call')}, "
                   f"{plural(r['failed'], 'failure')}, {us(r['avg_us'])} on average, at most {us(r['max_us'])}")
    return out


def _tcpretrans(step):
    rows = step.result.get("rows") or []
    if not rows:
        return [f"no retransmits in {secs(step.result['duration_s'])}"]
    return [f"{r['saddr']}:{r['sport']} -> {r['daddr']}:{r['dport']}: {plural(r['count'], 'retransmit')}"
            + (f" (pid {r['pid']} {r['comm']})" if r.get("pid") else "") for r in rows[:5]]


def _tcplife(step):
    rows = step.result.get("rows") or []
    closed = [r for r in rows if r["state"] == "closed"]
    peers = {}
    for r in rows:
        peers.setdefault(f"{r['daddr']}:{r['dport']}", []).append(r)
    out = [f"{plural(len(rows), 'connection')} ({len(closed)} closed) in {secs(step.result['duration_s'])}"]
    for peer, rs in sorted(peers.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:3]:
        conn = [r["connect_ms"] for r in rs if r.get("connect_ms") is not None]
        out.append(f"to {peer}: {plural(len(rs), 'connection')}"
                   + (f", connect {duration(sum(conn) / len(conn), 'ms')} on average" if conn else ""))
    return out


def _runqlat(step):
    rows = step.result.get("rows") or []
    if not rows:
        return [f"no waits for a CPU in {secs(step.result['duration_s'])}"]
    out = []
    for r in rows[:3]:
        worst = f"; during the worst, {r['ran_instead']} (pid {r['ran_instead_pid']}) had the CPU" \
            if r.get("ran_instead") else ""
        out.append(f"{r['comm']} (pid {r['pid']}): {plural(r['waits'], 'wait')} for a CPU, {us(r['avg_us'])} on "
                   f"average, at most {us(r['max_us'])}{worst}")
    return out


def _biolatency(step):
    rows = step.result.get("rows") or []
    if not rows:
        return [f"no block I/O in {secs(step.result['duration_s'])}"]
    return [f"{r['disk']} {r['op']}: {plural(r['count'], 'request')}, {us(r['avg_us'])} on average, at most "
            f"{us(r['max_us'])}" for r in rows[:3]]


def _stacks(step):
    rows = step.result.get("rows") or []
    value = step.result.get("stack_value", "total_us")
    total = sum(int(r.get(value) or 0) for r in rows)
    amount = f"{plural(total, 'sample')} on CPU" if value == "samples" else f"{us(total)} of off-CPU time"
    return [f"{amount} in {plural(len(rows), 'stack')} over {secs(step.result['duration_s'])}"]


def _table(step):
    rows = step.result.get("rows") or []
    return [f"{plural(len(rows), 'row')} in {secs(step.result['duration_s'])}"]


SUMMARIES = {"lockhold": _lockhold, "getaddrinfo": _getaddrinfo, "tcpretrans": _tcpretrans, "tcplife": _tcplife,
             "runqlat": _runqlat, "biolatency": _biolatency, "offcpu": _stacks, "profile": _stacks}


def step_lines(step):
    """What a step found, or why it did not run."""
    if step.result is None:
        return [f"{STATUS[step.status]}: {step.reason}"]
    lines = SUMMARIES.get(step.recipe, _table)(step)
    if step.status == "stopped":
        lines.append(f"{STATUS['stopped']}: {step.reason} (partial results)")
    return lines


STATUS = {"ran": "ran", "stopped": "stopped early", "refused": "refused by the guardrail",
          "unsupported": "cannot run here", "failed": "failed", "not run": "not run", "planned": "not run"}


def _flag(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


# --- the verdict ----------------------------------------------------------------------------------------

def verdict(outcome, scope_text):
    """The lines on top of the report: the first look's answer, then what the steps it led to measured,
    and what could not be measured, each with its reason."""
    steps, look = outcome["steps"], outcome["look"]
    if look is None:
        lines = [f"{scope_text}: nothing was measured."]
        lines += [f"{s.recipe}: {STATUS[s.status]}: {s.reason}" for s in steps]
        return lines
    lines = look_lines(look, scope_text)
    lock = next((s for s in steps if s.recipe == "lockhold" and s.result), None)
    gai = next((s for s in steps if s.recipe == "getaddrinfo" and s.result), None)
    for s in steps:
        if s.kind == "first look" or s.result is None:
            continue
        if s.recipe == "lockhold":
            lines += _lockhold(s)[:2]
        elif s.recipe == "getaddrinfo" and not (lock and (lock.result.get("inside") or {}).get("inside", {})
                                                .get("count")):
            lines += _getaddrinfo(s)[:2]
        elif s.recipe not in ("lockhold", "getaddrinfo"):
            lines += [f"{s.recipe}: {x}" for x in step_lines(s)[:2]]
    inside = (lock.result.get("inside") or {}) if lock else {}
    if inside.get("attached") and inside["inside"]["count"]:
        hosts = [r for r in (gai.result.get("rows") or [])] if gai else []
        names = ", ".join(f"{r['host']} ({plural(r['count'], 'lookup')})" for r in hosts[:3]) if hosts else None
        lines.append(f"So: the holder calls {inside['function']}"
                     + (f" for {names}" if names else "")
                     + f" inside the lock in {inside['holds_with_calls']} of {plural(inside['holds'], 'hold')}, "
                       f"each ~{us(inside['inside']['avg_us'])}"
                     + (f" (the lookups counted in the getaddrinfo step's own {secs(gai.result['duration_s'])})"
                        if names else "") + ".")
    for s in steps:
        if s.result is None:
            lines.append(f"Not measured: {s.recipe} ({STATUS[s.status]}: {s.reason}).")
    return lines
