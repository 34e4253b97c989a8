"""The second kernel of the matrix: every recipe's ground-truth kernel tests (tests/kernel/test_<recipe>_kernel.py,
the same workloads and oracles as on the host) run inside Debian's stock 6.1 (tests/support/qemu/guest_kernel),
lockdown off, kprobes and fentry present, headers matching, booted once under qemu for the whole set
(tests/support/qemu/recipes_guest.py). The host's and the guest's records become docs/kernels.md at the
session's end (tests/support/qemu/matrix.py).

The guest's console, pytest log and results are kept in .cache/second-kernel/ after every boot, so a
failed or hung guest can be read after the fact. Under software emulation the whole set (41 tests of
nine recipes) took 16-18 minutes wall here, boot included, on a 2-core box other sessions loaded; the
guest's pytest is killed at recipes_guest.TESTS_S (30 min). Tests that measure time or the guardrail
stay on the host (matrix.HOST_ONLY).
"""

import json
import os
import shutil
import sys

import pytest

from conftest import ROOT
from qemu import matrix, recipes_guest, vm
from qemu.tables import doctor_rows

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

KEPT = os.path.join(ROOT, ".cache", "second-kernel")
RECIPES = matrix.recipe_names()


@pytest.fixture(scope="module")
def guest(kernel, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("second-kernel"))
    def keep(out):  # the guest's console and records, kept past the test's temporary directory
        shutil.rmtree(KEPT, ignore_errors=True)
        shutil.copytree(out, KEPT, ignore=shutil.ignore_patterns("pytest-*"))
        return f"; console kept in {os.path.relpath(KEPT, ROOT)}/console.log"
    res, how, wall, b = vm.run_guest("recipes_guest.py", out, how_extra=keep, memory="3G",
                                     timeout=recipes_guest.TESTS_S + 300)
    print(f"second kernel: {wall:.0f} s wall; in the guest: {res['seconds']}", file=sys.stderr)
    if res.get("step") != "done" or "error" in res.get("tests", {}):
        pytest.fail(f"the guest stopped in step {res.get('step')!r} ({how}); its console's end:\n{b.tail()}\n"
                    f"{json.dumps(res)[-3000:]}")
    if "error" in res.get("calibrate", {}):
        pytest.fail(f"kit calibrate failed in the guest ({how}): {res['calibrate']['error']}")
    tests = res["tests"]
    matrix.GUEST.update(facts=res["facts"], ladder=res["ladder"], doctor=doctor_rows(res["doctor"]),
                        tests=tests["tests"], collected=tests["collected"], pytest_summary=tests["pytest_summary"],
                        seconds=res["seconds"])
    res["how"] = how
    return res


def test_the_guest_runs_the_pinned_stock_kernel_with_kprobes_fentry_and_matching_headers(guest):
    f = guest["facts"]
    abi, ver = vm.pinned_kernel()
    assert f["release"] == abi and f" Debian {ver} " in f["version"], f
    assert f["lockdown"] == "none" and f["btf"] and f["kprobes"], f
    assert f["headers"] == {"path": f"/usr/src/linux-headers-{abi}", "version": abi, "match": True}, f
    # doctor says so, and what it tried attached: kprobes and fentry exist here, unlike on the host
    rows = doctor_rows(guest["doctor"])
    assert rows["headers"][0] and "— match the running kernel" in rows["headers"][1], rows["headers"]
    for kind in ("tracepoint", "raw_tracepoint", "kprobe", "uprobe", "uretprobe", "fentry"):
        assert rows[kind][0], (kind, rows[kind])
    assert rows["recipes"] == (True, "runnable here: " + ", ".join(RECIPES)), rows["recipes"]


def test_every_recipe_has_ground_truth_tests_and_the_guest_ran_them_all(guest):
    missing = [n for n in RECIPES if not os.path.exists(os.path.join(ROOT, matrix.recipe_test_file(n)))]
    assert not missing, f"recipes without {matrix.recipe_test_file('<recipe>')}: {missing}"
    t = guest["tests"]
    assert not t["timed_out"], f"the guest's pytest was killed after {recipes_guest.TESTS_S} s:\n{t['tail']}"
    for name in RECIPES:
        ran = [n for n in t["collected"] if matrix.recipe_of(n) == name]
        assert ran, f"no test of {name} was collected in the guest:\n{t['tail']}"
        unfinished = [n for n in ran if t["tests"].get(n, {}).get("outcome") is None]
        assert not unfinished, (unfinished, t["tail"])
    assert not [n for n in t["collected"] if matrix.host_only(n)], "a host-only test ran in the guest"


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipes_ground_truth_tests_pass_on_the_second_kernel(guest, recipe):
    t = guest["tests"]
    ran = {n: t["tests"].get(n, {}) for n in t["collected"] if matrix.recipe_of(n) == recipe}
    assert ran, f"no test of {recipe} ran in the guest"
    failed = [f"{n}: {r.get('outcome')}\n{r.get('why', '')[-1500:]}" for n, r in ran.items()
              if r.get("outcome") != "passed"]
    if failed:
        pytest.fail(f"{len(failed)} of {len(ran)} {recipe} tests did not pass in the guest ({guest['how']}):\n\n"
                    + "\n\n".join(failed), pytrace=False)


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_rung_the_guest_offers_ran_in_a_passing_test_and_the_ladder_chose_the_first(guest, recipe):
    lad = guest["ladder"][recipe]
    available = [t for t, why in lad["rungs"].items() if why is None]
    assert available, lad
    assert lad["chosen"].split()[0] == available[0], lad
    rungs, _, _, _ = matrix.summary(guest["tests"], recipe)
    assert set(available) <= set(rungs), f"{recipe}: rungs {available} available, passing tests ran {rungs}"
