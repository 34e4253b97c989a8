/*
 * runqlat: run-queue latency, the time a runnable task waits for a CPU, as
 * log2 histograms (microseconds) per process, thread or cgroup, and per
 * thread its waits, their mean and the worst one, with the task that had the
 * CPU when that wait ended.
 *
 * Hooks: sched_wakeup and sched_wakeup_new start a wait (the task is now on a
 * run queue); sched_switch starts one for a task switched out while still
 * runnable (preempted) and ends the wait of the task switched in. On the raw
 * tracepoint rung the woken task is the tracepoint's task_struct argument,
 * read at offsets from the kernel's BTF: the scope applies to the task woken,
 * not to current (at a wakeup, current is the waker). The tracepoint rung has
 * only the woken task's tid and comm, so it takes the process and cgroup from
 * what it saw at that task's last switch-out (current is the task then); a
 * task asleep since before the run started is not counted on its first
 * wakeup there. Each sched_switch is counted once, as a wait recorded (the
 * task switched in had one) or as filtered: the guardrail prices runs by
 * sched_switch.
 *
 * Based on bcc's tools/runqlat.py and runqslower.py and libbpf-tools'
 * runqlat.bpf.c (tp_btf or raw tracepoints with BTF-typed arguments, which
 * BCC 0.26 cannot compile here without matching headers).
 */
#define KIT_PER {{per}}                 /* --per, by index: 0 process, 1 thread, 2 cgroup */
#define KIT_PER_THREAD 1
#define KIT_PER_CGROUP 2
#define RUNQ_TASK_PID_OFF {{task_pid_off}}
#define RUNQ_TASK_TGID_OFF {{task_tgid_off}}
#define RUNQ_TASK_COMM_OFF {{task_comm_off}}
#define RUNQ_TASK_STATE_OFF {{task_state_off}}
#define RUNQ_TASK_CGROUPS_OFF {{task_cgroups_off}}
#define RUNQ_CSS_DFL_CGRP_OFF {{css_dfl_cgrp_off}}
#define RUNQ_CGROUP_KN_OFF {{cgroup_kn_off}}
#define RUNQ_KN_ID_OFF {{kn_id_off}}
#define KIT_NEED_CGROUP (KIT_SCOPE_CGROUP || KIT_PER == KIT_PER_CGROUP)
#define KIT_TASK_REPORT_MAX 0x100       /* sched_switch's prev_state bit for a preempted task */

enum runq_stat {
    RUNQ_UNSEEN = 0,    /* tracepoint rung: woken before kit saw the task switch out */
    RUNQ_PREEMPTED = 1, /* waits started by a preemption (the others by a wakeup) */
    RUNQ_STAT_MAX = 4,
};
BPF_PERCPU_ARRAY(runq_stats, u64, RUNQ_STAT_MAX);

struct start_t {
    u64 ts;
    u64 cgroup;
    u32 tgid;
    u32 pad;
};

struct hkey_t {           /* one histogram per group: members that --per does not use stay 0 */
    u64 cgroup;
    u32 tgid;
    u32 tid;
    u32 slot;
    u32 _pad;
};

struct wkey_t {
    u32 tgid;
    u32 tid;
};

struct wval_t {
    u64 count;
    u64 total_ns;
    u64 max_ns;
    u32 prev_tgid;        /* the task that had the CPU when the worst wait ended */
    u32 cpu;
    char comm[16];
    char prev_comm[16];
};

BPF_HASH(start, u32, struct start_t, 10240);
BPF_HASH(runq_hist, struct hkey_t, u64, 10240);
BPF_HASH(waits, struct wkey_t, struct wval_t, 10240);

