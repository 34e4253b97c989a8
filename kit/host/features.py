"""What this kernel and this process can do, found by looking rather than assuming.

Cheap checks (files, PMUs, capabilities) choose a recipe's hook rung at run
time; `kit doctor` additionally tries to load and attach real programs.
"""

import functools
import gzip
import os
import re

from kit.errors import Unsupported

# Every hook type a catalog may name, in one place: hook_problem() below says whether each works here.
HOOK_TYPES = ("raw_tracepoint", "tracepoint", "kprobe", "kretprobe", "fentry", "fexit", "uprobe", "uretprobe",
              "perf_event")
UPROBE_TYPES = ("uprobe", "uretprobe")   # planned and attached by kit.engine.uprobes

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


def tracefs():
    """The mounted tracefs directory, or None."""
    for d in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


def tracefs_unreadable():
    """A tracefs mount this process cannot read (it is root-only: mode 0700), or None."""
    if tracefs() is not None:
        return None
    for d in TRACEFS_CANDIDATES:
        if os.path.ismount(d) and not os.access(d, os.R_OK | os.X_OK):
            return d
    return None


def tracefs_problem():
    """Why tracepoints cannot be used through tracefs here, or None.

    Measured on Debian's 6.1 (tests/kernel/test_lockdown_qemu_kernel.py): lockdown=confidentiality
    set at boot leaves tracefs empty (its files are never made), while confidentiality
    raised after boot leaves the files made before it readable (formats, ids: tracepoints
    attach) and refuses only opening the writable ones (uprobe_events). So it is the files,
    not the level, that decide."""
    if tracefs() is not None:
        return None
    if lockdown() == "confidentiality":
        return "lockdown=confidentiality blocks tracefs, which tracepoints need"
    d = tracefs_unreadable()
    if d:
        return f"tracefs at {d} is readable only by root: kit needs CAP_DAC_READ_SEARCH to read tracepoint formats"
    return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"


def need_tracefs():
    why = tracefs_problem()
    if why is not None:
        raise Unsupported(why, "mount it: mount -t tracefs nodev /sys/kernel/tracing (or run ./setup.sh)"
                          if "not mounted" in why else "run `kit doctor` to see what still works")
    return tracefs()


def tracepoint_id(target):
    """The id of tracepoint 'category:name' from tracefs (what a perf event's config needs)."""
    cat, _, name = target.partition(":")
    d = need_tracefs()
    try:
        with open(os.path.join(d, "events", cat, name, "id")) as f:
            return int(f.read())
    except OSError:
        raise Unsupported(f"no tracepoint {target} in {d}/events", "run `kit doctor` to see what works here") from None


def tracepoint_format(target):
    """Field names of a tracepoint 'cat:name' from tracefs, or None if it does not exist."""
    cat, _, name = target.partition(":")
    d = tracefs()
    if d is None:
        return None
    try:
        with open(os.path.join(d, "events", cat, name, "format")) as f:
            return re.findall(r"field:[^;]*?([A-Za-z_][A-Za-z0-9_]*)(?:\[\d+\])?;", f.read())
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def kconfig():
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line and not line.startswith("#"))
    except OSError:
        return {}


def pmu(name):
    return os.path.isdir(f"/sys/bus/event_source/devices/{name}")


def btf_available():
    return os.path.isfile("/sys/kernel/btf/vmlinux")


def kprobes_available():
    cfg = kconfig()
    if cfg:
        return cfg.get("CONFIG_KPROBES") == "y"
    return pmu("kprobe")


def uprobes_available():
    return pmu("uprobe") or kconfig().get("CONFIG_UPROBE_EVENTS") == "y"


@functools.lru_cache(maxsize=1)
def raw_tracepoints_available():
    # Kernel BTF (5.2) came after raw tracepoints (4.17), so a kernel with it has them; this skips
    # BCC's check, which scans all of kallsyms (~0.3-0.7 s of kit's start-up, measured by bench/).
    if btf_available():
        return True
    try:
        from bcc import BPF
        return bool(BPF.support_raw_tracepoint())
    except Exception:
        return False


def lockdown(path="/sys/kernel/security/lockdown"):
    """'none', 'integrity', 'confidentiality', or None when securityfs is not mounted (or not readable)."""
    try:
        with open(path) as f:
            m = re.search(r"\[(\w+)\]", f.read())
            return m.group(1) if m else None
    except OSError:
        return None


def effective_caps(status_path="/proc/self/status"):
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                bits = int(line.split()[1], 16)
                return {name for name, bit in CAPS.items() if bits >> bit & 1}
    return set()


