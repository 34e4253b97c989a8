/*
 * profile: on-CPU samples counted in the kernel per (process, thread, comm,
 * kernel stack, user stack).
 *
 * Hook: a perf event, the software CPU clock, sampling every online CPU
 * --hz times a second whatever runs there (kit opens it with a frequency,
 * one event per CPU). The program runs in the timer's interrupt, so current
 * is the task that was on the CPU: the prelude's scope applies as it is,
 * and the stacks are taken from the interrupted registers (a sample in user
 * mode has no kernel frames, a kernel thread no user frames). Samples of the
 * idle task are counted apart and dropped: they say how idle the CPUs were.
 * A new process in scope is announced once (first_sight) so that kit
 * snapshots its memory maps while it lives, and names its frames after it
 * exits.
 *
 * Based on bcc's tools/profile.py and libbpf-tools' profile.bpf.c, with the
 * scope filtered in the kernel and stack failures counted.
 */
#include <uapi/linux/bpf_perf_event.h>

#define KIT_EFAULT 14   /* a stack that is not there (user mode: no kernel frames; kernel thread: no user frames) */

enum profile_stat {
    PROFILE_IDLE = 0,          /* samples of the idle task */
    PROFILE_OUT_OF_SCOPE = 1,  /* samples of tasks out of scope */
    PROFILE_KSTACK_LOST = 2,
    PROFILE_USTACK_LOST = 3,
    PROFILE_STAT_MAX = 4,
};
BPF_PERCPU_ARRAY(profile_stats, u64, PROFILE_STAT_MAX);

struct key_t {
    u32 tgid;
    u32 tid;
    s32 kstack;
    s32 ustack;
    char comm[16];
};

BPF_HASH(samples, struct key_t, u64, 16384);
/* kernel and user stacks in maps of their own: a stack id is a hash bucket, and a stack whose bucket holds
 * another is dropped (EEXIST), so each kind only competes with its own kind for slots */
BPF_STACK_TRACE(kstacks, 16384);
BPF_STACK_TRACE(ustacks, 16384);
BPF_HASH(seen, u32, u8, 4096);      /* processes kit has been told about */
BPF_PERF_OUTPUT(first_sight);       /* a new process in scope: kit snapshots its maps */

static __always_inline void profile_count(int which)
{
    u64 *v = profile_stats.lookup(&which);
    if (v)
        (*v)++;
}

int on_sample(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    /* every sample is counted once, as an event or as filtered: the guardrail prices samples by these */
    if ((u32)id == 0) {  /* the idle task (pid 0 on every CPU) */
        profile_count(PROFILE_IDLE);
        kit_count(KIT_FILTERED);
        return 0;
    }
    if (!kit_in_scope()) {
        profile_count(PROFILE_OUT_OF_SCOPE);
        return 0;
    }
    struct key_t key = {};
    key.tgid = id >> 32;
    key.tid = (u32)id;
    /* -EFAULT is a stack absent by nature (no user frames); any other failure is counted */
    key.kstack = kstacks.get_stackid(ctx, 0);
    if (key.kstack < 0 && key.kstack != -KIT_EFAULT) {
        kit_count(KIT_STACK_LOST);
        profile_count(PROFILE_KSTACK_LOST);
    }
    key.ustack = ustacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (key.ustack < 0 && key.ustack != -KIT_EFAULT) {
        kit_count(KIT_STACK_LOST);
        profile_count(PROFILE_USTACK_LOST);
    }
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    u32 tgid = key.tgid;
    /* a kernel thread has no user frames to name */
    if (key.ustack >= 0 && !seen.lookup(&tgid) && !first_sight.perf_submit(ctx, &tgid, sizeof(tgid))) {
        u8 one = 1;
        seen.update(&tgid, &one);  /* once delivered; kit may not have opened the buffer yet */
    }
    u64 zero = 0;
    u64 *n = samples.lookup_or_try_init(&key, &zero);
    if (!n) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(n, 1);
    kit_count(KIT_EVENTS);
    return 0;
}
