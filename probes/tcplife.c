/*
 * tcplife: TCP connections, their lifetime, bytes each way, how long they
 * took to establish, and the process that owns them.
 *
 * Hook: sock:inet_sock_set_state, as a raw tracepoint (args sk, oldstate,
 * newstate; the flow is read from struct sock at offsets from the running
 * kernel's BTF) or as the tracepoint (fields from tracefs). A connection is
 * born at SYN_SENT (active open: current is the process calling connect) or
 * SYN_RECV (passive: the child socket of a listener), established at
 * ESTABLISHED (connect latency = SYN_SENT to ESTABLISHED), and recorded at
 * CLOSE with bytes received and acked (struct tcp_sock, BTF offsets). A
 * passive connection learns its owner when a process closes it (FIN_WAIT1 or
 * LAST_ACK happen in close()/shutdown()). Opens and failed attempts are also
 * counted as the kernel counts ActiveOpens, PassiveOpens and AttemptFails.
 * Based on bcc's tools/tcplife.py and tcpconnlat.py, and libbpf-tools'
 * tcplife.
 */
#define KIT_PORT        {{port}}
#define KIT_PID         {{pid}}
#define KIT_NETNS       {{netns}}
#define KIT_ADDR_FAMILY {{addr_family}}
#define KIT_SK_NET_OFF  {{sk_net_off}}
#define KIT_NET_INUM_OFF {{net_inum_off}}
#define KIT_RX_OFF      {{bytes_received_off}}
#define KIT_TX_OFF      {{bytes_acked_off}}
/* raw tracepoint rung: where struct sock keeps the flow */
#define KIT_SK_PROTO_OFF  {{sk_protocol_off}}
#define KIT_SK_FAMILY_OFF {{sk_family_off}}
#define KIT_SPORT_OFF     {{inet_sport_off}}  /* inet_sock.inet_sport: skc_num is cleared before CLOSE */
#define KIT_SK_DPORT_OFF  {{sk_dport_off}}
#define KIT_SK_DADDR_OFF  {{sk_daddr_off}}
#define KIT_SK_SADDR_OFF  {{sk_saddr_off}}
#define KIT_SK_DADDR6_OFF {{sk_daddr6_off}}
#define KIT_SK_SADDR6_OFF {{sk_saddr6_off}}

enum { ST_ESTABLISHED = 1, ST_SYN_SENT = 2, ST_SYN_RECV = 3, ST_FIN_WAIT1 = 4, ST_FIN_WAIT2 = 5, ST_CLOSE = 7,
       ST_CLOSE_WAIT = 8, ST_LAST_ACK = 9, ST_LISTEN = 10, ST_CLOSING = 11 };
enum { OPEN_ACTIVE = 0, OPEN_PASSIVE = 1, ATTEMPT_FAILS = 2 };

struct flow_t {
    u8 saddr[16];
    u8 daddr[16];
    u32 netns;
    u16 sport;
    u16 dport;
    u16 family;
    u16 pad;
};

struct conn_t {
    struct flow_t flow;
    u64 birth_ns;
    u64 connect_ns;   /* SYN_SENT to ESTABLISHED, active opens */
    u64 end_ns;
    u64 rx;
    u64 tx;
    u32 pid;
    u8 active;
    u8 established;
    u8 closed;
    u8 fin_in;      /* the peer's FIN arrived (it counts one in bytes_received) */
    u8 fin_acked;   /* our FIN was acknowledged (it counts one in bytes_acked) */
    u8 pad[7];
    char comm[16];
};

struct done_key {
    u64 sk;
    u64 birth_ns;
};

struct remote_hist_key {
    u8 daddr[16];
    u16 dport;
    u16 family;
    u32 pad;
    u64 slot;
};

BPF_HASH(conns, u64, struct conn_t, 10240);               /* open connections, by socket */
BPF_HASH(done, struct done_key, struct conn_t, 10240);    /* closed during the run */
BPF_HISTOGRAM(connect_hist, struct remote_hist_key, 4096); /* connect latency per remote, us */
BPF_PERCPU_ARRAY(opens, u64, 3);

union kit_addr {
    u8 b[16];
    u64 w[2];
};

static __always_inline int flow_rejected(const struct flow_t *f)
{
    /* a client at SYN_SENT has no local port yet: only its remote port can rule it out then */
    if (KIT_PORT && f->sport != KIT_PORT && f->dport != KIT_PORT && f->sport != 0)
        return 1;
    if (KIT_NETNS && f->netns != KIT_NETNS)
        return 1;
#if KIT_ADDR_FAMILY
    union kit_addr want = {.b = {{addr}}};
    union kit_addr s, d;
    __builtin_memcpy(&s, f->saddr, 16);
    __builtin_memcpy(&d, f->daddr, 16);
    if (f->family != KIT_ADDR_FAMILY ||
        ((s.w[0] != want.w[0] || s.w[1] != want.w[1]) && (d.w[0] != want.w[0] || d.w[1] != want.w[1])))
        return 1;
#endif
    return 0;
}

static __always_inline u32 sk_netns(const char *sk)
{
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), sk + KIT_SK_NET_OFF);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + KIT_NET_INUM_OFF);
    return inum;
}

static __always_inline void count_open(int which)
{
    u64 *v = opens.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline void set_owner(struct conn_t *c)
{
    c->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&c->comm, sizeof(c->comm));
}

