"""kit fleet run for real: Ansible over SSH to "hosts" that are network namespaces on this box.

Each host is a netns the test creates, with a veth whose other end sits on a bridge in a
controller netns (10.203.0.0/24 exists only inside these namespaces: nothing is routed
anywhere, the root namespace never sees the range), and its own sshd (Debian's openssh-server)
listening only on its address, with a host key and a root login key the test generates.
`kit fleet run` itself runs in the controller netns, so Ansible reaches the hosts over the bridge.
A netns shares the box's kernel and file system, so each host scopes tcpretrans to its own
namespace (--netns /proc/self/ns/net, which each host's kit resolves to its own): a real host
would count its whole box. Oracle: each namespace's TcpRetransSegs (nstat).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT
from workloads import retrans

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

NET = "10.203.0"
SSHD = "/usr/sbin/sshd"


def sh(*args, check=True, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


class Fleet:
    """A controller netns with a bridge, and hosts (netns + veth + sshd) on it."""

    def __init__(self, tag):
        self.tag = f"kf{os.getpid() % 100000}{tag}"
        self.ctl = f"{self.tag}-ctl"
        # 0700 and root's, under a folder only root may write (sshd's StrictModes refuses /tmp; kit's trust rules)
        self.dir = tempfile.mkdtemp(prefix="kit-fleet-test-", dir="/run")
        self.namespaces, self.sshd = [], []
        self.hosts = {}   # name -> (netns, address)

    def __enter__(self):
        try:
            self._ns(self.ctl)
            sh("ip", "-n", self.ctl, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.ctl, "addr", "add", f"{NET}.1/24", "dev", "br0")
            sh("ip", "-n", self.ctl, "link", "set", "br0", "up")
            self.key = os.path.join(self.dir, "id_ed25519")
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
            shutil.copy(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation directory
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _ns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def add(self, name, index, sshd=True):
        """Host `name` at NET.index: its netns, its veth onto the bridge, and (unless sshd=False) its sshd."""
        ns, addr = f"{self.tag}-{name}", f"{NET}.{index}"
        self._ns(ns)
        sh("ip", "-n", self.ctl, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.ctl, "link", "set", f"v{index}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[name] = (ns, addr)
        if sshd:
            self._sshd(name, ns, addr)
        return ns

    def _sshd(self, name, ns, addr):
        hostkey = os.path.join(self.dir, f"hostkey-{name}")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey)
        with open(hostkey + ".pub") as f:
            pub = f.read().split()
        with open(os.path.join(self.dir, "known_hosts"), "a") as f:
            f.write(f"{addr} {pub[0]} {pub[1]}\n")
        cfg = os.path.join(self.dir, f"sshd-{name}.conf")
        with open(cfg, "w") as f:
            f.write(f"ListenAddress {addr}:22\nHostKey {hostkey}\nPidFile none\n"
                    f"AuthorizedKeysFile {self.dir}/authorized_keys\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                    "Subsystem sftp internal-sftp\n")
        # `ip netns exec` gives sshd a mount namespace with a fresh /sys, without tracefs: mount it there
        # (it stays in that namespace), as a real host has it mounted (setup.sh), so the guardrail can measure
        p = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", 'mountpoint -q /sys/kernel/tracing || '
                              'mount -t tracefs nodev /sys/kernel/tracing && exec "$@"', "sh",
                              SSHD, "-D", "-e", "-f", cfg],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, f"sshd-{name}.log"), "w"))
        self.sshd.append(p)
        deadline = time.time() + 20
        while f"{addr}:22" not in sh("ip", "netns", "exec", ns, "ss", "-ltn").stdout:
            if p.poll() is not None or time.time() > deadline:
                with open(os.path.join(self.dir, f"sshd-{name}.log")) as f:
                    raise AssertionError(f"sshd for {name} did not listen: {f.read()}")
            time.sleep(0.1)

    def inventory(self, hostvars=None):
        path = os.path.join(self.dir, "hosts.ini")
        with open(path, "w") as f:
            f.write("[fleet]\n")
            for name, (_ns, addr) in self.hosts.items():
                extra = " ".join(f"{k}={v}" for k, v in (hostvars or {}).get(name, {}).items())
                f.write(f"{name} ansible_host={addr} kit_remote_dir={self.dir}/remote-{name} {extra}\n")
            f.write(f"\n[fleet:vars]\nansible_user=root\nansible_ssh_private_key_file={self.key}\n"
                    f"ansible_python_interpreter=/usr/bin/python3\nansible_ssh_timeout=10\n"
                    f"ansible_ssh_common_args='-o UserKnownHostsFile={self.dir}/known_hosts "
                    f"-o StrictHostKeyChecking=yes'\n")
        return path

    def kit(self, *args):
        """`kit ARGS` in the controller netns, without ssh's ControlPersist masters (they would outlive the test)."""
        env = dict(os.environ, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPersist=no",
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.dir, "ansible-local"),
                   ANSIBLE_REMOTE_TEMP=os.path.join(self.dir, "ansible-remote"))
        return subprocess.Popen(["ip", "netns", "exec", self.ctl, sys.executable, "-m", "kit", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def __exit__(self, *exc):
        for p in self.sshd:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in reversed(self.namespaces):   # deleting a netns takes its veths (and the bridge) with it
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def kit_pids(marker):
    """Processes running a kit.pyz under marker (the test's own folder)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in a and a.endswith(b"kit.pyz") for a in cmd) and b"run" in cmd:
            out.append(int(pid))
    return out


def holds_bpf_link(pid):
    """True once kit has attached: it holds a BPF link or perf event fd (its probes)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in ("anon_inode:bpf_link", "anon_inode:[perf_event]"):
                return True
        except OSError:
            continue
    return False


def wait_attached(fleet, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = kit_pids(fleet.dir)
        if len([p for p in pids if holds_bpf_link(p)]) >= n:
            time.sleep(1.0)   # attach is done right after the link fd exists; the meter starts now
            return
        if proc.poll() is not None:
            raise AssertionError(f"kit fleet run ended before attaching: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("the hosts' kit runs did not attach in time")


@pytest.fixture
def fleet():
    with Fleet("a") as f:
        yield f


def test_tcpretrans_across_three_hosts_counts_each_namespace_and_reports_the_unreachable(kernel, no_leftovers,
                                                                                        fleet):
    for i, name in enumerate(("h1", "h2", "h3")):
        fleet.add(name, 11 + i)
    fleet.add("h4", 14, sshd=False)   # on the bridge, nobody listening: unreachable
    inv = fleet.inventory()
    results = os.path.join(fleet.dir, "results")
    ns = {h: fleet.hosts[h][0] for h in ("h1", "h2", "h3")}
    proc = fleet.kit("fleet", "run", "tcpretrans", "--netns", "/proc/self/ns/net", "--for", "40s", "--budget", "50",
                     "--hosts", inv, "--forks", "4", "--results", results, "--json")
    try:
        wait_attached(fleet, 3, proc)
        # the oracle spans the drop episode, inside every host's time box: the hosts' SSH sessions are
        # quiet then (kit prints nothing while it runs), so nothing but the workload retransmits
        before = {h: retrans.retrans_segs(n) for h, n in ns.items()}
        deltas = {}
        workers = [threading.Thread(target=lambda h=h, port=port: deltas.__setitem__(
            h, retrans.provoke(ns[h], port=port)[1])) for h, port in (("h1", 5611), ("h2", 5612))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        after = {h: retrans.retrans_segs(n) for h, n in ns.items()}
        assert proc.poll() is None, "the time box ended before the drop episode did: the oracle would not match"
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    truth = {h: after[h] - before[h] for h in ns}
    assert truth["h1"] >= 3 and truth["h2"] >= 3 and truth["h3"] == 0, (truth, deltas)
    doc = json.loads(out)
    assert proc.returncode == 8, err   # FLEET_PARTIAL: h4 gave no result
    by = {h["host"]: h for h in doc["hosts"]}
    assert sorted(by) == ["h1", "h2", "h3", "h4"]
    assert by["h4"]["status"] == "unreachable" and by["h4"]["reason"], by["h4"]
    for h in ("h1", "h2", "h3"):
        assert by[h]["status"] == "ok" and by[h]["code"] == 0, by[h]
        res = by[h]["result"]
        counted = sum(r["count"] for r in res["rows"])
        assert counted == truth[h], (h, counted, truth, res["rows"])
        assert res["lost_events"] == 0 and res["stopped_by"] == "timeout"
        with open(os.path.join(results, f"{h}.json")) as f:
            assert json.load(f)["host"] == h
    merged = doc["merged"]
    assert merged["totals"]["count"] == sum(truth.values())
    assert {r["host"] for r in merged["rows"]} == {"h1", "h2"}
    assert [f["host"] for f in merged["failed_hosts"]] == ["h4"]
    top = merged["top_hosts"]["count"]
    assert top[0]["value"] == max(truth["h1"], truth["h2"]) and top[-1] == {"host": "h3", "value": 0}
    # kit merge on the saved files gives the same sum
    m = subprocess.run([sys.executable, "-m", "kit", "merge", "--json"] +
                       [os.path.join(results, f"{h}.json") for h in ("h1", "h2", "h3")],
                       cwd=ROOT, capture_output=True, text=True)
    assert m.returncode == 0, m.stderr
    assert json.loads(m.stdout)["totals"]["count"] == sum(truth.values())


def copy_task_outcomes(log):
    """{host: ok|changed} of the copy task, from ansible-playbook's log."""
    section = log.split("TASK [kit.pyz, copied only when absent or stale", 1)[1].split("TASK [", 1)[0]
    return {line.split("[", 1)[1].split("]", 1)[0]: line.split(":", 1)[0]
            for line in section.splitlines() if line.startswith(("ok:", "changed:"))}


def test_a_host_whose_own_budget_refuses_is_reported_with_the_guardrails_reason(kernel, no_leftovers, fleet):
    for i, name in enumerate(("h1", "h2", "h3")):
        fleet.add(name, 21 + i)
    # h3's own guardrail allows a millionth of a percent: sched_switch on this box costs more to filter
    inv = fleet.inventory({"h3": {"kit_budget": "0.000001"}})
    # kit.pyz goes where it is absent (h3) or stale (h2), and not where it is current (h1)
    from kit.fleet import pack
    pyz = os.path.join(fleet.dir, "kit.pyz")
    pack.build(pyz)
    for h, content in (("h1", open(pyz, "rb").read()), ("h2", b"an older kit.pyz")):
        os.makedirs(os.path.join(fleet.dir, f"remote-{h}"), mode=0o700)
        with open(os.path.join(fleet.dir, f"remote-{h}", "kit.pyz"), "wb") as f:
            f.write(content)
        os.chmod(os.path.join(fleet.dir, f"remote-{h}", "kit.pyz"), 0o600)   # as the playbook leaves it
    results = os.path.join(fleet.dir, "results")
    proc = fleet.kit("fleet", "run", "offcpu", "--comm", "kit-nosuch-svc", "--for", "3s", "--budget", "50",
                     "--hosts", inv, "--pyz", pyz, "--results", results, "--json")
    out, err = proc.communicate(timeout=300)
    with open(os.path.join(results, "ansible.log")) as f:
        assert copy_task_outcomes(f.read()) == {"h1": "ok", "h2": "changed", "h3": "changed"}
    doc = json.loads(out)
    by = {h["host"]: h for h in doc["hosts"]}
    assert proc.returncode == 8, (err, json.dumps(by["h3"])[:3000])
    assert by["h3"]["status"] == "refused" and by["h3"]["code"] == 4, by["h3"]
    assert "budget" in by["h3"]["reason"] and "budget 1e-06%" in by["h3"]["reason"], by["h3"]
    assert "host h3: refused (exit 4)" in err
    for h in ("h1", "h2"):
        assert by[h]["status"] == "ok" and by[h]["result"]["recipe"] == "offcpu", by[h]
    assert [f["host"] for f in doc["merged"]["failed_hosts"]] == ["h3"]
