"""kit's ELF reader against binutils: which function each instruction is in
(objdump's blocks), symbols of a 32-bit object (nm), and a file read through an
open file object after its path is gone."""

import re
import shutil
import subprocess

import pytest

from kit.binaries import elf
from workloads import lockwork


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return lockwork.build(str(tmp_path_factory.mktemp("elf")), "lockwork")


def _readelf_functions(path):
    """{addr: (size, name)} of the defined FUNC symbols, from readelf."""
    out = subprocess.run(["readelf", "-Ws", path], capture_output=True, text=True, check=True).stdout
    funcs = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "FUNC" and f[6] != "UND":
            funcs[int(f[1], 16)] = (int(f[2], 0), f[7].split("@")[0])
    return funcs


def _objdump_instructions(path):
    """(section, enclosing block's address and name, instruction address) for every instruction objdump -d shows."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True, check=True).stdout
    section = block = None
    for line in out.splitlines():
        if m := re.match(r"Disassembly of section (\S+):", line):
            section = m.group(1)
        elif m := re.match(r"([0-9a-f]+) <(.+)>:$", line):
            block = (int(m.group(1), 16), m.group(2))
        elif m := re.match(r"\s+([0-9a-f]+):\t", line):
            yield section, block, int(m.group(1), 16)


def test_every_instruction_is_named_after_the_function_objdump_puts_it_in(workload):
    """Including crt functions without a size (frame_dummy, _init): they end at the next
    function or their section's end, so PLT stubs after .init are named after nothing."""
    funcs = _readelf_functions(workload)
    assert any(size == 0 for size, _n in funcs.values())  # the case this is about
    named = in_plt = 0
    with elf.Elf(workload) as e:
        for section, (start, name), addr in _objdump_instructions(workload):
            if section.startswith(".plt"):
                assert e.symbol(addr) is None, (hex(addr), e.symbol(addr))
                in_plt += 1
            elif start in funcs and funcs[start][1] == name:
                size = funcs[start][0]
                if size and addr >= start + size:
                    continue  # padding after a sized function: objdump's block, no function's code
                assert e.symbol(addr) == (name, addr - start), (hex(addr), name)
                named += 1
    assert named > 500 and in_plt > 10


def test_finds_and_names_the_functions_of_a_32_bit_object_like_nm(tmp_path):
    src = tmp_path / "t.c"
    src.write_text("int add1(int x) { return x + 1; }\nint twice(int x) { return add1(add1(x)); }\n")
    so = tmp_path / "t32.so"
    subprocess.run(["gcc", "-m32", "-O1", "-shared", "-nostdlib", "-fPIC", "-o", str(so), str(src)], check=True)
    nm = subprocess.run(["nm", "-D", "-S", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    want = {f[3]: (int(f[0], 16), int(f[1], 16)) for f in map(str.split, nm.splitlines()) if f[2] == "T"}
    assert set(want) == {"add1", "twice"}
    with elf.Elf(str(so)) as e:
        assert not e.is64 and e.machine == elf.EM_386
        for name, (addr, size) in want.items():
            assert [(s.addr, s.size) for s in e.find(name)] == [(addr, size)]
            assert e.symbol(addr + size - 1) == (name, size - 1)


def test_reads_a_file_through_its_open_file_object_after_the_path_is_gone(workload, tmp_path):
    """What offcpu relies on: a mapped file it opened stays readable after it is deleted."""
    copy = tmp_path / "gone"
    shutil.copy(workload, copy)
    addr = next(a for a, (_s, n) in _readelf_functions(str(copy)).items() if n == "pool_lock")
    with open(copy, "rb") as f:
        copy.unlink()
        e = elf.Elf(f)
    with e:  # the caller's file object is closed by now; Elf holds its own descriptor
        assert [s.addr for s in e.find("pool_lock")] == [addr]
        assert e.symbol(addr + 1) == ("pool_lock", 1)


def test_a_file_that_is_not_elf_is_one_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file at all\n")
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.Elf(str(text))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(elf.ElfError, match="empty"):
        elf.Elf(str(tmp_path / "empty"))