def missing_caps(tracefs_needed=False):
    """Capabilities kit lacks to load and attach tracing programs (CAP_SYS_ADMIN covers BPF and
    PERFMON). With tracefs_needed, also the one to read a root-only tracefs (DAC_OVERRIDE covers it)."""
    have = effective_caps()
    missing = [] if "CAP_SYS_ADMIN" in have else [c for c in ("CAP_BPF", "CAP_PERFMON") if c not in have]
    if (tracefs_needed and tracefs_unreadable() and not {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"} & have):
        missing.append("CAP_DAC_READ_SEARCH")
    return missing


def headers():
    """(path the build link points to, its kernel version, matches running kernel?) or (None, None, False)."""
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if not os.path.exists(build):
        return None, None, False
    real = os.path.realpath(build)
    ver = None
    try:
        with open(os.path.join(real, "include/generated/utsrelease.h")) as f:
            m = re.search(r'"([^"]+)"', f.read())
            ver = m.group(1) if m else None
    except OSError:
        m = re.search(r"linux-headers-(.+?)$", real)
        ver = m.group(1) if m else None
    return real, ver, ver == release


def headers_text(path, ver, match, release):
    """doctor's headers row: where they are and whether BCC's view of kernel structs from them is this kernel's."""
    if path is None:
        return f"none for {release}: run ./setup.sh"
    if match:
        return (f"{ver} at {path} — match the running kernel: struct layouts BCC compiles from them are this "
                "kernel's (kit still takes struct offsets from BTF, which every kernel it runs on has)")
    return f"{ver} at {path} — do NOT match the running kernel {release}; kit takes struct offsets from BTF"


def hook_supported(hook):
    """None if this kernel can attach the hook rung, else the reason it cannot."""
    for req in hook.requires:
        if req == "btf" and not btf_available():
            return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    t = hook.type
    if reads_kernel_memory(hook) and lockdown() == "confidentiality":
        return "lockdown=confidentiality blocks bpf_probe_read_kernel, which this rung needs"
    if t == "tracepoint":
        why = tracefs_problem()
        if why is not None:
            return why
        if tracepoint_format(hook.target) is None:
            return f"no tracepoint {hook.target} on this kernel"
        return None
    if t == "raw_tracepoint":
        if not raw_tracepoints_available():
            return "raw tracepoints are not supported"
        from kit.host import btf
        k = btf.kernel()
        if k is not None and k.raw_tracepoint_args(hook.target) is None:
            return f"no raw tracepoint {hook.target} on this kernel"
        return None
    if t in ("kprobe", "kretprobe"):
        if not kprobes_available():
            return "kprobes are compiled out of this kernel (CONFIG_KPROBES is not set)"
        locked = kprobes_locked_down()
        if locked:
            return locked
        if hook.target and not kernel_has(hook.target):
            return f"no kernel function {hook.target} to probe on this kernel (/proc/kallsyms)"
        return None
    if t in ("uprobe", "uretprobe"):
        return None if uprobes_available() else "uprobes are not available (CONFIG_UPROBE_EVENTS)"
    if t == "perf_event":
        from kit.host import perfevent
        return perfevent.sampling_problem(hook.target)
    if t in ("fentry", "fexit"):
        return "fentry/fexit are not used by kit on BCC 0.26 (they need matching kernel headers)"
    return f"hook type {t} is not supported by kit"


def kprobes_locked_down():
    """Lockdown integrity (and so confidentiality) refuses every kprobe, by perf PMU or tracefs alike."""
    level = lockdown()
    return f"lockdown={level} blocks kprobes" if level in ("integrity", "confidentiality") else None


def reads_kernel_memory(hook):
    """Rungs that read kernel structs at BTF offsets (bpf_probe_read_kernel) declare it in the catalog."""
    return any(r in ("btf", "kernel_read") for r in hook.requires)


def runnable(recipes):
    """Names of the recipes with at least one hook rung this kernel and process can use."""
    return [r.name for r in recipes.values() if any(hook_supported(h) is None for h in r.hooks)]


def why_not(recipe):
    """Why no rung of the recipe can run here, every rung named; None if one can."""
    reasons = []
    for hook in recipe.hooks:
        why = hook_supported(hook)
        if why is None:
            return None
        reasons.append(f"{hook.type}: {why}")
    return reasons[0].split(": ", 1)[1] if len(reasons) == 1 else "; ".join(reasons)


def choose_hook(recipe, forced=None):
    """The first rung of the recipe's ladder this kernel supports."""
    reasons = []
    for hook in recipe.hooks:
        if forced and hook.type != forced:
            continue
        why = hook_supported(hook)
        if why is None:
            return hook
        reasons.append(f"{hook.type} {hook.target or ''}".strip() + f": {why}")
    if forced and not reasons:
        raise Unsupported(f"recipe {recipe.name} has no {forced} hook",
                          f"its hooks are: {', '.join(h.type for h in recipe.hooks)}")
    if forced:
        here = [h.type for h in recipe.hooks if hook_supported(h) is None]
        e = Unsupported(f"{recipe.name} --hook {forced} cannot run on this kernel: " + "; ".join(reasons),
                        f"drop --hook (the ladder picks {here[0]} here), or use --hook "
                        + " or --hook ".join(here) if here else "run `kit doctor` to see what this kernel supports")
        e.recipe_runs = bool(here)  # the recipe itself runs here: no need to list the others
        raise e
    raise Unsupported(f"{recipe.name} cannot run on this kernel: " + "; ".join(reasons),
                      "run `kit doctor` to see what this kernel supports")


# What a program needs to read the user registers (ip, sp, bp) of the task it stops: offcpu's
# recovery of a libc wrapper's caller from the unwind tables.
UNWIND_HELPERS = ("bpf_task_pt_regs", "bpf_get_current_task_btf")


def kernel_has(*names):
    """Whether /proc/kallsyms names every one of these kernel symbols (BPF helpers included)."""
    want = set(names)
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want:
                    want.discard(parts[2])
                    if not want:
                        return True
    except OSError:
        pass
    return False


def user_regs_readable():
    """Can a BPF program read the user registers (ip, sp, bp) of the task it stops?"""
    return btf_available() and kernel_has(*UNWIND_HELPERS)
