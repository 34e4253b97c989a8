/*
 * tcpretrans: TCP retransmits counted per flow in the kernel.
 *
 * Hooks, first supported wins: the raw tracepoint tcp_retransmit_skb (args
 * sk, skb[, err]; the flow is read from struct sock at offsets taken from the
 * running kernel's BTF, so it needs neither tracefs nor matching headers),
 * then the tcp:tcp_retransmit_skb tracepoint (fields from tracefs), then a
 * kprobe and kretprobe on tcp_retransmit_skb (bcc's choice: it returns the
 * result of the attempt the tracepoint is in, so failed attempts are seen on
 * kernels whose tracepoint has no err; struct sock read as the raw rung does;
 * not __tcp_retransmit_skb: on Debian's 6.1 a probe there saw none of them,
 * its call most likely inlined).
 * All fire in softirq or timer context, or a sender: the current task is unrelated to the
 * flow, so scopes are the flow's port, address and network namespace.
 * Kernels that report the attempt's result (`err`) also trace failed
 * attempts; those are counted apart (the kernel's TcpRetransSegs takes an
 * attempt's segments before it is handed to IP, so it holds those that fail
 * there too, but not those refused before, as EBUSY).
 * Based on bcc's tools/tcpretrans.py (count mode) and Inspektor Gadget's
 * trace_tcpretrans; one handler serving two attach points as in libbpf-tools.
 */
#define KIT_PORT        {{port}}
#define KIT_NETNS       {{netns}}
#define KIT_ADDR_FAMILY {{addr_family}}
#define KIT_HAS_ERR     {{has_err}}
#define KIT_SK_NET_OFF  {{sk_net_off}}
#define KIT_NET_INUM_OFF {{net_inum_off}}
/* raw tracepoint rung: struct sock offsets from BTF, and whether TP_PROTO has err */
#define KIT_RAW_HAS_ERR  {{raw_has_err}}
#define KIT_SK_FAMILY_OFF {{sk_family_off}}
#define KIT_SK_STATE_OFF  {{sk_state_off}}
#define KIT_SK_NUM_OFF    {{sk_num_off}}
#define KIT_SK_DPORT_OFF  {{sk_dport_off}}
#define KIT_SK_DADDR_OFF  {{sk_daddr_off}}
#define KIT_SK_SADDR_OFF  {{sk_saddr_off}}
#define KIT_SK_DADDR6_OFF {{sk_daddr6_off}}
#define KIT_SK_SADDR6_OFF {{sk_saddr6_off}}
/* the window holding addresses, ports, family and state: read at once (see the probe) */
#define KIT_SK_HEAD_OFF {{sk_head_off}}
#define KIT_SK_HEAD_LEN {{sk_head_len}}

struct flow_key {
    u8 saddr[16];
    u8 daddr[16];
    u32 netns;
    u16 sport;
    u16 dport;
    u16 family;
    u8 state;
    u8 pad;
};

struct flow_val {
    u64 count;   /* retransmits that went out */
    u64 failed;  /* attempts the kernel reported as failed (err != 0) */
};

BPF_HASH(flows, struct flow_key, struct flow_val, 10240);

union kit_addr {
    u8 b[16];
    u64 w[2];
};

static __always_inline u32 sk_netns(const void *sk)
{
#if KIT_SK_NET_OFF
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + KIT_SK_NET_OFF);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + KIT_NET_INUM_OFF);
    return inum;
#else
    return 0;
#endif
}

static __always_inline int port_rejected(const struct flow_key *key)
{
    if (KIT_PORT && key->sport != KIT_PORT && key->dport != KIT_PORT) {
        kit_count(KIT_FILTERED);
        return 1;
    }
    return 0;
}

