/*
 * lockhold: how long a user-space lock is held, and how long threads waited
 * for it, as log2 histograms in microseconds plus count, total and max.
 *
 * Hooks (uprobes, attached by kit from the catalog's attach list):
 *   lock_entry   entry of the lock function     wait starts
 *   lock_return  return of the lock function    wait ends, hold starts
 *   unlock_entry entry of the unlock function   hold ends
 *   inside_entry / inside_return  entry and return of --inside FUNCTION (when given):
 *                calls made while the thread holds a lock, and calls made outside any
 *                hold, each counted and timed; and how many holds saw such a call
 * Pairing an unlock with the hold it ends (--match):
 *   lock    the hold its thread took on the same lock object (the first argument)
 *   thread  its thread's most recent hold (a stack per thread), for functions
 *           that take no lock argument: their first-argument register holds
 *           whatever the caller left there, which may or may not agree
 *   auto    (default) by lock object when the unlock's first argument is that
 *           of a hold its thread has open, else by thread; kit uses lock for
 *           pairs known to take the lock as first argument (pthread_mutex_*)
 * Each pairing is counted by the rule that made it, so kit can say which one
 * the run used. Per-thread entries are deleted (holds) or reused (stacks) so
 * the maps stay bounded; a full map is counted.
 * Based on bcc's tools/klockstat.py (the same three points on kernel
 * mutexes) and the bpftrace lock-hold one-liner in kit's field notes.
 */
#define KIT_MATCH          {{match}}           /* the catalog's order: 0 lock, 1 thread, 2 auto */
#define KIT_LOCK_ARG_KNOWN {{lock_arg_known}}  /* the pair takes its lock as first argument */
#define KIT_PAIR_LOCK      (KIT_MATCH == 0 || (KIT_MATCH == 2 && KIT_LOCK_ARG_KNOWN))
#define KIT_PAIR_THREAD    (KIT_MATCH == 1)
#define KIT_STACKS         {{stacks}}
#define KIT_INSIDE         {{inside_on}}       /* --inside FUNCTION was given */

/* auto keeps the order of this many open holds per thread (a power of two, at
 * most 32: the bits of nest.live); holds taken deeper pair by argument only */
#define KIT_NEST 32

#define KIND_HOLD 0
#define KIND_WAIT 1

/* which rule paired a hold (the `paired` counters) */
#define PAIRED_EITHER 0  /* auto: the first argument named the thread's newest hold: both rules agree */
#define PAIRED_ARG    1  /* by lock object (lock; auto: an older hold, released out of order) */
#define PAIRED_THREAD 2  /* the thread's newest hold (thread; auto: no open hold had that argument) */

struct wait_val {
    u64 ts;
    u64 lock;
};

struct hold_key {
    u64 lock;   /* first argument of the lock call (0 when pairing by thread) */
    u32 tid;
    u32 depth;  /* the hold's place in its thread's stack (1 = oldest), 0 outside any stack */
};

struct hold_val {
    u64 ts;
    s64 stackid;
};

