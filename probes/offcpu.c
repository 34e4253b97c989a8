/*
 * offcpu: off-CPU time summed in the kernel per (process, thread, comm,
 * kernel stack, user stack).
 *
 * Hook: sched_switch alone, so no kprobe and no fentry are needed. The
 * raw tracepoint (args: preempt, prev, next[, prev_state]) is used where the
 * kernel has BTF for task_struct offsets, the sched:sched_switch tracepoint
 * otherwise. At switch-out current == prev, so the helpers describe the task
 * that blocks: its scope, comm, and stack ids are taken there, keyed by tid
 * with a timestamp. At switch-in of `next` the start entry is looked up by
 * tid, deleted (so the map stays bounded), and the delta is added to the
 * totals. The final switch-out of an exiting task never switches back in, so
 * it is not recorded.
 *
 * Hidden caller (KIT_UNWIND): libc has no frame pointers, so the kernel's
 * frame-pointer walk from a syscall inside a libc wrapper skips the function
 * that called the wrapper. Where the task sits right after a `syscall`
 * instruction, kit walks up the libc frames with per-site CFA offsets that
 * user space computes from the libraries' .eh_frame (unwind_hints, keyed by
 * the code bytes before the site and its page offset), until it reaches a
 * frame that keeps a frame pointer: the return addresses read on the way are
 * the frames the walk skipped. A site without a hint is reported once
 * (unwind_learn) and recovered from then on; user space checks every
 * recovered chain against the real CFI before it shows it. Where no frame
 * on the way keeps a frame pointer (a program built without them), the
 * frames the unwind tables gave are kept (UNW_CFI) and the kernel's walk,
 * which followed a register holding anything, is not believed above them.
 *
 * Based on bcc's tools/offcputime.py and libbpf-tools' offcputime.bpf.c
 * (which hook finish_task_switch with a kprobe or tp_btf), adapted to the
 * tracepoint so it runs on kernels without kprobes or fentry.
 */
#define KIT_MIN_BLOCK_NS ({{min_block}} * 1000ULL)
#define KIT_TASK_PID_OFF   {{task_pid_off}}
#define KIT_TASK_STATE_OFF {{task_state_off}}
#define KIT_UNWIND         {{unwind}}
#define KIT_HIDDEN_MAX 4
#define KIT_WINDOW_WORDS 64
#define KIT_TASK_DEAD 0x80         /* task_struct.__state of an exiting task's last switch */
#define KIT_REPORT_DEAD_ZOMBIE 0x30 /* the tracepoint's prev_state bits for X and Z */

enum offcpu_stat {
    OFFCPU_SHORT = 0,     /* blocks shorter than --min-block, dropped in the kernel */
    OFFCPU_SHORT_NS = 1,  /* their total time */
    OFFCPU_KSTACK_LOST = 2,
    OFFCPU_USTACK_LOST = 3,
    OFFCPU_LEARN_SENT = 4,
    OFFCPU_STAT_MAX = 8,
};
BPF_PERCPU_ARRAY(offcpu_stats, u64, OFFCPU_STAT_MAX);

/* unwind status of a sample */
#define UNW_NONE 0        /* not attempted (not in a syscall, or unwinding off) */
#define UNW_DONE 1        /* reached a frame-pointer frame: hidden[] holds every frame the walk skipped */
#define UNW_PARTIAL 2     /* stopped early (site not learned yet, unreadable stack): hidden[] cleared */
#define UNW_ASKED 3       /* stopped at a site not learned yet and sent this block's stack window */
#define UNW_CFI 4         /* no frame-pointer frame within reach: hidden[] holds the frames the unwind
                             tables gave, and nothing above them is known */

/* Who blocked and where: taken at switch-out, kept in `start` until the
 * switch-in, then part of the totals' key. */
struct block_t {
    u64 hidden[KIT_HIDDEN_MAX];
    u32 tgid;
    s32 kstack;
    s32 ustack;
    u8 unwind;
    u8 nhidden;
    u8 bp_unsure;
    u8 pad;
    char comm[16];
};

struct start_t {
    u64 ts;
    struct block_t block;
};

struct key_t {
    struct block_t block;
    u32 tid;
    u32 pad;
};

struct val_t {
    u64 total_ns;
    u64 count;
};

BPF_HASH(start, u32, struct start_t, 10240);
BPF_HASH(blocks, struct key_t, struct val_t, 10240);
/* kernel and user stacks in maps of their own: a stack whose hash bucket holds another is dropped
 * (EEXIST), so each kind only competes with its own kind for slots */
