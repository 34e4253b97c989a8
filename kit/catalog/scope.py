"""What a run's scope matches on this box, before and after the run.

The kernel filter (probes/kit_prelude.h) decides per event; this module answers
the questions around it from /proc: which scopes cannot both hold, so the run
could never see anything (bad input, before attaching), and what a --comm,
--thread-comm or --cgroup scope matches now (a name nobody has yet is waited
for, and said so).

A --comm matches a thread whose own name is NAME or whose process's name (its
main thread's) is NAME: worker threads are often renamed; --thread-comm only a
thread's own name (targets.pids_by_comm, the prelude's rule). A --cgroup matches a
thread in exactly that cgroup v2 directory (not the ones below it), as
bpf_get_current_cgroup_id() does.
"""

import os

from kit.host import procfs, targets
from kit.errors import BadInput
from kit.catalog.params import cgroup2_roots
from kit.host.procfs import read_text


def threads(pid):
    """Thread ids of a live process (empty if it is gone)."""
    return sorted(procfs.thread_names(pid))


def names(pid):
    """{tid: comm} of every thread of pid; the main thread's name is the process's."""
    return procfs.thread_names(pid)


def tgid_of(tid):
    status = read_text(f"/proc/{tid}/status") or ""
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return None


def _cgroup_path(pid, tid):
    """The thread's cgroup v2 directory (as /proc shows it, relative to the hierarchy's root), or None."""
    for line in (read_text(f"/proc/{pid}/task/{tid}/cgroup") or "").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _cgroup_id(rel):
    roots = cgroup2_roots()
    if rel is None or not roots:
        return None
    try:
        return os.stat(roots[0].rstrip("/") + rel).st_ino
    except OSError:
        return None


def _cgroup_shown(cgroup_id):
    """The directory of a cgroup id (its inode) under the v2 root, for messages."""
    roots = cgroup2_roots()
    if not roots:
        return str(cgroup_id)
    root = roots[0]
    for d, dirs, _files in os.walk(root):
        try:
            if os.stat(d).st_ino == cgroup_id:
                return d
        except OSError:
            continue
    return f"cgroup {cgroup_id}"


def processes():
    me = os.getpid()
    return [p for p in procfs.pids() if p != me]


def matching(values):
    """{pid: [tid, ...]} of the threads running now that a --comm/--thread-comm and/or --cgroup scope
    takes in (by kit_prelude.h's rule, targets.pids_by_comm), with --pid/--tid narrowing it when given."""
    comm, thread_comm, cgroup = values.get("comm"), values.get("thread_comm"), values.get("cgroup")
    pid, tid = values.get("pid"), values.get("tid")
    if comm is not None or thread_comm is not None:
        candidates = {s.pid: (s.tids or threads(s.pid)) for s in targets.pids_by_comm(comm, thread_comm)}
    else:
        candidates = {p: threads(p) for p in processes()}
    want = pid or (tgid_of(tid) if tid else None)
    out = {}
    for p, tids in candidates.items():
        if (pid or tid) and p != want:
            continue
        for t in tids:
            if tid and t != tid:
                continue
            if cgroup is not None and _cgroup_id(_cgroup_path(p, t)) != cgroup:
                continue
            out.setdefault(p, []).append(t)
    return out


def _few(items, n=5):
    return ", ".join(repr(i) for i in items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_compatible(values):
    """BadInput when two scopes given together exclude each other now: the run could see nothing.
    (--comm or --cgroup alone may match later: that is a note, not an error.)"""
    pid, tid, comm, thread_comm, cgroup = (values.get(k) for k in ("pid", "tid", "comm", "thread_comm", "cgroup"))
    if pid and tid:
        owner = tgid_of(tid)
        if owner != pid:
            raise BadInput(f"--tid {tid} is a thread of process {owner}, not of --pid {pid}: the two scopes "
                           "exclude each other", f"drop --pid, or give --pid {owner}")
    if not (tid or pid):
        return
    what = f"--tid {tid}" if tid else f"--pid {pid}"
    owner = tgid_of(tid) if tid else pid
    tids = [tid] if tid else threads(pid)
    if comm is not None:
        seen = names(owner)
        main = seen.get(owner, procfs.comm_of(owner))
        if not any(comm in (seen.get(t), main) for t in tids):
            if tid:
                named = f"is named {seen.get(tid)!r} and its process {main!r}"
            else:
                others = sorted({seen[t] for t in tids if t in seen} - {main})
                named = f"is named {main!r}" + (f" and its threads {_few(others)}" if others else "")
            raise BadInput(f"{what} {named}, not {comm!r}: --comm and {what.split()[0]} exclude each other",
                           f"drop one of them, or give --comm {main}")
    if thread_comm is not None:
        seen = names(owner)
        if not any(seen.get(t) == thread_comm for t in tids):
            named = (f"is named {seen.get(tid)!r}, not {thread_comm!r}" if tid else
                     f"has no thread named {thread_comm!r} (its threads: {_few(sorted(set(seen.values())))})")
            raise BadInput(f"{what} {named}: --thread-comm and {what.split()[0]} exclude each other",
                           "drop one of them, or give --thread-comm one of those names")
    if cgroup is not None:
        where = {t: _cgroup_path(owner, t) for t in tids}
        if not any(_cgroup_id(rel) == cgroup for rel in where.values()):
            shown = sorted({rel for rel in where.values() if rel})
            raise BadInput(f"{what} is in cgroup {', '.join(shown) or '?'}, not in {_cgroup_shown(cgroup)} (kit "
                           "matches that directory itself, not the cgroups below it): --cgroup and "
                           f"{what.split()[0]} exclude each other",
                           f"drop one of them, or give --cgroup {shown[0] if shown else 'DIR'}")


def label(values):
    """"--comm 'pay-svc' --cgroup /sys/fs/cgroup/x": the process scopes of a run, as the user would write them."""
    parts = [targets.scope_text(values.get("comm"), values.get("thread_comm"))]
    for k in ("cgroup", "pid", "tid"):
        v = values.get(k)
        if v is not None:
            parts.append(f"--{k} {_cgroup_shown(v) if k == 'cgroup' else v}")
    return " ".join(p for p in parts if p)


def describe(values, waits=True):
    """What a comm/cgroup scope matches now, as (text, {pid: [tid]}), or None for scopes that
    name a live process or thread (checked already) or no scope at all. waits: processes that
    start during the run are in scope too (false where probes went into the running ones only)."""
    if all(values.get(k) is None for k in ("comm", "thread_comm", "cgroup")):
        return None
    found = matching(values)
    scope = label(values)
    if not found:
        return (f"scope {scope} matches no running process or thread now" +
                ("; kit waits for one to appear until the run ends" if waits else ""), found)
    n = sum(len(t) for t in found.values())
    pids = sorted(found)
    shown = ", ".join(map(str, pids[:5])) + (f" and {len(pids) - 5} more" if len(pids) > 5 else "")
    return (f"scope {scope} matches {n} thread{'s' if n != 1 else ''} of {len(pids)} "
            f"process{'es' if len(pids) != 1 else ''} now (pid {shown})" +
            ("; processes that start later are in scope too" if waits else ""), found)
