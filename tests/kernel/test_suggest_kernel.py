"""Every command a refusal suggests runs as pasted, on the real kernel, with the guard's own rate
measurement: each goes through `kit run ... --dry-run` (kit's checks, then the guardrail's estimate)
and must exit 0. Ground truth for what a suggestion names is /proc: the loads' own pids and comms,
and the kernel's PF_KTHREAD flag for kernel threads."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, kit_cmd, run_kit
from workloads.load import Load

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PF_KTHREAD = 0x00200000
ATTEMPTS = 5  # a 2-CPU box crowded by the loads and kit itself: a rate that moves past a suggestion's headroom is retaken


def _comm(tag):
    return f"kit-s{tag}{os.getpid() % 100000}"[:15]


def suggested(stderr):
    """The `kit run` lines of a refusal, as the user would paste them."""
    return [line.split("  #")[0].strip() for line in stderr.splitlines() if line.strip().startswith("kit run ")]


def is_kthread(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return bool(int(f.read().rsplit(")", 1)[1].split()[6]) & PF_KTHREAD)
    except (OSError, IndexError, ValueError):
        return None  # gone


def comm_pids(comm):
    out = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().rstrip("\n") == comm:
                    out.append(int(p))
        except (OSError, ValueError):
            continue
    return out


def dry_run(cmd):
    words = shlex.split(cmd)
    assert words[:2] == ["kit", "run"], cmd
    args = words[2:] + ["--dry-run"] + ([] if "--json" in words else ["--json"])
    p = run_kit("run", *args)
    est = json.loads(p.stdout)["estimate"] if p.stdout.strip() else {}
    return p, est


def refuse(*args):
    """A refused `kit run`, and the pid of the kit that refused (it must never suggest itself)."""
    p = subprocess.Popen(kit_cmd("run", *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 4, err
    assert out == "" and "\\n" not in err
    first, *more = err.splitlines()
    assert first.startswith("kit: error: ") and all(line.startswith("  ") for line in more), err
    return err, p.pid


def check_all(cmds, ours, kit_pid):
    """Runs each suggestion with --dry-run. Ours (about the test's loads) must exit 0; one about another
    process on the box may only fail because that process moved: it exited, or its rate grew past the
    suggestion's headroom. Returns the commands of ours that were refused (to retake)."""
    retake = []
    for cmd in cmds:
        assert f"--pid {kit_pid}" not in cmd and "--comm kit " not in cmd, f"kit suggested itself: {cmd}"
        p, est = dry_run(cmd)
        if p.returncode == 0:
            continue
        mine = any(f"--comm {c}" in cmd or f"--pid {pid}" in cmd for c, pid in ours)
        gone = re.search(r"no process with id (\d+)", p.stderr)
        if p.returncode == 2 and gone and not mine and not os.path.exists(f"/proc/{gone.group(1)}"):
            continue  # another test's process that exited since
        assert p.returncode == 4, (cmd, p.returncode, p.stderr)  # never bad input: kit accepts what it suggests
        assert est.get("cpu_pct", 0) > est.get("budget_pct", 100) / 1.25, (cmd, est)  # it fitted when suggested
        if mine:
            retake.append((cmd, est.get("cpu_pct"), est.get("budget_pct")))  # what it cost when retaken
    return retake


def test_every_command_an_unscoped_refusal_suggests_passes_a_dry_run(kernel, no_leftovers):
    with Load("syscalls", _comm("h"), seconds=120) as hot, Load("pingpong", _comm("p"), seconds=120) as pp:
        hot.go()
        pp.go()
        for recipe in ("syscalls", "offcpu"):
            for attempt in range(ATTEMPTS):
                err, kit_pid = refuse(recipe, "--for", "5s")
                cmds = suggested(err)
                assert cmds, err
                load = hot if recipe == "syscalls" else pp
                assert any(f"--comm {load.comm}" in c for c in cmds), err  # the load that makes the hook hot
                # kernel threads are named as such, and never suggested
                kline = next((line for line in err.splitlines() if "kernel threads busy" in line), "")
                for m in re.finditer(r"(\S+) \(pid (\d+)\) [\d.]+[kM]?/s", kline):
                    assert is_kthread(int(m.group(2))) in (True, None), m.group(0)
                for c in cmds:
                    words = shlex.split(c)
                    if "--comm" in words:
                        comm = words[words.index("--comm") + 1]
                        assert len(comm.encode()) <= 15 and not any(is_kthread(p) for p in comm_pids(comm)), c
                    if "--pid" in words:
                        assert is_kthread(int(words[words.index("--pid") + 1])) in (False, None), c
                refused = check_all(cmds, [(hot.comm, hot.pid), (pp.comm, pp.pid)], kit_pid)
                if not refused:
                    break
            else:
                pytest.fail(f"{recipe}: the suggestions for the test's own load were refused {ATTEMPTS} times; "
                            f"the last (command, cpu_pct, budget_pct): {refused}")
        hot.finish()
        pp.finish()


def test_when_no_scope_fits_the_budget_the_ways_out_are_priced_and_pass_a_dry_run(kernel, no_leftovers):
    with Load("syscalls", _comm("w"), seconds=120) as hot:
        hot.go()
        for attempt in range(ATTEMPTS):
            err, kit_pid = refuse("syscalls", "--comm", hot.comm, "--budget", "1", "--for", "20s")
            assert "would cost more than its budget" in err, err
            assert "nothing above fits the 1% budget; what would:" in err, err
            short = [line for line in err.splitlines() if "look at" in line]
            assert short and "--for 3s --budget " in short[0] and "CPU-seconds in all" in short[0], err
            cmds = suggested(err)
            assert any(f"--comm {hot.comm}" in c for c in cmds), err
            refused = check_all(cmds, [(hot.comm, hot.pid)], kit_pid)
            if not refused:
                break
        else:
            pytest.fail(f"the ways out were refused {ATTEMPTS} times; the last (command, cpu_pct, budget_pct): "
                        f"{refused}")
        hot.finish()