BPF_STACK_TRACE(kstacks, 16384);
BPF_STACK_TRACE(ustacks, 16384);
BPF_HASH(seen, u32, u8, 4096);      /* processes kit has been told about */
BPF_PERF_OUTPUT(first_sight);       /* a new process in scope: kit snapshots its maps */

static __always_inline void offcpu_count(int which, u64 n)
{
    u64 *v = offcpu_stats.lookup(&which);
    if (v)
        *v += n;
}

#if KIT_UNWIND
struct hint_key {
    u64 page_off;   /* site & 0xfff */
    u64 code;       /* the 8 code bytes before the site */
};
struct hint_val {
    u32 cfa_off;    /* CFA = sp + cfa_off; the return address is at CFA - 8 */
    u32 flags;
};
#define HINT_TERMINAL 1   /* the site's frame keeps a frame pointer: the walk sees it */
#define HINT_SAVES_BP 2   /* this frame saved rbp at CFA - 8 * (flags >> 8) */
#define HINT_STOP 4       /* unknown or ambiguous CFI: give up */
BPF_HASH(unwind_hints, struct hint_key, struct hint_val, 65536);
BPF_HASH(unwind_asked, struct hint_key, u8, 8192);

struct learn_t {
    u32 tgid;
    u32 tid;
    s32 kstack;
    s32 ustack;
    u32 nwords;
    u32 pad;
    u64 ip;
    u64 sp;
    u64 words[KIT_WINDOW_WORDS];
};
BPF_PERCPU_ARRAY(learn_buf, struct learn_t, 1);
BPF_PERF_OUTPUT(unwind_learn);

/* Sends this block's stack window so user space can learn the sites on it
 * (and recover this very block's chain). Once per site. Returns 1 if sent. */
static __always_inline int ask(void *ctx, struct hint_key *k, struct block_t *b, u32 tid, u64 ip, u64 sp)
{
    u8 one = 1;
    if (unwind_asked.lookup(k))
        return 0;
    int zero = 0;
    struct learn_t *l = learn_buf.lookup(&zero);
    if (!l)
        return 0;
    l->tgid = b->tgid;
    l->tid = tid;
    l->kstack = b->kstack;
    l->ustack = b->ustack;
    l->ip = ip;
    l->sp = sp;
    l->nwords = KIT_WINDOW_WORDS;
    if (bpf_probe_read_user(l->words, sizeof(l->words), (void *)sp)) {
        l->nwords = 16;  /* near the top of the stack: a shorter window */
        if (bpf_probe_read_user(l->words, 16 * 8, (void *)sp))
            return 0;
    }
    /* marked as asked only once delivered: until kit has opened the buffer, keep asking
     * (a full buffer is counted by kit's lost callback) */
    if (unwind_learn.perf_submit(ctx, l, sizeof(*l)))  /* not lost: retried until delivered */
        return 0;
    if (unwind_asked.update(k, &one))
        kit_count(KIT_MAP_FULL);  /* this site will be asked about again: costs, loses nothing */
    offcpu_count(OFFCPU_LEARN_SENT, 1);
    return 1;
}

static __always_inline int site_key(struct hint_key *k, u64 addr)
{
    k->page_off = addr & 0xfff;
    k->code = 0;
    return bpf_probe_read_user(&k->code, 8, (void *)(addr - 8));
}

/* Fills b->hidden with the frames the frame-pointer walk skips; see the header. */
static __always_inline void unwind(void *ctx, struct block_t *b, u32 tid)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    u64 ip = 0, sp = 0, bp = 0;
    bpf_probe_read_kernel(&ip, sizeof(ip), &regs->ip);
    bpf_probe_read_kernel(&sp, sizeof(sp), &regs->sp);
    bpf_probe_read_kernel(&bp, sizeof(bp), &regs->bp);
    struct hint_key k = {};
    if (!ip || site_key(&k, ip) || (k.code >> 48) != 0x050f)  /* not right after `syscall` (0f 05) */
        return;
    u64 addr = ip, cur = sp;
    int n = 0, cfi_only = 0;
    b->unwind = UNW_PARTIAL;
