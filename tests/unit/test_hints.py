"""Next-step hints as pure logic: rows in, hints out, against a fake system (no kernel, no root).

The kernel tests (test_hints_kernel.py) run the same rules on real runs and every suggested
command with --dry-run; here each rule is pinned on rows shaped like the recipes' own."""

import os
import shlex

import pytest

from kit import catalog
from kit.output import hints
from kit.cli import parse_values, recipe_parser

ME = os.getpid()  # a live pid, so the commands' own --pid parses as it would on the box
# kit itself is never a next step (suggest.usable): these rules run as if kit were another process
STEPS = hints.Steps(catalog.load(), me=0)

K_FUTEX = ["__schedule", "schedule", "futex_do_wait", "__futex_wait", "futex_wait", "do_futex", "__x64_sys_futex"]
K_UNIX = ["__schedule", "schedule", "schedule_timeout", "unix_stream_read_generic", "unix_stream_recvmsg",
          "sock_recvmsg", "sock_read_iter", "vfs_read"]
K_SLEEP = ["__schedule", "schedule", "do_nanosleep", "hrtimer_nanosleep", "common_nsleep",
           "__x64_sys_clock_nanosleep"]
K_DISK = ["__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "filemap_fault"]
K_PREEMPTED_IN_PIPE = ["__schedule", "preempt_schedule_irq", "irqentry_exit", "asm_sysvec_apic_timer_interrupt",
                       "copy_page_to_iter", "anon_pipe_read", "vfs_read"]


class FakeSystem:
    def __init__(self, alive=(ME,), names=None, threads=None, files=None, defines=(), imports=None, netns=None,
                 own_mnt=True, exe=None):
        self._exe = exe or {}
        self._alive = set(alive)
        self._names = names or {}
        self._threads = threads or {}
        self._files = files or {}
        self._defines = set(defines)
        self._imports = imports or {}
        self._netns = netns or {}
        self._own_mnt = own_mnt

    def alive(self, pid):
        return pid in self._alive

    def name(self, pid):
        return self._names.get(pid)

    def threads(self, pid):
        return self._threads.get(pid, 1)

    def defining_file(self, pid, name):
        return self._files.get(pid, {}).get(name)

    def defines(self, open_path, name):
        return (open_path, name) in self._defines

    def imports(self, pid, names):
        return set(names) & self._imports.get(pid, set())

    def netns_name(self, inode):
        return self._netns.get(inode)

    def own_mount_ns(self, pid):
        return self._own_mnt

    def exe(self, pid):
        return self._exe.get(pid)


def row(tid, us, kstack, ustack, mods, comm="pay-svc", pid=ME):
    return {"comm": comm, "pid": pid, "tid": tid, "total_us": us, "count": 10, "kernel_stack": kstack,
            "user_stack": ustack, "user_modules": mods, "recovered": 0, "in_progress": 0}


def pay_svc_rows(pid=ME):
    """The bundled demo's shape (demo/pay_svc.c): idle "database" threads on their sockets, workers on
    the ledger lock, the database socket, the rate limiter; the main thread in sleep()."""
    rows = []
    for i in range(4):
        rows += [
            row(100 + i, 3_300_000, K_UNIX, ["read", "database", "[libc.so.6]"], ["libc.so.6", "pay-svc", "libc.so.6"],
                comm="pay-db", pid=pid),
            row(100 + i, 1_600_000, K_SLEEP, ["clock_nanosleep", "nanosleep", "database", "[libc.so.6]"],
                ["libc.so.6", "libc.so.6", "pay-svc", "libc.so.6"], comm="pay-db", pid=pid),
            row(200 + i, 1_650_000, K_UNIX, ["read", "query_db", "handle_request", "worker", "[libc.so.6]"],
                ["libc.so.6", "pay-svc", "pay-svc", "pay-svc", "libc.so.6"], pid=pid),
            row(200 + i, 1_400_000, K_FUTEX, ["[libc.so.6]", "pthread_mutex_lock", "ledger_append", "charge_card",
                                              "handle_request", "worker", "[libc.so.6]"],
                ["libc.so.6", "libc.so.6", "pay-svc", "pay-svc", "pay-svc", "pay-svc", "libc.so.6"], pid=pid),
            row(200 + i, 1_200_000, K_SLEEP, ["clock_nanosleep", "nanosleep", "ledger_append", "charge_card"],
                ["libc.so.6", "libc.so.6", "pay-svc", "pay-svc"], pid=pid),
            row(200 + i, 600_000, K_SLEEP, ["clock_nanosleep", "nanosleep", "usleep", "rate_limit"],
                ["libc.so.6", "libc.so.6", "libc.so.6", "pay-svc"], pid=pid),
        ]
    rows.append(row(pid, 4_200_000, K_SLEEP, ["clock_nanosleep", "nanosleep", "sleep", "main"],
                    ["libc.so.6", "libc.so.6", "libc.so.6", "pay-svc"], pid=pid))
    return rows


def compute(res, system):
    return hints.compute(res, system, STEPS)


def offcpu(rows, **scope):
    return {"recipe": "offcpu", "rows": rows, "params": dict(scope), "scope": dict(scope)}


def assert_valid_kit_command(command):
    """The command parses with kit's own parser, every value through its type, as `kit run` would."""
    argv = shlex.split(command)
    assert argv[:2] == ["kit", "run"], command
    recipe = catalog.load()[argv[2]]
    ns = recipe_parser(recipe, "run").parse_args(argv[3:])
    parse_values(recipe, ns)


# --- offcpu -----------------------------------------------------------------------------------

def test_first_hint_on_the_demo_names_the_ledger_lock_and_its_process():
    sysm = FakeSystem(names={ME: "pay-svc"})
    res = offcpu(pay_svc_rows(), comm="pay-svc")
    got = compute(res, sysm)
    first = got[0]
    assert "ledger_append" in first["text"] and f"pid {ME}" in first["text"] and "pthread_mutex_lock" in first["text"]
    assert first["command"] == f"kit run lockhold --pid {ME} --stacks"  # ledger_append has no unlock partner
    assert_valid_kit_command(first["command"])
    # what dominates is named, largest first, and the lock's true share is not inflated
    assert [w["class"] for w in res["waits"]] == ["peer", "sleep", "lock"]
    assert abs(sum(w["share"] for w in res["waits"]) - 1) < 0.01
    assert "futex/lock is 13%" in first["text"]
    assert hints.waits_line(res).startswith("off-CPU time by wait: peer I/O 4")


def test_a_wrapper_with_an_unlock_partner_in_the_binary_is_the_lock_lockhold_gets():
    exe = ("/srv/lkw", True, "/proc/1/root/srv/lkw")
    rows = [row(7, 900_000, K_FUTEX, ["[libc.so.6]", "pthread_mutex_lock", "pool_lock", "hold", "slow_path"],
                ["libc.so.6", "libc.so.6", "lkw", "lkw", "lkw"], comm="lkw")]
    sysm = FakeSystem(names={ME: "lkw"}, files={ME: {"pool_lock": exe}}, defines={(exe[2], "pool_unlock")})
    got = compute(offcpu(rows, pid=ME), sysm)
    assert got[0]["command"] == f"kit run lockhold --pid {ME} --lock pool_lock --unlock pool_unlock"
    assert "pool_lock and pool_unlock in lkw" in got[0]["text"]
    assert_valid_kit_command(got[0]["command"])


def a_shared_library():
    """A shared library this process maps (not libc): a real ELF file, as --binary's type requires."""
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if ".so" in line.split()[-1] and "/" in line}
    return sorted(p for p in libs if "libc.so" not in p and os.path.isfile(p))[0]


