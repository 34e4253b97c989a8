"""The recipe contract: typed hooks, and the default collector that reads a recipe's rows and
histograms from its catalog entry alone (no Python module)."""

import ctypes

import pytest

from kit import catalog
from kit.engine import contract
from kit.errors import CatalogError

BASE = """\
apiVersion: kit/v1
kind: RecipeCatalog
recipes:
  - name: tcpretrans
    summary: s
    example: kit run tcpretrans
    hooks:
      - {type: tracepoint, target: "tcp:tcp_retransmit_skb"}
    duration: {default: 20s, max: 10m}
    guard: {hot_path: false, cost_class: tracepoint_hash, scope_required: false}
    output: table
    runbook: r
"""


def load(extra):
    return catalog.parse(BASE + extra, "cat.yaml")["tcpretrans"]


class Key(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("nr", ctypes.c_uint32), ("comm", ctypes.c_char * 16)]


class Val(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64), ("total_ns", ctypes.c_uint64), ("max_ns", ctypes.c_uint64)]


class Pairs(list):
    """What a BCC hash's items() yields (ctypes key/value pairs): the collector's input, not a kernel."""

    def items(self):
        return list(self)


TABLE = """\
    table: {map: counts, sort: [-total_ms], nonzero: count}
    fields:
      - {name: pid, from: key.tgid, help: h}
      - {name: comm, from: key.comm, help: h}
      - {name: count, from: val.count, help: h}
      - {name: total_ms, from: val.total_ns, unit: ms, help: h}
      - {name: avg_us, from: val.total_ns, per: count, unit: us, help: h}
      - {name: max_us, from: val.max_ns, unit: us, help: h}
"""


def test_default_collector_reads_rows_by_the_catalogs_fields_with_units_means_and_order():
    r = load(TABLE)
    bpf = {"counts": Pairs([
        (Key(7, 0, b"a"), Val(3, 3_000_000, 2_500_000)),
        (Key(8, 0, b"bb"), Val(1, 9_000_000, 9_000_000)),
        (Key(9, 0, b"idle"), Val(0, 0, 0)),
    ])}
    rows = contract.collect_table(r, bpf)
    assert rows == [
        {"pid": 8, "comm": "bb", "count": 1, "total_ms": 9.0, "avg_us": 9000.0, "max_us": 9000.0},
        {"pid": 7, "comm": "a", "count": 3, "total_ms": 3.0, "avg_us": 1000.0, "max_us": 2500.0},
    ]


def test_a_table_recipe_without_module_or_table_is_a_catalog_error():
    with pytest.raises(CatalogError, match="needs table"):
        load("    fields:\n      - {name: count, help: h}\n")


@pytest.mark.parametrize("field, words", [
    ("{name: n, from: count, help: h}", "must be key.MEMBER"),
    ("{name: n, from: val.x; rm, help: h}", "must be key.MEMBER"),
    ("{name: n, from: key, help: h}", "must be key.MEMBER"),
    ("{name: n, from: val.n, decode: eval, help: h}", "unknown decode 'eval'"),
    ("{name: n, from: val.n, per: nothing, help: h}", "per 'nothing' names no field"),
])
def test_field_sources_are_checked_when_the_catalog_loads(field, words):
    with pytest.raises(CatalogError, match=words):
        load(f"    table: {{map: m}}\n    fields:\n      - {field}\n")


def test_table_sort_must_name_a_field():
    with pytest.raises(CatalogError, match="names no field"):
        load("    table: {map: m, sort: [-nope]}\n    fields:\n      - {name: n, from: val.n, help: h}\n")


def test_a_module_must_define_hooks(tmp_path):
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "tcpretrans.c").write_text("/* t */\n")
    (tmp_path / "m.py").write_text("def collect(ctx, bpf):\n    return {}\n")
    r = catalog.parse(BASE + "    module: m.py\n    fields:\n      - {name: n, help: h}\n", "cat.yaml",
                      probes_dir=str(tmp_path / "probes"))["tcpretrans"]
    with pytest.raises(CatalogError, match="defines no HOOKS"):
        contract.hooks_of(r)


def test_a_missing_module_is_a_catalog_error():
    with pytest.raises(CatalogError, match="is not a Python file"):
        load("    module: kit/recipes/nope.py\n    fields:\n      - {name: n, help: h}\n")


def test_every_shipped_recipe_module_says_its_steps_with_hooks():
    for r in catalog.load().values():
        hooks = contract.hooks_of(r)
        assert isinstance(hooks, contract.Hooks)


def test_every_cost_class_is_priced_from_known_primitives_on_every_family():
    from kit.guard import costs
    for name, (ins, outs, _n) in costs.CLASSES.items():
        for fam in ("tracepoint", "raw_tracepoint"):
            for term in ins + outs:
                t = term.format(f=fam)
                assert t == "uprobe" or (t in costs.DEFAULT_NS and t in costs.DEFAULT_BODY_NS), (name, t)


def test_the_catalog_checks_cost_classes_and_hook_types_against_their_one_definition():
    from kit.guard import costs
    from kit.host import features
    assert catalog.COST_CLASSES == tuple(costs.CLASSES)
    assert catalog.HOOK_TYPES is features.HOOK_TYPES


@pytest.mark.parametrize("text, dev", [("7:0", 7 << 20), ("259:3", 259 << 20 | 3)])
def test_a_disk_given_as_maj_min_becomes_the_kernels_internal_dev_t(text, dev):
    from kit.catalog import params
    spec = catalog.ParamSpec(name="disk", type="disk")
    assert params.TYPES["disk"].parse(text, spec) == dev
    assert params.TYPES["disk"].emit(params.TYPES["disk"].parse(text, spec)) == f"{dev}U"


@pytest.mark.parametrize("text", ["sda;rm", "../../etc", "99999:0", "no-such-disk-kit", ""])
def test_a_disk_that_is_not_one_is_refused(text):
    from kit.catalog import params
    from kit.errors import BadInput
    with pytest.raises(BadInput):
        params.TYPES["disk"].parse(text, catalog.ParamSpec(name="disk", type="disk"))


def test_a_step_function_its_hooks_forget_is_a_catalog_error(tmp_path):
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "tcpretrans.c").write_text("/* t */\n")
    (tmp_path / "m2.py").write_text("from kit.engine.contract import Hooks\n"
                                     "def extra(ctx):\n    return {}\n"
                                     "def collect(ctx, bpf):\n    return {}\n"
                                     "HOOKS = Hooks(collect=collect)\n")
    r = catalog.parse(BASE + "    module: m2.py\n    fields:\n      - {name: n, help: h}\n", "cat.yaml",
                      probes_dir=str(tmp_path / "probes"))["tcpretrans"]
    with pytest.raises(CatalogError, match="defines extra\\(\\) but its HOOKS does not name it"):
        contract.hooks_of(r)
