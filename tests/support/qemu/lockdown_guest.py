"""Runs inside the qemu guest (tests/support/qemu/vm.py boots it): every check of
tests/kernel/test_lockdown_qemu_kernel.py in one boot. It only collects; the test asserts.

usage: python lockdown_guest.py OUT   (OUT holds the workloads `target` and `lockwork`,
                                       built on the host; results go to OUT/results.json)

Each step writes results.json again, so a step that crashes leaves the earlier
ones readable and names itself in "step". A step gets STEP_S seconds (about 15
times what the slowest takes here): past that, SIGALRM ends it
with the guest's processes at that moment in its "error", and the next step
runs. Each step's start and end also go to the console (tests/support/qemu/vm.py keeps
it), with the guest's uptime.
"""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "support")]  # conftest, workloads
sys.path.insert(0, ROOT)

from workloads import lockwork  # noqa: E402
from workloads.load import Load  # noqa: E402

STEP_S = 300
PROFILE_HZ = 199
KIT = [sys.executable, "-m", "kit"]
# execve too: a trace that shows kit starting proves strace was watching
STRACE = ["strace", "-f", "-qq", "-e", "trace=execve,bpf,perf_event_open"]


class Results(dict):
    def __init__(self, out):
        super().__init__(seconds={})
        self.path = os.path.join(out, "results.json")

    def step(self, name, fn):
        self["step"] = name
        self.save()
        say(f"step {name}: start")
        t0 = time.monotonic()
        signal.alarm(STEP_S)
        try:
            self[name] = fn()
        except Exception as e:
            self[name] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            signal.alarm(0)
        self["seconds"][name] = round(time.monotonic() - t0, 1)
        self.save()
        say(f"step {name}: {'failed' if 'error' in self[name] else 'done'} in {self['seconds'][name]} s")

    def save(self):
        with open(self.path + ".tmp", "w") as f:
            json.dump(self, f, indent=1)
        os.replace(self.path + ".tmp", self.path)


class StepTimeout(Exception):
    pass


def overrun(signo, frame):
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:24,etimes,args"], capture_output=True, text=True).stdout
    raise StepTimeout(f"still running after {STEP_S} s; the guest's processes:\n{ps}")


def say(msg):
    with open("/proc/uptime") as f:
        up = f.read().split()[0]
    print(f"[kit-guest {up}] {msg}", flush=True)