def test_a_wrapper_in_a_shared_library_gets_its_binary_and_an_outer_wrapper_is_found():
    path = a_shared_library()
    lib = (path, False, path)
    rows = [row(7, 900_000, K_FUTEX, ["__lll_lock_wait", "pthread_mutex_lock", "mutex_enter_slow", "PoolLock", "run"],
                ["libc.so.6", "libc.so.6", os.path.basename(path), os.path.basename(path), "app"])]
    sysm = FakeSystem(files={ME: {"mutex_enter_slow": lib, "PoolLock": lib}}, defines={(lib[2], "PoolUnlock")})
    cmd = compute(offcpu(rows, pid=ME), sysm)[0]["command"]
    assert cmd == f"kit run lockhold --pid {ME} --binary {os.path.realpath(path)} --lock PoolLock --unlock PoolUnlock"
    assert_valid_kit_command(cmd)


def test_a_library_that_is_gone_gets_the_hint_without_a_command():
    """--binary's type opens the file: a path that no longer exists makes no command, as in a refusal."""
    lib = ("/nonexistent/libpool.so.1", False, "/nonexistent/libpool.so.1")
    rows = [row(7, 900_000, K_FUTEX, ["__lll_lock_wait", "pthread_mutex_lock", "PoolLock", "run"],
                ["libc.so.6", "libc.so.6", "libpool.so.1", "app"])]
    sysm = FakeSystem(files={ME: {"PoolLock": lib}}, defines={(lib[2], "PoolUnlock")})
    got = compute(offcpu(rows, pid=ME), sysm)[0]
    assert "PoolLock and PoolUnlock" in got["text"] and got["command"] is None


