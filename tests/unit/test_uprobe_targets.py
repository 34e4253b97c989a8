"""Where uprobes go, checked without a kernel: ELF symbols, first-instruction
cost classes, /proc/PID/maps parsing and libc names, and the errors a user
gets before anything attaches."""

import os
import subprocess

import pytest

from kit import catalog
from kit.binaries import elf
from kit.catalog import params
from kit.engine import run, uprobes
from kit.host import targets
from kit.errors import BadInput, ExitCode, Refused
from workloads import lockwork

LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return lockwork.build(str(tmp_path_factory.mktemp("lw")), "lockwork")


@pytest.fixture(scope="module")
def recipes():
    return catalog.load()


def test_finds_noinline_functions_in_the_symtab_of_a_binary(workload):
    lock = elf.function(workload, "pool_lock")
    unlock = elf.function(workload, "pool_unlock")
    assert lock.addr != unlock.addr and lock.table == "symtab"
    nm = subprocess.run(["nm", workload], capture_output=True, text=True, check=True).stdout
    want = {line.split()[2]: int(line.split()[0], 16) for line in nm.splitlines() if line.endswith((" pool_lock", " pool_unlock"))}
    assert want == {"pool_lock": lock.addr, "pool_unlock": unlock.addr}


def test_finds_libc_names_stored_as_the_tail_of_a_longer_name():
    # the linker stores "pthread_mutex_lock" inside "__pthread_mutex_lock"; readelf is the oracle
    out = subprocess.run(["readelf", "-Ws", "--dyn-syms", LIBC], capture_output=True, text=True, check=True).stdout
    addr = next(int(line.split()[1], 16) for line in out.splitlines() if line.split()[-1:] == ["pthread_mutex_lock@@GLIBC_2.2.5"])
    assert elf.function(LIBC, "pthread_mutex_lock").addr == addr


def test_missing_symbol_is_one_clear_line(workload):
    with pytest.raises(BadInput) as e:
        elf.function(workload, "pool_lok")
    assert "symbol 'pool_lok' is not defined in" in e.value.message and "nm" in e.value.hint


def test_ifunc_is_refused_because_its_address_is_the_resolver():
    with pytest.raises(BadInput, match="IFUNC"):
        elf.function(LIBC, "memcpy")


def test_a_file_offset_maps_back_to_the_same_bytes_objdump_shows(workload):
    sym = elf.function(workload, "pool_lock")
    with elf.Elf(workload) as e:
        code = e.read_at(sym.addr, 4)
    dump = subprocess.run(["objdump", "-d", f"--start-address={sym.addr:#x}", f"--stop-address={sym.addr + 4:#x}",
                           workload], capture_output=True, text=True, check=True).stdout
    first = next(line for line in dump.splitlines() if line.strip().startswith(f"{sym.addr:x}:")).split("\t")[1].split()
    assert code[:len(first)].hex() == "".join(first)


@pytest.mark.parametrize("code, cls", [
    ("55 48 89 e5", "emulated"),          # push %rbp (getaddrinfo, gcc -O2 with frame pointers)
    ("41 56 41 55", "emulated"),          # push %r14 (gethostbyname)
    ("8b 47 10 89", "single-step"),       # mov 0x10(%rdi),%eax (glibc 2.36 pthread_mutex_lock)
    ("be 01 00 00 00 e9", "single-step"), # mov $1,%esi (pthread_mutex_unlock)
    ("f3 0f 1e fa 55", "single-step"),    # endbr64: not emulated
    ("e9 10 00 00 00", "emulated"),       # jmp rel32
    ("0f 1f 44 00 00", "emulated"),       # nopl: an x86 nop
    ("0f 84 10 00 00 00", "emulated"),    # je rel32
    ("48 83 ec 08", "single-step"),       # sub $8,%rsp
])
def test_first_instruction_cost_class(code, cls):
    assert uprobes.first_insn_cost_class(bytes.fromhex(code)) == cls


def test_cost_class_of_libc_functions_matches_their_first_instruction():
    assert uprobes.uprobe_first_insn_cost_class(LIBC, "getaddrinfo") == "emulated"
    assert uprobes.uprobe_first_insn_cost_class(LIBC, "pthread_mutex_lock") == "single-step"
    assert uprobes.first_insn_cost_class(b"\x55", machine=183) == "unknown"  # aarch64
    assert uprobes.first_insn_kind(b"\x55", machine=183) is None  # priced as the dearest kind, not by x86 rules