static __always_inline int on_state(const char *sk, int oldstate, int newstate, struct flow_t *f)
{
    /* At SYN_SENT a client has no local port yet (connect() assigns it next): its port is
     * checked again when the connection ends. */
    u64 key = (u64)sk;
    if (flow_rejected(f)) {
        conns.delete(&key);  /* a client kept at SYN_SENT whose port now says out of scope */
        kit_count(KIT_FILTERED);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    if (newstate == ST_SYN_SENT || newstate == ST_SYN_RECV) {
        struct conn_t c = {.birth_ns = now, .active = newstate == ST_SYN_SENT};
        __builtin_memcpy(&c.flow, f, sizeof(c.flow));
        if (c.active)
            set_owner(&c);  /* connect() runs in the owner's context */
        count_open(c.active ? OPEN_ACTIVE : OPEN_PASSIVE);
        if (conns.update(&key, &c) != 0)
            kit_count(KIT_MAP_FULL);
        kit_count(KIT_EVENTS);
        return 0;
    }
    struct conn_t *c = conns.lookup(&key);
    if (!c)
        return 0;  /* born before the run */
    kit_count(KIT_EVENTS);
    __builtin_memcpy(&c->flow, f, sizeof(c->flow));  /* a client's local port is known from here on */
    if (newstate == ST_CLOSE_WAIT || newstate == ST_CLOSING || (oldstate == ST_FIN_WAIT2 && newstate == ST_CLOSE))
        c->fin_in = 1;
    if (newstate == ST_FIN_WAIT2 || (oldstate == ST_LAST_ACK && newstate == ST_CLOSE) ||
        (oldstate == ST_CLOSING && newstate == ST_CLOSE))
        c->fin_acked = 1;
    if (newstate == ST_ESTABLISHED && !c->established) {
        c->established = 1;
        if (c->active) {
            c->connect_ns = now - c->birth_ns;
            struct remote_hist_key hk = {.dport = f->dport, .family = f->family,
                                         .slot = kit_log2_slot(c->connect_ns / 1000)};
            __builtin_memcpy(hk.daddr, f->daddr, 16);
            connect_hist.atomic_increment(hk);
        }
        return 0;
    }
    if ((newstate == ST_FIN_WAIT1 || newstate == ST_LAST_ACK) && !c->active)
        set_owner(c);  /* close()/shutdown() by the process that accepted it */
    if (newstate != ST_CLOSE && !(newstate == ST_LISTEN && oldstate == ST_SYN_RECV))
        return 0;
    if (!c->established)
        count_open(ATTEMPT_FAILS);
    if (flow_rejected(f) || (KIT_PID && c->pid != KIT_PID)) {  /* passive owners are known only now */
        conns.delete(&key);
        kit_count(KIT_FILTERED);
        return 0;
    }
    struct conn_t out = *c;
    out.end_ns = now;
    out.closed = 1;
    bpf_probe_read_kernel(&out.rx, sizeof(out.rx), sk + KIT_RX_OFF);
    bpf_probe_read_kernel(&out.tx, sizeof(out.tx), sk + KIT_TX_OFF);
    /* sequence space is not payload: a FIN counts one each way, and a client's SYN one in bytes_acked */
    u64 rx_ctl = out.fin_in, tx_ctl = out.fin_acked + (out.active && out.established);
    out.rx = out.rx > rx_ctl ? out.rx - rx_ctl : 0;
    out.tx = out.tx > tx_ctl ? out.tx - tx_ctl : 0;
    struct done_key dk = {.sk = key, .birth_ns = c->birth_ns};
    conns.delete(&key);
    if (done.update(&dk, &out) != 0)
        kit_count(KIT_MAP_FULL);
    return 0;
}

#ifdef KIT_HOOK_RAW_TRACEPOINT
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    /* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
    const char *sk = (const char *)ctx->args[0];
    struct flow_t f = {};
    u16 dport = 0, proto = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), sk + KIT_SK_PROTO_OFF);
    if (proto != 6 /* IPPROTO_TCP */)
        return 0;
    bpf_probe_read_kernel(&f.family, sizeof(f.family), sk + KIT_SK_FAMILY_OFF);
    if (f.family != 2 && f.family != 10)
        return 0;
    u16 sport = 0;
    bpf_probe_read_kernel(&sport, sizeof(sport), sk + KIT_SPORT_OFF);         /* network order */
    bpf_probe_read_kernel(&dport, sizeof(dport), sk + KIT_SK_DPORT_OFF);      /* network order */
    f.sport = __builtin_bswap16(sport);
    f.dport = __builtin_bswap16(dport);
    if (f.family == 2) {
        bpf_probe_read_kernel(f.saddr, 4, sk + KIT_SK_SADDR_OFF);
        bpf_probe_read_kernel(f.daddr, 4, sk + KIT_SK_DADDR_OFF);
    } else {
        bpf_probe_read_kernel(f.saddr, 16, sk + KIT_SK_SADDR6_OFF);
        bpf_probe_read_kernel(f.daddr, 16, sk + KIT_SK_DADDR6_OFF);
    }
    f.netns = sk_netns(sk);
    return on_state(sk, (int)ctx->args[1], (int)ctx->args[2], &f);
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != 6 /* IPPROTO_TCP */)
        return 0;
    struct flow_t f = {.sport = args->sport, .dport = args->dport, .family = args->family};
    if (f.family == 2) {
        __builtin_memcpy(f.saddr, args->saddr, 4);
        __builtin_memcpy(f.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(f.saddr, args->saddr_v6, 16);
        __builtin_memcpy(f.daddr, args->daddr_v6, 16);
    }
    f.netns = sk_netns((const char *)args->skaddr);
    return on_state((const char *)args->skaddr, args->oldstate, args->newstate, &f);
}
#endif
