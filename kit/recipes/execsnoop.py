"""execsnoop: the struct offsets the template reads (BTF), and next steps computed from what ran."""

import shlex

from kit.engine import prelude
from kit.host import btf, features
from kit.engine.contract import Hooks

TASK_FIELDS = {
    "task_mm_off": ("task_struct", "mm"), "task_parent_off": ("task_struct", "real_parent"),
    "task_tgid_off": ("task_struct", "tgid"), "task_pid_off": ("task_struct", "pid"),
    "task_comm_off": ("task_struct", "comm"), "task_flags_off": ("task_struct", "flags"),
    "task_exit_code_off": ("task_struct", "exit_code"), "task_start_off": ("task_struct", "start_time"),
    "task_leader_off": ("task_struct", "group_leader"),
    "mm_arg_start_off": ("mm_struct", "arg_start"), "mm_arg_end_off": ("mm_struct", "arg_end"),
}
EXIT_HOOK = "sched_process_exit"


def extra(ctx):
    raw = ctx.hook.type == "raw_tracepoint"
    wanted = dict(TASK_FIELDS)
    if raw:
        wanted["bprm_filename_off"] = ("linux_binprm", "filename")
    offs = btf.offsets(wanted)  # both rungs read task_struct and mm_struct: Unsupported without BTF
    offs.setdefault("bprm_filename_off", 0)
    if raw:
        group_dead = (btf.kernel().raw_tracepoint_args(EXIT_HOOK) or 0) >= 2
    else:
        group_dead = "group_dead" in (features.tracepoint_format(f"sched:{EXIT_HOOK}") or [])
    if not group_dead:
        ctx.notes.append("this kernel's process-exit hook does not say when a whole process is gone: "
                         "an exit is shown when the main thread exits")
    return {**offs, "exit_group_dead": int(group_dead)}


def _cmd(*words):
    return " ".join(shlex.quote(str(w)) for w in words)


def hints(ctx, summary, groups):
    """[{text, command}] from the run's tallies: who failed, who started the most, what was missed."""
    out = []
    scoped = any(ctx.values.get(p.name) is not None for p in ctx.recipe.scope_params())
    by_comm = [r for r in groups.get("comm", []) if not str(r["comm"]).startswith("(")]
    failing = sorted((r for r in by_comm if r.get("failed")), key=lambda r: -r["failed"])
    if failing:
        r = failing[0]
        out.append({"text": f"{r['comm']} exited non-zero or was killed {r['failed']} times: see which of its "
                            "syscalls fail", "command": _cmd("kit", "run", "syscalls", "--comm", r["comm"],
                                                             "--for", "30s")})
    parents = [r for r in groups.get("pcomm", []) if r.get("exec") and not str(r["pcomm"]).startswith("(")]
    if parents and not scoped:
        r = parents[0]
        out.append({"text": f"{r['pcomm']} started the most programs ({r['exec']}): watch only what it starts",
                    "command": _cmd("kit", "run", "execsnoop", "--comm", r["pcomm"])})
    if summary.get("lost_in_kernel") or summary.get("capped"):
        top = by_comm[0]["comm"] if by_comm else None
        out.append({"text": "events were dropped or not shown: narrow the scope and keep every line",
                    "command": _cmd("kit", "run", "execsnoop", *(("--comm", top) if top else ()), "--limit", "0",
                                    "--json") + " > execsnoop.jsonl"})
    if not summary.get("received"):
        out.append({"text": "nothing was started in scope: widen the scope or watch longer",
                    "command": _cmd("kit", "run", "execsnoop", "--for", "60s")})
    return out


def collect(ctx, bpf):
    s = ctx.stream
    summary = s.summary(prelude.read_stats(bpf)) if s is not None else {}
    return {"hints": hints(ctx, summary.get("stream", {}), summary.get("groups", {}))}


HOOKS = Hooks(extra=extra, collect=collect)
