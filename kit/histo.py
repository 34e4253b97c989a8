"""log2 histogram slots from the kernel (kit_log2_slot in the prelude) as
[{low, high, count}] ranges: slot 0 is [0, 0], slot k >= 1 is [2^(k-1), 2^k - 1]."""


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