def test_kit_itself_is_never_a_next_step():
    """The rows may name kit's own process (a --comm it shares): a --pid of it ends with this run."""
    got = hints.compute(offcpu(pay_svc_rows(), comm="pay-svc"), FakeSystem(), hints.Steps(catalog.load(), me=ME))
    assert got and all(h["command"] is None or f"--pid {ME}" not in h["command"] for h in got)


def test_a_recipe_the_catalog_lacks_gives_no_command():
    only_offcpu = {"offcpu": catalog.load()["offcpu"]}
    got = hints.compute(offcpu(pay_svc_rows(), comm="pay-svc"), FakeSystem(), hints.Steps(only_offcpu, me=0))
    assert got[0]["text"].startswith("futex/lock") and got[0]["command"] is None  # lockhold is not in it


def test_an_rwlock_wait_gets_the_rwlock_pair():
    rows = [row(7, 900_000, K_FUTEX, ["[libc.so.6]", "pthread_rwlock_wrlock", "table_update"],
                ["libc.so.6", "libc.so.6", "app"])]
    cmd = compute(offcpu(rows, pid=ME), FakeSystem())[0]["command"]
    assert cmd == (f"kit run lockhold --pid {ME} --lock pthread_rwlock_wrlock --unlock pthread_rwlock_unlock "
                   "--stacks")
    assert_valid_kit_command(cmd)


@pytest.mark.parametrize("fn, want", [
    ("pool_lock", ["pool_unlock"]), ("LockPool", ["UnlockPool"]), ("POOL_LOCK", ["POOL_UNLOCK"]),
    ("pool_acquire", ["pool_release"]), ("cs_enter", ["cs_leave", "cs_exit"]), ("pool_unlock", []),
    ("_ZN4Pool4lockEv", ["_ZN4Pool6unlockEv"]), ("_ZN4Pool9pool_lockEv", ["_ZN4Pool11pool_unlockEv"]),
    ("ledger_append", []),
])
def test_unlock_names(fn, want):
    assert hints.unlock_names(fn) == want


def test_a_condition_wait_is_called_idle_and_comes_after_real_waits():
    rows = [row(7, 5_000_000, K_FUTEX, ["[libc.so.6]", "pthread_cond_wait", "queue_pop", "worker"],
                ["libc.so.6", "libc.so.6", "app", "app"]),
            row(8, 1_000_000, K_DISK, ["[libc.so.6]", "read_block", "main"], ["libc.so.6", "app", "app"])]
    got = compute(offcpu(rows, pid=ME), FakeSystem())
    assert "for the disk (io_schedule) in read_block" in got[0]["text"]
    assert got[0]["command"] == f"kit run syscalls --pid {ME}"
    assert "condition variable in queue_pop" in got[1]["text"] and got[1]["command"] is None


