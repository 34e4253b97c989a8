/*
 * lockhold: how long a user-space lock is held, and how long threads waited
 * for it, as log2 histograms in microseconds plus count, total and max.
 *
 * Hooks (uprobes, attached by kit from the catalog's attach list):
 *   lock_entry   entry of the lock function     wait starts
 *   lock_return  return of the lock function    wait ends, hold starts
 *   unlock_entry entry of the unlock function   hold ends
 * A hold is matched to its unlock per thread and lock object (the first
 * argument), so nested locks are measured apart; --match thread pairs per
 * thread only, for lock functions that take no argument. Per-thread entries
 * are deleted when used, so the maps stay bounded; a full map is counted.
 * Based on bcc's tools/klockstat.py (the same three points on kernel
 * mutexes) and the bpftrace lock-hold one-liner in kit's field notes.
 */
#define KIT_MATCH_THREAD ({{match}} == 1)
#define KIT_STACKS       {{stacks}}

#define KIND_HOLD 0
#define KIND_WAIT 1

struct wait_val {
    u64 ts;
    u64 lock;
};

struct hold_key {
    u64 lock;
    u32 tid;
    u32 pad;
};

struct hold_val {
    u64 ts;
    s64 stackid;
};

struct stat_key {
    u32 tgid;
    u32 kind;
};

struct stat_val {
    u64 count;
    u64 total_ns;
    u64 max_ns;
    char comm[16];
};

BPF_HASH(waiting, u32, struct wait_val, 10240);
BPF_HASH(holding, struct hold_key, struct hold_val, 10240);
BPF_HASH(stats, struct stat_key, struct stat_val, 4096);
BPF_HISTOGRAM(hold_hist, int, KIT_LOG2_SLOTS);
BPF_HISTOGRAM(wait_hist, int, KIT_LOG2_SLOTS);
/* 0: unlocks with no hold recorded (lock taken before the run, by trylock, or
 * in another thread); 1: lock returns with no entry recorded (call in flight
 * when kit attached). */
BPF_PERCPU_ARRAY(unmatched, u64, 2);

#if KIT_STACKS
struct stack_key {
    u32 tgid;
    s32 stackid;
};

struct stack_val {
    u64 count;
    u64 total_ns;
    u64 max_ns;
};

BPF_STACK_TRACE(stacks, 4096);
BPF_HASH(hold_stacks, struct stack_key, struct stack_val, 4096);
/* Where the lock function runs in each process: with its address in the
 * file, kit derives the load base and can name frames in that file even
 * after the process exited. */
BPF_HASH(lock_ips, u32, u64, 4096);
#endif

static __always_inline void count_unmatched(int which)
{
    u64 *v = unmatched.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline void record(u32 tgid, u32 kind, u64 ns)
{
    struct stat_key key = {.tgid = tgid, .kind = kind};
    struct stat_val zero = {};
    if (kind == KIND_HOLD) {
        hold_hist.atomic_increment(kit_log2_slot(ns / 1000));  /* an array: never full */
        kit_count(KIT_EVENTS);  /* one event per lock/unlock cycle: what the uprobe_pair cost is per */
    } else {
        wait_hist.atomic_increment(kit_log2_slot(ns / 1000));
    }
    struct stat_val *v = stats.lookup_or_try_init(&key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return;
    }
    if (!v->comm[0])
        bpf_get_current_comm(&v->comm, sizeof(v->comm));
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->total_ns, ns);
    if (ns > v->max_ns)
        v->max_ns = ns;  /* racy across CPUs; a lost update only under-reports max */
}

int lock_entry(struct pt_regs *ctx)
{
    if (!kit_in_scope())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct wait_val w = {.ts = bpf_ktime_get_ns(), .lock = KIT_MATCH_THREAD ? 0 : PT_REGS_PARM1(ctx)};
#if KIT_STACKS
    u32 tgid = id >> 32;
    if (!lock_ips.lookup(&tgid)) {
        u64 ip = PT_REGS_IP(ctx);
        lock_ips.update(&tgid, &ip);
    }
#endif
    if (waiting.update(&tid, &w) < 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

int lock_return(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct wait_val *w = waiting.lookup(&tid);
    if (!w) {
        if (kit_allow_current())
            count_unmatched(1);
        return 0;
    }
    struct hold_key hk = {.lock = w->lock, .tid = tid};
    struct hold_val hv = {.ts = now, .stackid = -1};
    u64 waited = now - w->ts;
    waiting.delete(&tid);
    record(id >> 32, KIND_WAIT, waited);
#if KIT_STACKS
    hv.stackid = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (hv.stackid < 0)
        kit_count(KIT_STACK_LOST);
#endif
    if (holding.update(&hk, &hv) < 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

int unlock_entry(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    struct hold_key hk = {.lock = KIT_MATCH_THREAD ? 0 : PT_REGS_PARM1(ctx), .tid = (u32)id};
    struct hold_val *h = holding.lookup(&hk);
    if (!h) {
        if (kit_allow_current())
            count_unmatched(0);
        return 0;
    }
    u64 held = now - h->ts;
    s64 stackid = h->stackid;
    holding.delete(&hk);
    record(id >> 32, KIND_HOLD, held);
#if KIT_STACKS
    if (stackid >= 0) {
        struct stack_key sk = {.tgid = id >> 32, .stackid = stackid};
        struct stack_val zero = {};
        struct stack_val *s = hold_stacks.lookup_or_try_init(&sk, &zero);
        if (!s) {
            kit_count(KIT_MAP_FULL);
            return 0;
        }
        __sync_fetch_and_add(&s->count, 1);
        __sync_fetch_and_add(&s->total_ns, held);
        if (held > s->max_ns)
            s->max_ns = held;
    }
#endif
    return 0;
}
