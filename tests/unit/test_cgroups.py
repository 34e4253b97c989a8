"""--unit and --container: the cgroup v2 directory each names, by the names systemd and the container
runtimes give them, on a cgroup tree made in a temporary directory; and the clear errors when nothing,
or more than one, matches."""

import io
import os

import pytest

from kit.host import cgroups
from kit.cli import main
from kit.errors import BadInput, ExitCode

A = "a1b2c3d4e5f6" + "0" * 52
B = "a1b2c3d4e5f6" + "1" * 52  # shares its first 12 characters with A
C = "c0ffee" + "2" * 58


def cg(root, rel):
    d = os.path.join(root, rel)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "cgroup.procs"), "w").close()
    return d


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path)
    cg(root, "system.slice/nginx.service")
    cg(root, "system.slice/pay.service")
    cg(root, "user.slice/user-1000.slice/user@1000.service/app.slice/pay.service")
    cg(root, "user.slice/user-1000.slice/user@1000.service/app.slice/tool.service")
    cg(root, "user.slice/user-1001.slice/user@1001.service/app.slice/tool.service")
    cg(root, f"system.slice/docker-{A}.scope")
    cg(root, f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{B}.scope")
    cg(root, f"machine.slice/libpod-conmon-{C}.scope")
    cg(root, f"machine.slice/libpod-{C}.scope")
    return root


@pytest.mark.parametrize("name, rel", [
    ("nginx.service", "system.slice/nginx.service"),
    ("nginx", "system.slice/nginx.service"),              # .service is assumed
    ("pay.service", "system.slice/pay.service"),          # the system unit before a user's of that name
])
def test_a_unit_is_its_cgroup(tree, name, rel):
    assert cgroups.unit(name, root=tree) == os.path.join(tree, rel)


@pytest.mark.parametrize("ident, rel", [
    (A, f"system.slice/docker-{A}.scope"),                 # docker, systemd driver, full id
    (A[:13], f"system.slice/docker-{A}.scope"),            # a prefix that names one
    (B[:16].upper(), f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
                     f"cri-containerd-{B}.scope"),         # kubelet + containerd; ids are hex in any case
    (C[:12], f"machine.slice/libpod-{C}.scope"),           # podman: the container, not its conmon
])
def test_a_container_is_its_cgroup(tree, ident, rel):
    assert cgroups.container(ident, root=tree) == os.path.join(tree, rel)


def test_a_docker_cgroupfs_container_is_found_by_its_bare_id(tmp_path):
    root = str(tmp_path)
    cg(root, f"docker/{A}")
    cg(root, f"kubepods/burstable/pod42/{B}")
    cg(root, "elsewhere/" + C)  # a 64-hex name under no runtime's directory is not taken for a container
    assert cgroups.container(A[:13], root=root) == os.path.join(root, "docker", A)
    assert cgroups.container(B[:13], root=root) == os.path.join(root, "kubepods/burstable/pod42", B)
    with pytest.raises(BadInput, match="no cgroup of a container"):
        cgroups.container(C[:12], root=root)


@pytest.mark.parametrize("call, words", [
    (lambda r: cgroups.unit("nosuch.service", root=r), "no cgroup named nosuch.service"),
    (lambda r: cgroups.unit("tool.service", root=r), "2 cgroups have that name"),
    (lambda r: cgroups.unit("bad/name", root=r), "is not a systemd unit name"),
    (lambda r: cgroups.container("feedface0000", root=r), "no cgroup of a container with that id"),
    (lambda r: cgroups.container("a1b2c3d4e5f", root=r), "too short"),
    (lambda r: cgroups.container("a1b2c3d4e5f6", root=r), "2 containers' ids start with it"),
    (lambda r: cgroups.container("my-container", root=r), "is not a container id"),
])
def test_nothing_or_too_much_matching_is_one_clear_error(tree, call, words):
    with pytest.raises(BadInput, match=words) as e:
        call(tree)
    assert e.value.hint


def kit(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, words", [
    (["run", "offcpu", "--unit", "nginx.service", "--cgroup", "/"], "--cgroup and --unit both name a cgroup"),
    (["run", "offcpu", "--container", "zz"], "is not a container id"),
    (["show", "profile", "--unit", "no/such"], "is not a systemd unit name"),
])
def test_unit_and_container_are_checked_like_any_scope(argv, words):
    code, out, err = kit(*argv)
    assert code == ExitCode.BAD_INPUT and words in err and err.count("\n") == 1


def test_every_recipe_that_scopes_by_cgroup_takes_unit_and_container():
    from kit import catalog
    for r in catalog.load(catalog.DEFAULT_CATALOG).values():
        code, out, _ = kit("run", r.name, "--help")
        assert code == 0
        assert ("--unit" in out and "--container" in out) == ("cgroup" in r.params), r.name
