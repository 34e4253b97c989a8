"""oomkill: what the template reads at BTF offsets (the raw tracepoint rung), which fields this
kernel's tracepoint carries, and next steps computed from the kills."""

import os
import shlex

from kit.engine import prelude, stream
from kit.host import btf, features, procfs
from kit.engine.contract import Hooks

TRACEPOINT = "oom:mark_victim"
RSS_FIELDS = ("comm", "total_vm", "anon_rss", "file_rss", "shmem_rss", "uid", "pgtables", "oom_score_adj")
RAW_FIELDS = {
    "task_tgid_off": ("task_struct", "tgid"), "task_comm_off": ("task_struct", "comm"),
    "task_mm_off": ("task_struct", "mm"), "task_signal_off": ("task_struct", "signal"),
    "task_cgroups_off": ("task_struct", "cgroups"), "signal_oom_adj_off": ("signal_struct", "oom_score_adj"),
    "css_dfl_cgrp_off": ("css_set", "dfl_cgrp"), "cgroup_kn_off": ("cgroup", "kn"), "kn_id_off": ("kernfs_node", "id"),
    "mm_total_vm_off": ("mm_struct", "total_vm"), "mm_rss_off": ("mm_struct", "rss_stat"),
    "mm_pgtables_off": ("mm_struct", "pgtables_bytes"), "pcpu_count_off": ("percpu_counter", "count"),
}


MEMCG_FIELDS = {"task_cgroups_off": ("task_struct", "cgroups"), "css_memory_off": ("css_set", "subsys"),
                "css_cgroup_off": ("cgroup_subsys_state", "cgroup"), "cgroup_kn_off": ("cgroup", "kn"),
                "kn_id_off": ("kernfs_node", "id")}
POINTER = 8


def memory_subsys_id(path="/proc/cgroups"):
    """memory_cgrp_id: /proc/cgroups lists the controllers in the order of their ids."""
    text = procfs.read_text(path)
    if text is None:
        return None
    names = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return names.index("memory") if "memory" in names else None


def extra(ctx):
    raw = ctx.hook.type == "raw_tracepoint"
    offs = dict.fromkeys({**RAW_FIELDS, **MEMCG_FIELDS}, 0)
    pcpu = 0
    memcg_btf = 0
    memory_id = memory_subsys_id()
    if features.btf_available() and memory_id is not None:
        offs.update(btf.offsets(MEMCG_FIELDS))
        offs["css_memory_off"] += POINTER * memory_id
        memcg_btf = 1
    elif not raw:
        ctx.notes.append("without BTF the limit is looked for from the triggering task's cgroup v2, which is "
                         "right only where the memory controller is on cgroup v2")
    if raw:
        offs.update(btf.offsets(RAW_FIELDS))
        pcpu = btf.kernel().sizeof("percpu_counter")
        try:  # before 6.2 the counters are struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
            offs["mm_rss_off"] = btf.kernel().offsetof("mm_struct", "rss_stat.count")
            pcpu, offs["pcpu_count_off"] = 8, 0  # an array of 8-byte counters (Debian's 6.1)
        except KeyError:
            pass  # 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]
        has_rss = 0
    else:
        fields = features.tracepoint_format(TRACEPOINT) or []
        has_rss = int(all(f in fields for f in RSS_FIELDS))
        if not has_rss:
            ctx.notes.append("this kernel's oom:mark_victim carries only the victim's pid (before 6.8): "
                             "its name and memory are not shown")
        ctx.notes.append("the tracepoint rung does not see the victim's cgroup (the limit is looked for from "
                         "the triggering task's)")
    return {**offs, "pcpu_size": pcpu, "tp_has_rss": has_rss, "memcg_btf": memcg_btf,
            "page_kb": os.sysconf("SC_PAGE_SIZE") // 1024}


def _cmd(*words):
    return " ".join(shlex.quote(str(w)) for w in words)


def hints(summary, groups):
    """[{text, command}]: per limit that was hit, what to read next; a system-wide OOM; nothing seen."""
    out = []
    root = stream.memory_root() or "/sys/fs/cgroup"
    v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
    counters, limit_file = ("memory.events", "memory.max") if v2 else ("memory.oom_control", "memory.limit_in_bytes")
    for r in groups.get("limit", []):
        limit = r.get("limit")
        if str(limit).startswith("("):
            continue
        if limit:
            d = os.path.join(root, str(limit).lstrip("/"))
            out.append({"text": f"memory cgroup {limit} reached its limit ({limit_file}) {r['events']} time(s): its "
                                "OOM counters and what its memory is",
                        "command": _cmd("grep", "-H", ".", os.path.join(d, counters), os.path.join(d, limit_file))
                        + " && " + _cmd("head", "-12", os.path.join(d, "memory.stat"))})
        else:
            out.append({"text": f"{r['events']} kill(s) with no cgroup limit in the way: the whole box ran out of "
                                "memory; the kernel log has the task list it chose from",
                        "command": "dmesg -T | grep -A30 'invoked oom-killer' | tail -60"})
    if not summary.get("received"):
        out.append({"text": "no OOM kill during the run: keep watching (it costs nothing until one happens)",
                    "command": _cmd("kit", "run", "oomkill", "--for", "30m")})
    return out


def collect(ctx, bpf):
    s = ctx.stream
    if s is None:
        return {}
    summary = s.summary(prelude.read_stats(bpf))
    return {"hints": hints(summary["stream"], summary["groups"])}


HOOKS = Hooks(extra=extra, collect=collect)