def test_parses_maps_lines_including_replaced_files():
    text = ("55d6bcdf6000-55d6bcdfb000 r-xp 00002000 fe:00 260131   /usr/bin/cat\n"
            "7f10a7036000-7f10a718c000 r-xp 00026000 fe:01 339380   /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)\n"
            "7f10a71fd000-7f10a7201000 r--p 00000000 00:00 0        [vvar]\n"
            "7f10a71fd000-7f10a7201000 r--p 00000000 00:00 0 \n")
    lines = targets.parse_maps(text)
    assert [(l.path, l.deleted, l.ino, l.dev) for l in lines] == [
        ("/usr/bin/cat", False, 260131, os.makedev(0xfe, 0)),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", True, 339380, os.makedev(0xfe, 1))]
    assert lines[1].start == 0x7f10a7036000 and lines[1].perms == "r-xp"


def test_all_lines_of_maps_keep_anonymous_and_special_mappings_for_naming_frames():
    text = ("7f10a7036000-7f10a718c000 r-xp 00026000 fe:01 339380   /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)\n"
            "7f10a8000000-7f10a8100000 rwxp 00000000 00:00 0 \n"
            "7ffd3b9e1000-7ffd3b9e3000 r-xp 00000000 00:00 0                          [vdso]\n")
    lines = targets.parse_maps(text, files_only=False)
    assert [(l.path, l.name, l.deleted, l.ino) for l in lines] == [
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6", True, 339380), ("", "", False, 0),
        ("[vdso]", "[vdso]", False, 0)]
    assert [l.path for l in targets.parse_maps(text)] == ["/usr/lib/x86_64-linux-gnu/libc.so.6"]


@pytest.mark.parametrize("path, libc", [
    ("/usr/lib/x86_64-linux-gnu/libc.so.6", True), ("/lib/libc-2.17.so", True),
    ("/lib/ld-musl-x86_64.so.1", True), ("/usr/lib/libc.musl-x86_64.so.1", True),
    ("/usr/lib/x86_64-linux-gnu/libcrypt.so.1", False), ("/usr/lib/libcurl.so.4", False),
])
def test_recognises_libc_by_name(path, libc):
    assert targets.is_libc(path) is libc


def test_kit_finds_its_own_libc_in_its_maps():
    own = targets.host_libc()
    assert os.path.samefile(own.open_path, LIBC)


def test_a_process_symbol_is_looked_up_in_the_executable_before_libc(workload):
    p = subprocess.Popen([workload, "--gate", "1", "0", "0", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        order = uprobes._search_order(targets.mapped_files(p.pid))
        assert order[0].is_exe and os.path.samefile(order[0].open_path, workload)
        assert os.path.samefile(targets.libc_of(p.pid).open_path, LIBC)
    finally:
        p.kill()
        p.wait()


def _prepare(recipes, name, **raw):
    r = recipes[name]
    values = {k: params.TYPES[r.params[k].type].parse(v, r.params[k]) for k, v in raw.items()}
    return run.prepare(r, values)


def test_a_lock_symbol_missing_from_the_binary_is_an_error_before_anything_attaches(recipes, workload):
    with pytest.raises(BadInput) as e:
        _prepare(recipes, "lockhold", binary=workload, lock="pool_lok", unlock="pool_unlock")
    assert e.value.code == ExitCode.BAD_INPUT and "'pool_lok' is not defined" in e.value.message


def test_lockhold_with_binary_plans_three_probes_for_every_process(recipes, workload):
    ctx, text = _prepare(recipes, "lockhold", binary=workload, lock="pool_lock", unlock="pool_unlock")
    probes = ctx.planned_uprobes
    assert [(p.fn, p.at, p.symbol, p.pid) for p in probes] == [
        ("lock_entry", "entry", "pool_lock", -1), ("lock_return", "return", "pool_lock", -1),
        ("unlock_entry", "entry", "pool_unlock", -1)]
    assert all(p.cost == "emulated" for p in probes)  # gcc's frame setup starts with push %rbp
    assert "int lock_entry(struct pt_regs *ctx)" in text


def test_binary_libc_without_a_process_scope_is_refused_as_the_box_wide_hot_path(recipes):
    with pytest.raises(Refused) as e:
        _prepare(recipes, "lockhold", binary=LIBC)
    assert e.value.code == ExitCode.REFUSED and "--pid" in e.value.hint


def test_comm_with_no_running_process_is_an_error_for_the_hot_path(recipes):
    with pytest.raises(BadInput, match="no running process is named 'kit-no-such'"):
        _prepare(recipes, "lockhold", comm="kit-no-such")


def test_getaddrinfo_comm_attaches_to_libc_for_every_process_so_later_processes_count(recipes):
    ctx, _ = _prepare(recipes, "getaddrinfo", comm="kit-no-such")
    probes = ctx.planned_uprobes
    assert {p.pid for p in probes} == {-1}
    assert {p.symbol for p in probes} == {"getaddrinfo", "gethostbyname", "gethostbyname2"}
    assert all(os.path.samefile(p.open_path, LIBC) for p in probes)


def test_host_filter_reaches_c_only_as_a_byte_array(recipes):
    ctx, text = _prepare(recipes, "getaddrinfo", host="db.internal")
    assert "db.internal" not in text
    want = ", ".join(str(b) for b in b"db.internal")
    assert "{" + want + ", 0, 0" in text


@pytest.mark.parametrize("host", ["db internal", "a;b", "x" * 254, "", "ab\x00c", "évil"])
def test_bad_host_names_are_refused(host):
    spec = catalog.ParamSpec(name="host", type="hostname")
    with pytest.raises(BadInput):
        params.TYPES["hostname"].parse(host, spec)


def test_the_catalog_declares_lockhold_a_scoped_hot_path(recipes):
    g = recipes["lockhold"].guard
    assert (g.hot_path, g.scope_required, g.cost_class) == (True, True, "uprobe_lock_cycle")
    assert recipes["getaddrinfo"].guard.hot_path is False


@pytest.mark.parametrize("argv, code, words", [
    (["show", "lockhold", "--binary", "/nonexistent/app"], ExitCode.BAD_INPUT, "No such file"),
    (["show", "lockhold", "--binary", "/etc/hostname"], ExitCode.BAD_INPUT, "is not an ELF binary"),
    (["show", "lockhold", "--binary", "{wl}", "--lock", "pool_lok", "--unlock", "pool_unlock"], ExitCode.BAD_INPUT,
     "symbol 'pool_lok' is not defined in {wl}"),
    (["show", "lockhold", "--binary", "{wl}", "--lock", "pool_lock;x", "--unlock", "pool_unlock"], ExitCode.BAD_INPUT,
     "is not a symbol name"),
    (["show", "lockhold", "--binary", LIBC], ExitCode.REFUSED, "mapped by every process"),
    (["show", "lockhold", "--comm", "kit-no-such"], ExitCode.BAD_INPUT, "no running process is named"),
    (["show", "lockhold", "--pid", "4194303"], ExitCode.BAD_INPUT, "no process with id 4194303"),
    (["show", "lockhold", "--match", "mutex"], ExitCode.BAD_INPUT, "is not one of lock, thread"),
    (["show", "getaddrinfo", "--host", "a;b"], ExitCode.BAD_INPUT, "is not a host name"),
])
def test_bad_uprobe_input_is_one_line_with_a_fix_and_its_exit_code(argv, code, words, workload):
    import io
    from kit.cli import main
    argv = [a.replace("{wl}", workload) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, out=out, err=err) == code, err.getvalue()
    e = err.getvalue()
    assert words.replace("{wl}", workload) in e
    assert e.count("\n") == 1 and e.startswith("kit: error: ") and " — " in e and out.getvalue() == ""


def test_estimated_cost_per_lock_follows_the_first_instructions(recipes, workload):
    ctx, _ = _prepare(recipes, "lockhold", binary=workload, lock="pool_lock", unlock="pool_unlock")
    # push-started pool_lock/pool_unlock: two emulated traps and one return trampoline
    from kit.guard import costs
    assert {p.kind for p in ctx.planned_uprobes} == {"push"}
    emulated, stepped, ret = (costs.DEFAULT_NS[k] for k in ("uprobe_emulated", "uprobe_stepped", "uretprobe_extra"))
    assert uprobes.cycle_cost_ns(ctx.planned_uprobes) == 2 * emulated + ret
    pthread = [uprobes.Probe("lock_entry", "entry", "pthread_mutex_lock", LIBC, LIBC, 1, 1, 1, "single-step", "",
                             "other"),
               uprobes.Probe("lock_return", "return", "pthread_mutex_lock", LIBC, LIBC, 1, 1, 1, "single-step", "",
                             "other"),
               uprobes.Probe("unlock_entry", "entry", "pthread_mutex_unlock", LIBC, LIBC, 2, 2, 1, "single-step", "",
                             "other")]
    assert uprobes.cycle_cost_ns(pthread) == 2 * stepped + ret
    # with a calibration, its prices by instruction kind
    cal = {"uprobe": {"push": 500, "other": 9000}, "ns": {"uretprobe_extra": 800}}
    assert uprobes.cycle_cost_ns(ctx.planned_uprobes, cal=cal) == 2 * 500 + 800
    assert uprobes.cycle_cost_ns(pthread, cal=cal) == 2 * 9000 + 800


def test_a_file_both_views_name_is_shown_by_its_path_even_when_maps_reports_another_device(monkeypatch):
    """The qemu guest's root is an overlay on 9p: maps gives the lower device, stat the overlay's.
    Where the process's root and kit's are one file, it is that path, not "in the root of pid"."""
    real = os.stat(LIBC)
    line = targets.MapsLine(0x1000, 0x2000, "r-xp", 0, os.makedev(0, 99), real.st_ino, LIBC, False)
    assert real.st_dev != line.dev
    pid = os.getpid()
    assert targets._open_path(pid, line) == (LIBC, "path")  # /proc/PID/root is / here: one file

    views = {LIBC: os.stat_result((0, real.st_ino, 1) + tuple(real)[3:]),
             f"/proc/{pid}/root{LIBC}": os.stat_result((0, real.st_ino, 2) + tuple(real)[3:])}
    monkeypatch.setattr(targets.os, "stat", lambda p: views[p])
    # a container's file with the same inode number on another device: its own view wins, as before
    assert targets._open_path(pid, line) == (f"/proc/{pid}/root{LIBC}", "root")
