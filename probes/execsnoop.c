/*
 * execsnoop: every exec and every process exit in scope, as a live stream
 * (pid, parent, name, filename, argv, exit code, run time).
 *
 * Hooks: sched_process_exec and sched_process_exit, as raw tracepoints (the
 * first rung: the task and the linux_binprm come as pointers; the filename is
 * bprm->filename) or as tracepoints (the filename is the tracepoint's
 * __data_loc field). No kprobe: bcc's execsnoop kprobes execve and fails on
 * kernels without kprobes. At sched_process_exec the exec has succeeded and
 * current runs the new program, so argv is read from the new mm's
 * arg_start..arg_end (one read of at most ARGS_MAX bytes; the bytes it could
 * not copy are sent as args_cut, never dropped silently). At
 * sched_process_exit of the last thread (group_dead) task->exit_code holds
 * the wait status; run time counts from the exec kit saw, else from the
 * process's start. Struct members (task_struct, mm_struct, linux_binprm) are
 * read at offsets from the running kernel's BTF: headers may be for another
 * kernel.
 * Scope: the new process OR its parent (so --comm cron shows what cron
 * starts), and its cgroup; an exit is in scope when its exec was, or when it
 * or its parent matches.
 * Based on bcc's tools/execsnoop.py and tools/exitsnoop.py, and libbpf-tools'
 * execsnoop (argv from the exec'd process's memory rather than execve's
 * arguments, which is also what `ps` reads).
 */
#define KIT_RINGBUF {{kit_ringbuf}}
#define TASK_MM_OFF     {{task_mm_off}}
#define TASK_PARENT_OFF {{task_parent_off}}
#define TASK_TGID_OFF   {{task_tgid_off}}
#define TASK_PID_OFF    {{task_pid_off}}
#define TASK_COMM_OFF   {{task_comm_off}}
#define TASK_FLAGS_OFF  {{task_flags_off}}
#define TASK_EXIT_CODE_OFF {{task_exit_code_off}}
#define TASK_START_OFF  {{task_start_off}}
#define TASK_LEADER_OFF {{task_leader_off}}
#define KIT_MM_ARG_START_OFF {{mm_arg_start_off}}
#define KIT_MM_ARG_END_OFF  {{mm_arg_end_off}}
#define KIT_BPRM_FILENAME_OFF {{bprm_filename_off}}
/* does the exit hook say whether the whole thread group is gone? (6.16+: group_dead) */
#define KIT_EXIT_GROUP_DEAD {{exit_group_dead}}

#define ARGS_MAX 4096
#define FILENAME_MAX_LEN 256
#define PF_KTHREAD 0x00200000

enum { EV_EXEC = 0, EV_EXIT = 1 };

struct event {
    u64 ts_ns;
    u64 run_ns;       /* exit: since the exec kit saw, else since the process started */
    u64 cgroup;
    u32 kind;
    u32 pid;          /* tgid */
    u32 ppid;         /* the parent's tgid */
    u32 uid;
    u32 exit_status;  /* exit: the wait status, as waitpid() gives it */
    u32 before_run;   /* exit: 1 when kit did not see it exec (run_ns counts from its start) */
    u32 args_len;     /* exec: bytes of argv copied into args */
    u32 args_cut;     /* exec: bytes of argv not copied (0: complete) */
    u8 comm[16];
    u8 pcomm[16];
    u8 filename[FILENAME_MAX_LEN];
    u8 args[ARGS_MAX];
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
BPF_PERCPU_ARRAY(scratch, struct event, 1);   /* too big for the BPF stack */
BPF_HASH(execs, u32, u64, 10240);             /* tgid -> exec time, for the run time at exit */

static __always_inline void emit(void *ctx, struct event *e, u32 size)
{
#if KIT_RINGBUF
    if (events.ringbuf_output(e, size, kit_wake_flags()) != 0)
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#else
    if (events.perf_submit(ctx, e, size) != 0)
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#endif
}

/* Who the task and its parent are: fills pid, ppid, comm, pcomm, uid, cgroup; returns the scope verdict.
 * The verdict comes first and cheapest: the cgroup, then the task itself (current, by the prelude's
 * rule), then its parent (kit_allow_task: its own name or its process's; its ids are read only when a
 * pid scope needs them). */
static __always_inline int describe(const char *task, struct event *e)
{
    u64 id = bpf_get_current_pid_tgid();
    const char *parent = 0;
    u32 ptid = 0;
    e->pid = id >> 32;
    e->ppid = 0;
    e->cgroup = bpf_get_current_cgroup_id();
    if (KIT_SCOPE_CGROUP && e->cgroup != KIT_SCOPE_CGROUP)
        return 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    __builtin_memset(e->pcomm, 0, sizeof(e->pcomm));
    bpf_probe_read_kernel(&parent, sizeof(parent), task + TASK_PARENT_OFF);
    if (parent)
        bpf_probe_read_kernel(&e->pcomm, sizeof(e->pcomm), parent + TASK_COMM_OFF);
    if (!kit_allow_current()) {
        if (!parent)
            return 0;
        if (KIT_SCOPE_TGID || KIT_SCOPE_TID) {
            bpf_probe_read_kernel(&e->ppid, sizeof(e->ppid), parent + TASK_TGID_OFF);
            bpf_probe_read_kernel(&ptid, sizeof(ptid), parent + TASK_PID_OFF);
        }
        if (!kit_allow_task(e->ppid, ptid, (const char *)e->pcomm, parent))
            return 0;
    }
    if (parent && !e->ppid)
        bpf_probe_read_kernel(&e->ppid, sizeof(e->ppid), parent + TASK_TGID_OFF);
    e->uid = (u32)bpf_get_current_uid_gid();
    return 1;
}

static __always_inline int on_exec(void *ctx, const char *task, const char *filename)
{
    u32 zero = 0;
    struct event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    if (!describe(task, e)) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    e->kind = EV_EXEC;
    e->ts_ns = bpf_ktime_get_ns();
    e->run_ns = 0;
    e->exit_status = 0;
    e->before_run = 0;
    e->filename[0] = 0;
    bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), filename);

    /* argv: the new program's argument strings, NUL-separated, as the kernel copied them in */
    const char *mm = 0;
    unsigned long start = 0, end = 0;
    bpf_probe_read_kernel(&mm, sizeof(mm), task + TASK_MM_OFF);
    if (mm) {
        bpf_probe_read_kernel(&start, sizeof(start), mm + KIT_MM_ARG_START_OFF);
        bpf_probe_read_kernel(&end, sizeof(end), mm + KIT_MM_ARG_END_OFF);
    }
    u64 total = end > start ? end - start : 0;
    u32 len = total > ARGS_MAX ? ARGS_MAX : (u32)total;
    if (len > ARGS_MAX)  /* for the verifier: len is bounded */
        len = ARGS_MAX;
    if (len && bpf_probe_read_user(&e->args, len, (const void *)start) != 0)
        len = 0;
    e->args_len = len;
    e->args_cut = total - len;

    u32 pid = e->pid;
    u64 ts = e->ts_ns;
    if (execs.update(&pid, &ts) != 0)
        kit_count(KIT_MAP_FULL);  /* its exit line then counts from the process's start */
    emit(ctx, e, offsetof(struct event, args) + len);
    return 0;
}

