"""Checks a uprobe hook's attach points before anything is compiled, so a
symbol that is not in the binary is bad input (exit 2) rather than a failure
half-way through attaching."""

from kit.errors import BadInput


def symbol_offset(binary, symbol):
    """The symbol's file offset in the binary, resolved exactly as BCC's attach_uprobe does, or None."""
    from bcc import BPF  # late: `kit show` of non-uprobe recipes works without bcc
    try:
        _path, addr = BPF._check_path_symbol(binary.encode(), symbol.encode(), None, -1)
    except Exception:
        return None
    return addr


def check_symbols(ctx):
    """Every symbol the chosen uprobe rung attaches to must resolve in its binary. Skipped when the
    recipe has not resolved the binary yet (its prepare() may find it later, e.g. from --pid)."""
    hook = ctx.hook
    if hook.type not in ("uprobe", "uretprobe"):
        return
    binary = ctx.value(hook.binary) if hook.binary else None
    if not binary:
        return
    for a in hook.attach:
        if not a.symbol:
            continue
        literal = a.symbol.startswith("=")
        sym = a.symbol[1:] if literal else ctx.value(a.symbol)
        if sym is None:
            continue
        if symbol_offset(binary, sym) is None:
            flag = "" if literal else f"--{ctx.recipe.params[a.symbol].flag} "
            raise BadInput(f"{flag}{sym!r}: no function of that name in {binary}",
                           f"list its functions with `nm -D --defined-only {binary}` (or `nm` if it has symbols)")
