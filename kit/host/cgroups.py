"""The cgroup v2 directory of a systemd unit (--unit) or a container (--container), for every recipe
that scopes by cgroup.

Found by walking the cgroup v2 hierarchy, not by asking systemd or a container runtime: the
directory names are the contract every one of them keeps.
  systemd:      .../NAME.service (also .scope, .slice, .socket, .mount), under system.slice or a user's slice
  docker:       .../docker-ID.scope (systemd driver) or .../docker/ID (cgroupfs driver)
  containerd:   .../cri-containerd-ID.scope, or .../ID under a kubepods or containerd directory
  CRI-O:        .../crio-ID.scope
  podman:       .../libpod-ID.scope (not libpod-conmon-ID.scope, its monitor), or .../libpod-ID/container
  kubelet:      kubepods.slice/kubepods-QOS.slice/kubepods-QOS-podUID.slice/<runtime>-ID.scope, or
                kubepods/QOS/podUID/ID (cgroupfs)
An ID is hex: a prefix of at least MIN_ID_LEN characters names the one container it starts.
"""

import os
import re

from kit.errors import BadInput, Unsupported
from kit.catalog.params import cgroup2_roots

UNIT_RE = re.compile(r"[A-Za-z0-9:_.@\\-]{1,255}")
UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap")
ID_RE = re.compile(r"[0-9a-f]{4,64}")
MIN_ID_LEN = 12
CONTAINER_NAME = re.compile(r"^(?:docker|cri-containerd|crio|libpod|containerd)-([0-9a-f]{12,64})\.scope$")
BARE_ID = re.compile(r"^[0-9a-f]{64}$")
BARE_PARENTS = ("docker", "kubepods", "containerd", "besteffort", "burstable", "guaranteed", "libpod")
MAX_DEPTH = 8


def _root():
    roots = cgroup2_roots()
    if not roots:
        raise Unsupported("--unit and --container need the cgroup v2 hierarchy, which is not mounted",
                          "mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or scope by --pid or --comm")
    return roots[0]


def _walk(root, depth=MAX_DEPTH):
    """(relative path, name) of every cgroup directory under root, parents first, in sorted order."""
    stack = [("", 0)]
    while stack:
        rel, d = stack.pop()
        try:
            names = sorted((e.name for e in os.scandir(os.path.join(root, rel)) if e.is_dir(follow_symlinks=False)),
                           reverse=True)
        except OSError:
            continue
        for n in names:
            child = f"{rel}/{n}" if rel else n
            yield child, n
            if d + 1 < depth:
                stack.append((child, d + 1))


def unit(name, root=None):
    """The cgroup directory (absolute path) of systemd unit NAME (.service assumed without a suffix)."""
    s = str(name)
    if not UNIT_RE.fullmatch(s):
        raise BadInput(f"--unit {s[:60]!r} is not a systemd unit name", "give one like nginx.service, as "
                       "`systemctl list-units` shows it")
    if not s.endswith(UNIT_SUFFIXES):
        s += ".service"
    root = root or _root()
    found = [rel for rel, n in _walk(root) if n == s]
    if not found:
        raise BadInput(f"--unit {s}: no cgroup named {s} under {root}",
                       f"is it running? (`systemctl status {s}`); kit reads the cgroup v2 tree, so a unit "
                       "that is stopped or not under systemd has none")
    system = [rel for rel in found if rel.startswith("system.slice/")]
    pick = system or found
    if len(pick) > 1:
        raise BadInput(f"--unit {s}: {len(pick)} cgroups have that name ({', '.join(pick[:3])})",
                       "give the one you mean with --cgroup DIR")
    return os.path.join(root, pick[0])


def container(ident, root=None):
    """The cgroup directory (absolute path) of the container whose id starts with IDENT."""
    s = str(ident).strip().lower()
    if not ID_RE.fullmatch(s):
        raise BadInput(f"--container {str(ident)[:70]!r} is not a container id",
                       "give its hex id, at least 12 characters (`docker ps --no-trunc`, `crictl ps`, "
                       "`podman ps --no-trunc`); a container's name is not in its cgroup path")
    if len(s) < MIN_ID_LEN:
        raise BadInput(f"--container {s!r} is too short to name one container",
                       f"give at least {MIN_ID_LEN} characters of its id")
    root = root or _root()
    found = {}
    for rel, n in _walk(root):
        m = CONTAINER_NAME.match(n)
        cid = m.group(1) if m else (n if BARE_ID.match(n) and _bare_parent(rel) else None)
        if cid and cid.startswith(s):
            found.setdefault(cid, rel)  # parents first: a container's own directory before what it nests
    if not found:
        raise BadInput(f"--container {s}: no cgroup of a container with that id under {root}",
                       "check the id (`docker ps --no-trunc`, `crictl ps`); kit reads the cgroup v2 tree, so "
                       "a container on a cgroup v1 host has none there")
    if len(found) > 1:
        raise BadInput(f"--container {s}: {len(found)} containers' ids start with it "
                       f"({', '.join(sorted(c[:16] for c in found))})", "give more of the id")
    rel = next(iter(found.values()))
    if os.path.basename(rel).startswith("libpod-") and os.path.isdir(os.path.join(root, rel, "container")):
        rel = f"{rel}/container"  # podman (cgroupfs): the processes live in the container/ child
    return os.path.join(root, rel)


def _bare_parent(rel):
    parts = rel.split("/")
    return any(p in BARE_PARENTS or p.startswith("pod") for p in parts[:-1])


def processes(path):
    """Pids in exactly that cgroup directory (not the ones below it)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return sorted(int(x) for x in f.read().split())
    except (OSError, ValueError):
        return []
