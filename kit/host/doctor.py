"""`kit doctor`: what this kernel and these privileges support, found by trying."""

import contextlib
import os

from tabulate import tabulate

from kit.engine import teardown
from kit.host import btf, features
from kit.errors import ExitCode

KINDS = ("tracepoint", "raw_tracepoint", "kprobe", "uprobe", "uretprobe", "perf_event")
# One function per kind: BCC caches a loaded function by name with its program type.
PROBE_TEXT = "".join(f"int kit_doctor_{k}(void *ctx) {{ return 0; }}\n" for k in KINDS)


@contextlib.contextmanager
def _quiet_stderr():
    """libbcc prints its own failure lines on fd 2; doctor reports them as rows instead."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _libc():
    for cand in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"):
        if os.path.exists(cand):
            return cand
    return "c"


def _uprobe(b, fn_name, ret):
    """Through kit's own attach: BCC 0.26's attach_uprobe passes a stray ref_ctr_offset."""
    from kit.binaries import elf
    from kit.engine import uprobes
    libc = _libc()
    with elf.Elf(libc) as e:
        offset = e.file_offset(elf.function(libc, "getpid").addr)
    e = uprobes.attach_one(b, libc, offset, fn_name, ret=ret)
    if e is not None:
        raise RuntimeError(f"the kernel refused the uprobe: {e.strerror or e}; {uprobes.refusal_hint(e)}")


def try_attach():
    """{kind: (ok, detail)} by loading one tiny program and attaching it each way."""
    out = {}
    try:
        from bcc import BPF
    except ImportError as e:
        return {"bcc": (False, f"cannot import bcc: {e}; run ./setup.sh")}
    try:
        with _quiet_stderr():
            b = BPF(text=PROBE_TEXT.encode())
    except Exception as e:
        return {"compile": (False, str(e).splitlines()[-1] if str(e) else "failed")}
    tries = {
        "tracepoint": lambda: b.attach_tracepoint(tp="sched:sched_process_exec", fn_name="kit_doctor_tracepoint"),
        "raw_tracepoint": lambda: b.attach_raw_tracepoint(tp="sched_process_exec", fn_name="kit_doctor_raw_tracepoint"),
        "kprobe": lambda: b.attach_kprobe(event="do_sys_openat2", fn_name="kit_doctor_kprobe"),
        "uprobe": lambda: _uprobe(b, "kit_doctor_uprobe", False),
        "uretprobe": lambda: _uprobe(b, "kit_doctor_uretprobe", True),
        "perf_event": lambda: b.attach_perf_event(ev_type=1, ev_config=0, fn_name=b"kit_doctor_perf_event",
                                                  sample_freq=49),   # the cpu-clock, as profile samples
    }
    if features.tracefs_problem():  # BCC finds a tracepoint's id in tracefs; the other kinds do not need it
        out["tracepoint"] = (False, features.tracefs_problem())
        del tries["tracepoint"]
    try:
        for kind, fn in tries.items():
            try:
                with _quiet_stderr():
                    fn()
                out[kind] = (True, "attached and detached")
            except Exception as e:
                out[kind] = (False, str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__)
    finally:
        teardown.detach_all(b)
    try:
        with _quiet_stderr():
            k = BPF(text=b'KFUNC_PROBE(do_sys_openat2) { return 0; }')
            k.cleanup()
        out["fentry"] = (True, "loaded")
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        if "super-user" in why:  # BCC's wording for any EPERM at load
            why = "the kernel refused to load a tracing (fentry) program (EPERM)"
        out["fentry"] = (False, why)
    if out.get("kprobe", (True,))[0] is False:
        if not features.kprobes_available():
            out["kprobe"] = (False, "compiled out (CONFIG_KPROBES is not set)")
        elif features.kprobes_locked_down():  # BCC's own words blame the function ("not traceable")
            out["kprobe"] = (False, features.kprobes_locked_down())
    return out


def report(recipes=None):
    """(check, detail, ok) rows; with the catalog's recipes, also which of them can run here."""
    rows = []
    uname = os.uname()
    rows.append(("kernel", uname.release, True))
    rows.append(("BTF", "/sys/kernel/btf/vmlinux" if btf.kernel() else "missing (kit cannot use raw tracepoint rungs or netns scope)",
                 btf.kernel() is not None))
    lock = features.lockdown()
    rows.append(("lockdown", lock or "unknown (securityfs not mounted: mount -t securityfs nodev /sys/kernel/security)",
                 lock in ("none", "integrity")))
    if lock == "confidentiality":
        rows.append(("", _confidentiality_text(), False))
    tfs = features.tracefs()
    why = features.tracefs_problem()
    rows.append(("tracefs", tfs if why is None else why, why is None))
    path, ver, match = features.headers()
    rows.append(("headers", features.headers_text(path, ver, match, uname.release), match))
    caps = sorted(features.effective_caps())
    missing = features.missing_caps(tracefs_needed=True)
    rows.append(("capabilities", (", ".join(caps) or "none") + (f"; missing {', '.join(missing)}" if missing else ""),
                 not missing))
    try:
        import bcc
        rows.append(("bcc", getattr(bcc, "__version__", "?") + f" ({os.path.dirname(bcc.__file__)})", True))
    except ImportError:
        rows.append(("bcc", "not importable: run ./setup.sh", False))
    if not features.missing_caps():
        for kind, (ok, detail) in try_attach().items():
            rows.append((kind, detail, ok))
    if recipes is not None:
        ok = features.runnable(recipes)
        blocked = [f"{r.name} ({features.why_not(r)})" for r in recipes.values() if r.name not in ok]
        rows.append(("recipes", ("runnable here: " + (", ".join(ok) or "none"))
                     + (f"; blocked: {'; '.join(blocked)}" if blocked else ""), not blocked))
    rows.append(_frame_pointer_row(recipes))
    return rows


