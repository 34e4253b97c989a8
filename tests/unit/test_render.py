"""Rendering fills every placeholder from the typed layer, or fails loudly."""

import dataclasses
import re

import pytest

from kit import catalog
from kit.catalog import params
from kit.engine import render
from kit.errors import BadInput, CatalogError


@pytest.fixture
def recipes():
    return catalog.load()


def tmpl(tmp_path, body, recipe):
    (tmp_path / "kit_prelude.h").write_text(open(f"{catalog.PROBES_DIR}/kit_prelude.h").read())
    path = tmp_path / f"{recipe.name}.c"
    path.write_text(body)
    return dataclasses.replace(recipe, template_path=str(path))


def test_unfilled_placeholder_names_recipe_and_placeholder(tmp_path, recipes):
    r = tmpl(tmp_path, "#define P {{port}}\n#define A {{addr}}\n#define N {{netns}}\n{{mystery}}\n",
             recipes["tcpretrans"])
    with pytest.raises(CatalogError, match=r"recipe 'tcpretrans': tcpretrans.c has placeholder\(s\) mystery"):
        render.render(r, r.hooks[0], {}, {}, probes_dir=str(tmp_path))


def test_unused_parameter_names_recipe_and_parameter(tmp_path, recipes):
    r = tmpl(tmp_path, "#define P {{port}}\n#define N {{netns}}\n", recipes["tcpretrans"])
    with pytest.raises(CatalogError, match=r"parameter\(s\) addr not used by tcpretrans.c"):
        render.render(r, r.hooks[0], {}, {}, probes_dir=str(tmp_path))


def test_computed_values_must_be_integers(tmp_path, recipes):
    r = tmpl(tmp_path, "{{port}} {{addr}} {{netns}} {{x}}", recipes["tcpretrans"])
    with pytest.raises(CatalogError, match="computed value 'x' is not an integer"):
        render.render(r, r.hooks[0], {}, {"x": "1; evil()"}, probes_dir=str(tmp_path))


def test_shipped_templates_render_without_leftovers(recipes):
    from kit.engine import run
    for r in recipes.values():
        if r.guard.scope_required:
            continue
        _ctx, text = run.prepare(r, {})
        assert not re.search(r"\{\{\s*[A-Za-z_]", text)
        assert f"KIT_HOOK_{r.hooks[0].type.upper()}" in text


def test_port_reaches_c_as_a_number(recipes):
    from kit.engine import run
    r = recipes["tcpretrans"]
    spec = r.params["port"]
    _ctx, text = run.prepare(r, {"port": params.TYPES["port"].parse("8443", spec)})
    assert "#define KIT_PORT        8443\n" in text


def test_comm_is_emitted_as_a_byte_initializer(recipes):
    spec = catalog.ParamSpec(name="comm", type="comm")
    assert params.emit(spec, "ab") == "{97, 98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}"


@pytest.mark.parametrize("text", ["pay-svc-worker-01", "x" * 16, "ééééééééé"])
def test_comm_over_15_bytes_is_refused_with_the_truncated_form(text):
    spec = catalog.ParamSpec(name="comm", type="comm")
    with pytest.raises(BadInput) as e:
        params.TYPES["comm"].parse(text, spec)
    assert "truncates comm to 15" in e.value.message
    assert "--comm" in e.value.hint
