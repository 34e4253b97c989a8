"""The Python side of probes/kit_prelude.h, shared by the engine, the guard and
the recipes: the self-accounting counters (kit_stats), what a program that
attaches itself attached, and log2 histogram slots (kit_log2_slot)."""

from kit.errors import CompileError

# enum kit_stat in kit_prelude.h, in order
STATS = ("events", "filtered", "map_full", "stack_lost", "lost_other", "buffer_lost")


def percpu_sum(table, index):
    """One slot of a BPF_PERCPU_ARRAY of counters, summed over CPUs."""
    return int(sum(table[table.Key(index)]))


def percpu_counts(table, names):
    """{name: total} of a per-CPU counter array whose slots are `names`, in order."""
    return {name: percpu_sum(table, i) for i, name in enumerate(names)}


def read_stats(bpf):
    """kit's per-CPU self-accounting counters, summed over CPUs."""
    return percpu_counts(bpf["kit_stats"], STATS)


def lost(stats):
    """Everything a template could not record."""
    return stats["map_full"] + stats["stack_lost"] + stats["lost_other"] + stats["buffer_lost"]


def auto_attached(bpf):
    """What BCC attached by itself (TRACEPOINT_PROBE, RAW_TRACEPOINT_PROBE, kprobe__/kretprobe__ functions):
    a description, never nothing."""
    n = bpf.num_open_tracepoints() + len(getattr(bpf, "raw_tracepoint_fds", {})) + bpf.num_open_kprobes()
    if n == 0:
        raise CompileError("the program compiled but attached no probe", "this is a template bug: check its hooks")
    return f"{n} probe{'s' if n > 1 else ''}"


# log2 slots: slot 0 is [0, 0], slot k >= 1 is [2^(k-1), 2^k - 1] (bpftrace's hist() buckets)

def slot_range(k):
    return (0, 0) if k == 0 else (1 << (k - 1), (1 << k) - 1)


def slot_of(v):
    """The slot the kernel puts v in (same rule as kit_log2_slot)."""
    return 0 if v <= 0 else int(v).bit_length()


def buckets(counts):
    """{slot: count} -> contiguous [{low, high, count}] from the first to the last non-empty slot."""
    used = [k for k, c in counts.items() if c]
    if not used:
        return []
    out = []
    for k in range(min(used), max(used) + 1):
        low, high = slot_range(k)
        out.append({"low": low, "high": high, "count": int(counts.get(k, 0))})
    return out


def from_table(table):
    """A BCC BPF_HISTOGRAM (array) -> buckets."""
    return buckets({int(k.value): int(v.value) for k, v in table.items() if v.value})
