"""--unit and --container on the real kernel: two copies of the demo service with the same name, one in
a systemd-style unit cgroup and one in a docker-style container cgroup (made here under the cgroup v2
root, removed after); each scope takes exactly the processes the kernel lists in that cgroup's
cgroup.procs, in a recipe run and in a triage."""

import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, kit_cmd
from workloads import paysvc

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


@pytest.fixture
def two_cgroups(kernel, tmp_path):
    from kit.catalog.params import cgroup2_roots
    me = os.getpid()
    base = os.path.join(cgroup2_roots()[0], f"kit-test-scopes-{me}.slice")
    unit = f"kit-t{me}.service"
    cid = f"{me:08x}" * 8
    dirs = [os.path.join(base, unit), os.path.join(base, f"docker-{cid}.scope")]
    binary = paysvc.build(str(tmp_path), f"psc{me % 100000}")
    svcs = []
    try:
        for d in dirs:
            os.makedirs(d)
            svc = paysvc.Service(binary)
            svcs.append(svc)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(svc.pid))
        truth = [sorted(int(x) for x in open(os.path.join(d, "cgroup.procs")).read().split()) for d in dirs]
        assert truth == [[svcs[0].pid], [svcs[1].pid]]
        yield unit, cid, truth, os.path.basename(binary)
    finally:
        for svc in svcs:
            svc.stop()
        for d in dirs + [base]:
            if os.path.isdir(d):
                os.rmdir(d)


def _offcpu_pids(*scope):
    p = subprocess.run(kit_cmd("run", "offcpu", *scope, "--for", "3s", "--budget", "50", "--json"), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    return {r["pid"] for r in res["rows"]}, res


def test_unit_and_container_scope_a_recipe_to_exactly_their_cgroups_processes(no_leftovers, two_cgroups):
    unit, cid, (in_unit, in_container), _name = two_cgroups
    pids, res = _offcpu_pids("--unit", unit)
    assert pids == set(in_unit), (pids, in_unit)
    assert res["scope"]["cgroup"].endswith(f"/{unit}")   # the cgroup as --cgroup takes it
    pids, _ = _offcpu_pids("--container", cid[:16])
    assert pids == set(in_container), (pids, in_container)


def test_a_triage_scoped_by_container_follows_only_that_containers_process(no_leftovers, two_cgroups, tmp_path):
    unit, cid, (in_unit, in_container), name = two_cgroups
    p = subprocess.run(kit_cmd("triage", "--container", cid[:16], "--for", "20s", "--budget", "50", "--out",
                               str(tmp_path / "r")), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.load(open(tmp_path / "r" / "report.json"))
    assert rep["scope"] == f"--container {cid[:16]}"
    assert rep["steps"][0]["command"].startswith(f"kit run offcpu --container {cid[:16]} ")
    assert {t["pid"] for t in rep["look"]["threads"]} == set(in_container)
    followed = [s for s in rep["steps"] if s["kind"] != "first look"]
    assert followed, p.stderr
    for s in followed:   # every next step on that container's process, never the other copy's
        assert re.search(rf"--pid {in_container[0]}\b", s["command"]), s["command"]
