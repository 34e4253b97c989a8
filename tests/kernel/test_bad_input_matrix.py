"""Bad input: one line naming the problem and the fix, a distinct exit code, and nothing attached.

Every case runs kit's real entry point in this process, so anything kit loaded or
attached would still be held here afterwards. The oracle is the kernel's view:
BPF programs, maps, links and perf events this process holds (/proc/self/fd,
fdinfo) and named probes in tracefs, before and after — plus a spy on BCC's
loader proving no program was even compiled. Cases are a fixed matrix plus
cases generated from every recipe and every parameter in the shipped catalog
and the test catalog, so recipes merged later are covered without edits.
"""

import io
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from fixtures import kitshim
from kit import catalog
from kit.cli import main
from kit.errors import ExitCode
from leaks import snapshot
from workloads.build import build

pytestmark = pytest.mark.kernel

TEST = ["--catalog", kitshim.CATALOG]
CATALOGS = {"shipped": catalog.DEFAULT_CATALOG, "test": kitshim.CATALOG}

# A value each parameter type must refuse. A new type needs an entry here: that is the point.
BAD_VALUE = {
    "int": "ten", "pid": "-1", "tid": "0", "comm": "x" * 16, "duration": "0s", "micros": "soon",
    "port": "0", "ipaddr": "1.2.3", "netns": "/etc/passwd", "cgroup": "../../../etc", "binary": "/etc/passwd",
    "symbol": "a b", "enum": "__nope__", "outpath": "/nonexistent-dir/x", "flag": None, "hostname": "db;rm",
    "disk": "sda;rm",
    "hertz": "1000",
}


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    """Things the cases point at: dead, zombie and kernel-thread pids, odd files, broken catalogs."""
    d = tmp_path_factory.mktemp("badinput")
    r = {"dir": str(d), "target": build("target", str(d))}
    dead = subprocess.Popen(["true"])
    dead.wait()
    r["dead_pid"] = dead.pid
    zombie = subprocess.Popen(["true"])
    for _ in range(100):  # exited but not reaped until teardown
        with open(f"/proc/{zombie.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    r["zombie_pid"] = zombie.pid
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    r["thread_id"] = t.native_id
    (d / "script.sh").write_text("#!/bin/sh\necho not elf\n")
    r["script"] = str(d / "script.sh")
    os.mkfifo(d / "fifo")
    r["fifo"] = str(d / "fifo")
    os.symlink("/etc/hostname", d / "link.svg")
    r["symlink"] = str(d / "link.svg")
    (d / "plain").mkdir()
    r["plain_dir"] = str(d / "plain")
    r["catalogs"] = _broken_catalogs(d)
    yield r
    stop.set()
    t.join()
    zombie.wait()


def _broken_catalogs(d):
    """The shipped catalog, broken one way each (so the cases follow whatever it holds)."""
    text = open(catalog.DEFAULT_CATALOG).read()
    first = re.search(r"^  - name: (\w+)\n", text, re.M)
    head, body = text.split("\nrecipes:\n", 1)
    variants = {
        "malformed_yaml": text + "\n  - [unclosed\n",
        "unknown_key": text.replace(first.group(0), first.group(0) + "    colour: blue\n", 1),
        "duplicate_recipe": text + body,
        "missing_template": text.replace(first.group(0), "  - name: nosuchrecipe\n", 1),
        "unsafe_tag": "!!python/object/apply:os.system ['true']\n",
        "not_a_mapping": "- just\n- a list\n",
    }
    os.symlink(catalog.PROBES_DIR, d / "probes")
    os.symlink(os.path.join(catalog.ROOT, "kit"), d / "kit")  # recipe modules are named relative to the catalog
    out = {}
    for name, t in variants.items():
        (d / f"{name}.yaml").write_text(t)
        out[name] = str(d / f"{name}.yaml")
    out["first_recipe"] = first.group(1)
    shared = d / "shared"  # a catalog, then a template, that other users could rewrite
    shutil.copytree(catalog.PROBES_DIR, shared / "probes")
    os.symlink(os.path.join(catalog.ROOT, "kit"), shared / "kit")
    (shared / "incident_recipes.yaml").write_text(text)
    os.chmod(shared / "probes" / f"{first.group(1)}.c", 0o666)
    out["template_writable_by_others"] = str(shared / "incident_recipes.yaml")
    (d / "writable.yaml").write_text(text)
    os.chmod(d / "writable.yaml", 0o666)
    out["writable_by_others"] = str(d / "writable.yaml")
    return out


def C(id, argv, code, words):
    return pytest.param(argv, code, words, id=id)


FIXED = [
    C("unknown_recipe", lambda r: ["run", "nosuch"], ExitCode.BAD_INPUT, "unknown recipe 'nosuch'"),
    C("misspelled_recipe", lambda r: ["run", "tcpretranz"], ExitCode.BAD_INPUT, "did you mean tcpretrans?"),
    C("no_recipe", lambda r: ["run"], ExitCode.BAD_INPUT, "no recipe named"),
    C("unknown_param", lambda r: ["run", "tcpretrans", "--colour", "x"], ExitCode.BAD_INPUT,
      "unrecognized arguments: --colour"),
    C("mistyped_param", lambda r: ["run", "tcpretrans", "--prot", "443"], ExitCode.BAD_INPUT, "did you mean --port?"),
    C("abbreviated_param_is_not_guessed", lambda r: ["run", "tcpretrans", "--po", "443"], ExitCode.BAD_INPUT,
      "unrecognized arguments: --po"),
    C("param_without_value", lambda r: ["run", "tcpretrans", "--port"], ExitCode.BAD_INPUT, "expected one argument"),
    C("port_not_a_number", lambda r: ["run", "tcpretrans", "--port", "http"], ExitCode.BAD_INPUT, "whole number"),
    C("port_out_of_range", lambda r: ["run", "tcpretrans", "--port", "70000"], ExitCode.BAD_INPUT, "1..65535"),
    C("port_of_5000_digits", lambda r: ["run", "tcpretrans", "--port", "9" * 5000], ExitCode.BAD_INPUT,
      "out of range"),
    C("addr_not_an_ip", lambda r: ["run", "tcpretrans", "--addr", "10.0.0.300"], ExitCode.BAD_INPUT,
      "is not an IP address"),
    C("addr_with_zone_text", lambda r: ["run", "tcpretrans", "--addr", "fe80::1%eth0\n"], ExitCode.BAD_INPUT,
      "zone id"),
    C("netns_missing", lambda r: ["run", "tcpretrans", "--netns", "no-such-ns"], ExitCode.BAD_INPUT,
      "no network namespace"),
    C("netns_is_a_plain_file", lambda r: ["run", "tcpretrans", "--netns", "/etc/hostname"], ExitCode.BAD_INPUT,
      "is not a network namespace"),
    C("netns_is_another_namespace_type", lambda r: ["run", "tcpretrans", "--netns", "/proc/self/ns/mnt"],
      ExitCode.BAD_INPUT, "is not a network namespace"),
    C("duration_zero", lambda r: ["run", "tcpretrans", "--for", "0s"], ExitCode.BAD_INPUT, "longer than zero"),
    C("duration_negative", lambda r: ["run", "tcpretrans", "--for=-5s"], ExitCode.BAD_INPUT, "not a duration"),
    C("duration_garbage", lambda r: ["run", "tcpretrans", "--for", "soon"], ExitCode.BAD_INPUT, "not a duration"),
    C("duration_over_maximum", lambda r: ["run", "tcpretrans", "--for", "11m"], ExitCode.BAD_INPUT,
      "over tcpretrans's maximum"),
    C("duration_of_400_digits", lambda r: ["run", "tcpretrans", "--for", "9" * 400], ExitCode.BAD_INPUT,
      "far too long"),
    C("budget_garbage", lambda r: ["run", "tcpretrans", "--budget", "lots"], ExitCode.BAD_INPUT, "not a number"),
    C("budget_zero", lambda r: ["run", "tcpretrans", "--budget", "0"], ExitCode.BAD_INPUT, "out of range"),
    C("hook_not_in_ladder", lambda r: ["run", "tcpretrans", "--hook", "fentry"], ExitCode.BAD_INPUT,
      "invalid choice"),
    C("comm_over_15_bytes", lambda r: TEST + ["run", "uprobed", "--comm", "pay-svc-worker-01"], ExitCode.BAD_INPUT,
      "truncates comm to 15"),
    C("comm_empty", lambda r: TEST + ["run", "uprobed", "--comm", ""], ExitCode.BAD_INPUT, "--comm is empty"),
    C("comm_with_newline", lambda r: TEST + ["run", "uprobed", "--comm", "a\nb"], ExitCode.BAD_INPUT,
      "control characters"),
    C("pid_that_does_not_exist", lambda r: TEST + ["run", "uprobed", "--pid", str(r["dead_pid"])],
      ExitCode.BAD_INPUT, "no process with id"),
    C("pid_of_a_kernel_thread", lambda r: TEST + ["run", "uprobed", "--pid", "2"], ExitCode.BAD_INPUT,
      "is a kernel thread"),
    C("pid_of_a_zombie", lambda r: TEST + ["run", "uprobed", "--pid", str(r["zombie_pid"])], ExitCode.BAD_INPUT,
      "is a zombie"),
    C("pid_negative", lambda r: TEST + ["run", "uprobed", "--pid", "-5"], ExitCode.BAD_INPUT, "whole number"),
    C("pid_garbage", lambda r: TEST + ["run", "uprobed", "--pid", "1;reboot"], ExitCode.BAD_INPUT, "whole number"),
    C("pid_that_is_a_thread", lambda r: TEST + ["run", "uprobed", "--pid", str(r["thread_id"])],
      ExitCode.BAD_INPUT, "is a thread of process"),
    C("tid_that_does_not_exist", lambda r: TEST + ["run", "uprobed", "--tid", str(r["dead_pid"])],
      ExitCode.BAD_INPUT, "no thread with id"),
    C("binary_not_elf", lambda r: TEST + ["run", "uprobed", "--binary", r["script"], "--symbol", "main"],
      ExitCode.BAD_INPUT, "is not an ELF binary"),
    C("binary_missing", lambda r: TEST + ["run", "uprobed", "--binary", "/nonexistent/bin", "--symbol", "main"],
      ExitCode.BAD_INPUT, "No such file or directory"),
    C("binary_is_a_directory", lambda r: TEST + ["run", "uprobed", "--binary", r["plain_dir"], "--symbol", "main"],
      ExitCode.BAD_INPUT, "is a directory"),
    C("binary_is_a_fifo_that_would_block", lambda r: TEST + ["run", "uprobed", "--binary", r["fifo"]],
      ExitCode.BAD_INPUT, "is not a regular file"),
    C("binary_unreadable", lambda r: TEST + ["run", "uprobed", "--binary", "/proc/self/mem"], ExitCode.BAD_INPUT,
      "Input/output error"),
    C("symbol_not_in_binary", lambda r: TEST + ["run", "uprobed", "--binary", r["target"], "--symbol", "no_such_fn"],
      ExitCode.BAD_INPUT, "symbol 'no_such_fn' is not defined in"),
    C("lock_symbol_not_in_target", lambda r: ["run", "lockhold", "--pid", str(os.getpid()), "--lock", "no_such_fn"],
      ExitCode.BAD_INPUT, "symbol 'no_such_fn' is not defined in process"),
    C("lockhold_binary_not_elf", lambda r: ["run", "lockhold", "--binary", "/etc/passwd", "--pid", str(os.getpid())],
      ExitCode.BAD_INPUT, "is not an ELF binary"),
    C("lockhold_binary_not_mapped", lambda r: ["run", "lockhold", "--binary", r["target"], "--pid", str(os.getpid()),
                                              "--lock", "kit_target_fn", "--unlock", "kit_target_fn"],
      ExitCode.BAD_INPUT, "does not map"),
    C("offcpu_pid_kernel_thread", lambda r: ["run", "offcpu", "--pid", "2"], ExitCode.BAD_INPUT, "is a kernel thread"),
    C("getaddrinfo_host_not_a_name", lambda r: ["run", "getaddrinfo", "--host", "db;rm -rf"],
      ExitCode.BAD_INPUT, "is not a host name"),
    C("symbol_not_a_name", lambda r: TEST + ["run", "uprobed", "--binary", r["target"], "--symbol", "f(); x"],
      ExitCode.BAD_INPUT, "is not a symbol name"),
    C("cgroup_that_does_not_exist", lambda r: TEST + ["run", "uprobed", "--cgroup", "no/such.slice"],
      ExitCode.BAD_INPUT, "no cgroup at"),
    C("cgroup_path_escaping_the_hierarchy",
      lambda r: TEST + ["run", "uprobed", "--cgroup", "../" * 12 + r["plain_dir"].lstrip("/")],
      ExitCode.BAD_INPUT, "outside the cgroup v2 hierarchy"),
    C("cgroup_that_is_a_file", lambda r: TEST + ["run", "uprobed", "--cgroup", "cgroup.procs"], ExitCode.BAD_INPUT,
      "no cgroup at"),
    C("enum_not_in_choices", lambda r: TEST + ["run", "uprobed", "--mode", "fast"], ExitCode.BAD_INPUT,
      "is not one of count, trace"),
    C("outpath_through_a_symlink", lambda r: TEST + ["run", "uprobed", "--report-file", r["symlink"]], ExitCode.BAD_INPUT,
      "exists and is not a regular file"),
    C("outpath_in_missing_directory", lambda r: TEST + ["run", "uprobed", "--report-file", "/nonexistent/x.svg"],
      ExitCode.BAD_INPUT, "does not exist"),
    C("catalog_missing", lambda r: ["--catalog", "/nonexistent.yaml", "run", "tcpretrans"], ExitCode.CATALOG,
      "cannot read catalog"),
    C("catalog_is_a_directory", lambda r: ["--catalog", r["dir"], "run", "tcpretrans"], ExitCode.CATALOG,
      "cannot read catalog"),
] + [
    C(f"catalog_{name}", lambda r, name=name: ["--catalog", r["catalogs"][name], "run",
                                               r["catalogs"]["first_recipe"]], ExitCode.CATALOG, words)
    for name, words in [("malformed_yaml", "malformed YAML"), ("unknown_key", "unknown key 'colour'"),
                        ("duplicate_recipe", "duplicate recipe"), ("missing_template", "missing template"),
                        ("unsafe_tag", "malformed YAML"), ("not_a_mapping", "must be a mapping"),
                        ("writable_by_others", "can be changed by other users"),
                        ("template_writable_by_others", "can be changed by other users")]
]


def _generated():
    """For every recipe of both catalogs: bad durations, an unknown flag, and a bad value for each parameter."""
    cases = []
    for cname, path in CATALOGS.items():
        pre = [] if cname == "shipped" else TEST
        for r in catalog.load(path).values():
            n = r.name
            over = f"{int(r.duration_max) + 1}s"
            cases += [
                C(f"{cname}-{n}-for-zero", lambda _, n=n, pre=pre: pre + ["run", n, "--for", "0"],
                  ExitCode.BAD_INPUT, "--for must be longer than zero"),
                C(f"{cname}-{n}-for-garbage", lambda _, n=n, pre=pre: pre + ["run", n, "--for", "20 parsecs"],
                  ExitCode.BAD_INPUT, "is not a duration"),
                C(f"{cname}-{n}-for-over-max", lambda _, n=n, pre=pre, over=over: pre + ["run", n, "--for", over],
                  ExitCode.BAD_INPUT, f"over {n}'s maximum"),
                C(f"{cname}-{n}-unknown-flag", lambda _, n=n, pre=pre: pre + ["run", n, "--no-such-flag"],
                  ExitCode.BAD_INPUT, "unrecognized arguments: --no-such-flag"),
            ]
            for p in r.params.values():
                assert p.type in BAD_VALUE, f"parameter type {p.type!r} has no bad value in this matrix: add one"
                bad = BAD_VALUE[p.type]
                argv = [f"--{p.flag}=oops"] if bad is None else [f"--{p.flag}", bad]
                cases.append(C(f"{cname}-{n}-{p.name}-bad", lambda _, n=n, pre=pre, argv=argv: pre + ["run", n] + argv,
                               ExitCode.BAD_INPUT, f"--{p.flag}"))
    return cases


@pytest.fixture
def bpf_loads(monkeypatch):
    """Every BCC program construction in this process (the spy delegates; it changes nothing)."""
    import bcc
    loads = []

    class Spy(bcc.BPF):
        def __init__(self, *a, **kw):
            loads.append(kw.get("text", "")[:60])
            super().__init__(*a, **kw)

    monkeypatch.setattr(bcc, "BPF", Spy)
    return loads


@pytest.mark.parametrize("argv, code, words", FIXED + _generated())
def test_bad_input_is_one_line_with_its_fix_and_exit_code_and_nothing_attached(
        kernel, res, bpf_loads, argv, code, words):
    argv = argv(res)
    before = snapshot()
    out, err = io.StringIO(), io.StringIO()
    got = main(argv, out=out, err=err)
    after = snapshot()
    err = err.getvalue()
    assert got == code, err
    assert words in err, err
    assert err.count("\n") == 1 and err.startswith("kit: error: ") and " — " in err, repr(err)
    assert err[:-1].isprintable(), repr(err)
    assert out.getvalue() == ""
    assert bpf_loads == [], "a program was compiled for bad input"
    assert after == before, "kernel objects or probe events changed"


def test_matrix_has_at_least_30_fixed_cases():
    assert len(FIXED) >= 30


def test_the_oracle_sees_a_program_this_process_attaches(kernel):
    """The matrix's oracle can fail: a program attached here shows up in it, and goes after cleanup."""
    from bcc import BPF
    before = snapshot()
    b = BPF(text=b'TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }')
    try:
        during = snapshot()
    finally:
        b.cleanup()
    assert during["held"].get("prog", 0) > before["held"].get("prog", 0)
    assert during["held"].get("perf_event", 0) > before["held"].get("perf_event", 0)
    assert during["progs"] - before["progs"]
    assert snapshot() == before