static __always_inline int on_exit(void *ctx, const char *task, int group_dead)
{
    u32 flags = 0;
    bpf_probe_read_kernel(&flags, sizeof(flags), task + TASK_FLAGS_OFF);
    if (!group_dead || (flags & PF_KTHREAD)) {  /* a thread of a live process, or a kernel thread */
        kit_count(KIT_FILTERED);
        return 0;
    }
    u32 zero = 0;
    struct event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    int inside = describe(task, e);
    u32 pid = e->pid;
    u64 now = bpf_ktime_get_ns();
    u64 *exec_ts = execs.lookup(&pid);
    if (!exec_ts && !inside) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    e->kind = EV_EXIT;
    e->ts_ns = now;
    e->args_len = 0;
    e->args_cut = 0;
    e->exit_status = 0;
    bpf_probe_read_kernel(&e->exit_status, sizeof(e->exit_status), task + TASK_EXIT_CODE_OFF);
    if (exec_ts) {
        e->run_ns = now - *exec_ts;
        e->before_run = 0;
        execs.delete(&pid);
    } else {
        const char *leader = 0;
        u64 started = 0;
        bpf_probe_read_kernel(&leader, sizeof(leader), task + TASK_LEADER_OFF);
        if (leader)
            bpf_probe_read_kernel(&started, sizeof(started), leader + TASK_START_OFF);
        e->run_ns = started && started < now ? now - started : 0;
        e->before_run = 1;
    }
    emit(ctx, e, offsetof(struct event, filename));
    return 0;
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    /* TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
    const char *task = (const char *)ctx->args[0];
    const char *bprm = (const char *)ctx->args[2];
    const char *filename = 0;
    bpf_probe_read_kernel(&filename, sizeof(filename), bprm + KIT_BPRM_FILENAME_OFF);
    return on_exec(ctx, task, filename);
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    /* TP_PROTO(struct task_struct *p[, bool group_dead]) */
    const char *task = (const char *)ctx->args[0];
#if KIT_EXIT_GROUP_DEAD
    int group_dead = (int)(ctx->args[1] & 1);
#else
    u64 id = bpf_get_current_pid_tgid();
    int group_dead = (u32)id == (id >> 32);  /* no such argument: the leader's exit stands for the process */
#endif
    return on_exit(ctx, task, group_dead);
}
#else
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    const char *task = (const char *)bpf_get_current_task();
    const char *filename = (const char *)args + (args->data_loc_filename & 0xFFFF);
    return on_exec(args, task, filename);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    const char *task = (const char *)bpf_get_current_task();
#if KIT_EXIT_GROUP_DEAD
    int group_dead = args->group_dead;
#else
    u64 id = bpf_get_current_pid_tgid();
    int group_dead = (u32)id == (id >> 32);
#endif
    return on_exit(args, task, group_dead);
}
#endif