def run(argv, **kw):
    """argv's exit code and output; the step's alarm bounds it (subprocess.run kills it on the way out)."""
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, **kw)
    return {"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def prog_ids():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return sorted(p["id"] for p in json.loads(out or "[]"))


def dmesg():
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()


def lockdown_lines(lines):
    return sorted({line.split("] ", 1)[-1] for line in lines if "Lockdown:" in line})


def facts(out):
    r = run([sys.executable, os.path.join(HERE, "bcc_facts.py"), os.path.join(out, "target")])
    try:
        return json.loads(r["stdout"])
    except ValueError:
        raise RuntimeError(f"bcc_facts.py exited {r['code']}: {r['stderr'][-2000:]}") from None


def environment():
    with open("/sys/kernel/security/lockdown") as f:
        level = f.read().strip()
    with open("/proc/cmdline") as f:
        cmdline = f.read().strip()
    return {"release": os.uname().release, "version": os.uname().version, "lockdown": level, "cmdline": cmdline,
            "build": os.path.realpath(f"/lib/modules/{os.uname().release}/build")}


def blocked_run(out, name, *args):
    """`kit run` of a recipe lockdown blocks, under strace: what it printed and which syscalls it made."""
    trace = os.path.join(out, f"strace-{name}.txt")
    r = run(STRACE + ["-o", trace] + KIT + ["run", name, *args])
    with open(trace) as f:
        r["syscalls"] = f.read()
    return r


class Kit:
    def __init__(self, *args):
        self.p = subprocess.Popen(KIT + list(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.err = []

    def wait_attached(self):
        for line in self.p.stderr:
            self.err.append(line)
            if " attached to " in line:
                return
        raise AssertionError(f"kit exited {self.p.wait()} before attaching: {''.join(self.err)}")

    def stop(self, signo=signal.SIGINT):
        if signo:
            self.p.send_signal(signo)
        out, err = self.p.communicate(timeout=300)
        return {"code": self.p.returncode, "stdout": out, "stderr": "".join(self.err) + err}


def uprobe_recipes(out):
    """getaddrinfo and lockhold (the recipes kit says still work) on one workload that keeps its own books:
    both attach while it waits at its gate, it works, reports, and they stop."""
    binary = os.path.join(out, "lockwork")
    w = lockwork.Workload(binary, threads=2, fast=300, slow=2, slow_ms=17, gate=True, hold_gate=True,
                          lookups=["localhost:5", "localhost:3:ghbn", "kit-no-such.invalid:2:fail"])
    kits = []
    try:
        kits.append(Kit("run", "getaddrinfo", "--pid", str(w.pid), "--for", "10m", "--json"))
        kits.append(Kit("run", "lockhold", "--pid", str(w.pid), "--binary", binary, "--lock", "pool_lock",
                        "--unlock", "pool_unlock", "--for", "5m", "--json"))
        for k in kits:
            k.wait_attached()
        w.go()
        book = w.wait_report(timeout=600)
        getaddrinfo, lockhold = (k.stop() for k in kits)
    finally:
        for k in kits:
            if k.p.poll() is None:
                k.p.kill()
        w.finish()
    return {"pid": w.pid, "book": book, "getaddrinfo": getaddrinfo, "lockhold": lockhold}


def syscalls_recipe(out):
    """syscalls (raw tracepoint, no kernel reads) on a load that counts its own calls; kit, scoped by pid,
    ends by itself when the load exits."""
    with Load("mixed", "kit-sc-guest", calls=2000, sleeps=5, sleep_us=2000) as load:
        k = Kit("run", "syscalls", "--pid", str(load.pid), "--for", "5m", "--json", "--budget", "50")
        try:
            k.wait_attached()
            load.go()
            done = load.finish(stop=False)
            r = k.stop(signo=None)
        finally:
            if k.p.poll() is None:
                k.p.kill()
    return {"pid": load.pid, "done": done, "kit": r}


def profile_recipe(out):
    """profile (a perf event: no tracefs, no kernel reads) on a load that keeps its own CPU clock; kit,
    scoped by pid, ends by itself when the load exits."""
    with Load("syscalls", "kit-pr-guest", seconds=2) as load:
        k = Kit("run", "profile", "--pid", str(load.pid), "--hz", str(PROFILE_HZ), "--for", "5m", "--json",
                "--budget", "50")
        try:
            k.wait_attached()
            load.go()
            done = load.finish(stop=False)
            r = k.stop(signo=None)
        finally:
            if k.p.poll() is None:
                k.p.kill()
    return {"pid": load.pid, "done": done, "hz": PROFILE_HZ, "kit": r}


# kit's refusal taken away: does the kernel refuse the rung kit refused, and for the reason kit gave?
UNGUARDED = r"""
import json, sys
from kit import catalog, cli
from kit.engine import run
from kit.host import features
features.lockdown = lambda *a: "none"
recipes = catalog.load(catalog.DEFAULT_CATALOG)
out = {}
for name, args in (("tcpretrans", []), ("offcpu", ["--comm", "kit-target"])):
    recipe = recipes[name]
    values = cli.parse_values(recipe, cli.recipe_parser(recipe, "run").parse_args(args))
    ctx, text = run.prepare(recipe, values, "raw_tracepoint")
    try:
        run.compile_program(text).cleanup()
        out[name] = "loaded"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e.line() if hasattr(e, 'line') else e}"
json.dump(out, sys.stdout)
"""


def unguarded(out):
    seen = len(dmesg())
    r = run([sys.executable, "-c", UNGUARDED])
    r["dmesg"] = lockdown_lines(dmesg()[seen:])
    return r


def main(out):
    signal.signal(signal.SIGALRM, overrun)
    res = Results(out)
    res.step("environment", environment)
    res.step("progs_before", prog_ids)
    res.step("facts", lambda: facts(out))
    res.step("doctor", lambda: run(KIT + ["doctor"]))
    res.step("list", lambda: run(KIT + ["list"]))
    res.step("run_tcpretrans", lambda: blocked_run(out, "tcpretrans", "--for", "5s"))
    res.step("run_offcpu", lambda: blocked_run(out, "offcpu", "--comm", "kit-target", "--for", "5s"))
    res.step("uprobe_recipes", lambda: uprobe_recipes(out))
    res.step("syscalls_recipe", lambda: syscalls_recipe(out))
    res.step("profile_recipe", lambda: profile_recipe(out))
    res.step("unguarded", lambda: unguarded(out))
    res.step("progs_after", prog_ids)
    res["step"] = "done"
    res.save()
    say("all steps done")


if __name__ == "__main__":
    main(sys.argv[1])