/* Filter, then count one retransmit (or failed attempt) of the flow in key. */
static __always_inline int record(struct flow_key *key, const void *sk, int err)
{
    if (port_rejected(key))
        return 0;
#if KIT_ADDR_FAMILY
    union kit_addr want = {.b = {{addr}}};
    union kit_addr s, d;
    __builtin_memcpy(&s, key->saddr, 16);
    __builtin_memcpy(&d, key->daddr, 16);
    if (key->family != KIT_ADDR_FAMILY ||
        ((s.w[0] != want.w[0] || s.w[1] != want.w[1]) && (d.w[0] != want.w[0] || d.w[1] != want.w[1]))) {
        kit_count(KIT_FILTERED);
        return 0;
    }
#endif
    key->netns = sk_netns(sk);
    if (KIT_NETNS && key->netns != KIT_NETNS) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    struct flow_val zero = {};
    struct flow_val *v = flows.lookup_or_try_init(key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    if (err)
        __sync_fetch_and_add(&v->failed, 1);
    else
        __sync_fetch_and_add(&v->count, 1);
    kit_count(KIT_EVENTS);
    return 0;
}

#if defined(KIT_HOOK_RAW_TRACEPOINT) || defined(KIT_HOOK_KPROBE)
/* The flow of sk, read at BTF offsets, counted with the attempt's result err. */
static __always_inline int record_sock(const char *sk, int err)
{
    struct flow_key key = {};
    u16 dport = 0;
    /* One read for the whole head of sock_common rather than one per field: each
     * bpf_probe_read_kernel costs tens of ns, and a port scope decides on it alone. */
    u64 head[KIT_SK_HEAD_LEN / 8];
    if (bpf_probe_read_kernel(head, sizeof(head), sk + KIT_SK_HEAD_OFF)) {
        kit_count(KIT_LOST_OTHER);
        return 0;
    }
    const char *h = (const char *)head - KIT_SK_HEAD_OFF;  /* h + KIT_SK_X_OFF is field X */
    __builtin_memcpy(&key.family, h + KIT_SK_FAMILY_OFF, sizeof(key.family));
    __builtin_memcpy(&key.sport, h + KIT_SK_NUM_OFF, sizeof(key.sport));  /* host order */
    __builtin_memcpy(&dport, h + KIT_SK_DPORT_OFF, sizeof(dport));        /* network order */
    key.state = *(const u8 *)(h + KIT_SK_STATE_OFF);
    key.dport = __builtin_bswap16(dport);
    if (port_rejected(&key))
        return 0;
    if (key.family == 2 /* AF_INET */) {
        __builtin_memcpy(key.saddr, h + KIT_SK_SADDR_OFF, 4);
        __builtin_memcpy(key.daddr, h + KIT_SK_DADDR_OFF, 4);
    } else {
        bpf_probe_read_kernel(key.saddr, 16, sk + KIT_SK_SADDR6_OFF);
        bpf_probe_read_kernel(key.daddr, 16, sk + KIT_SK_DADDR6_OFF);
    }
    return record(&key, sk, err);
}
#endif

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(tcp_retransmit_skb)
{
    return record_sock((const char *)ctx->args[0], KIT_RAW_HAS_ERR ? (int)ctx->args[2] : 0);
}
#elif defined(KIT_HOOK_KPROBE)
/* The socket of each attempt in flight, from entry to return, per task; the idle task (pid 0 on every
 * CPU) is keyed by its CPU. A softirq retransmit can interrupt a task's own (same current): slot 1. */
struct inflight { u64 sk[2]; };  /* addresses as integers: BCC would rewrite a stored pointer's writes */
BPF_HASH(retrans_inflight, u64, struct inflight, 4096);

static __always_inline u64 inflight_key(void)
{
    u64 id = bpf_get_current_pid_tgid();
    return (u32)id ? id : ((1ULL << 63) | bpf_get_smp_processor_id());
}

int kprobe__tcp_retransmit_skb(struct pt_regs *ctx)
{
    u64 k = inflight_key();
    u64 sk = PT_REGS_PARM1(ctx);
    struct inflight *f = retrans_inflight.lookup(&k);
    if (f) {
        f->sk[1] = sk;
        return 0;
    }
    struct inflight n = {.sk = {sk, 0}};
    if (retrans_inflight.update(&k, &n) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

int kretprobe__tcp_retransmit_skb(struct pt_regs *ctx)
{
    u64 k = inflight_key();
    struct inflight *f = retrans_inflight.lookup(&k);
    if (!f)
        return 0;  /* its entry was before kit attached, or did not fit */
    u64 sk;
    if (f->sk[1]) {
        sk = f->sk[1];
        f->sk[1] = 0;
    } else {
        sk = f->sk[0];
        retrans_inflight.delete(&k);
    }
    return record_sock((const char *)sk, (int)PT_REGS_RC(ctx));
}
#else
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    struct flow_key key = {};
    key.family = args->family;
    key.sport = args->sport;
    key.dport = args->dport;
    key.state = args->state;
    if (key.family == 2 /* AF_INET */) {
        __builtin_memcpy(key.saddr, args->saddr, 4);
        __builtin_memcpy(key.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(key.saddr, args->saddr_v6, 16);
        __builtin_memcpy(key.daddr, args->daddr_v6, 16);
    }
#if KIT_HAS_ERR
    return record(&key, args->skaddr, args->err);
#else
    return record(&key, args->skaddr, 0);
#endif
}
#endif
