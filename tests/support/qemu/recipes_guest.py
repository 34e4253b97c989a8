"""Runs inside the qemu guest (tests/kernel/test_second_kernel_recipes.py boots it once): every recipe's
ground-truth kernel tests (tests/support/qemu/matrix.py finds them) in one pytest run on this kernel.
It only collects; the host's test asserts and writes the table.

usage: python recipes_guest.py OUT   (results go to OUT/results.json; pytest's output to OUT/pytest.log)

results.json is written after each step, so a guest that dies leaves the earlier steps readable and
names the step it was in. The pytest run gets TESTS_S seconds; past that it is killed and what it
finished is still recorded (the matrix plugin saves after every test).
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from qemu import matrix  # noqa: E402

TESTS_S = 2700
TIME_SCALE = 4  # conftest.TIME_SCALE: BCC compiles here in tens of seconds, not seconds
MOUNTS = (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug"),
          ("securityfs", "/sys/kernel/security"))


def say(msg):
    with open("/proc/uptime") as f:
        up = f.read().split()[0]
    print(f"[kit-guest {up}] {msg}", flush=True)


def save(res, out):
    path = os.path.join(out, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)


def mount_all():
    for fs, where in MOUNTS:
        if not os.path.ismount(where):
            subprocess.run(["mount", "-t", fs, "nodev", where], capture_output=True)
    # the host has /dev/loop*; in the guest no udev loads loop for losetup (biolatency's tests)
    subprocess.run(["modprobe", "loop"], check=True, capture_output=True)
    # systemd gives the root's children the memory controller on the host; no systemd here (oomkill's
    # tests put their workload in a memory cgroup of its own)
    root = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        with open(os.path.join(root, "cgroup.controllers")) as f:
            have = f.read().split()
        with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join("+" + c for c in ("memory", "cpu") if c in have))


def tests_argv(names):
    files = [matrix.recipe_test_file(n) for n in names if os.path.exists(os.path.join(ROOT, matrix.recipe_test_file(n)))]
    deselect = []
    for t in matrix.HOST_ONLY:
        deselect += ["--deselect", "tests/kernel/" + t]
    return [sys.executable, "-m", "pytest", *files, *deselect, "-q", "-p", "no:cacheprovider"]


def run_tests(out, names):
    """pytest over the recipes' test files; its records (matrix plugin) land in OUT/tests.json."""
    record = os.path.join(out, "tests.json")
    env = dict(os.environ, CI="true", KIT_MATRIX_OUT=record, PYTHONDONTWRITEBYTECODE="1",
               KIT_TEST_TIME_SCALE=str(TIME_SCALE))
    log = os.path.join(out, "pytest.log")
    with open(log, "w") as f:
        p = subprocess.Popen(tests_argv(names), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code, timed_out = p.wait(timeout=TESTS_S), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            code, timed_out = p.wait(), True
    with open(log) as f:
        lines = f.read().splitlines()
    rec = {"tests": {}, "collected": []}
    if os.path.exists(record):
        with open(record) as f:
            rec = json.load(f)
    summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln)),
                   "no summary line")
    return {"code": code, "timed_out": timed_out, "pytest_summary": summary, "tail": "\n".join(lines[-80:]), **rec}


def calibrate(out):
    """This kernel's costs, measured once before the tests (as a host is calibrated once): kit's first
    offcpu run would otherwise measure a block inside a test, which under emulation outlasts the
    test's wait for the attach line. The tests' kit runs read it through KIT_CALIBRATION."""
    path = os.path.join(out, "calibration.json")
    env = dict(os.environ, KIT_CALIBRATION=path)
    p = subprocess.run([sys.executable, "-m", "kit", "calibrate", "--rounds", "1", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"kit calibrate exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    os.environ["KIT_CALIBRATION"] = path
    return {"path": os.path.basename(path)}


def only():
    """`recipes_guest.py OUT a,b`: only those recipes' tests, for working on one in the guest (booted by
    hand with vm.boot; the host's test of the matrix wants every recipe)."""
    return [n for n in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if n]


def main(out):
    res = {"seconds": {}}
    steps = (("mounts", mount_all),
             ("facts", matrix.kernel_facts),
             ("ladder", matrix.ladder),
             ("doctor", lambda: subprocess.run([sys.executable, "-m", "kit", "doctor"], cwd=ROOT,
                                               capture_output=True, text=True, timeout=600).stdout),
             ("calibrate", lambda: calibrate(out)),
             ("tests", lambda: run_tests(out, only() or matrix.recipe_names())))
    for name, fn in steps:
        res["step"] = name
        save(res, out)
        say(f"step {name}: start")
        t0 = time.monotonic()
        try:
            res[name] = fn()
        except Exception as e:
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res["seconds"][name] = round(time.monotonic() - t0, 1)
        say(f"step {name}: done in {res['seconds'][name]} s")
    res["step"] = "done"
    save(res, out)
    say("all steps done")


if __name__ == "__main__":
    main(sys.argv[1])
