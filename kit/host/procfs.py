"""What /proc says about processes and threads, read in one place. Every reader tolerates a task
that exits between two reads: it answers None (or empty), never raises."""

import os

PF_KTHREAD = 0x00200000


def read_text(path):
    """A /proc file's text, or None if it is gone (the process exited) or unreadable."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def pids():
    """Every process id, in order."""
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def comm_of(pid, tid=None):
    """A process's name (its main thread's), or one thread's; None once it is gone."""
    path = f"/proc/{pid}/comm" if tid is None else f"/proc/{pid}/task/{tid}/comm"
    text = read_text(path)
    return text.rstrip("\n") if text is not None else None


def thread_names(pid):
    """{tid: name} of a process's threads ({} once it is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    names = {}
    for t in tids:
        name = comm_of(pid, t) if t.isdigit() else None
        if name is not None:
            names[int(t)] = name
    return names


def stat(pid, tid=None):
    """The fields of /proc/PID[/task/TID]/stat after the name (state is [0]), or None. The name may
    hold spaces and parentheses, so the split starts after its last ')'."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    text = read_text(path)
    try:
        return text.rsplit(")", 1)[1].split()
    except (AttributeError, IndexError):
        return None


def state(pid, tid=None):
    """The task's state letter (R, S, D, Z, ...), or None."""
    f = stat(pid, tid)
    return f[0] if f else None


def is_kthread(pid):
    f = stat(pid)
    try:
        return bool(int(f[6]) & PF_KTHREAD)
    except (TypeError, IndexError, ValueError):
        return False


def start_time(pid):
    """The task's start time in clock ticks while it lives (not a zombie), else None: with the pid,
    it tells a process from a later one given the same id."""
    f = stat(pid)
    if not f or len(f) < 20 or f[0] in ("Z", "X", "x"):
        return None
    return f[19]
