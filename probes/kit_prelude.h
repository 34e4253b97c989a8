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
/* --comm NAME: a thread whose own name is NAME, or whose process's name (its
 * main thread's, the thread-group leader's: what `ps -o comm` shows) is NAME.
 * --thread-comm NAME: a thread whose own name is NAME, nothing else. */
#define KIT_SCOPE_COMM_ON        {{scope_comm_on}}
#define KIT_SCOPE_THREAD_COMM_ON {{scope_thread_comm_on}}
/* How --comm reads a thread's process name: the thread-group leader's comm,
 * at task_struct offsets from the running kernel's BTF (the headers here may be
 * another kernel's). 2: BTF-typed loads from bpf_get_current_task_btf() (no
 * helper call per load); 1: bpf_probe_read_kernel; 0: not read (no --comm, or
 * a kernel without BTF): --comm matches the thread's own name only. */
#define KIT_TASK_READ       {{scope_task_read}}
#define KIT_TASK_LEADER_OFF {{scope_task_leader_off}}
#define KIT_TASK_COMM_OFF   {{scope_task_comm_off}}

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

static __always_inline int kit_comm_eq(const union kit_comm *got, const union kit_comm *want)
{
    return got->w[0] == want->w[0] && got->w[1] == want->w[1];
}

/* --comm's rule for the current thread, whose own name is `own`. The thread's
 * own name is compared first (no read); only a thread that is not its
 * process's main thread pays for reading the main thread's name. */
static __always_inline int kit_comm_match_current(const union kit_comm *own)
{
#if KIT_SCOPE_COMM_ON
    union kit_comm want = {.c = {{scope_comm}}};
    if (kit_comm_eq(own, &want))
        return 1;
#if KIT_TASK_READ
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id == (id >> 32))
        return 0;  /* the main thread itself: its own name was the process's */
    union kit_comm got = {};
#if KIT_TASK_READ == 2
    char *task = (char *)bpf_get_current_task_btf();
    char *leader = *(char **)(task + KIT_TASK_LEADER_OFF);
    got.w[0] = *(u64 *)(leader + KIT_TASK_COMM_OFF);
    got.w[1] = *(u64 *)(leader + KIT_TASK_COMM_OFF + 8);
#else
    char *task = (char *)bpf_get_current_task();
    char *leader = 0;
    if (bpf_probe_read_kernel(&leader, sizeof(leader), task + KIT_TASK_LEADER_OFF) || !leader)
        return 0;
    if (bpf_probe_read_kernel(&got, sizeof(got), leader + KIT_TASK_COMM_OFF))
        return 0;
#endif
    return kit_comm_eq(&got, &want);
#else
    return 0;
#endif
#else
    return 1;
#endif
}

/* --thread-comm's rule: the thread's own name only. */
static __always_inline int kit_thread_comm_match(const union kit_comm *own)
{
#if KIT_SCOPE_THREAD_COMM_ON
    union kit_comm want = {.c = {{scope_thread_comm}}};
    return kit_comm_eq(own, &want);
#else
    return 1;
#endif
}

/* Is the current task in scope? Use in any context where current is the subject.
 * Cheapest checks first: ids, then names (own name before the main thread's). */
static __always_inline int kit_allow_current(void)
{
    u64 id = bpf_get_current_pid_tgid();
    if (KIT_SCOPE_TGID && (id >> 32) != KIT_SCOPE_TGID)
        return 0;
    if (KIT_SCOPE_TID && (u32)id != KIT_SCOPE_TID)
        return 0;
#if KIT_SCOPE_COMM_ON || KIT_SCOPE_THREAD_COMM_ON
    union kit_comm own = {};
    bpf_get_current_comm(&own.c, sizeof(own.c));
    if (!kit_thread_comm_match(&own))
        return 0;
#endif
    if (KIT_SCOPE_CGROUP && bpf_get_current_cgroup_id() != KIT_SCOPE_CGROUP)
        return 0;
#if KIT_SCOPE_COMM_ON
    if (!kit_comm_match_current(&own))
        return 0;
#endif
    return 1;
}

/* For a task that is not current (runqlat's woken task): is its own name
 * --comm's? (1 without --comm.) Then --comm's whole rule for that task, whose
 * own name is `own`: the thread-group leader's name is read through the task
 * pointer with bpf_probe_read_kernel, at the same BTF offsets as above. */
static __always_inline int kit_comm_is(const union kit_comm *name)
{
#if KIT_SCOPE_COMM_ON
    union kit_comm want = {.c = {{scope_comm}}};
    return kit_comm_eq(name, &want);
#else
    return 1;
#endif
}

static __always_inline int kit_comm_match_task(const char *task, const union kit_comm *own)
{
#if KIT_SCOPE_COMM_ON
    if (kit_comm_is(own))
        return 1;
#if KIT_TASK_READ
    char *leader = 0;
    union kit_comm got = {};
    if (bpf_probe_read_kernel(&leader, sizeof(leader), task + KIT_TASK_LEADER_OFF) || !leader || leader == task)
        return 0;  /* a main thread's own name was its process's */
    if (bpf_probe_read_kernel(&got, sizeof(got), leader + KIT_TASK_COMM_OFF))
        return 0;
    return kit_comm_is(&got);
#else
    return 0;
#endif
#else
    return 1;
#endif
}

/* Is a task other than current in scope? For hooks whose subject is another task (execsnoop's
 * parent, oomkill's victim): its ids and own name as the caller read them, and the task itself, from
 * which --comm's rule reads its process's name (0 when the caller has none: its own name decides).
 * The cgroup is the caller's to check: another task's is not one helper call away. */
static __always_inline int kit_allow_task(u32 tgid, u32 tid, const char *comm, const char *task)
{
    if (KIT_SCOPE_TGID && tgid != KIT_SCOPE_TGID)
        return 0;
    if (KIT_SCOPE_TID && tid != KIT_SCOPE_TID)
        return 0;
#if KIT_SCOPE_COMM_ON || KIT_SCOPE_THREAD_COMM_ON
    union kit_comm own = {};
    __builtin_memcpy(&own, comm, sizeof(own));
    if (!kit_thread_comm_match(&own))
        return 0;
#endif
#if KIT_SCOPE_COMM_ON
    return task ? kit_comm_match_task(task, &own) : kit_comm_is(&own);
#else
    return 1;
#endif
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