/* A thread's open holds, oldest first (thread: only their number). */
struct nest {
    u32 n;               /* slots in use */
    u32 live;            /* auto: bit i set while slot i is held (out-of-order releases leave gaps) */
    u32 over;            /* auto: holds taken while every slot was in use */
    u32 pad;
    u64 arg[KIT_NEST];   /* auto: each slot's first argument */
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
/* LRU: a thread that exits leaves its (empty) stack to be reused, not a full map */
BPF_TABLE("lru_hash", u32, struct nest, nests, 10240);
BPF_HASH(stats, struct stat_key, struct stat_val, 4096);
BPF_HISTOGRAM(hold_hist, int, KIT_LOG2_SLOTS);
BPF_HISTOGRAM(wait_hist, int, KIT_LOG2_SLOTS);
/* 0: unlocks with no hold recorded (lock taken before the run, by trylock, or
 * in another thread); 1: lock returns with no entry recorded (call in flight
 * when kit attached). */
BPF_PERCPU_ARRAY(unmatched, u64, 2);
BPF_PERCPU_ARRAY(paired, u64, 3);

#if KIT_INSIDE
/* A thread's open holds (any lock the pair takes) and the calls of the --inside
 * function since its outermost one began. */
struct held_val {
    u32 depth;
    u32 calls;
};

struct inside_start {
    u64 ts;
    u32 held;   /* 1: called while the thread held a lock */
    u32 pad;
};

struct inside_val {
    u64 count;
    u64 total_ns;
    u64 max_ns;
};

BPF_TABLE("lru_hash", u32, struct held_val, held, 10240);
BPF_HASH(inside_starts, u32, struct inside_start, 10240);
/* 0: calls outside any hold, 1: calls inside a hold (per CPU, summed by kit) */
BPF_PERCPU_ARRAY(inside_stats, struct inside_val, 2);
/* outermost holds during which the --inside function was called at least once */
BPF_PERCPU_ARRAY(inside_holds, u64, 1);

static __always_inline void held_enter(u32 tid)
{
    struct held_val zero = {};
    struct held_val *h = held.lookup_or_try_init(&tid, &zero);
    if (!h) {
        kit_count(KIT_MAP_FULL);
        return;
    }
    if (h->depth == 0)
        h->calls = 0;
    h->depth++;
}

static __always_inline void held_leave(u32 tid)
{
    struct held_val *h = held.lookup(&tid);
    if (!h || h->depth == 0)
        return;
    h->depth--;
    if (h->depth == 0 && h->calls) {
        int zero = 0;
        u64 *n = inside_holds.lookup(&zero);
        if (n)
            (*n)++;
    }
}

int inside_entry(struct pt_regs *ctx)
{
    if (!kit_allow_current())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct inside_start s = {.ts = bpf_ktime_get_ns()};
    struct held_val *h = held.lookup(&tid);
    if (h && h->depth) {
        s.held = 1;
        h->calls++;
    }
    if (inside_starts.update(&tid, &s) < 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

int inside_return(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns();
    u32 tid = bpf_get_current_pid_tgid();
    struct inside_start *s = inside_starts.lookup(&tid);
    if (!s)
        return 0;
    u64 ns = now - s->ts;
    int which = s->held;
    inside_starts.delete(&tid);
    struct inside_val *v = inside_stats.lookup(&which);
    if (v) {
        v->count++;
        v->total_ns += ns;
        if (ns > v->max_ns)
            v->max_ns = ns;
    }
    return 0;
}
#endif

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

static __always_inline void count_paired(int how)
{
    u64 *v = paired.lookup(&how);
    if (v)
        (*v)++;
}

static __always_inline void record(u32 tgid, u32 kind, u64 ns)
{
    struct stat_key key = {.tgid = tgid, .kind = kind};
    struct stat_val zero = {};
    if (kind == KIND_HOLD) {
        hold_hist.atomic_increment(kit_log2_slot(ns / 1000));  /* an array: never full */
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

#if !KIT_PAIR_LOCK
/* The newest held slot whose lock call had this first argument, or -1. */
static __always_inline int nest_find(struct nest *ns, u64 arg)
{
    u32 n = ns->n, live = ns->live;
    for (int j = 0; j < KIT_NEST; j++) {
        int i = (int)n - 1 - j;
        if (i < 0)
            break;
        if (((live >> i) & 1) && ns->arg[i & (KIT_NEST - 1)] == arg)
            return i;
    }
    return -1;
}

/* Frees a slot, then the free slots on top, so the top slot is always held. */
static __always_inline void nest_release(struct nest *ns, int slot)
{
    ns->live &= ~(1u << (slot & (KIT_NEST - 1)));
    for (int i = 0; i < KIT_NEST; i++) {
        u32 n = ns->n;
        if (n == 0 || n > KIT_NEST || ((ns->live >> (n - 1)) & 1))
            break;
        ns->n = n - 1;
    }
}

/* At the lock's return: puts the hold on its thread's stack and keys it there. */
static __always_inline void nest_push(u32 tid, struct hold_key *hk)
{
    struct nest zero = {};
    struct nest *ns = nests.lookup_or_try_init(&tid, &zero);
    if (!ns) {
        kit_count(KIT_MAP_FULL);  /* the hold is kept outside any stack: paired by argument only */
        return;
    }
#if KIT_PAIR_THREAD
    hk->lock = 0;
    hk->depth = ++ns->n;
#else
    u32 n = ns->n;
    if (n < KIT_NEST && !ns->over) {  /* after an overflow, newer holds stay above it */
        ns->arg[n & (KIT_NEST - 1)] = hk->lock;
        ns->live |= 1u << (n & (KIT_NEST - 1));
        ns->n = n + 1;
        hk->depth = n + 1;
    } else {
        ns->over++;
    }
#endif
}

/* At the unlock: the key of the hold it ends, and the rule that chose it. */
static __always_inline int nest_pop(u32 tid, struct hold_key *hk)
{
    struct nest *ns = nests.lookup(&tid);
    if (!ns)
        return KIT_PAIR_THREAD ? PAIRED_THREAD : PAIRED_ARG;
#if KIT_PAIR_THREAD
    hk->lock = 0;
    if (ns->n)
        hk->depth = ns->n--;
    return PAIRED_THREAD;
#else
    int slot = nest_find(ns, hk->lock);
    if (ns->over) {
        /* the newest holds are past the stack: pair by argument, the stack's first if it has none */
        if (slot >= 0 && !holding.lookup(hk)) {
            hk->depth = slot + 1;
            nest_release(ns, slot);
        } else {
            ns->over--;
        }
        return PAIRED_ARG;
    }
    if (slot >= 0) {
        int newest = (u32)(slot + 1) == ns->n;
        hk->depth = slot + 1;
        nest_release(ns, slot);
        return newest ? PAIRED_EITHER : PAIRED_ARG;
    }
    if (ns->n) {
        u32 top = (ns->n - 1) & (KIT_NEST - 1);
        hk->lock = ns->arg[top];
        hk->depth = top + 1;
        nest_release(ns, top);
        return PAIRED_THREAD;
    }
    return PAIRED_ARG;  /* nothing on the stack: a hold kept outside it, if any */
#endif
}
#endif

int lock_entry(struct pt_regs *ctx)
{
    if (!kit_in_scope())
        return 0;
    /* one event per lock call, the guardrail's rate hook: a lock that is never released through
     * the unlock symbol (a condition wait releases it inside libc) still paid for its probes */
    kit_count(KIT_EVENTS);
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct wait_val w = {.ts = bpf_ktime_get_ns(), .lock = KIT_PAIR_THREAD ? 0 : PT_REGS_PARM1(ctx)};
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
#if KIT_INSIDE
    held_enter(tid);
#endif
#if !KIT_PAIR_LOCK
    nest_push(tid, &hk);  /* on the stack even if the hold below cannot be stored: the order stays right */
#endif
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
    struct hold_key hk = {.lock = KIT_PAIR_THREAD ? 0 : PT_REGS_PARM1(ctx), .tid = (u32)id};
#if KIT_PAIR_LOCK
    int how = PAIRED_ARG;
#else
    int how = nest_pop((u32)id, &hk);
#endif
    struct hold_val *h = holding.lookup(&hk);
    if (!h) {
        if (kit_allow_current())
            count_unmatched(0);
        return 0;
    }
    u64 held_ns = now - h->ts;
    s64 stackid = h->stackid;
    holding.delete(&hk);
    record(id >> 32, KIND_HOLD, held_ns);
    count_paired(how);
#if KIT_INSIDE
    held_leave((u32)id);
#endif
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
        __sync_fetch_and_add(&s->total_ns, held_ns);
        if (held_ns > s->max_ns)
            s->max_ns = held_ns;
    }
#endif
    return 0;
}