@pytest.mark.parametrize("kstack, cls, frame", [
    (K_FUTEX, "lock", "futex_do_wait"), (K_UNIX, "peer", "unix_stream_read_generic"),
    (K_SLEEP, "sleep", "do_nanosleep"), (K_DISK, "disk", "io_schedule"),
    (K_PREEMPTED_IN_PIPE, "runqueue", "preempt_schedule_irq"),
    (["__schedule", "schedule", "schedule_hrtimeout_range", "do_epoll_wait"], "peer", "do_epoll_wait"),
    (["__schedule", "schedule", "do_wait", "kernel_wait4"], "other", "do_wait"),
    (["[missing kernel stack: EFAULT]"], "unknown", None),
])
def test_a_stack_is_classed_by_its_innermost_known_frame(kstack, cls, frame):
    assert hints.classify(kstack) == (cls, frame)


def test_a_run_that_saw_nothing_has_no_hints_and_no_waits_line():
    res = offcpu([], comm="nosuch")
    assert compute(res, FakeSystem()) == []
    assert "waits" not in res and hints.text({**res, "hints": []}) == ""


def test_a_class_under_the_floor_gets_no_hint():
    rows = [row(7, 980_000, K_UNIX, ["read", "serve"], ["libc.so.6", "app"]),
            row(8, 20_000, K_FUTEX, ["[libc.so.6]", "pthread_mutex_lock", "tiny"], ["libc.so.6", "libc.so.6", "app"])]
    got = compute(offcpu(rows, pid=ME), FakeSystem())
    assert len(got) == 1 and "peer I/O" in got[0]["text"] and "Unix socket" in got[0]["text"]


def test_no_command_for_a_process_that_has_exited():
    got = compute(offcpu(pay_svc_rows(pid=424242)), FakeSystem(alive=()))
    assert got and all(h["command"] is None for h in got)
    assert "424242 has exited" in got[0]["text"]


def test_hint_text_from_a_hostile_comm_cannot_drive_the_terminal():
    rows = [row(7, 1_000_000, K_UNIX, ["read", "serve"], ["libc.so.6", "app"], comm="evil\x1b[2J")]
    res = offcpu(rows, pid=ME)
    res["hints"] = compute(res, FakeSystem(alive=()))
    assert "\x1b" not in hints.text(res)


# --- tcpretrans -------------------------------------------------------------------------------

def flow(sport, daddr, count, pid=ME, netns=4026531840, **kw):
    return {"saddr": "10.0.0.2", "sport": sport, "daddr": daddr, "dport": 5432, "family": 4, "state": "ESTABLISHED",
            "netns": netns, "count": count, "failed": 0, "pid": pid, "comm": "pay-svc", **kw}


def test_a_retransmitting_flow_leads_to_its_owner_and_its_route():
    res = {"recipe": "tcpretrans", "rows": [flow(40000, "10.0.0.9", 12)], "scope": {}, "params": {}}
    got = compute(res, FakeSystem(netns={4026531840: ""}))
    assert [h["command"] for h in got] == [f"kit run offcpu --pid {ME}", "ip route get 10.0.0.9"]
    assert "owner is pay-svc" in got[0]["text"] and "12 times" in got[0]["text"]
    assert_valid_kit_command(got[0]["command"])


def test_many_flows_to_one_peer_point_at_the_peer_and_a_netns_gone_gives_no_route_command():
    rows = [flow(40000, "10.0.0.9", 5, netns=77), flow(40001, "10.0.0.9", 4, netns=77, pid=None),
            flow(40002, "10.0.0.7", 1, netns=77)]
    got = compute({"recipe": "tcpretrans", "rows": rows, "scope": {}, "params": {}},
                        FakeSystem(netns={77: "blue"}))
    assert got[0]["command"] == "kit run tcpretrans --addr 10.0.0.9 --for 30s" and "2 flows" in got[0]["text"]
    # the namespace's name is checked as --netns checks it: one gone since (no /run/netns/blue) gives no command
    assert "check the path to 10.0.0.9" in got[-1]["text"] and got[-1]["command"] is None