static __always_inline void runq_count(int which)
{
    u64 *v = runq_stats.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline void start_wait(u32 tid, u32 tgid, u64 cgroup)
{
    struct start_t s = {.ts = bpf_ktime_get_ns(), .cgroup = cgroup, .tgid = tgid};
    if (start.update(&tid, &s))
        kit_count(KIT_MAP_FULL);
}

/* The task switched in: ends its wait, if one started in scope. comm: its name (kernel memory). */
static __always_inline void switch_in(u32 tid, const char *comm)
{
    struct start_t *s = tid ? start.lookup(&tid) : 0;
    if (!s) {
        kit_count(KIT_FILTERED);
        return;
    }
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct hkey_t hk = {};
    hk.slot = kit_log2_slot(delta / 1000);
#if KIT_PER == KIT_PER_CGROUP
    hk.cgroup = s->cgroup;
#else
    hk.tgid = s->tgid;
#if KIT_PER == KIT_PER_THREAD
    hk.tid = tid;
#endif
#endif
    struct wkey_t wk = {.tgid = s->tgid, .tid = tid};
    start.delete(&tid);
    u64 zero = 0;
    u64 *c = runq_hist.lookup_or_try_init(&hk, &zero);
    if (!c) {
        kit_count(KIT_MAP_FULL);
        return;
    }
    __sync_fetch_and_add(c, 1);
    struct wval_t wz = {};
    struct wval_t *v = waits.lookup_or_try_init(&wk, &wz);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return;
    }
    /* one thread's waits end one at a time: these updates do not race */
    v->count++;
    v->total_ns += delta;
    bpf_probe_read_kernel(&v->comm, sizeof(v->comm), comm);   /* a thread may rename itself: its latest name */
    if (delta > v->max_ns) {
        v->max_ns = delta;
        v->prev_tgid = bpf_get_current_pid_tgid() >> 32;   /* current is still the task switching out */
        v->cpu = bpf_get_smp_processor_id();
        bpf_get_current_comm(&v->prev_comm, sizeof(v->prev_comm));
    }
    kit_count(KIT_EVENTS);
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
static __always_inline u64 task_cgroup(const char *task)
{
    u64 id = 0;
#if KIT_NEED_CGROUP
    char *css = 0, *cgrp = 0, *kn = 0;   /* task->cgroups->dfl_cgrp->kn->id, what bpf_get_current_cgroup_id reads */
    bpf_probe_read_kernel(&css, sizeof(css), task + RUNQ_TASK_CGROUPS_OFF);
    if (css)
        bpf_probe_read_kernel(&cgrp, sizeof(cgrp), css + RUNQ_CSS_DFL_CGRP_OFF);
    if (cgrp)
        bpf_probe_read_kernel(&kn, sizeof(kn), cgrp + RUNQ_CGROUP_KN_OFF);
    if (kn)
        bpf_probe_read_kernel(&id, sizeof(id), kn + RUNQ_KN_ID_OFF);
#endif
    return id;
}

/* A task was made runnable: in scope by its own ids, names and cgroup (not current's), by the
 * prelude's rules, cheapest first as kit_allow_current() takes them. */
static __always_inline int woken(const char *p)
{
    u32 tid = 0, tgid = 0;
    bpf_probe_read_kernel(&tid, sizeof(tid), p + RUNQ_TASK_PID_OFF);
    bpf_probe_read_kernel(&tgid, sizeof(tgid), p + RUNQ_TASK_TGID_OFF);
    if (!tid || (KIT_SCOPE_TGID && tgid != KIT_SCOPE_TGID) || (KIT_SCOPE_TID && tid != KIT_SCOPE_TID))
        return 0;
#if KIT_SCOPE_COMM_ON || KIT_SCOPE_THREAD_COMM_ON
    union kit_comm own = {};
    bpf_probe_read_kernel(&own, sizeof(own), p + RUNQ_TASK_COMM_OFF);
    if (!kit_thread_comm_match(&own))
        return 0;
#endif
    u64 cgroup = task_cgroup(p);
    if (KIT_SCOPE_CGROUP && cgroup != KIT_SCOPE_CGROUP)
        return 0;
#if KIT_SCOPE_COMM_ON
    if (!kit_comm_match_task(p, &own))
        return 0;
#endif
    start_wait(tid, tgid, cgroup);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup)
{
    /* TP_PROTO(struct task_struct *p) */
    return woken((const char *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    return woken((const char *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
    /* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...) */
    const char *prev = (const char *)ctx->args[1];
    const char *next = (const char *)ctx->args[2];
    u64 id = bpf_get_current_pid_tgid();   /* current == prev */
    if ((u32)id && kit_allow_current()) {
        u32 state = 0;  /* read after the scope check: out-of-scope switches skip it */
        bpf_probe_read_kernel(&state, sizeof(state), prev + RUNQ_TASK_STATE_OFF);
        if (ctx->args[0] || state == 0) {   /* preempted, or still TASK_RUNNING: it stays queued */
            start_wait((u32)id, id >> 32, KIT_NEED_CGROUP ? bpf_get_current_cgroup_id() : 0);
            runq_count(RUNQ_PREEMPTED);
        }
    }
    u32 next_tid = 0;
    bpf_probe_read_kernel(&next_tid, sizeof(next_tid), next + RUNQ_TASK_PID_OFF);
    switch_in(next_tid, next + RUNQ_TASK_COMM_OFF);
    return 0;
}
#else
struct seen_t {
    u64 cgroup;
    u32 tgid;
    u32 pad;
};
/* tid -> its process and cgroup, as seen at its last switch-out in scope (by kit_allow_current(), so
 * by --comm's whole rule: its own name or its process's) */
BPF_TABLE("lru_hash", u32, struct seen_t, tasks, 16384);

static __always_inline int woken(u32 tid, const char *comm)
{
    if (!tid || (KIT_SCOPE_TID && tid != KIT_SCOPE_TID))
        return 0;
    union kit_comm own = {};
#if KIT_SCOPE_COMM_ON || KIT_SCOPE_THREAD_COMM_ON
    __builtin_memcpy(&own, comm, sizeof(own));
    if (!kit_thread_comm_match(&own))
        return 0;
#endif
    struct seen_t *t = tasks.lookup(&tid);
    if (!t) {
        /* without a pid or cgroup scope every task is remembered once seen: this one was not yet (under
         * --comm, known to be in scope only by its own name: the tracepoint has no process name) */
        if (!KIT_SCOPE_TGID && !KIT_SCOPE_CGROUP && kit_comm_is(&own))
            runq_count(RUNQ_UNSEEN);
        return 0;
    }
    start_wait(tid, t->tgid, t->cgroup);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    return woken(args->pid, args->comm);
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    return woken(args->pid, args->comm);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 id = bpf_get_current_pid_tgid();   /* current == prev */
    if ((u32)id && kit_allow_current()) {
        u32 tid = id;
        struct seen_t t = {.cgroup = KIT_NEED_CGROUP ? bpf_get_current_cgroup_id() : 0, .tgid = id >> 32};
        if (tasks.update(&tid, &t))
            kit_count(KIT_MAP_FULL);
        if (args->prev_state == 0 || (args->prev_state & KIT_TASK_REPORT_MAX)) {
            start_wait(tid, t.tgid, t.cgroup);
            runq_count(RUNQ_PREEMPTED);
        }
    }
    switch_in(args->next_pid, args->next_comm);
    return 0;
}
#endif
