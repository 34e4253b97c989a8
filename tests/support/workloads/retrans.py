"""Provokes TCP retransmits on loopback inside a network namespace it creates.

A client sends to a server on 127.0.0.1 (or ::1) in the namespace; while an nftables
rule drops the client's segments on the *input* hook (an output drop fails
locally and is never retransmitted), the client's unacknowledged data is
retransmitted by the kernel's timer. The namespace's TcpRetransSegs counter
is the oracle. Usable as a library (tests) and a script (the demo).
"""

import contextlib
import functools
import os
import subprocess
import sys
import time
import warnings

CHILD = r"""
import socket, sys, time
port, seconds, host = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(fam); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port)); srv.listen(1)
cli = socket.create_connection((host, port)); conn, _ = srv.accept()
cli.setblocking(False)
print(cli.getsockname()[1], flush=True)
sys.stdin.readline()          # parent says: drop rule is in
end = time.time() + seconds
while time.time() < end:
    try:
        cli.send(b"x" * 100)
    except BlockingIOError:
        pass
    time.sleep(0.05)
print("sent", flush=True)
sys.stdin.readline()          # parent says: drop rule is gone
conn.setblocking(False)
deadline = time.time() + 10   # let the retransmit timer deliver and the ACKs come back
while time.time() < deadline:
    try:
        conn.recv(65536)
    except BlockingIOError:
        pass
    import struct
    info = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    unacked = struct.unpack_from("I", info, 24)[0]  # tcpi_unacked
    if unacked == 0:
        break
    time.sleep(0.05)
print("done", flush=True)
sys.stdin.readline()          # parent says: you may close the sockets
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def netns(name):
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


EPISODE = {}  # the last provoke's moved TCP counters, for a disagreement's message


def tcp_counters(ns):
    """The namespace's Tcp* and TcpExt* counters (nstat -az: absolute values, nstat's history untouched)."""
    out = sh("ip", "netns", "exec", ns, "nstat", "-az").stdout
    return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines())
            if len(f) >= 2 and f[0].startswith("Tcp") and f[1].isdigit()}


class Disagreement(AssertionError):
    """kit's count and TcpRetransSegs disagree over one episode."""


def retake_on_disagreement(test):
    """Runs a test again, once, when its episode's counts disagree, and says so in the run's warnings.
    CI has seen kit one retransmit short a few times in hundreds of episodes, with the kernel's counters
    those of every passing run and no loss kit could count; never reproduced at will here (once in about
    60 episodes). Two disagreements in a row still fail: kit missing retransmits as a rule is caught."""
    @functools.wraps(test)
    def again(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except Disagreement as e:
            warnings.warn(f"{test.__name__}: kit and TcpRetransSegs disagreed, taken again: {e}")
            return test(*args, **kwargs)
    return again


def counts_agree(rows, delta, lost=None):
    """kit's rows against the namespace's TcpRetransSegs over the episode. The kernel adds an attempt's
    segments to TcpRetransSegs before it hands the segment to IP, so an attempt that fails there is in the
    delta too, and in kit's `failed` (on rungs that see the result; attempts refused earlier, as EBUSY,
    are in `failed` but not in the delta): sent <= delta <= sent + failed, if each retransmit here is one
    segment (100-byte writes under loopback's 64 KB MSS; see retake_on_disagreement: the message's counters,
    kit's losses and the kernel's skipped runs among them, are there to tell why)."""
    sent = sum(r["count"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    if not sent <= delta <= sent + failed:
        raise Disagreement(f"kit sent {sent} failed {failed}, TcpRetransSegs +{delta}: {rows}; "
                           f"the episode's TCP counters: {EPISODE}; kit's losses: {lost}")


def retrans_segs(ns):
    c = tcp_counters(ns)
    if "TcpRetransSegs" not in c:
        raise RuntimeError(f"no TcpRetransSegs in the namespace's nstat output: {c}")
    return c["TcpRetransSegs"]


def provoke(ns, port=5599, drop_seconds=2.5, hold=None, host="127.0.0.1"):
    """Runs the client/server in ns, drops for drop_seconds, recovers.
    hold(child_pid), if given, runs while the sockets are still open.
    Returns (client port, TcpRetransSegs delta over the whole episode)."""
    before = tcp_counters(ns)
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, str(port), str(drop_seconds), host],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        cport = int(child.stdout.readline())
        sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "kit_t")
        sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "kit_t", "in",
           "{ type filter hook input priority 0; }")
        sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "kit_t", "in", "tcp", "dport", str(port), "drop")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "sent"
        sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "kit_t")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        after = tcp_counters(ns)
        EPISODE.clear()
        EPISODE.update({k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)})
        delta = EPISODE.get("TcpRetransSegs", 0)
        if hold:
            hold(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return cport, delta


if __name__ == "__main__":
    name = f"kit-demo-{os.getpid()}"
    with netns(name):
        print(f"netns {name}: provoking retransmits ...", flush=True)
        cport, delta = provoke(name, drop_seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 2.5)
        print(f"client port {cport}: kernel counted {delta} retransmitted segments (TcpRetransSegs)")
        time.sleep(0.5)
