"""runqlat: the task_struct offsets the raw tracepoint rung reads from BTF,
and the reading of the histograms (named by process, thread or cgroup), the
worst waits and the hints computed from them."""

import os

from kit.engine import contract, prelude
from kit.host import btf
from kit.engine.contract import Hooks
from kit.errors import Unsupported
from kit.catalog.params import cgroup2_roots
from kit.host.targets import read_text

TASK_FIELDS = {
    "task_pid_off": ("task_struct", "pid"), "task_tgid_off": ("task_struct", "tgid"),
    "task_comm_off": ("task_struct", "comm"),
}
CGROUP_FIELDS = {   # task->cgroups->dfl_cgrp->kn->id: the id bpf_get_current_cgroup_id() returns
    "task_cgroups_off": ("task_struct", "cgroups"), "css_dfl_cgrp_off": ("css_set", "dfl_cgrp"),
    "cgroup_kn_off": ("cgroup", "kn"), "kn_id_off": ("kernfs_node", "id"),
}
RUNQ_UNSEEN, RUNQ_PREEMPTED = 0, 1    # enum runq_stat in probes/runqlat.c
GROUPS_SHOWN = 10      # histograms kept per group besides the whole scope's (all groups are summarized)
CONTENDED_US = 1000    # 1% of waits longer than this: the CPUs are contended
QUIET_US = 100         # 99% of waits under this: the CPU is not what it waits for


def extra(ctx):
    offs = dict.fromkeys([*TASK_FIELDS, "task_state_off", *CGROUP_FIELDS], 0)
    if ctx.hook.type != "raw_tracepoint":
        return offs   # the tracepoint rung reads no kernel struct
    b = btf.kernel()
    if b is None:
        raise Unsupported("the raw tracepoint rung needs kernel BTF", "use --hook tracepoint")
    try:
        b.offsetof("task_struct", "__state")
        state = "__state"
    except KeyError:
        state = "state"  # before 5.14
    offs.update(btf.offsets({**TASK_FIELDS, "task_state_off": ("task_struct", state)}))
    if ctx.value("cgroup") is not None or ctx.value("per") == "cgroup":
        offs.update(btf.offsets(CGROUP_FIELDS))
    return offs


def _stat(bpf, i):
    t = bpf["runq_stats"]
    return int(sum(t[t.Key(i)]))


class CgroupNames:
    """cgroup v2 id (its directory's inode) -> path under the hierarchy, found by walking it once."""

    def __init__(self):
        self._paths = None

    def __call__(self, cg_id):
        if self._paths is None:
            self._paths = {}
            for root in cgroup2_roots()[:1]:
                for d, subdirs, _files in os.walk(root):
                    try:
                        self._paths[os.stat(d).st_ino] = "/" + os.path.relpath(d, root).lstrip(".")
                    except OSError:
                        continue
        return self._paths.get(cg_id, f"id {cg_id}")


def _proc_comm(pid):
    text = read_text(f"/proc/{pid}/comm")
    return text.rstrip("\n") if text else None


def _names(rows):
    """pid -> a name for the process (its main thread's comm when kit saw it wait, else any thread's),
    and (pid, tid) -> the thread's."""
    names = {}
    for r in rows:
        if r["tid"] == r["pid"] or r["pid"] not in names:
            names[r["pid"]] = r["comm"]
        names[(r["pid"], r["tid"])] = r["comm"]
    return names


def group_label(per, key, names, cgroup_name):
    if per == "cgroup":
        return f"cgroup={cgroup_name(int(key.cgroup))}"
    pid = int(key.tgid)
    if per == "thread":
        return f"pid={pid} tid={int(key.tid)} comm={names.get((pid, int(key.tid)), '?')}"
    comm = _proc_comm(pid) or names.get(pid) or "?"   # the process's name while it lives (`ps -o comm`)
    return f"pid={pid} comm={comm}"


def quantile_high(counts, q):
    """The upper bound (us) of the log2 bucket holding the q-quantile of {slot: count}."""
    total = sum(counts.values())
    if not total:
        return None
    seen = 0
    for slot in sorted(counts):
        seen += counts[slot]
        if seen >= q * total:
            return prelude.slot_range(slot)[1]
    return prelude.slot_range(max(counts))[1]


def summarize(name, counts):
    return {"group": name, "waits": sum(counts.values()), "p50_us_under": quantile_high(counts, 0.5),
            "p99_us_under": quantile_high(counts, 0.99), "max_us_under": prelude.slot_range(max(counts))[1]}


def collect(ctx, bpf):
    rows = contract.collect_table(ctx.recipe, bpf)
    per = ctx.value("per")
    names, cgroup_name = _names(rows), CgroupNames()
    groups, everything = {}, {}
    for k, v in bpf["runq_hist"].items():
        n = int(v.value)
        if not n:
            continue
        g, slot = groups.setdefault(group_label(per, k, names, cgroup_name), {}), int(k.slot)
        g[slot] = g.get(slot, 0) + n
        everything[slot] = everything.get(slot, 0) + n
    busiest = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    hists = {"runq_us all": prelude.buckets(everything)} if len(groups) != 1 else {}
    for label, counts in busiest[:GROUPS_SHOWN]:
        hists[f"runq_us {label}"] = prelude.buckets(counts)
    summary = {
        "per": per, "waits": sum(everything.values()), "groups": [summarize(lb, c) for lb, c in busiest],
        "preempted": _stat(bpf, RUNQ_PREEMPTED),
        **({"all": summarize("all", everything)} if everything else {}),
    }
    notes = []
    if len(busiest) > GROUPS_SHOWN:
        notes.append(f"{len(busiest) - GROUPS_SHOWN} more {per} histograms are summarized in the JSON "
                     "(runqlat.groups); scope the run (--pid, --comm, --cgroup) to see one")
    unseen = _stat(bpf, RUNQ_UNSEEN)
    if ctx.hook.type == "tracepoint" and unseen:
        notes.append(f"{unseen} wakeups of tasks kit had not yet seen switch out were not counted (the "
                     "tracepoint rung learns a task's process at its first switch-out in the run)")
    return {"rows": rows, "histograms": hists, "runqlat": summary, "notes": notes,
            "hints": hints(ctx, rows, summary)}


def hints(ctx, rows, s):
    """Next steps computed from the result: [{text, command}]."""
    out = []
    whole = s.get("all")
    if not whole:
        return out
    pid = ctx.values.get("pid")
    worst = rows[0] if rows else None
    if whole["p99_us_under"] > CONTENDED_US:
        text = (f"1% of the waits for a CPU took over {whole['p99_us_under'] // 2 + 1} us: the CPUs are "
                "contended")
        if worst and worst["ran_instead_pid"]:
            out.append({"text": text + f"; during the worst wait ({worst['max_us']:.0f} us) "
                                       f"{worst['ran_instead']} (pid {worst['ran_instead_pid']}) had the CPU",
                        "command": f"kit run profile --pid {worst['ran_instead_pid']} --for 10s"})
        else:
            out.append({"text": text + "; what runs instead?", "command": "kit run profile --for 10s"})
    elif whole["p99_us_under"] < QUIET_US:
        target = pid or (worst["pid"] if worst else None)
        out.append({"text": f"99% of the waits for a CPU were under {whole['p99_us_under'] + 1} us: the CPU is not "
                            "the bottleneck; see where it waits instead",
                    "command": f"kit run offcpu --pid {target} --for 20s" if target else ""})
    return out


HOOKS = Hooks(extra=extra, collect=collect)
