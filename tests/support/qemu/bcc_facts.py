"""What a kernel lets a BCC program do, measured without kit: one BCC module,
one function per capability, loaded and attached by BCC itself. Prints one JSON
object {fact: "ok ..." or "refused: ..."} on stdout.

usage: python bcc_facts.py TARGET   (TARGET: tests/support/workloads/target.c, built)

Ground truth is the kernel's own: the target's context switches from
/proc/PID/status (nvcsw + nivcsw) for the raw tracepoint count, the target's
own call count for the uprobe count, /proc/PID/wchan and kallsyms names for the
kernel stack, and the kernel's "Lockdown:" lines in dmesg for what it refused.

The kernel stack is the one of the target's last *blocked* switch-out (not
preempted, state not running), copied whole with bpf_get_stack: once
/proc/PID/wchan names pipe_read the target has switched out there, so that
stack is its wait on the stdin pipe. A union of stack ids over every
switch-out was not: uprobe single-steps switch out too (__create_xol_area's
cond_resched), and a 64-bucket stack map drops a stack whose hash bucket is
taken (-EEXIST), which under KASLR is a matter of the boot.
"""

import ctypes
import errno
import json
import os
import subprocess
import sys
import time

TRACEFS = "/sys/kernel/tracing"
CALLS = 20000
PIPE_READ = ("pipe_read", "anon_pipe_read")  # the name since 6.16 (anon pipes split off)

TEXT = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(counts, u64, 3);  /* 0: target switched out, 1: target calls, 2: target blocked */
struct kstack { u64 len; u64 ips[64]; };
BPF_ARRAY(blocked, struct kstack, 1);    /* the kernel stack of the target's last blocked switch-out */
BPF_STACK_TRACE(stacks, 1024);
BPF_HASH(ustacks, int, u64, 64);
BPF_PERF_OUTPUT(events);

static u64 bump(int i) { u64 *v = counts.lookup(&i); return v ? __sync_fetch_and_add(v, 1) : 0; }

/* raw tracepoint sched_switch(preempt, prev, next, prev_state): the current task is prev */
int on_switch(struct bpf_raw_tracepoint_args *ctx) {
    if ((u32)bpf_get_current_pid_tgid() != TARGET)
        return 0;
    bump(0);
    if (ctx->args[0] || ctx->args[3] == 0)   /* preempted, or still runnable: not a wait */
        return 0;
    int zero = 0;
    struct kstack *k = blocked.lookup(&zero);
    if (k) {
        long n = bpf_get_stack(ctx, k->ips, sizeof(k->ips), 0);
        k->len = n > 0 ? n / 8 : 0;
    }
    bump(2);
    return 0;
}
int on_call(struct pt_regs *ctx) {
    u64 n = bump(1);
    int id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    if (id >= 0) { u64 zero = 0, *c = ustacks.lookup_or_try_init(&id, &zero); if (c) (*c)++; }
    if (n < 5)
        events.perf_submit(ctx, &n, sizeof(n));
    return 0;
}
int read_kernel(struct bpf_raw_tracepoint_args *ctx) {
    u64 x = 0; bpf_probe_read_kernel(&x, sizeof(x), (void *)ctx->args[0]); return x != 0; }
int read_kernel_str(struct bpf_raw_tracepoint_args *ctx) {
    char s[8]; bpf_probe_read_kernel_str(s, sizeof(s), (void *)ctx->args[0]); return s[0]; }
int read_compat(struct bpf_raw_tracepoint_args *ctx) {
    u64 x = 0; bpf_probe_read(&x, sizeof(x), (void *)ctx->args[0]); return x != 0; }
int read_user(struct pt_regs *ctx) {
    u64 x = 0; bpf_probe_read_user(&x, sizeof(x), (void *)ctx->sp); return x != 0; }
int write_user(struct pt_regs *ctx) {
    u64 x = 0; bpf_probe_write_user((void *)ctx->sp, &x, sizeof(x)); return 0; }
int task_regs(struct bpf_raw_tracepoint_args *ctx) {
    struct task_struct *t = (void *)bpf_get_current_task_btf(); return bpf_task_pt_regs(t) != 0; }
