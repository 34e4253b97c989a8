/*
 * kit_prelude.h: the scope filter and self-accounting every kit template uses.
 *
 * Scope values arrive as literals from kit's typed layer; 0 means "any".
 * Filters run in the kernel so out-of-scope events cost a compare, not a
 * map update or a trip to user space (the idea of Inspektor Gadget's
 * filter.h and libbpf-tools' allow_record()).
 */
#include <uapi/linux/ptrace.h>

#define KIT_SCOPE_TGID   {{scope_tgid}}
#define KIT_SCOPE_TID    {{scope_tid}}
#define KIT_SCOPE_CGROUP {{scope_cgroup}}
#define KIT_SCOPE_COMM_ON {{scope_comm_on}}

/* Self-accounting, read by kit for the progress line, the overhead meter and
 * the "lost" report. Per-CPU so counting never contends. Every map insert,
 * stack capture and buffer output that can fail checks its result and counts
 * the failure here, so a loss is never silent (BCC's .increment() would drop
 * it: templates use lookup_or_try_init and count instead). */
enum kit_stat {
    KIT_EVENTS = 0,      /* events that passed the scope filter and were recorded */
    KIT_FILTERED = 1,    /* events the scope filter rejected */
    KIT_MAP_FULL = 2,    /* updates that failed because a map was full */
    KIT_STACK_LOST = 3,  /* stack captures that failed (-EFAULT, -EEXIST/-ENOMEM when the stack map is full) */
    KIT_LOST_OTHER = 4,  /* anything else a template could not record */
    KIT_BUFFER_LOST = 5, /* perf/ring buffer outputs that failed: user space fell behind */
    KIT_STAT_MAX = 8,
};
BPF_PERCPU_ARRAY(kit_stats, u64, KIT_STAT_MAX);

static __always_inline void kit_count(int which)
{
    u64 *v = kit_stats.lookup(&which);
    if (v)
        (*v)++;
}

union kit_comm {
    char c[16];
    u64 w[2];
};

static __always_inline int kit_comm_match(const char *comm)
{
#if KIT_SCOPE_COMM_ON
    union kit_comm want = {.c = {{scope_comm}}};
    union kit_comm got;
    __builtin_memcpy(&got, comm, sizeof(got));
    return got.w[0] == want.w[0] && got.w[1] == want.w[1];
#else
    return 1;
#endif
}

/* Is this task in scope? tgid/tid/comm as given (e.g. from tracepoint fields). */
static __always_inline int kit_allow_task(u32 tgid, u32 tid, const char *comm)
{
    if (KIT_SCOPE_TGID && tgid != KIT_SCOPE_TGID)
        return 0;
    if (KIT_SCOPE_TID && tid != KIT_SCOPE_TID)
        return 0;
    if (!kit_comm_match(comm))
        return 0;
    return 1;
}

/* Is the current task in scope? Use in any context where current is the subject. */
static __always_inline int kit_allow_current(void)
{
    u64 id = bpf_get_current_pid_tgid();
    if (KIT_SCOPE_TGID && (id >> 32) != KIT_SCOPE_TGID)
        return 0;
    if (KIT_SCOPE_TID && (u32)id != KIT_SCOPE_TID)
        return 0;
#if KIT_SCOPE_COMM_ON
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    if (!kit_comm_match(comm))
        return 0;
#endif
    if (KIT_SCOPE_CGROUP && bpf_get_current_cgroup_id() != KIT_SCOPE_CGROUP)
        return 0;
    return 1;
}

/* Scope check that also keeps the books: counts the rejected event. */
static __always_inline int kit_in_scope(void)
{
    if (kit_allow_current())
        return 1;
    kit_count(KIT_FILTERED);
    return 0;
}

/* log2 histogram slot of v: 0 holds v == 0, slot k >= 1 holds [2^(k-1), 2^k - 1]
 * (bpftrace's hist() buckets; kit.histo turns slots back into ranges). */
#define KIT_LOG2_SLOTS 65
static __always_inline int kit_log2_slot(u64 v)
{
    int r = 0;
    if (!v)
        return 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8)  { v >>= 8;  r += 8; }
    if (v >> 4)  { v >>= 4;  r += 4; }
    if (v >> 2)  { v >>= 2;  r += 2; }
    if (v >> 1)  { r += 1; }
    return r + 1;
}
