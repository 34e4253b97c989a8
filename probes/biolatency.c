/*
 * biolatency: block I/O latency, issue to completion, as log2 histograms per
 * disk and operation, with counts, bytes and the worst request per disk,
 * operation and issuing process.
 *
 * Hooks: block:block_rq_issue and block:block_rq_complete (and
 * block:block_rq_insert with --queued, for the time a request waited in the
 * I/O scheduler before the driver took it). Tracepoint arguments only: no
 * struct request layout, so no headers or BTF offsets are needed. A request
 * is matched from issue to completion by (device, sector); two requests in
 * flight at the same sector of one disk (flushes, at sector 0) can pair
 * wrongly, and are rare. Scope (--comm/--pid/--cgroup) applies to the task
 * that issued the request: buffered writes are issued by kernel writeback
 * threads, direct I/O by the process itself.
 * Based on bcc's tools/biolatency.py and libbpf-tools' biolatency (-D, -F).
 */
#define KIT_DISK {{disk}}
#define KIT_QUEUED {{queued}}

enum { KIT_BLK_READ, KIT_BLK_WRITE, KIT_BLK_FLUSH, KIT_BLK_DISCARD, KIT_BLK_OTHER };

struct req_t {
    u32 dev;
    u32 pad;
    u64 sector;
};

struct start_t {
    u64 ts;
    u32 tgid;
    u32 bytes;
    char comm[16];
};

struct key_t {
    u32 dev;
    u32 op;
    u32 tgid;
    u32 pad;
    char comm[16];
};

struct val_t {
    u64 count;
    u64 bytes;
    u64 errors;
    u64 total_ns;
    u64 max_ns;
};

struct hist_key {
    u32 dev;
    u32 op;
    u64 slot;
};

BPF_HASH(start, struct req_t, struct start_t, 10240);
BPF_HASH(stats, struct key_t, struct val_t, 4096);
BPF_HISTOGRAM(latency_hist, struct hist_key, 4096);
#if KIT_QUEUED
BPF_HASH(queued_at, struct req_t, u64, 10240);
BPF_HISTOGRAM(queue_hist, struct hist_key, 4096);
#endif

/* rwbs as blktrace writes it: an optional F (preflush), then the operation
 * (R read, W write, D discard, E secure erase, F flush, N none), then flags. */
static __always_inline u32 op_of(const char *rwbs)
{
    char c0 = rwbs[0], c1 = rwbs[1];
    char c = (c0 == 'F' && c1 != 0 && c1 != 'S' && c1 != 'M') ? c1 : c0;
    if (c == 'R')
        return KIT_BLK_READ;
    if (c == 'W')
        return KIT_BLK_WRITE;
    if (c == 'F')
        return KIT_BLK_FLUSH;
    if (c == 'D' || c == 'E')
        return KIT_BLK_DISCARD;
    return KIT_BLK_OTHER;
}


#if KIT_QUEUED
TRACEPOINT_PROBE(block, block_rq_insert)
{
    if (KIT_DISK && args->dev != KIT_DISK) {
        kit_count(KIT_FILTERED);  /* the guard's meter prices what the scope rejects */
        return 0;
    }
    if (!kit_in_scope())
        return 0;
    struct req_t r = {.dev = args->dev, .sector = args->sector};
    u64 ts = bpf_ktime_get_ns();
    if (queued_at.update(&r, &ts) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}
#endif

TRACEPOINT_PROBE(block, block_rq_issue)
{
    if (KIT_DISK && args->dev != KIT_DISK) {
        kit_count(KIT_FILTERED);  /* the guard's meter prices what the scope rejects */
        return 0;
    }
    if (!kit_in_scope())
        return 0;
    struct req_t r = {.dev = args->dev, .sector = args->sector};
    u64 id = bpf_get_current_pid_tgid();
    struct start_t s = {.ts = bpf_ktime_get_ns(), .tgid = id >> 32, .bytes = args->bytes};
    bpf_get_current_comm(&s.comm, sizeof(s.comm));
#if KIT_QUEUED
    u64 *q = queued_at.lookup(&r);
    if (q) {
        struct hist_key qk = {.dev = r.dev, .op = op_of(args->rwbs), .slot = kit_log2_slot((s.ts - *q) / 1000)};
        queue_hist.atomic_increment(qk);
        queued_at.delete(&r);
    }
#endif
    if (start.update(&r, &s) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete)
{
    if (KIT_DISK && args->dev != KIT_DISK)
        return 0;
    struct req_t r = {.dev = args->dev, .sector = args->sector};
    struct start_t *s = start.lookup(&r);
    if (!s)
        return 0;  /* issued before the run, out of scope, or on another disk */
    u64 delta = bpf_ktime_get_ns() - s->ts;
    u32 op = op_of(args->rwbs);
    struct key_t k = {.dev = r.dev, .op = op, .tgid = s->tgid};
    __builtin_memcpy(&k.comm, s->comm, sizeof(k.comm));
    u32 bytes = s->bytes;
    start.delete(&r);
    struct val_t zero = {};
    struct val_t *v = stats.lookup_or_try_init(&k, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->bytes, bytes);
    __sync_fetch_and_add(&v->total_ns, delta);
    if (args->error)
        __sync_fetch_and_add(&v->errors, 1);
    if (delta > v->max_ns)
        v->max_ns = delta;  /* racy across CPUs; a lost max is a near-max */
    struct hist_key hk = {.dev = r.dev, .op = op, .slot = kit_log2_slot(delta / 1000)};
    latency_hist.atomic_increment(hk);
    kit_count(KIT_EVENTS);
    return 0;
}