int on_tracepoint(void *ctx) { return 0; }
int on_kprobe(struct pt_regs *ctx) { return 0; }
"""


def err_text(e):
    lines = str(e).strip().splitlines()
    return lines[-1][:160] if lines else type(e).__name__


def tracefs_facts(out):
    mounted = os.path.ismount(TRACEFS)
    try:
        entries = sorted(os.listdir(TRACEFS))
    except OSError as e:
        entries = [f"listdir: {errno.errorcode[e.errno]}"]
    out["tracefs mounted"] = "ok" if mounted else "refused: not mounted"
    out["tracefs entries"] = f"ok {len(entries)}" if entries else "refused: empty"
    try:
        with open(os.path.join(TRACEFS, "events/sched/sched_switch/format")) as f:
            f.read(64)
        out["tracefs format"] = "ok"
    except OSError as e:
        out["tracefs format"] = f"refused: {errno.errorcode[e.errno]}"


def switches(pid):
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])


def wchan(pid):
    with open(f"/proc/{pid}/wchan") as f:
        return f.read().strip()


def wait_blocked(pid, where, timeout=60):
    """Until the kernel says the target sleeps in `where` (its stdin pipe's read). wchan is non-zero
    only for a task off its run queue, and the guest's one CPU runs this reader only once the target
    has switched out: the switch and its tracepoint have happened, and the target's switch count
    cannot move under us until it is woken."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "S" and wchan(pid) in where:
            return wchan(pid)
        time.sleep(0.01)
    raise AssertionError(f"target {pid} never blocked in {where}: state {state}, wchan {wchan(pid)!r}")


def load(b, fn, kind):
    try:
        b.load_func(fn.encode(), kind)
        return "ok"
    except Exception as e:
        return "refused: " + err_text(e)


def main(target):
    from bcc import BPF
    out = {}
    tracefs_facts(out)
    for path, name in (("/proc/kallsyms", "kallsyms"), ("/sys/kernel/btf/vmlinux", "BTF"), ("/proc/kcore", "kcore")):
        try:
            with open(path, "rb") as f:
                f.read(16)
            out[name] = "ok"
        except OSError as e:
            out[name] = f"refused: {errno.errorcode[e.errno]}"
    w = subprocess.Popen([target, str(CALLS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout.readline().strip() == "ready"
        wait_blocked(w.pid, PIPE_READ)
        t0 = time.time()
        b = BPF(text=TEXT, cflags=[f"-DTARGET={w.pid}"])
        out["compile seconds"] = round(time.time() - t0, 1)
        for fn, kind in (("read_kernel", BPF.RAW_TRACEPOINT), ("read_kernel_str", BPF.RAW_TRACEPOINT),
                         ("read_compat", BPF.RAW_TRACEPOINT), ("read_user", BPF.KPROBE),
                         ("write_user", BPF.KPROBE), ("task_regs", BPF.RAW_TRACEPOINT)):
            out[f"load {fn}"] = load(b, fn, kind)
        for name, attach in (
                ("tracepoint", lambda: b.attach_tracepoint(tp="sched:sched_switch", fn_name="on_tracepoint")),
                ("kprobe", lambda: b.attach_kprobe(event="do_sys_openat2", fn_name="on_kprobe")),
                ("raw_tracepoint", lambda: b.attach_raw_tracepoint(tp="sched_switch", fn_name="on_switch")),
                ("uprobe", lambda: b.attach_uprobe(name=target, sym="kit_target_fn", fn_name="on_call"))):
            try:
                attach()
                out[f"attach {name}"] = "ok"
            except Exception as e:
                out[f"attach {name}"] = "refused: " + err_text(e)
        submitted = []
        b["events"].open_perf_buffer(lambda cpu, data, size: submitted.append(size))
        before = switches(w.pid)
        w.stdin.write("go\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == f"done {CALLS}"
        out["kernel stack wchan"] = wait_blocked(w.pid, PIPE_READ)
        after = switches(w.pid)
        counts = b["counts"]
        got_switches, got_calls, got_blocked = (int(counts[ctypes.c_int(i)].value) for i in (0, 1, 2))
        out["raw_tracepoint switches"] = f"{got_switches} of {after - before}"
        out["raw_tracepoint blocked switches"] = got_blocked
        out["uprobe calls"] = f"{got_calls} of {CALLS}"
        k = b["blocked"][ctypes.c_int(0)]
        out["kernel stack frames"] = sorted({b.ksym(k.ips[i]).decode() for i in range(k.len)})
        frames = set()
        for k, _ in b["ustacks"].items():
            frames.update(b.sym(a, w.pid).decode() for a in b["stacks"].walk(k.value))
        out["user stack frames"] = sorted(frames)
        b.perf_buffer_poll(timeout=1000)
        out["perf buffer events"] = f"{len(submitted)} of 5"
        try:
            b.cleanup()
            out["bcc cleanup"] = "ok"
        except Exception as e:  # the process exits next: its fds go with it
            out["bcc cleanup"] = "refused: " + err_text(e)
    finally:
        w.kill()
        w.wait()
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
    out["dmesg lockdown"] = sorted({line.split("] ", 1)[-1] for line in dmesg if "Lockdown:" in line})
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