def test_a_flow_whose_socket_closed_gets_only_its_route():
    res = {"recipe": "tcpretrans", "rows": [flow(40000, "10.0.0.9", 3, pid=None, comm=None)], "scope": {}}
    assert [h["command"] for h in compute(res, FakeSystem(netns={4026531840: ""}))] == ["ip route get 10.0.0.9"]


# --- getaddrinfo ------------------------------------------------------------------------------

def lookup(host, count, failed=0, max_us=800.0, avg_us=500.0):
    return {"pid": ME, "comm": "pay-svc", "function": "getaddrinfo", "host": host, "count": count, "failed": failed,
            "total_us": avg_us * count, "avg_us": avg_us, "max_us": max_us}


def test_a_slow_lookup_leads_to_its_caller_and_the_locks_it_may_hold():
    res = {"recipe": "getaddrinfo", "rows": [lookup("db.internal", 5, max_us=2_500_000, avg_us=600_000),
                                            lookup("localhost", 50)]}
    got = compute(res, FakeSystem(threads={ME: 8}))
    assert "db.internal" in got[0]["text"] and "2.5 s" in got[0]["text"]
    assert got[0]["command"] == f"kit run offcpu --pid {ME}"
    assert got[1]["command"] == f"kit run lockhold --pid {ME} --stacks"
    for h in got:
        assert_valid_kit_command(h["command"])


def test_a_failing_lookup_is_reproduced_with_getent_in_the_process_s_own_mounts():
    res = {"recipe": "getaddrinfo", "rows": [lookup("kit-no-such.invalid", 4, failed=4)]}
    assert compute(res, FakeSystem())[0]["command"] == "getent ahosts kit-no-such.invalid"
    got = compute(res, FakeSystem(own_mnt=False))
    assert got[0]["command"] == f"nsenter -t {ME} -m getent ahosts kit-no-such.invalid"
    assert "4 of 4 lookups" in got[0]["text"]


def test_a_host_name_that_is_not_one_never_reaches_a_command():
    res = {"recipe": "getaddrinfo", "rows": [lookup("x; rm -rf /", 1, failed=1)]}
    got = compute(res, FakeSystem())
    assert got and got[0]["command"] is None


def test_fast_successful_lookups_get_no_hint():
    assert compute({"recipe": "getaddrinfo", "rows": [lookup("localhost", 9)]}, FakeSystem()) == []


# --- lockhold ---------------------------------------------------------------------------------

def holds(max_us, what="hold"):
    return {"what": what, "pid": ME, "comm": "lkw", "count": 300, "total_us": 300 * 50.0, "avg_us": 50.0,
            "max_us": max_us}


def test_long_holds_ask_for_holder_stacks_with_the_same_lock_and_a_resolver_call_for_getaddrinfo():
    res = {"recipe": "lockhold", "rows": [holds(17_000), holds(90_000, "wait")],
           "params": {"lock": "pool_lock", "unlock": "pool_unlock", "match": "lock"}}
    got = compute(res, FakeSystem(imports={ME: {"getaddrinfo"}}))
    assert got[0]["command"] == f"kit run lockhold --pid {ME} --lock pool_lock --unlock pool_unlock --stacks"
    assert "17.0 ms" in got[0]["text"]
    assert got[1]["command"] == f"kit run getaddrinfo --pid {ME}" and "getaddrinfo" in got[1]["text"]
    for h in got:
        assert_valid_kit_command(h["command"])


def test_holds_already_with_stacks_or_short_get_no_stacks_hint():
    with_stacks = {"recipe": "lockhold", "rows": [holds(17_000)], "params": {"stacks": True}}
    assert compute(with_stacks, FakeSystem()) == []
    short = {"recipe": "lockhold", "rows": [holds(40.0)], "params": {}}
    assert compute(short, FakeSystem(imports={ME: {"getaddrinfo"}})) == []


# --- syscalls ---------------------------------------------------------------------------------

