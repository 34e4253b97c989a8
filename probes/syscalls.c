/*
 * syscalls: syscall counts, errors and latency per process, thread name and
 * syscall number.
 *
 * Hooks: raw_syscalls sys_enter and sys_exit, as raw tracepoints (the first
 * rung: no argument copying) or as tracepoints. Every syscall on the box runs
 * the enter program, which is why the recipe is a hot path that needs a
 * scope: the scope filter runs first, so a syscall out of scope costs a
 * compare at entry and a failed hash lookup at exit, and nothing else.
 * Latency is entry to exit of the same thread; syscalls in flight when the
 * probe attaches or detaches are not counted.
 * Based on bcc's tools/syscount.py (-L) and libbpf-tools' syscount.
 */
struct start_t {
    u64 ts;
    u32 nr;
    u32 pad;
};

struct key_t {
    u32 tgid;
    u32 nr;
    char comm[16];
};

struct val_t {
    u64 count;
    u64 errors;
    u64 total_ns;
    u64 max_ns;
};

BPF_HASH(start, u32, struct start_t, 10240);
BPF_HASH(counts, struct key_t, struct val_t, 10240);

static __always_inline int on_enter(u32 nr)
{
    if (!kit_in_scope())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct start_t s = {.ts = bpf_ktime_get_ns(), .nr = nr};
    if (start.update(&tid, &s) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

static __always_inline int on_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct start_t *sp = start.lookup(&tid);
    if (!sp)
        return 0;
    u64 delta = bpf_ktime_get_ns() - sp->ts;
    struct key_t key = {.tgid = id >> 32, .nr = sp->nr};
    start.delete(&tid);
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    struct val_t zero = {};
    struct val_t *v = counts.lookup_or_try_init(&key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->total_ns, delta);
    if (ret < 0 && ret > -4096)
        __sync_fetch_and_add(&v->errors, 1);
    if (delta > v->max_ns)
        v->max_ns = delta;  /* racy across CPUs of one process; a lost max is a near-max */
    kit_count(KIT_EVENTS);
    return 0;
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(sys_enter)
{
    /* TP_PROTO(struct pt_regs *regs, long id) */
    return on_enter((u32)ctx->args[1]);
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    /* TP_PROTO(struct pt_regs *regs, long ret) */
    return on_exit((long)ctx->args[1]);
}
#else
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    return on_enter((u32)args->id);
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    return on_exit(args->ret);
}
#endif
