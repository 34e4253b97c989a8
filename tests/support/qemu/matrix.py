"""The kernel matrix (docs/kernels.md): every recipe's ground-truth kernel tests on the host and in
the stock Debian 6.1 guest, with the rung each kernel's ladder chooses and the rungs the tests ran.

A pytest plugin (tests/conftest.py loads it). It records each test's outcome and the hook every kit
run in the test reported (its JSON "hook", else its "attached to ... via TYPE" line). In the guest
(KIT_MATRIX_OUT set, tests/support/qemu/recipes_guest.py) it writes those records for the host to read; on
the host, at the session's end, it writes the table from both kernels' records, into docs/kernels.md
when the session ran every recipe's tests on both, else into .cache/kernels.md (so a partial run
never overwrites the full table).

A recipe's ground-truth tests are tests/kernel/test_<recipe>_kernel.py, for every recipe in the catalog:
a new recipe joins the matrix with its test file. HOST_ONLY names the tests in them that stay on the
host (they measure time or the guardrail, which an emulated CPU would falsify).
"""

import datetime
import json
import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DOC = os.path.join(ROOT, "docs", "kernels.md")
PARTIAL_DOC = os.path.join(ROOT, ".cache", "kernels.md")
# Test functions (without parameters) that stay on the host, and why.
HOST_ONLY = {
    "test_offcpu_kernel.py::test_unscoped_offcpu_is_refused_with_exit_4_and_a_scope_hint":
        "the guardrail's refusal prices the box's live sched_switch rate",
    "test_lockhold_kernel.py::test_app_lock_pair_counts_and_slow_buckets_equal_the_workload_and_bpftrace":
        "it checks the workload's own fast holds stay under 16 ms; on one emulated CPU a holder preempted by "
        "its 3 peers is not (seen: 5 holds in the 16 ms bucket, 4 slow ones meant)",
    "test_profile_kernel.py::test_shares_of_two_functions_match_the_workloads_own_cpu_clock_and_a_sleeper_gets_none":
        "it expects 95% of the thread's samples in its two functions, the rest being its thread-CPU clock reads: "
        "syscalls, which emulation makes far dearer (seen: 92%, the shares themselves right); profile's other "
        "tests check the shares in the guest",
    "test_runqlat_kernel.py::test_waits_behind_a_cpu_hog_match_the_threads_own_lateness":
        "the workload's lateness is its timer's latency plus its wait for the CPU, and only the wait is "
        "runqlat's; emulated, the timer alone is hundreds of microseconds late (seen: 99% of ticks 512 us late "
        "or more, kit 79%), so the lateness is no measure of the wait there",
    "test_runqlat_kernel.py::test_a_thread_alone_on_its_cpu_waits_microseconds":
        "as above, with no hog: emulated, 27% of the ticks were 256 us late or more by the timer alone, and kit "
        "saw 3% of the waits that long",
    "test_runqlat_kernel.py::test_tracepoint_rungs_waits_match_the_threads_own_lateness":
        "the same lateness, on the tracepoint rung (seen: 99% of ticks 1 ms late or more, kit 50%); its scope "
        "and counts are checked in the guest by test_comm_scope_is_the_woken_tasks_on_the_tracepoint_rung",
}
GUEST = {}  # the guest's results, set by tests/kernel/test_second_kernel_recipes.py when it booted one


def recipe_test_file(name):
    return os.path.join("tests", "kernel", f"test_{name}_kernel.py")


def recipe_names():
    from kit import catalog
    return list(catalog.load(catalog.DEFAULT_CATALOG))


def rung_types():
    """Every hook type some recipe's ladder names, in kit.host.features.HOOK_TYPES order."""
    from kit import catalog
    from kit.host import features
    used = {h.type for r in catalog.load(catalog.DEFAULT_CATALOG).values() for h in r.hooks}
    return [t for t in features.HOOK_TYPES if t in used]