def call(name, count, total_ms, errors=0, max_us=10.0, pid=ME):
    return {"pid": pid, "comm": "w", "nr": 0, "syscall": name, "count": count, "errors": errors,
            "total_ms": total_ms, "avg_us": total_ms * 1e3 / count, "max_us": max_us}


def test_a_dominant_blocking_syscall_leads_to_offcpu_and_a_failing_one_to_strace():
    res = {"recipe": "syscalls", "rows": [call("clock_nanosleep", 30, 62.0, max_us=2100),
                                         call("getppid", 20000, 3.0), call("close", 20000, 2.0, errors=20000)]}
    got = compute(res, FakeSystem())
    assert got[0]["command"] == f"kit run offcpu --pid {ME}" and "clock_nanosleep" in got[0]["text"]
    assert got[1]["command"] == f"timeout 5 strace -f -e trace=close -p {ME}"
    assert_valid_kit_command(got[0]["command"])


def test_a_dominant_syscall_that_does_not_block_and_rare_errors_get_no_hint():
    res = {"recipe": "syscalls", "rows": [call("getppid", 20000, 30.0), call("openat", 1000, 1.0, errors=3)]}
    assert compute(res, FakeSystem()) == []


# --- biolatency -------------------------------------------------------------------------------

def io(op, count, total_ms, max_us, pid=ME, comm="dio", disk="loop3", errors=0):
    return {"disk": disk, "op": op, "pid": pid, "comm": comm, "count": count, "bytes": 8192 * count,
            "errors": errors, "total_ms": total_ms, "avg_us": total_ms * 1000 / count, "max_us": max_us}


def test_slow_requests_lead_to_the_issuer_s_waits_and_its_files():
    res = {"recipe": "biolatency", "rows": [io("read", 40, 400.0, 30_000), io("write", 10, 5.0, 900),
                                            io("read", 2, 10.0, 6000, pid=0, comm="kworker/u4:1")]}
    got = compute(res, FakeSystem())
    assert "reads to loop3: 42 requests, 99% of the device time (avg 9.8 ms, max 30.0 ms), slow" in got[0]["text"]
    assert f"dio (pid {ME}) issued 40 of them (98% of their time)" in got[0]["text"]
    assert [h["command"] for h in got] == [f"kit run offcpu --pid {ME}", f"kit run opensnoop --pid {ME}"]
    for h in got:
        assert_valid_kit_command(h["command"])


def test_fast_requests_say_the_disk_is_not_what_is_slow():
    got = compute({"recipe": "biolatency", "rows": [io("write", 120, 12.0, 800), io("read", 80, 6.0, 300)]},
                  FakeSystem())
    assert len(got) == 1 and "the device answers fast, so the disk is not what is slow" in got[0]["text"]
    assert "writes to loop3" in got[0]["text"] and got[0]["command"] == f"kit run offcpu --pid {ME}"


def test_kernel_thread_io_and_failed_requests_get_no_kit_command():
    rows = [io("write", 50, 600.0, 90_000, pid=0, comm="kworker/u4:2"), io("read", 5, 1.0, 300, errors=2)]
    got = compute({"recipe": "biolatency", "rows": rows}, FakeSystem())
    assert "2 of 5 read requests to loop3 failed" in got[0]["text"] and got[0]["command"] == "dmesg --level=err,warn"
    assert "issued by kernel threads" in got[1]["text"] and got[1]["command"] is None


# --- drops -------------------------------------------------------------------------------------

def drop(reason, proto, dport, count, netns=77, sport=40000, location="nft_do_chain"):
    return {"reason": reason, "location": location, "proto": proto, "saddr": "127.0.0.1", "sport": sport,
            "daddr": "127.0.0.1", "dport": dport, "netns": netns, "count": count}


