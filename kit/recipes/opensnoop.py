"""opensnoop: which open syscalls this kernel has (the template attaches each), and marking cut paths."""

from kit import contract, features
from kit.contract import Hooks

PATH_LEN = 256  # KIT_PATH_LEN in probes/opensnoop.c


def extra(ctx):
    return {"has_open": int(features.tracepoint_format("syscalls:sys_enter_open") is not None),
            "has_openat2": int(features.tracepoint_format("syscalls:sys_enter_openat2") is not None)}


def collect(ctx, bpf):
    out = contract.default_collect(ctx, bpf)
    cut = [r for r in out["rows"] if r["cut"]]
    for r in cut:
        r["path"] += "..."
    if cut:
        out["notes"] = [f"{len(cut)} path(s) longer than {PATH_LEN - 1} bytes end in '...': kit keeps the first "
                        f"{PATH_LEN - 1}, so different long paths with one prefix share a row"]
    return out


HOOKS = Hooks(extra=extra, collect=collect)