def doctor():
    """{check: (ok, detail)} of `kit doctor` on this kernel: what it attached, each kind."""
    import subprocess
    from qemu.tables import doctor_rows
    p = subprocess.run([sys.executable, "-m", "kit", "doctor"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    return doctor_rows(p.stdout)


def recipe_of(nodeid):
    m = re.match(r"tests/kernel/test_(\w+)_kernel\.py::", nodeid)
    return m.group(1) if m else None


def host_only(nodeid):
    return nodeid.split("[", 1)[0].removeprefix("tests/kernel/") in HOST_ONLY


def kernel_facts():
    """What this kernel is and offers the ladder, as features.py sees it."""
    from kit.host import features
    u = os.uname()
    path, ver, match = features.headers()
    return {"release": u.release, "version": u.version, "lockdown": features.lockdown(),
            "btf": features.btf_available(), "kprobes": features.kprobes_available(),
            "headers": {"path": path, "version": ver, "match": match}}


def ladder():
    """{recipe: {"chosen": "type target" or the reason none can run, "rungs": {type: None or why not}}}."""
    from kit import catalog
    from kit.host import features
    from kit.errors import KitError
    out = {}
    for name, recipe in catalog.load(catalog.DEFAULT_CATALOG).items():
        try:
            h = features.choose_hook(recipe)
            chosen = f"{h.type} {h.target}".strip()
        except KitError as e:
            chosen = None
            why = str(e)
        out[name] = {"chosen": chosen, "why_not": None if chosen else why,
                     "rungs": {h.type: features.hook_supported(h) for h in recipe.hooks}}
    return out


class Recorder:
    """Outcomes and kit's reported hooks, per test node id."""

    def __init__(self):
        self.tests = {}
        self.current = None
        self.collected = []

    def entry(self, nodeid):
        return self.tests.setdefault(nodeid, {"outcome": None, "hooks": [], "seconds": 0.0, "why": ""})

    def saw_kit(self, kit):
        """Called with each finished conftest.KitProc."""
        if self.current is None:
            return
        hook = None
        try:
            hook = json.loads(kit.stdout).get("hook")
        except (ValueError, AttributeError, TypeError):
            m = re.search(r" attached to .* via (\w+)", kit.stderr or "")
            hook = m.group(1) if m else None
        if hook:
            self.entry(self.current)["hooks"].append(hook)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        self.current = item.nodeid

    def pytest_collection_finish(self, session):
        self.collected = [i.nodeid for i in session.items]
        conftest = sys.modules.get("conftest")
        kitproc = getattr(conftest, "KitProc", None)
        if kitproc is not None and not getattr(kitproc.finish, "_matrix", False):
            finish = kitproc.finish

            def recorded(kit, *a, **kw):
                r = finish(kit, *a, **kw)
                self.saw_kit(kit)
                return r
            recorded._matrix = True
            kitproc.finish = recorded

    def pytest_runtest_logreport(self, report):
        e = self.entry(report.nodeid)
        e["seconds"] = round(e["seconds"] + report.duration, 1)
        if report.when == "call" or report.outcome != "passed":
            if e["outcome"] in (None, "passed"):
                e["outcome"] = "error" if report.when != "call" and report.failed else report.outcome
                if report.failed:
                    e["why"] = str(report.longrepr)[-3000:]
                elif report.skipped:
                    e["why"] = str(report.longrepr)[-300:]
        if report.when == "teardown":
            self.current = None
            self.save()

    def save(self):
        out = os.environ.get("KIT_MATRIX_OUT")
        if out:
            with open(out + ".tmp", "w") as f:
                json.dump({"tests": self.tests, "collected": self.collected}, f, indent=1)
            os.replace(out + ".tmp", out)

    def pytest_sessionfinish(self, session):
        self.save()
        if os.environ.get("KIT_MATRIX_OUT") or not GUEST:
            return
        path = write_table(self.host_results(), GUEST)
        session.config._kit_matrix_doc = path

    def pytest_terminal_summary(self, terminalreporter, config):
        path = getattr(config, "_kit_matrix_doc", None)
        if path:
            terminalreporter.write_line(f"kernel matrix written to {os.path.relpath(path, ROOT)}")

    def host_results(self):
        return {"facts": kernel_facts(), "ladder": ladder(), "doctor": doctor(), "tests": self.tests,
                "collected": self.collected}


def register(config):
    if not config.pluginmanager.has_plugin("kit-matrix"):
        config.pluginmanager.register(Recorder(), "kit-matrix")


def summary(run, recipe):
    """(rungs the recipe's tests ran, passed, failed names, not run) of one kernel's run."""
    ran = [n for n in run.get("collected", []) if recipe_of(n) == recipe]
    tests = {n: run["tests"].get(n, {}) for n in ran}
    passed = [n for n, t in tests.items() if t.get("outcome") == "passed"]
    failed = [n for n, t in tests.items() if t.get("outcome") in ("failed", "error")]
    missing = [n for n, t in tests.items() if t.get("outcome") is None]
    rungs = sorted({h.split()[0] for t in tests.values() if t.get("outcome") == "passed" for h in t["hooks"]})
    return rungs, passed, failed, missing


def complete(run, names):
    """Did this run collect and finish every recipe's tests (but the host-only ones, in the guest)?"""
    for name in names:
        ran = [n for n in run.get("collected", []) if recipe_of(n) == name]
        if not ran or any(run["tests"].get(n, {}).get("outcome") is None for n in ran):
            return False
    return True


def kernel_cell(where, facts):
    h = facts["headers"]
    headers = (f"headers match ({h['version']})" if h["match"] else
               f"headers {h['version'] or 'none'} do not match (struct offsets from BTF)")
    return (f"{facts['release']} ({where}; lockdown {facts['lockdown']}; "
            f"kprobes {'yes' if facts['kprobes'] else 'no'}; BTF {'yes' if facts['btf'] else 'no'}; {headers})")


def result_cell(passed, failed, missing):
    if not (passed or failed or missing):
        return "not run"
    parts = [f"{len(passed)} passed"] if passed else []
    if failed:
        parts.append(f"**{len(failed)} FAILED**: " + ", ".join(f"`{n.split('::', 1)[1]}`" for n in failed))
    if missing:
        parts.append(f"{len(missing)} did not finish")
    return "; ".join(parts)


def table(runs, names):
    lines = ["| kernel | recipe | rung chosen | rungs its tests ran (passing) | rungs unavailable | result |",
             "|---|---|---|---|---|---|"]
    for where, run in runs:
        kernel = kernel_cell(where, run["facts"])
        for name in names:
            lad = run["ladder"].get(name, {"chosen": None, "why_not": "not in this run's catalog", "rungs": {}})
            rungs, passed, failed, missing = summary(run, name)
            off = "; ".join(f"{t}: {why}" for t, why in lad["rungs"].items() if why) or "none"
            chosen = f"`{lad['chosen']}`" if lad["chosen"] else f"none: {lad['why_not']}"
            if not os.path.exists(os.path.join(ROOT, recipe_test_file(name))):
                result = f"no {recipe_test_file(name)}"
            else:
                result = result_cell(passed, failed, missing)
            lines.append(f"| {kernel} | {name} | {chosen} | {', '.join(rungs) or '-'} | {off} | {result} |")
            kernel = '"'
    return lines


def rungs_no_ladder_has(runs):
    """Lines for the hook types no recipe's ladder names (so no test ran them), with what each kernel's
    doctor found when it attached one itself: said, not filled in with a rung made up for the table."""
    from kit.host import features
    used = rung_types()
    # a uprobe rung attaches its `at: return` points as uretprobes (lockhold, getaddrinfo)
    covered = set(used) | (set(features.UPROBE_TYPES) if "uprobe" in used else set())
    absent = [t for t in features.HOOK_TYPES if t not in covered]
    if not absent:
        return []
    lines = [f"No recipe's ladder has a {', '.join(absent[:-1])} or {absent[-1]} rung (the ladders are "
             f"`incident_recipes.yaml`'s: {', '.join(used)}), so no test ran one and none was added for this table."]
    for where, run in runs:
        rows = run.get("doctor") or {}
        seen = [f"{t} {'ok' if rows[t][0] else 'NO'} ({rows[t][1]})" for t in absent if t in rows]
        if seen:
            lines.append(f"What `kit doctor` found attaching one itself on the {where}: {'; '.join(seen)}.")
    return lines


def write_table(host, guest):
    names = recipe_names()
    full = complete(host, names) and complete(guest, names)
    runs = [("host", host), ("qemu guest", guest)]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        "# Kernels x recipes",
        "",
        f"Written by the test suite's run (`tests/support/qemu/matrix.py`) on {when}; do not edit by hand.",
        "Each recipe's ground-truth tests (`tests/kernel/test_<recipe>_kernel.py`: the workloads' own counts, kernel",
        "counters, bpftrace) ran on the host and in Debian's stock kernel booted once under qemu",
        "(`tests/kernel/test_second_kernel_recipes.py`). *Rung chosen* is the recipe's ladder on that kernel without",
        "`--hook`; *rungs its tests ran* are those kit reported in the tests that passed (some force one with",
        "`--hook`). Host-only tests (they measure time or the guardrail, which an emulated CPU would falsify):",
        *[f"`{t}` ({why})." for t, why in HOST_ONLY.items()],
        "",
        *table(runs, names),
        "",
        *(line for note in rungs_no_ladder_has(runs) for line in (note, "")),
        f"The guest's run: {guest.get('pytest_summary', '?')} in {guest.get('seconds', {}).get('tests', '?')} s "
        f"(software emulation, one CPU).",
        "",
    ])
    path = DOC if full else PARTIAL_DOC
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path