def test_a_firewall_drop_names_the_ruleset_where_it_is_and_a_tcp_flow_gets_tcpretrans():
    own = os.stat("/proc/self/ns/net").st_ino
    rows = [drop("NETFILTER_DROP", "tcp", 5432, 30, netns=own), drop("NO_SOCKET", "udp", 53, 2, netns=own)]
    got = compute({"recipe": "drops", "rows": rows, "scope": {}}, FakeSystem(netns={own: ""}))
    assert got[0]["text"].startswith("NETFILTER_DROP is 30 of 32 drops, most of them tcp 127.0.0.1:40000 -> "
                                     "127.0.0.1:5432 (30, in nft_do_chain): a firewall rule")
    assert [h["command"] for h in got] == ["nft list ruleset", "kit run tcpretrans --port 5432 --addr 127.0.0.1"]
    assert_valid_kit_command(got[1]["command"])


def test_drops_in_a_namespace_kit_cannot_name_get_text_only():
    got = compute({"recipe": "drops", "rows": [drop("NETFILTER_DROP", "tcp", 5432, 30)], "scope": {}},
                  FakeSystem(netns={}))
    assert got and all(h["command"] is None for h in got)


def test_no_socket_on_tcp_asks_who_connects_and_on_udp_what_listens():
    own = os.stat("/proc/self/ns/net").st_ino
    got = compute({"recipe": "drops", "rows": [drop("NO_SOCKET", "tcp", 7777, 9, netns=own)], "scope": {}},
                  FakeSystem(netns={own: ""}))
    assert got[0]["command"] == "kit run tcplife --port 7777" and "nothing listens on tcp port 7777" in got[0]["text"]
    got = compute({"recipe": "drops", "rows": [drop("NO_SOCKET", "udp", 5353, 9, netns=own)], "scope": {}},
                  FakeSystem(netns={own: ""}))
    assert [h["command"] for h in got] == ["ss -lnup"]


# --- tcplife -----------------------------------------------------------------------------------

def conn(sport, dport=5432, duration_ms=40.0, connect_ms=0.1, established=True, pid=ME, state="closed"):
    return {"pid": pid, "comm": "client", "side": "client", "saddr": "127.0.0.1", "sport": sport,
            "daddr": "127.0.0.1", "dport": dport, "family": 4, "netns": 77, "state": state,
            "established": established, "duration_ms": duration_ms, "connect_ms": connect_ms if established else None,
            "rx_bytes": 10, "tx_bytes": 10}


def tcplife(rows):
    return {"recipe": "tcplife", "rows": rows, "scope": {}, "params": {}}


def test_refused_connects_ask_what_listens_and_churn_asks_for_name_lookups():
    own = os.stat("/proc/self/ns/net").st_ino
    rows = [dict(conn(40000 + i, duration_ms=30.0 + 90 * (i % 2)), netns=own) for i in range(6)]
    rows += [dict(conn(41000 + i, dport=6000, duration_ms=0.2, established=False), netns=own) for i in range(3)]
    got = compute(tcplife(rows), FakeSystem(netns={own: ""}))
    assert "3 of 3 connects by client (pid %d) to 127.0.0.1:6000 failed within 200 us, so they were reset" % ME \
        in got[0]["text"]
    assert got[0]["command"] == "ss -ltn 'sport = :6000'"
    assert "opened 6 connections to 127.0.0.1:5432 that lived a median 120 ms" in got[1]["text"]
    assert got[1]["command"] == f"kit run getaddrinfo --pid {ME}"
    assert len(got) == 2


def test_slow_connects_ask_for_retransmits_on_that_remote_in_its_namespace():
    rows = [conn(40000, connect_ms=1003.2, duration_ms=1100), conn(40001), conn(40002, connect_ms=0.2)]
    got = compute(tcplife(rows), FakeSystem(netns={}))  # 77 unnamed, its owner alive: --netns PID
    assert "1 of 3 connections to 127.0.0.1:5432 took over 200 ms to establish (up to 1003 ms)" in got[0]["text"]
    assert got[0]["command"] == f"kit run tcpretrans --port 5432 --addr 127.0.0.1 --netns {ME}"
    assert_valid_kit_command(got[0]["command"])
    assert len(got) == 1  # three connections are not churn


