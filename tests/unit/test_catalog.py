"""The catalog loads strictly and names file:line and the recipe in every error."""

import os
import textwrap

import pytest

from kit import catalog
from kit.errors import CatalogError, ExitCode

GOOD = """\
apiVersion: kit/v1
kind: RecipeCatalog
recipes:
  - name: tcpretrans
    summary: s
    example: kit run tcpretrans
    hooks:
      - type: tracepoint
        target: tcp:tcp_retransmit_skb
    params:
      port: {type: port, scope: true, help: h}
    duration: {default: 20s, max: 10m}
    guard: {hot_path: false, cost_class: tracepoint_hash, scope_required: false}
    output: table
    fields:
      - {name: count, from: val.count, help: h}
    runbook: r
    table: {map: flows}
"""


def load(text):
    return catalog.parse(text, "cat.yaml")


def test_the_shipped_catalog_loads():
    recipes = catalog.load()
    assert "tcpretrans" in recipes


def test_every_recipe_has_a_template_and_runbook_and_every_template_and_module_a_recipe():
    from kit.engine import contract
    recipes = catalog.load()
    templates = {f[:-2] for f in os.listdir(catalog.PROBES_DIR) if f.endswith(".c")}
    assert templates == set(recipes)
    modules = {os.path.join(catalog.ROOT, "kit", "recipes", f) for f in os.listdir(os.path.join(catalog.ROOT, "kit", "recipes"))
               if f.endswith(".py") and f != "__init__.py"}
    assert modules == {r.module for r in recipes.values() if r.module}, "a recipe module no catalog entry names"
    for r in recipes.values():
        assert os.path.isfile(os.path.join(catalog.ROOT, r.runbook)), r.runbook
        assert r.example.startswith(f"kit run {r.name}")
        hooks = contract.hooks_of(r)
        assert r.module or r.table is not None or r.output != "table", r.name
        assert hooks.collect or r.table is not None or r.histograms, f"{r.name}: nothing would collect its results"


def test_minimal_catalog_parses():
    r = load(GOOD)["tcpretrans"]
    assert r.duration_default == 20 and r.duration_max == 600
    assert r.params["port"].scope and r.line == 4


@pytest.mark.parametrize("edit, line, words", [
    (("    output: table\n", "    output: table\n    colour: blue\n"), 15, "unknown key 'colour'"),
    (("{default: 20s, max: 10m}", "{default: 20m, max: 10m}"), 12, "over the maximum"),
    (("type: tracepoint\n", "type: kprobez\n"), 8, "unknown hook type 'kprobez'"),
    (("hot_path: false", "hot_path: 'false'"), 13, "'hot_path' must be bool"),
    (("apiVersion: kit/v1", "apiVersion: kit/v9"), 1, "apiVersion"),
    (("port: {type: port", "port: {type: portz"), 11, "unknown type 'portz'"),
    (("port: {type: port", "out: {type: port"), 11, "parameter 'out' is named like `kit run`'s own --out"),
    (("cost_class: tracepoint_hash", "cost_class: free"), 13, "unknown cost_class"),
    (("  - name: tcpretrans\n", "  - name: tcpretrans\n    name: again\n"), 5, "duplicate key 'name'"),
])
def test_errors_name_file_line_and_recipe(edit, line, words):
    with pytest.raises(CatalogError) as e:
        load(GOOD.replace(*edit))
    assert e.value.code == ExitCode.CATALOG
    assert f"cat.yaml:{line}:" in e.value.message, e.value.message
    assert words in e.value.message
    if line > 3 and "duplicate key" not in words:  # the YAML loader sees keys before any recipe
        assert "recipe 'tcpretrans'" in e.value.message or "recipe 'again'" in e.value.message


def test_missing_template_is_an_error_naming_the_recipe():
    with pytest.raises(CatalogError, match=r"cat.yaml:4: recipe 'nosuch': missing template probes/nosuch.c"):
        load(GOOD.replace("name: tcpretrans", "name: nosuch"))


def test_duplicate_recipe_is_an_error():
    body = GOOD.split("recipes:\n")[1]
    with pytest.raises(CatalogError, match="duplicate recipe 'tcpretrans' \\(first at line 4\\)"):
        load(GOOD + body)


def test_malformed_yaml_names_the_line():
    with pytest.raises(CatalogError, match=r"cat.yaml:\d+: malformed YAML"):
        load(GOOD + "  - [unclosed\n")


def test_yaml_is_loaded_safely():
    with pytest.raises(CatalogError):
        load("!!python/object/apply:os.system ['true']\n")


def test_unknown_task_scope_is_an_error():
    with pytest.raises(CatalogError, match="unknown scope 'uid'"):
        load(GOOD.replace("    params:\n", "    scopes: [uid]\n    params:\n"))
