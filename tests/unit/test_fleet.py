"""kit.pyz and kit fleet's own logic, without a kernel or hosts (tests/kernel/test_fleet_kernel.py has those)."""

import json
import os
import subprocess
import zipfile

import pytest

from kit import catalog, cli, fleet
from kit.fleet import pack
from kit.errors import BadInput

PY = "/usr/bin/python3"   # a host's python, not the venv's


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyz")
    path = str(d / "kit.pyz")
    digest = pack.build(path)
    return path, digest, str(d)


def run_pyz(path, *args, cache, flags=()):
    env = dict(os.environ, KIT_PYZ_CACHE=cache)
    return subprocess.run([PY, *flags, path, *args], capture_output=True, text=True, env=env, cwd="/", timeout=120)


def test_the_build_is_reproducible_and_carries_kit_probes_catalog_playbook_and_licences(pyz, tmp_path):
    path, digest, _d = pyz
    assert pack.build(str(tmp_path / "again.pyz")) == digest
    names = set(zipfile.ZipFile(path).namelist())
    for must in ("__main__.py", "kit/cli.py", "kit/recipes/tcpretrans.py", "probes/kit_prelude.h",
                 "probes/tcpretrans.c", "incident_recipes.yaml", "deploy/ansible/kit-run.yml",
                 "vendor/yaml/__init__.py", "vendor/tabulate.py", "vendor/pyroute2/__init__.py", "vendor/LICENSES.txt"):
        assert must in names
    assert not [n for n in names if n.endswith(".so") or "__pycache__" in n]
    assert "MIT" in zipfile.ZipFile(path).read("vendor/LICENSES.txt").decode()


def test_kit_pyz_runs_with_the_hosts_python_from_a_private_cache(pyz, tmp_path):
    path, digest, _d = pyz
    cache = str(tmp_path / "cache")
    p = run_pyz(path, "list", cache=cache)
    assert p.returncode == 0, p.stderr
    assert "tcpretrans" in p.stdout
    unpacked = os.path.join(cache, digest[:32])
    for d in (cache, unpacked):
        st = os.stat(d)
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    assert os.path.isfile(os.path.join(unpacked, "probes", "offcpu.c"))


def test_an_altered_unpacked_file_is_restored_before_kit_runs(pyz, tmp_path):
    path, digest, _d = pyz
    cache = str(tmp_path / "cache")
    assert run_pyz(path, "list", cache=cache).returncode == 0
    tpl = os.path.join(cache, digest[:32], "probes", "tcpretrans.c")
    with open(tpl, "a") as f:
        f.write("/* altered */\n")
    assert run_pyz(path, "show", "tcpretrans", cache=cache).returncode == 0
    with open(tpl) as f:
        assert "altered" not in f.read()


def test_a_cache_others_may_write_is_refused(pyz, tmp_path):
    path, _digest, _d = pyz
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    p = run_pyz(path, "list", cache=str(cache))
    assert p.returncode == 3
    assert "not a private folder" in p.stderr and "chmod 700" in p.stderr


def test_doctor_says_what_comes_from_where_and_what_is_missing(pyz, tmp_path):
    path, _digest, _d = pyz
    # -S: no site-packages, as on a host without Debian's python3-yaml, -tabulate, -pyroute2, -bpfcc
    p = run_pyz(path, "doctor", cache=str(tmp_path / "c"), flags=("-S",))
    assert p.returncode == 0, p.stderr
    lines = {line.split()[1]: line for line in p.stdout.splitlines() if line.startswith("python ")}
    assert "vendored in kit.pyz" in lines["yaml"] and "apt-get install python3-yaml" in lines["yaml"]
    assert "vendored" in lines["tabulate"] and "vendored" in lines["pyroute2"]
    assert "NO" in lines["bcc"] and "apt-get install python3-bpfcc" in lines["bcc"]
    p = run_pyz(path, "doctor", cache=str(tmp_path / "c"))
    assert "/usr/lib/python3/dist-packages/yaml" in p.stdout   # the host's own package wins


def _ns(recipe, *argv):
    p = cli.recipe_parser(recipe, "run")
    fleet.fleet_options(p)
    return p.parse_args(list(argv))