def test_syns_that_time_out_ask_for_retransmits_and_servers_are_not_clients():
    rows = [conn(40000, established=False, duration_ms=3100.0), dict(conn(5432, dport=40000), side="server")]
    got = compute(tcplife(rows), FakeSystem(netns={}))
    assert "failed after up to 3.1 s, so their SYNs went unanswered" in got[0]["text"]
    assert got[0]["command"].startswith("kit run tcpretrans --port 5432 --addr 127.0.0.1") and len(got) == 1


# --- opensnoop ---------------------------------------------------------------------------------

def opened(path, count, error="", pid=ME, comm="app"):
    return {"pid": pid, "comm": comm, "path": path, "error": error, "count": count, "cut": 0}


def test_failing_opens_name_the_process_its_binary_and_the_errno_s_next_step():
    rows = [opened("/etc/app.conf", 7), opened("/etc/app.d/extra.conf", 5, "ENOENT"),
            opened("/srv/secret", 3, "EACCES")]
    got = compute({"recipe": "opensnoop", "rows": rows}, FakeSystem(exe={ME: "/usr/bin/app"}))
    assert got[0]["text"].startswith(f"app (pid {ME}, /usr/bin/app) failed 5 of 15 opens with ENOENT, all of "
                                     "them /etc/app.d/extra.conf")
    assert got[0]["command"] == (f"timeout 5 strace -f -k -e trace=open,openat,openat2 -e status=failed -p {ME}")
    assert "failed 3 of 15 opens with EACCES" in got[1]["text"] and got[1]["command"] == "namei -l /srv/secret"


def test_one_name_missed_in_many_directories_is_a_search_path():
    rows = [opened(f"/opt/lib{i}/libfoo.so", 4, "ENOENT") for i in range(5)] + [opened("/opt/lib9/libfoo.so", 4)]
    got = compute({"recipe": "opensnoop", "rows": rows}, FakeSystem())
    assert "failed 20 of 24 opens with ENOENT, looking for libfoo.so in 5 directories: a search path" in got[0]["text"]


def test_rare_failures_and_cut_or_relative_paths_get_no_path_command():
    assert compute({"recipe": "opensnoop", "rows": [opened("/a", 50), opened("/b", 2, "ENOENT")]}, FakeSystem()) == []
    rows = [opened("rel/secret", 4, "EACCES"), opened("/" + "d" * 255 + "...", 4, "EPERM")]
    got = compute({"recipe": "opensnoop", "rows": rows}, FakeSystem())
    assert [h["command"] for h in got] == [None, None]


def test_kit_s_own_failing_opens_are_not_a_next_step():
    """An unscoped opensnoop sees kit reading /proc of processes that went: not the box's problem."""
    rows = [opened(f"/proc/{n}/stat", 1, "ENOENT", pid=4242, comm="kit") for n in range(20)]
    assert hints.compute({"recipe": "opensnoop", "rows": rows}, FakeSystem(), hints.Steps(catalog.load(), me=4242)) == []


def test_the_catalog_is_loaded_only_when_a_step_needs_it():
    loads = []
    steps = hints.Steps(lambda: loads.append(1) or catalog.load(), me=0)
    assert hints.compute({"recipe": "fillup", "rows": [{"n": 1}]}, FakeSystem(), steps) == [] and loads == []
    hints.compute(offcpu(pay_svc_rows(), comm="pay-svc"), FakeSystem(), steps)
    hints.compute(offcpu(pay_svc_rows(), comm="pay-svc"), FakeSystem(), steps)
    assert loads == [1]


def test_a_hostile_path_is_quoted_and_its_control_characters_never_print():
    rows = [opened("/tmp/x; rm -rf ~ \x1b[2J", 5, "EACCES")]
    res = {"recipe": "opensnoop", "rows": rows}
    res["hints"] = compute(res, FakeSystem())
    assert shlex.split(res["hints"][0]["command"]) == ["namei", "-l", rows[0]["path"]]
    assert "\x1b" not in hints.text(res)


def test_recipes_without_rules_get_no_hints():
    assert compute({"recipe": "fillup", "rows": [{"n": 1}]}, FakeSystem()) == []
