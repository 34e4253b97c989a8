/*
 * opensnoop: which files a process opens and which opens fail, counted in
 * the kernel per process, path and result (errno).
 *
 * Hooks: syscalls:sys_enter_openat / sys_exit_openat, and openat2 and open
 * where the kernel has them (x86-64 still has open(2); glibc and Go use
 * openat). The path pointer is kept at entry and the path is read at exit,
 * when the kernel has copied it in (so its page is present). At most
 * KIT_PATH_LEN - 1 bytes of a path are kept; a longer one is marked cut in
 * its key, never silently shortened. Scope is checked at entry, so other
 * processes' opens cost a compare.
 * Based on bcc's tools/opensnoop.py and libbpf-tools' opensnoop (-x for
 * failures), aggregated in the kernel instead of streamed.
 */
#define KIT_HAS_OPEN    {{has_open}}
#define KIT_HAS_OPENAT2 {{has_openat2}}
#define KIT_PATH_LEN 256

struct key_t {
    u32 tgid;
    u32 err;      /* errno of a failed open, 0 for success */
    u32 cut;      /* the path was longer than KIT_PATH_LEN - 1 bytes */
    u32 pad;
    char comm[16];
    char path[KIT_PATH_LEN];
};

BPF_HASH(pending, u32, u64, 10240);          /* tid -> user pointer to the path */
BPF_HASH(opens, struct key_t, u64, 10240);
BPF_PERCPU_ARRAY(scratch, struct key_t, 1);  /* the key is too big for the BPF stack */

static __always_inline int on_enter(const char *filename)
{
    if (!kit_in_scope())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 ptr = (u64)filename;
    if (pending.update(&tid, &ptr) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

static __always_inline int on_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    u64 *ptr = pending.lookup(&tid);
    if (!ptr)
        return 0;
    u64 filename = *ptr;
    pending.delete(&tid);
    int zero = 0;
    struct key_t *k = scratch.lookup(&zero);
    if (!k)
        return 0;
    __builtin_memset(k, 0, sizeof(*k));
    k->tgid = id >> 32;
    k->err = ret < 0 ? (u32)-ret : 0;
    bpf_get_current_comm(&k->comm, sizeof(k->comm));
    int n = bpf_probe_read_user_str(&k->path, sizeof(k->path), (const void *)filename);
    if (n < 0) {
        kit_count(KIT_LOST_OTHER);  /* unreadable path (a bad pointer fails with EFAULT anyway) */
        return 0;
    }
    k->cut = n == KIT_PATH_LEN;  /* the buffer filled: the path may go on */
    u64 one = 0;
    u64 *v = opens.lookup_or_try_init(k, &one);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(v, 1);
    kit_count(KIT_EVENTS);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return on_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return on_exit(args->ret);
}

#if KIT_HAS_OPENAT2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    return on_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return on_exit(args->ret);
}
#endif

#if KIT_HAS_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return on_enter(args->filename);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return on_exit(args->ret);
}
#endif
