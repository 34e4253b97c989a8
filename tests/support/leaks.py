"""What a process holds in the kernel through kit, read from /proc and tracefs rather than from kit.

A BPF program, map or link, or a perf event, is held through a file descriptor:
/proc/PID/fd names its kind and /proc/PID/fdinfo its program id. Named probes
(BCC's fallback when the perf PMU cannot make a uprobe) appear in tracefs'
uprobe_events and would outlive the process; fd-based ones die with it.
"""

import collections
import json
import os
import subprocess
import time

from conftest import loaded_prog_ids

KINDS = {"anon_inode:bpf-prog": "prog", "anon_inode:bpf-map": "map", "anon_inode:bpf_link": "link",
         "anon_inode:[perf_event]": "perf_event"}


def held(pid="self"):
    """(Counter of kinds, set of program ids) for the BPF and perf objects a process holds."""
    kinds, progs, _maps = held_ids(pid)
    return kinds, progs


def held_ids(pid="self"):
    """(Counter of kinds, program ids, map ids) a process holds through its fds."""
    kinds, progs, maps = collections.Counter(), set(), set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kind = KINDS.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            if kind is None:
                continue
            kinds[kind] += 1
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        progs.add(int(line.split()[1]))
                    elif line.startswith("map_id:"):
                        maps.add(int(line.split()[1]))
        except OSError:  # the fd closed while we looked
            continue
    return kinds, progs, maps


def probe_events():
    """Every named probe in tracefs (uprobe_events, kprobe_events, dynamic_events)."""
    from kit.host import features
    d = features.tracefs()
    out = []
    for name in ("uprobe_events", "kprobe_events", "dynamic_events"):
        try:
            with open(os.path.join(d, name)) as f:
                out += [f"{name}: {line}" for line in f.read().splitlines()]
        except OSError:
            pass
    return sorted(out)


def still_loaded(prog_ids):
    """Which of these program ids the kernel still has loaded."""
    return set(prog_ids) & loaded_prog_ids()


def loaded_map_ids():
    out = subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {m["id"] for m in json.loads(out or "[]")}


def released(progs, maps, within=5.0):
    """Waits (the kernel frees programs and maps asynchronously) until none of these ids is loaded;
    returns what is still loaded after `within` seconds."""
    deadline = time.time() + within
    while True:
        left = (set(progs) & loaded_prog_ids(), set(maps) & loaded_map_ids())
        if not any(left) or time.time() > deadline:
            return left
        time.sleep(0.1)


def probe_events_of(pid):
    """Named probes BCC created for this process (it puts "bcc_<pid>" in their names)."""
    return [e for e in probe_events() if f"bcc_{pid}" in e]


def snapshot(pid="self"):
    kinds, progs = held(pid)
    return {"held": dict(kinds), "progs": progs, "probe_events": probe_events()}