def _confidentiality_text():
    """What confidentiality blocks, as measured on Debian's 6.1 under qemu (docs/hardening.md)."""
    blocked = ["bpf_probe_read_kernel (rungs that read kernel structs at BTF offsets)", "kprobes"]
    works = "raw tracepoints and uprobes still work, with kernel and user stack ids and perf buffers"
    if features.tracefs_problem():
        blocked.insert(0, "tracefs (so every tracepoint rung)")
    else:
        works += "; tracepoints too (tracefs was filled before lockdown was raised)"
    return f"confidentiality blocks {', '.join(blocked[:-1])} and {blocked[-1]}; {works}"


def _frame_pointer_row(recipes=None):
    text = ("Debian's libc is built without them: a frame-pointer stack walk from inside a libc wrapper "
            "(usleep, read, pthread_mutex_lock) skips the function that called the wrapper")
    recipe = (recipes or {}).get("offcpu")
    blocked = recipe is not None and features.why_not(recipe)
    if blocked:  # recovery is offcpu's: do not claim it where offcpu cannot run
        return ("frame pointers", text + f"; offcpu cannot run here ({blocked}), so nothing recovers that caller",
                False)
    if features.user_regs_readable():
        return ("frame pointers", text + "; kit's offcpu recovers that caller from libc's .eh_frame "
                "(bpf_task_pt_regs is available)", True)
    return ("frame pointers", text + "; this kernel lacks bpf_task_pt_regs, so offcpu cannot recover it "
            "(build your code with -fno-omit-frame-pointer and read stacks that end in libc with care)", False)


def main(out, catalog_path=None):
    from kit import catalog
    from kit.errors import KitError
    try:
        recipes = catalog.load(catalog_path or catalog.DEFAULT_CATALOG)
    except KitError as e:
        recipes = None
        out.write(f"catalog: {e.line()}\n")
    out.write(render(report(recipes)))
    return ExitCode.OK


WIDTH = 100


def render(rows, width=WIDTH):
    """The report as a table that fits `width` columns: a long detail wraps under itself."""
    import textwrap
    check_w = max([len("check")] + [len(k) for k, _v, _ok in rows])
    detail_w = max(width - check_w - (len("status") + 2) - 4, 30)  # tabulate pads a heading by 2
    body = [(k, "ok" if ok else "NO", "\n".join(textwrap.wrap(str(v), detail_w, break_on_hyphens=False)) or "-")
            for k, v, ok in rows]
    return tabulate(body, headers=["check", "status", "detail"], disable_numparse=True) + "\n"
