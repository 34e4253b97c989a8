/*
 * opensnoop: which files a process opens and which opens fail, counted in
 * the kernel per process, path and result (errno); or, with --stream, each
 * open as it happens (pid, thread, name, path, flags, descriptor or errno).
 *
 * Hooks: syscalls:sys_enter_openat / sys_exit_openat, and openat2 and open
 * where the kernel has them (x86-64 still has open(2); glibc and Go use
 * openat). The path pointer and the flags are kept at entry and the path is
 * read at exit, when the kernel has copied it in (so its page is present).
 * At most KIT_PATH_LEN - 1 bytes of a path are kept; a longer one is marked
 * cut (its next byte is read to know), never silently shortened. Scope is
 * checked at entry, so other processes' opens cost a compare; --failed drops
 * the successful ones at exit.
 * Both forms share everything up to the record: the table form adds it to a
 * hash, the stream form (KIT_STREAM) sends it to the ring or perf buffer
 * kit/engine/stream.py reads.
 * Based on bcc's tools/opensnoop.py and libbpf-tools' opensnoop (-x for
 * failures); the table form aggregates in the kernel instead of streaming.
 */
#define KIT_HAS_OPEN    {{has_open}}
#define KIT_HAS_OPENAT2 {{has_openat2}}
#define KIT_FAILED_ONLY {{failed}}
#define KIT_STREAM      {{kit_stream}}
#define KIT_RINGBUF     {{kit_ringbuf}}
#define KIT_PATH_LEN 256

enum { CALL_OPENAT = 0, CALL_OPENAT2 = 1, CALL_OPEN = 2 };

struct pending_t {
    u64 filename;  /* user pointer to the path */
    u64 flags;     /* as passed (openat2: read from its struct open_how at exit) */
    u64 how;       /* openat2's struct open_how, else 0 */
    u32 call;
    u32 pad;
};

struct key_t {
    u32 tgid;
    u32 err;      /* errno of a failed open, 0 for success */
    u32 cut;      /* the path was longer than KIT_PATH_LEN - 1 bytes */
    u32 pad;
    char comm[16];
    char path[KIT_PATH_LEN];
};

BPF_HASH(pending, u32, struct pending_t, 10240);   /* tid -> what its open passed */

#if KIT_STREAM
struct event {
    u64 ts_ns;
    u64 flags;
    u32 tgid;
    u32 tid;
    s32 fd;       /* the descriptor, or -1 when the open failed */
    u32 err;      /* errno of a failed open, 0 for success */
    u32 cut;
    u32 call;
    char comm[16];
    char path[KIT_PATH_LEN];  /* sent up to its NUL only */
};

#if KIT_RINGBUF
BPF_RINGBUF_OUTPUT(events, {{kit_stream_pages}});
#else
BPF_PERF_OUTPUT(events);
#endif
#define KIT_STREAM_WAKE_NS {{kit_stream_wake_ns}}
BPF_PERCPU_ARRAY(kit_wake_at, u64, 1);
BPF_PERCPU_ARRAY(scratch, struct event, 1);  /* too big for the BPF stack */

/* Wake the reader for the first event after a quiet spell, then at most once every
 * KIT_STREAM_WAKE_NS (a wakeup is an IPI and a context switch in the traced task); the reader
 * drains the buffer itself every poll slice of that length (kit/engine/stream.py). */
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
#else
BPF_HASH(opens, struct key_t, u64, 10240);
BPF_PERCPU_ARRAY(scratch, struct key_t, 1);  /* the key is too big for the BPF stack */
#endif

static __always_inline int on_enter(const char *filename, u64 flags, const void *how, u32 call)
{
    if (!kit_in_scope())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct pending_t p = {.filename = (u64)filename, .flags = flags, .how = (u64)how, .call = call};
    if (pending.update(&tid, &p) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

/* The path into buf (KIT_PATH_LEN bytes): its length with the NUL, or < 0; *cut when it goes on. */
static __always_inline int read_path(char *buf, u64 filename, u32 *cut)
{
    int n = bpf_probe_read_user_str(buf, KIT_PATH_LEN, (const void *)filename);
    *cut = 0;
    if (n == KIT_PATH_LEN) {  /* the buffer filled: a path of exactly KIT_PATH_LEN - 1 bytes, or longer */
        char next = 0;
        bpf_probe_read_user(&next, 1, (const void *)(filename + KIT_PATH_LEN - 1));
        *cut = next != 0;
    }
    return n;
}

static __always_inline int on_exit(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct pending_t *p = pending.lookup(&tid);
    if (!p)
        return 0;
    struct pending_t open = *p;
    pending.delete(&tid);
    if (KIT_FAILED_ONLY && ret >= 0) {
        kit_count(KIT_FILTERED);  /* in scope, but not a failure */
        return 0;
    }
    int zero = 0;
#if KIT_STREAM
    struct event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->tgid = id >> 32;
    e->tid = tid;
    e->fd = ret < 0 ? -1 : (s32)ret;
    e->err = ret < 0 ? (u32)-ret : 0;
    e->call = open.call;
    e->flags = open.flags;
    if (open.how)  /* struct open_how starts with its u64 flags */
        bpf_probe_read_user(&e->flags, sizeof(e->flags), (const void *)open.how);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    int n = read_path(e->path, open.filename, &e->cut);
    if (n < 0) {
        kit_count(KIT_LOST_OTHER);  /* unreadable path (a bad pointer fails with EFAULT anyway) */
        return 0;
    }
    /* the record up to the path's NUL; the mask is the verifier's bound (n is 1..KIT_PATH_LEN here) */
    u32 size = offsetof(struct event, path) + (((u32)n - 1) & (KIT_PATH_LEN - 1)) + 1;
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
#else
    struct key_t *k = scratch.lookup(&zero);
    if (!k)
        return 0;
    __builtin_memset(k, 0, sizeof(*k));
    k->tgid = id >> 32;
    k->err = ret < 0 ? (u32)-ret : 0;
    bpf_get_current_comm(&k->comm, sizeof(k->comm));
    if (read_path(k->path, open.filename, &k->cut) < 0) {
        kit_count(KIT_LOST_OTHER);
        return 0;
    }
    u64 one = 0;
    u64 *v = opens.lookup_or_try_init(k, &one);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(v, 1);
    kit_count(KIT_EVENTS);
#endif
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return on_enter(args->filename, args->flags, 0, CALL_OPENAT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return on_exit(args, args->ret);
}

#if KIT_HAS_OPENAT2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    return on_enter(args->filename, 0, args->how, CALL_OPENAT2);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return on_exit(args, args->ret);
}
#endif

#if KIT_HAS_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return on_enter(args->filename, args->flags, 0, CALL_OPEN);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return on_exit(args, args->ret);
}
#endif