#pragma unroll
    for (int i = 0; i <= KIT_HIDDEN_MAX; i++) {
        if (i > 0 && site_key(&k, addr))
            break;
        struct hint_val *h = unwind_hints.lookup(&k);
        if (!h) {
            if (ask(ctx, &k, b, tid, ip, sp))
                b->unwind = UNW_ASKED;
            break;
        }
        if (h->flags & HINT_TERMINAL) {
            b->unwind = UNW_DONE;
            b->nhidden = i;
            return;
        }
        if ((h->flags & HINT_STOP) || i == KIT_HIDDEN_MAX) {
            cfi_only = 1;  /* every frame so far came from a learned hint: real, but no frame pointer */
            break;
        }
        if (h->flags & HINT_SAVES_BP) {
            /* this frame saved rbp: if rbp now differs from what it saved, the kernel's
             * frame-pointer walk above this point followed a reused register */
            u64 saved = 0;
            bpf_probe_read_user(&saved, sizeof(saved), (void *)(cur + h->cfa_off - 8 * (h->flags >> 8)));
            if (saved != bp)
                b->bp_unsure = 1;
        }
        u64 ra = 0;
        if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cur + h->cfa_off - 8)) || !ra)
            break;
        b->hidden[i] = ra;
        n = i + 1;
        cur += h->cfa_off;
        addr = ra;
    }
    if (cfi_only && n > 0) {
        b->unwind = UNW_CFI;
        b->nhidden = n;
        b->bp_unsure = 0;
        return;
    }
    /* stopped early: keep no partial chain, so samples are grouped as without recovery */
#pragma unroll
    for (int i = 0; i < KIT_HIDDEN_MAX; i++)
        b->hidden[i] = 0;
    b->bp_unsure = 0;
}
#endif

/* prev: the task switching out (raw tracepoint rung); prev_state: its state (tracepoint rung) */
static __always_inline void switch_out(void *ctx, const char *prev, u32 prev_state)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    /* every run is counted once, as an event or as filtered: the guardrail prices runs by these */
    if (tid == 0) {  /* the idle task */
        kit_count(KIT_FILTERED);
        return;
    }
    if (!kit_in_scope())  /* --comm also takes a renamed thread of a process of that name */
        return;
    /* its last switch: it never comes back (priced like a filtered run) */
#ifdef KIT_HOOK_RAW_TRACEPOINT
    u32 state = 0;  /* read only for a task in scope: the switches kit filters out skip it */
    bpf_probe_read_kernel(&state, sizeof(state), prev + KIT_TASK_STATE_OFF);
    if (state & KIT_TASK_DEAD) {
        kit_count(KIT_FILTERED);
        return;
    }
#else
    if (prev_state & KIT_REPORT_DEAD_ZOMBIE) {
        kit_count(KIT_FILTERED);
        return;
    }
#endif
    struct start_t s = {};
    struct block_t *b = &s.block;
    b->tgid = id >> 32;
    b->kstack = kstacks.get_stackid(ctx, 0);
    b->ustack = ustacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (b->kstack < 0) {
        kit_count(KIT_STACK_LOST);
        offcpu_count(OFFCPU_KSTACK_LOST, 1);
    }
    if (b->ustack < 0) {
        kit_count(KIT_STACK_LOST);
        offcpu_count(OFFCPU_USTACK_LOST, 1);
    }
    bpf_get_current_comm(&b->comm, sizeof(b->comm));
#if KIT_UNWIND
    unwind(ctx, b, tid);
#endif
    u32 tgid = b->tgid;
    if (!seen.lookup(&tgid) && !first_sight.perf_submit(ctx, &tgid, sizeof(tgid))) {
        u8 one = 1;
        seen.update(&tgid, &one);  /* once delivered; kit may not have opened the buffer yet */
    }
    s.ts = bpf_ktime_get_ns();
    if (start.update(&tid, &s))
        kit_count(KIT_MAP_FULL);
    else
        kit_count(KIT_EVENTS);
}

static __always_inline void switch_in(u32 tid)
{
    struct start_t *s = start.lookup(&tid);
    if (!s)
        return;
    u64 delta = bpf_ktime_get_ns() - s->ts;
    struct key_t key = {};
    key.block = s->block;
    key.tid = tid;
    start.delete(&tid);
    if (delta < KIT_MIN_BLOCK_NS) {
        offcpu_count(OFFCPU_SHORT, 1);
        offcpu_count(OFFCPU_SHORT_NS, delta);
        return;
    }
    struct val_t zero = {};
    struct val_t *v = blocks.lookup_or_try_init(&key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return;
    }
    __sync_fetch_and_add(&v->total_ns, delta);
    __sync_fetch_and_add(&v->count, 1);
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(sched_switch)
{
    /* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...) */
    struct task_struct *prev = (struct task_struct *)ctx->args[1];
    struct task_struct *next = (struct task_struct *)ctx->args[2];
    u32 next_tid = 0;
    switch_out(ctx, (const char *)prev, 0);
    bpf_probe_read_kernel(&next_tid, sizeof(next_tid), (char *)next + KIT_TASK_PID_OFF);
    if (next_tid)
        switch_in(next_tid);
    return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_switch)
{
    switch_out(args, 0, args->prev_state);
    if (args->next_pid)
        switch_in(args->next_pid);
    return 0;
}
#endif
