/*
 * drops: where the kernel drops packets and why, counted in the kernel by
 * drop reason, dropping function and flow.
 *
 * Hooks: the raw tracepoint kfree_skb (args skb, location, reason[, rx_sk]),
 * then the skb:kfree_skb tracepoint. Since 5.17 the kernel passes a reason
 * (enum skb_drop_reason; kit names it from the running kernel's BTF) and
 * frees packets it did not drop through consume_skb, so every event here is
 * a drop. The flow (addresses, ports, protocol) is read from the packet's
 * network and transport headers at offsets from the running kernel's BTF
 * (sk_buff.head, .network_header), as is its network namespace (the
 * device's); without BTF only reason and location are counted.
 * Drops happen in softirq context: the current task is unrelated to the
 * packet, so scopes are the flow's port, address and network namespace.
 * Based on bcc's tools/tcpdrop.py and the kernel's own drop_monitor idea;
 * the reason field is what `perf trace -e skb:kfree_skb` shows.
 */
#define KIT_PORT        {{port}}
#define KIT_NETNS       {{netns}}
#define KIT_ADDR_FAMILY {{addr_family}}
#define KIT_FLOW        {{flow}}
#define KIT_HAS_REASON  {{has_reason}}
#define KIT_SKB_HEAD_OFF {{skb_head_off}}
#define KIT_SKB_NET_HDR_OFF {{skb_network_header_off}}
#define KIT_SKB_DEV_OFF {{skb_dev_off}}
#define KIT_DEV_NET_OFF {{dev_net_off}}
#define KIT_NET_INUM_OFF {{net_inum_off}}

#ifndef KIT_HOOK_RAW_TRACEPOINT
/* BCC declares the tracepoint's `enum skb_drop_reason reason` field: the enum must be complete. Only its
 * numeric value is used (named from BTF in user space), so headers of another kernel serve. */
#include <linux/skbuff.h>
#endif

struct drop_key {
    u8 saddr[16];
    u8 daddr[16];
    u64 location;
    u32 reason;
    u32 netns;
    u16 sport;
    u16 dport;
    u16 family;   /* 2 AF_INET, 10 AF_INET6, 0 not IP (or no BTF) */
    u8 proto;     /* IPPROTO_* of the transport header */
    u8 pad;
};

BPF_HASH(drops, struct drop_key, u64, 10240);

union kit_addr {
    u8 b[16];
    u64 w[2];
};

/* The packet's IP flow, read from its headers; 0 when it has none kit can read. */
static __always_inline void read_flow(struct drop_key *k, const char *skb, u16 protocol)
{
#if KIT_FLOW
    const char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), skb + KIT_SKB_HEAD_OFF);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + KIT_SKB_NET_HDR_OFF);
    if (!head || nh == 0xffff)
        return;
    const char *ip = head + nh;
    u8 vihl = 0;
    bpf_probe_read_kernel(&vihl, 1, ip);
    u32 l4 = 0;
    if ((vihl >> 4) == 4) {
        k->family = 2;
        bpf_probe_read_kernel(&k->proto, 1, ip + 9);
        bpf_probe_read_kernel(k->saddr, 4, ip + 12);
        bpf_probe_read_kernel(k->daddr, 4, ip + 16);
        l4 = (vihl & 0xf) * 4;
    } else if ((vihl >> 4) == 6) {
        k->family = 10;
        bpf_probe_read_kernel(&k->proto, 1, ip + 6);  /* next header; extension headers are not followed */
        bpf_probe_read_kernel(k->saddr, 16, ip + 8);
        bpf_probe_read_kernel(k->daddr, 16, ip + 24);
        l4 = 40;
    } else {
        return;
    }
    if (k->proto == 6 || k->proto == 17 || k->proto == 132) {  /* TCP, UDP, SCTP: ports first */
        u16 ports[2] = {};
        bpf_probe_read_kernel(ports, sizeof(ports), ip + l4);
        k->sport = __builtin_bswap16(ports[0]);
        k->dport = __builtin_bswap16(ports[1]);
    }
    const char *dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), skb + KIT_SKB_DEV_OFF);
    if (dev) {
        const char *net = 0;
        bpf_probe_read_kernel(&net, sizeof(net), dev + KIT_DEV_NET_OFF);
        if (net)
            bpf_probe_read_kernel(&k->netns, sizeof(k->netns), net + KIT_NET_INUM_OFF);
    }
#endif
}

static __always_inline int rejected(const struct drop_key *k)
{
    if (KIT_PORT && k->sport != KIT_PORT && k->dport != KIT_PORT)
        return 1;
    if (KIT_NETNS && k->netns != KIT_NETNS)
        return 1;
#if KIT_ADDR_FAMILY
    union kit_addr want = {.b = {{addr}}};
    union kit_addr s, d;
    __builtin_memcpy(&s, k->saddr, 16);
    __builtin_memcpy(&d, k->daddr, 16);
    if (k->family != KIT_ADDR_FAMILY ||
        ((s.w[0] != want.w[0] || s.w[1] != want.w[1]) && (d.w[0] != want.w[0] || d.w[1] != want.w[1])))
        return 1;
#endif
    return 0;
}

static __always_inline int record(const void *skb, u64 location, u32 reason)
{
    struct drop_key k = {.location = location, .reason = reason};
    read_flow(&k, (const char *)skb, 0);
    if (rejected(&k)) {
        kit_count(KIT_FILTERED);
        return 0;
    }
    u64 zero = 0;
    u64 *v = drops.lookup_or_try_init(&k, &zero);
    if (!v) {
        kit_count(KIT_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(v, 1);
    kit_count(KIT_EVENTS);
    return 0;
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    /* TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason[, struct sock *rx_sk]) */
    return record((const void *)ctx->args[0], ctx->args[1], KIT_HAS_REASON ? (u32)ctx->args[2] : 0);
}
#else
TRACEPOINT_PROBE(skb, kfree_skb)
{
#if KIT_HAS_REASON
    return record(args->skbaddr, (u64)args->location, args->reason);
#else
    return record(args->skbaddr, (u64)args->location, 0);
#endif
}
#endif
