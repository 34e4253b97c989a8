"""docs/kernels.md's pure parts (tests/support/qemu/matrix.py, tests/support/qemu/tables.py): doctor's wrapped table
read back, and the note on the hook types no recipe's ladder names. The table itself is written by a
run of both kernels' tests (tests/kernel/test_second_kernel_recipes.py)."""

from kit import catalog
from kit.host import doctor, features
from qemu import matrix
from qemu.tables import doctor_rows

ROWS = [("lockdown", "integrity", True),
        ("kprobe", "compiled out (CONFIG_KPROBES is not set)", False),
        ("recipes", "runnable here: " + ", ".join(f"recipe{i}" for i in range(20)), True)]


def test_doctor_rows_joins_a_detail_that_wraps_and_keeps_its_status():
    text = doctor.render(ROWS, width=60)
    assert len(text.splitlines()) > len(ROWS) + 2  # the recipes row wrapped
    assert doctor_rows(text) == {k: (ok, v) for k, v, ok in ROWS}


RUNS = [("host", {"doctor": {"kprobe": (False, "compiled out"), "fentry": (False, "EPERM")}}),
        ("qemu guest", {"doctor": {"kprobe": (True, "attached and detached"), "fentry": (True, "attached")}})]


def test_rung_types_are_the_catalogs_in_hook_type_order():
    used = {h.type for r in catalog.load(catalog.DEFAULT_CATALOG).values() for h in r.hooks}
    assert matrix.rung_types() == [t for t in features.HOOK_TYPES if t in used]


def test_the_note_names_the_types_no_ladder_has_with_what_each_kernels_doctor_found(monkeypatch):
    monkeypatch.setattr(matrix, "rung_types", lambda: ["raw_tracepoint", "tracepoint", "uprobe"])
    assert matrix.rungs_no_ladder_has(RUNS) == [
        "No recipe's ladder has a kprobe, kretprobe, fentry, fexit or perf_event rung (the ladders are "
        "`incident_recipes.yaml`'s: raw_tracepoint, tracepoint, uprobe), so no test ran one and none was added "
        "for this table.",
        "What `kit doctor` found attaching one itself on the host: kprobe NO (compiled out); fentry NO (EPERM).",
        "What `kit doctor` found attaching one itself on the qemu guest: kprobe ok (attached and detached); "
        "fentry ok (attached)."]


def test_a_ladder_with_a_kprobe_rung_leaves_it_out_of_the_note_and_a_full_set_has_none(monkeypatch):
    monkeypatch.setattr(matrix, "rung_types", lambda: ["tracepoint", "kprobe"])
    lines = matrix.rungs_no_ladder_has(RUNS)
    assert lines[0].startswith("No recipe's ladder has a raw_tracepoint, kretprobe, fentry, fexit, uprobe, "
                               "uretprobe or perf_event rung"), lines[0]
    assert "kprobe NO" not in lines[1] and lines[1].endswith("fentry NO (EPERM).")
    monkeypatch.setattr(matrix, "rung_types", lambda: list(features.HOOK_TYPES))
    assert matrix.rungs_no_ladder_has(RUNS) == []
