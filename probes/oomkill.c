/*
 * oomkill: every task the OOM killer picks, as a live stream: the victim
 * (pid, name, RSS, oom_score_adj, cgroup), the task whose allocation
 * triggered the kill, and (decoded by kit at the event) the cgroup whose
 * memory.max was reached.
 *
 * Hooks: oom:mark_victim, where the kernel marks the victim it has just sent
 * SIGKILL. As a raw tracepoint (the first rung: TP_PROTO(task, uid); the
 * victim's mm counters, oom_score_adj and cgroup read at offsets from the
 * running kernel's BTF, the same approximate counters the tracepoint reports)
 * or as the tracepoint (its fields, from tracefs; it does not say which
 * cgroup the victim is in). Either way current is the task that was
 * allocating when memory ran out (for a memory cgroup OOM, a task charged to
 * that cgroup), and its memory cgroup (on whichever hierarchy the memory
 * controller is: v2, or v1 on a hybrid box) is where kit looks for the limit.
 * Scope: the victim or the triggering task (--comm, --thread-comm, --pid, --cgroup). Not a
 * hot path: it fires once per kill.
 * Based on bcc's tools/oomkill.py (a kprobe on oom_kill_process, which this
 * kernel lacks) and the oom:mark_victim fields the kernel added in 6.8.
 */
#define KIT_RINGBUF {{kit_ringbuf}}
#define KIT_PAGE_KB {{page_kb}}
/* does the tracepoint carry the victim's memory (6.8+), or only its pid? */
#define KIT_TP_HAS_RSS {{tp_has_rss}}
/* raw tracepoint rung: BTF offsets */
#define TASK_TGID_OFF   {{task_tgid_off}}
#define TASK_COMM_OFF   {{task_comm_off}}
#define TASK_MM_OFF     {{task_mm_off}}
#define TASK_SIGNAL_OFF {{task_signal_off}}
#define TASK_CGROUPS_OFF {{task_cgroups_off}}
#define KIT_SIGNAL_OOM_ADJ_OFF {{signal_oom_adj_off}}
#define KIT_CSS_DFL_CGRP_OFF {{css_dfl_cgrp_off}}
#define KIT_CGROUP_KN_OFF   {{cgroup_kn_off}}
#define KIT_KN_ID_OFF       {{kn_id_off}}
#define KIT_MM_TOTAL_VM_OFF {{mm_total_vm_off}}
#define KIT_MM_RSS_OFF      {{mm_rss_off}}
#define KIT_MM_PGTABLES_OFF {{mm_pgtables_off}}
#define KIT_PCPU_SIZE       {{pcpu_size}}
#define KIT_PCPU_COUNT_OFF  {{pcpu_count_off}}
/* the memory controller's cgroup of a task, whichever hierarchy it is on (v2, or v1's memory):
 * task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id; without BTF, the v2 cgroup of current */
#define KIT_MEMCG_BTF       {{memcg_btf}}
#define KIT_CSS_MEMORY_OFF  {{css_memory_off}}
#define KIT_CSS_CGROUP_OFF  {{css_cgroup_off}}
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SHMEMPAGES 3

struct event {
    u64 ts_ns;
    u64 total_vm_kb;
    u64 anon_rss_kb;
    u64 file_rss_kb;
    u64 shmem_rss_kb;
    u64 pgtables_kb;
    u64 cgroup;          /* the victim's cgroup v2 id (raw tracepoint rung; 0: not known) */
    u64 memcg;           /* the victim's memory cgroup id (raw tracepoint rung; 0: not known) */
    u64 trigger_cgroup;  /* the allocating task's cgroup v2 id */
    u64 trigger_memcg;   /* the allocating task's memory cgroup id: where the limit is looked for */
    u32 pid;             /* the victim */
    u32 uid;
    u32 trigger_pid;
    s32 oom_score_adj;
    u8 comm[16];
    u8 trigger_comm[16];
};

#if KIT_RINGBUF
BPF_RINGBUF_OUTPUT(events, {{kit_stream_pages}});
#else
BPF_PERF_OUTPUT(events);
#endif
#define KIT_STREAM_WAKE_NS {{kit_stream_wake_ns}}
BPF_PERCPU_ARRAY(kit_wake_at, u64, 1);

/* Wake the reader for the first event after a quiet spell, then at most once every
 * KIT_STREAM_WAKE_NS: a wakeup is an IPI and a context switch (~10 us on this VM, inside the
 * program's time), while the reader also drains the buffer on its own every poll slice of that
 * length (kit/engine/stream.py), so no event waits longer than that. */
static __always_inline u64 kit_wake_flags(void)
{
    u32 zero = 0;
    u64 now = bpf_ktime_get_ns();
    u64 *at = kit_wake_at.lookup(&zero);
    if (!at)
        return 0;
    if (now - *at < KIT_STREAM_WAKE_NS)
        return BPF_RB_NO_WAKEUP;
    *at = now;
    return BPF_RB_FORCE_WAKEUP;
}

static __always_inline u64 cgroup_id(const char *cgrp)
{
    const char *kn = 0;
    u64 id = 0;
    if (cgrp)
        bpf_probe_read_kernel(&kn, sizeof(kn), cgrp + KIT_CGROUP_KN_OFF);
    if (kn)
        bpf_probe_read_kernel(&id, sizeof(id), kn + KIT_KN_ID_OFF);
    return id;
}

