/* kit calibrate: the programs whose cost per event `kit calibrate` measures on this host (kit/guard/calibrate.py
 * attaches each configuration to raw_syscalls sys_enter/sys_exit around `dd bs=1`). Rendered after
 * probes/kit_prelude.h with kit's typed layer: {{workload_comm}} is a 16-byte initializer,
 * {{calib_ringbuf}} 0 or 1, {{calib_ring_pages}} an integer. */
BPF_HASH(kit_calib_counts, u32, u64, 1024);
BPF_STACK_TRACE(kit_calib_stacks, 1024);

/* The latency-pair shape most recipes share (syscalls, lock hold, getaddrinfo):
 * entry stores a timestamp per thread, exit aggregates per process and name. */
struct calib_start { u64 ts; u32 nr; u32 pad; };
struct calib_key { u32 tgid; u32 nr; char comm[16]; };
struct calib_val { u64 count; u64 errors; u64 total_ns; u64 max_ns; };
BPF_HASH(kit_calib_start, u32, struct calib_start, 10240);
BPF_HASH(kit_calib_agg, struct calib_key, struct calib_val, 1024);

union calib_comm { char c[16]; u64 w[2]; };

/* The in-scope path of kit_prelude.h's comm filter: the workload's comm matches. */
static __always_inline int comm_is_workload(void)
{
    union calib_comm want = {.c = {{workload_comm}}};
    union calib_comm got = {};
    bpf_get_current_comm(&got.c, sizeof(got.c));
    return got.w[0] == want.w[0] && got.w[1] == want.w[1];
}

static __always_inline void count_tgid(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 zero = 0, *v = kit_calib_counts.lookup_or_try_init(&tgid, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline void pair_start(void)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct calib_start s = {.ts = bpf_ktime_get_ns(), .nr = 1};
    kit_calib_start.update(&tid, &s);
}

static __always_inline void pair_end(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct calib_start *sp = kit_calib_start.lookup(&tid);
    if (!sp)
        return;
    u64 delta = bpf_ktime_get_ns() - sp->ts;
    struct calib_key key = {.tgid = id >> 32, .nr = sp->nr};
    kit_calib_start.delete(&tid);
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    struct calib_val zero = {};
    struct calib_val *v = kit_calib_agg.lookup_or_try_init(&key, &zero);
    if (!v)
        return;
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->total_ns, delta);
    if (delta > v->max_ns)
        v->max_ns = delta;
    kit_count(KIT_EVENTS);
}

int tp_empty(void *ctx) { return 0; }
int tp_hash(void *ctx) { count_tgid(); return 0; }
int tp_filter(void *ctx) { if (kit_in_scope()) count_tgid(); return 0; }
int tp_stack(void *ctx)
{
    count_tgid();
    kit_calib_stacks.get_stackid(ctx, 0);
    kit_calib_stacks.get_stackid(ctx, BPF_F_USER_STACK);
    return 0;
}
int tp_pair_enter(void *ctx) { if (comm_is_workload()) pair_start(); else kit_count(KIT_FILTERED); return 0; }
int tp_pair_enter_reject(void *ctx) { if (kit_in_scope()) pair_start(); return 0; }
int tp_pair_exit(void *ctx) { pair_end(); return 0; }
int raw_empty(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int raw_hash(struct bpf_raw_tracepoint_args *ctx) { count_tgid(); return 0; }
int raw_filter(struct bpf_raw_tracepoint_args *ctx) { if (kit_in_scope()) count_tgid(); return 0; }
int raw_pair_enter(struct bpf_raw_tracepoint_args *ctx) { if (comm_is_workload()) pair_start(); else kit_count(KIT_FILTERED); return 0; }
int raw_pair_enter_reject(struct bpf_raw_tracepoint_args *ctx) { if (kit_in_scope()) pair_start(); return 0; }
int raw_pair_exit(struct bpf_raw_tracepoint_args *ctx) { pair_end(); return 0; }

/* A stream event: one fixed-size record out to the stream buffer (kit/engine/stream.py's ladder). */
struct calib_record { u64 ts; u32 pid; u32 pad; char comm[16]; u8 body[224]; };
#if {{calib_ringbuf}}
BPF_RINGBUF_OUTPUT(kit_calib_events, {{calib_ring_pages}});
#else
BPF_PERF_OUTPUT(kit_calib_events);
#endif
BPF_PERCPU_ARRAY(kit_calib_scratch, struct calib_record, 1);

static __always_inline void output_record(void *ctx)
{
    u32 zero = 0;
    struct calib_record *r = kit_calib_scratch.lookup(&zero);
    if (!r)
        return;
    r->ts = bpf_ktime_get_ns();
    r->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&r->comm, sizeof(r->comm));
#if {{calib_ringbuf}}
    if (kit_calib_events.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP) != 0)  /* as most of a stream's records */
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#else
    if (kit_calib_events.perf_submit(ctx, r, sizeof(*r)) != 0)
        kit_count(KIT_BUFFER_LOST);
    else
        kit_count(KIT_EVENTS);
#endif
}

/* Only the workload's records: another process's syscall storm must not fill the buffer mid-run. */
int tp_output(void *ctx) { if (comm_is_workload()) output_record(ctx); else kit_count(KIT_FILTERED); return 0; }
int raw_output(struct bpf_raw_tracepoint_args *ctx)
{
    if (comm_is_workload())
        output_record(ctx);
    else
        kit_count(KIT_FILTERED);
    return 0;
}

int up_count(struct pt_regs *ctx) { kit_count(KIT_EVENTS); return 0; }
int up_entry(struct pt_regs *ctx) { pair_start(); return 0; }
int up_return(struct pt_regs *ctx) { pair_end(); return 0; }
