/*
 * getaddrinfo: name lookups per process and host name, with latency and
 * failures counted apart.
 *
 * Hooks (uprobes in the libc the target maps, attached by kit):
 *   gai_entry / ghbn_entry / ghbn2_entry   entry of getaddrinfo, gethostbyname,
 *                                          gethostbyname2: read the name
 *   lookup_return                          their return: latency and result
 * The name is copied with bpf_probe_read_user_str into a fixed, zero-padded
 * buffer that is part of the map key: it reaches kit as bytes, never as C.
 * A failure is a non-zero getaddrinfo result or a NULL hostent.
 * Based on bcc's tools/gethostlatency.py (same functions), counting in the
 * kernel instead of sending every call to user space.
 */
#define HOST_LEN 256
#define FN_GETADDRINFO    0
#define FN_GETHOSTBYNAME  1
#define FN_GETHOSTBYNAME2 2

struct call_key {
    u32 tgid;
    u32 fn;
    char comm[16];
    char host[HOST_LEN];
};

struct call_start {
    struct call_key key;
    u64 ts;
};

struct call_val {
    u64 count;
    u64 failed;
    u64 total_ns;
    u64 max_ns;
};

BPF_PERCPU_ARRAY(scratch, struct call_start, 1);
BPF_HASH(starts, u32, struct call_start, 4096);
BPF_HASH(calls, struct call_key, struct call_val, 10240);
BPF_HISTOGRAM(latency_hist, int, KIT_LOG2_SLOTS);

union host_words {
    char c[HOST_LEN];
    u64 w[HOST_LEN / 8];
};

static __always_inline int host_wanted(const char *host)
{
    union host_words want = {.c = {{host}}};
    if (!want.c[0])
        return 1;  /* no --host filter */
    const u64 *got = (const u64 *)host;
#pragma unroll
    for (int i = 0; i < HOST_LEN / 8; i++) {
        if (got[i] != want.w[i])
            return 0;
    }
    return 1;
}

static __always_inline int enter(struct pt_regs *ctx, u32 fn)
{
    if (!kit_in_scope())
        return 0;
    int zero = 0;
    struct call_start *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    __builtin_memset(s, 0, sizeof(*s));  /* the name buffer is a hash key: pad with zeros */
    u64 id = bpf_get_current_pid_tgid();
    s->key.tgid = id >> 32;
    s->key.fn = fn;
    bpf_get_current_comm(&s->key.comm, sizeof(s->key.comm));
    const char *name = (const char *)PT_REGS_PARM1(ctx);
    if (name)
        bpf_probe_read_user_str(&s->key.host, sizeof(s->key.host), name);
    if (!host_wanted(s->key.host)) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    s->ts = bpf_ktime_get_ns();
    u32 tid = id;
    if (starts.update(&tid, s) < 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

int gai_entry(struct pt_regs *ctx) { return enter(ctx, FN_GETADDRINFO); }
int ghbn_entry(struct pt_regs *ctx) { return enter(ctx, FN_GETHOSTBYNAME); }
int ghbn2_entry(struct pt_regs *ctx) { return enter(ctx, FN_GETHOSTBYNAME2); }

int lookup_return(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns();
    u32 tid = bpf_get_current_pid_tgid();
    struct call_start *s = starts.lookup(&tid);
    if (!s)
        return 0;
    u64 ns = now - s->ts;
    int failed = s->key.fn == FN_GETADDRINFO ? (int)PT_REGS_RC(ctx) != 0 : PT_REGS_RC(ctx) == 0;
    latency_hist.atomic_increment(kit_log2_slot(ns / 1000));
    kit_count(KIT_EVENTS);
    struct call_val zero = {};
    struct call_val *v = calls.lookup_or_try_init(&s->key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
    } else {
        __sync_fetch_and_add(&v->count, 1);
        if (failed)
            __sync_fetch_and_add(&v->failed, 1);
        __sync_fetch_and_add(&v->total_ns, ns);
        if (ns > v->max_ns)
            v->max_ns = ns;
    }
    starts.delete(&tid);
    return 0;
}