static __always_inline u64 memcg_of(const char *task)
{
#if KIT_MEMCG_BTF
    const char *cset = 0, *css = 0, *cgrp = 0;
    bpf_probe_read_kernel(&cset, sizeof(cset), task + TASK_CGROUPS_OFF);
    if (cset)
        bpf_probe_read_kernel(&css, sizeof(css), cset + KIT_CSS_MEMORY_OFF);
    if (css)
        bpf_probe_read_kernel(&cgrp, sizeof(cgrp), css + KIT_CSS_CGROUP_OFF);
    return cgroup_id(cgrp);
#else
    return bpf_get_current_cgroup_id();
#endif
}

/* Fills in the triggering task (current); is the victim or the trigger in scope? Counts a rejection.
 * victim: the victim's task (the raw tracepoint rung), from which --comm reads its process's name; 0 on
 * the tracepoint rung, where the victim's own name (the thread the kernel picked: its main thread
 * unless that one had already exited) decides. */
static __always_inline int in_scope(struct event *e, const char *victim_task)
{
    u64 id = bpf_get_current_pid_tgid();
    e->trigger_pid = id >> 32;
    e->trigger_cgroup = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
    int victim = kit_allow_task(e->pid, e->pid, (const char *)e->comm, victim_task)
        && (!KIT_SCOPE_CGROUP || e->cgroup == KIT_SCOPE_CGROUP);
    if (!victim && !kit_allow_current()) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    return 1;
}

static __always_inline int emit(void *ctx, struct event *e)
{
    e->ts_ns = bpf_ktime_get_ns();
    e->trigger_memcg = memcg_of((const char *)bpf_get_current_task());
#if KIT_RINGBUF
    if (events.ringbuf_output(e, sizeof(*e), kit_wake_flags()) != 0)
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#else
    if (events.perf_submit(ctx, e, sizeof(*e)) != 0)
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#endif
    return 0;
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
static __always_inline u64 mm_pages(const char *mm, int member)
{
    /* percpu_counter.count (6.2+: KIT_PCPU_SIZE apart), or mm_rss_stat.count[member] before (8 apart):
     * what get_mm_counter() reads, without the per-CPU (or per-thread) deltas */
    s64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), mm + KIT_MM_RSS_OFF + member * KIT_PCPU_SIZE + KIT_PCPU_COUNT_OFF);
    return v > 0 ? v : 0;
}

RAW_TRACEPOINT_PROBE(mark_victim)
{
    /* TP_PROTO(struct task_struct *task, uid_t uid) */
    const char *task = (const char *)ctx->args[0];
    struct event e = {};
    const char *mm = 0, *sig = 0, *cset = 0, *cgrp = 0;
    e.uid = (u32)ctx->args[1];
    bpf_probe_read_kernel(&e.pid, sizeof(e.pid), task + TASK_TGID_OFF);
    bpf_probe_read_kernel(&e.comm, sizeof(e.comm), task + TASK_COMM_OFF);
    bpf_probe_read_kernel(&cset, sizeof(cset), task + TASK_CGROUPS_OFF);
    if (cset)
        bpf_probe_read_kernel(&cgrp, sizeof(cgrp), cset + KIT_CSS_DFL_CGRP_OFF);
    e.cgroup = cgroup_id(cgrp);
    if (!in_scope(&e, task))
        return 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), task + TASK_MM_OFF);
    if (mm) {
        u64 vm = 0;
        long pgtables = 0;
        bpf_probe_read_kernel(&vm, sizeof(vm), mm + KIT_MM_TOTAL_VM_OFF);
        bpf_probe_read_kernel(&pgtables, sizeof(pgtables), mm + KIT_MM_PGTABLES_OFF);
        e.total_vm_kb = vm * KIT_PAGE_KB;
        e.anon_rss_kb = mm_pages(mm, MM_ANONPAGES) * KIT_PAGE_KB;
        e.file_rss_kb = mm_pages(mm, MM_FILEPAGES) * KIT_PAGE_KB;
        e.shmem_rss_kb = mm_pages(mm, MM_SHMEMPAGES) * KIT_PAGE_KB;
        e.pgtables_kb = pgtables > 0 ? pgtables >> 10 : 0;
    }
    bpf_probe_read_kernel(&sig, sizeof(sig), task + TASK_SIGNAL_OFF);
    if (sig) {
        short adj = 0;
        bpf_probe_read_kernel(&adj, sizeof(adj), sig + KIT_SIGNAL_OOM_ADJ_OFF);
        e.oom_score_adj = adj;
    }
    e.memcg = KIT_MEMCG_BTF ? memcg_of(task) : 0;
    return emit(ctx, &e);
}
#else
TRACEPOINT_PROBE(oom, mark_victim)
{
    struct event e = {};
    e.pid = args->pid;
#if KIT_TP_HAS_RSS
    bpf_probe_read_kernel_str(&e.comm, sizeof(e.comm), (const char *)args + (args->data_loc_comm & 0xFFFF));
    e.total_vm_kb = args->total_vm;
    e.anon_rss_kb = args->anon_rss;
    e.file_rss_kb = args->file_rss;
    e.shmem_rss_kb = args->shmem_rss;
    e.pgtables_kb = args->pgtables;
    e.uid = args->uid;
    e.oom_score_adj = args->oom_score_adj;
#endif
    if (!in_scope(&e, 0))
        return 0;
    return emit(args, &e);
}
#endif