def test_every_host_gets_the_users_own_arguments_and_time_box():
    r = catalog.load()["tcpretrans"]
    ns = _ns(r, "--netns", "/proc/self/ns/net", "--port", "443", "--budget", "5", "--hosts", "inv")
    assert fleet.remote_args(r, ns, 30.0) == ["tcpretrans", "--port=443", "--netns=/proc/self/ns/net", "--for", "30s",
                                              "--budget=5"]


def test_a_bad_argument_fails_here_once_not_on_every_host():
    r = catalog.load()["tcpretrans"]
    with pytest.raises(BadInput, match="port"):
        fleet.remote_args(r, _ns(r, "--port", "99999", "--hosts", "inv"), 30.0)


@pytest.mark.parametrize("forks", ["0", "101", "many"])
def test_forks_are_bounded(forks):
    with pytest.raises(BadInput, match="--forks"):
        fleet._forks(forks)


@pytest.mark.parametrize("tree, status, reason", [
    (None, "failed", "Ansible reported nothing"),
    ({"unreachable": True, "msg": "Failed to connect to the host via ssh: Connection refused"}, "unreachable",
     "Connection refused"),
    ({"failed": True, "msg": "Could not find or access 'kit.pyz'"}, "failed", "kit.pyz"),
    ({"failed": True, "msg": "The command action failed to execute in the expected time frame (150)"}, "failed",
     "time frame"),
    ({"cmd": ["python3"], "rc": 4, "stdout": "", "stderr": "kit: error: offcpu would cost more than its budget\n"
      "  or --force"}, "refused", "offcpu would cost more than its budget"),
    ({"cmd": ["python3"], "rc": 5, "stdout": "", "stderr": "kit: error: kit needs CAP_BPF"}, "failed",
     "kit needs CAP_BPF"),
    ({"cmd": ["python3"], "rc": 1, "stdout": "", "stderr": "/usr/bin/python3: can't open file"}, "failed",
     "can't open file"),
])
def test_a_host_without_a_result_is_reported_with_its_reason(tree, status, reason):
    e = fleet.outcome("web7", tree)
    assert e["host"] == "web7" and e["status"] == status and reason in e["reason"]


def test_a_host_with_a_result_is_ok_and_its_result_names_it():
    res = {"recipe": "tcpretrans", "rows": []}
    e = fleet.outcome("web7", {"cmd": [], "rc": 0, "stdout": json.dumps(res), "stderr": ""})
    assert e["status"] == "ok" and e["result"]["host"] == "web7"
    assert fleet.exit_code({"hosts": [e]}) == 0
    assert fleet.exit_code({"hosts": [e, fleet.outcome("web8", None)]}) == 8


K8S = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "deploy", "k8s")
K8S_VERSION = "1.30.0"   # the oldest schema these manifests claim; kubernetes-validate ships it, offline


def _k8s_docs():
    import yaml
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S, name)) as f:
                for doc in yaml.safe_load_all(f):
                    yield name, doc


@pytest.mark.parametrize("version", [K8S_VERSION, "1.37.0"])
def test_the_kubernetes_manifests_match_the_api_schema_offline(version):
    import kubernetes_validate
    kinds = []
    for name, doc in _k8s_docs():
        kubernetes_validate.validate(doc, version, strict=True)   # raises ValidationError naming the field
        kinds.append(doc["kind"])
    assert {"DaemonSet", "Job"} <= set(kinds)


def test_the_schema_check_catches_a_misspelt_field():
    import copy

    import kubernetes_validate
    ds = copy.deepcopy(next(d for _n, d in _k8s_docs() if d["kind"] == "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostPid"] = True   # hostPID
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_the_manifests_run_kit_pyz_with_the_hosts_python_and_no_privileged_container():
    for _name, doc in _k8s_docs():
        if doc["kind"] not in ("DaemonSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["hostPID"] and "/opt/kit/kit.pyz" in " ".join(c["command"] + c["args"])
        assert c["securityContext"]["privileged"] is False
        assert {"BPF", "PERFMON"} <= set(c["securityContext"]["capabilities"]["add"])
