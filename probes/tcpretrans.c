/*
 * tcpretrans: TCP retransmits counted per flow in the kernel.
 *
 * Hook: the tcp:tcp_retransmit_skb tracepoint, so no kprobe is needed. It
 * fires in softirq or timer context: the current task is unrelated to the
 * flow, so scopes are the flow's port, address and network namespace.
 * Kernels that report the attempt's result (the `err` field) also trace
 * failed attempts; those are counted apart, since the kernel's
 * TcpRetransSegs counts only retransmits that went out.
 * Based on bcc's tools/tcpretrans.py (count mode) and Inspektor Gadget's
 * trace_tcpretrans; the netns read uses offsets from the running kernel's BTF.
 */
#define KIT_PORT        {{port}}
#define KIT_NETNS       {{netns}}
#define KIT_ADDR_FAMILY {{addr_family}}
#define KIT_HAS_ERR     {{has_err}}
#define KIT_SK_NET_OFF  {{sk_net_off}}
#define KIT_NET_INUM_OFF {{net_inum_off}}

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
    if (KIT_PORT && key.sport != KIT_PORT && key.dport != KIT_PORT) {
        kit_count(KIT_FILTERED);
        return 0;
    }
#if KIT_ADDR_FAMILY
    union kit_addr want = {.b = {{addr}}};
    union kit_addr s, d;
    __builtin_memcpy(&s, key.saddr, 16);
    __builtin_memcpy(&d, key.daddr, 16);
    if (key.family != KIT_ADDR_FAMILY ||
        ((s.w[0] != want.w[0] || s.w[1] != want.w[1]) && (d.w[0] != want.w[0] || d.w[1] != want.w[1]))) {
        kit_count(KIT_FILTERED);
        return 0;
    }
#endif
    key.netns = sk_netns(args->skaddr);
    if (KIT_NETNS && key.netns != KIT_NETNS) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    struct flow_val zero = {};
    struct flow_val *v = flows.lookup_or_try_init(&key, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
#if KIT_HAS_ERR
    if (args->err) {
        __sync_fetch_and_add(&v->failed, 1);
        kit_count(KIT_EVENTS);
        return 0;
    }
#endif
    __sync_fetch_and_add(&v->count, 1);
    kit_count(KIT_EVENTS);
    return 0;
}
