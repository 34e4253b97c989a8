"""Renders a recipe into the exact C text BCC compiles.

Text = a generated header (hook choice) + probes/kit_prelude.h + probes/<recipe>.c,
with every {{placeholder}} replaced in one pass by a literal from the typed
layer (kit.catalog.params). A placeholder nobody fills, a parameter no placeholder
uses, or an extra value that is not an integer is an error: a filter must
never vanish silently.
"""

import functools
import os
import re

from kit.catalog import params as ptypes
from kit.catalog import PROBES_DIR
from kit.errors import CatalogError, Unsupported

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
PRELUDE = "kit_prelude.h"


def _read(path):
    with open(path) as f:
        return f.read()


# What the prelude reads for --comm's second half, a thread's process name: the
# thread-group leader's comm, at this kernel's offsets (kit/host/btf.py), and how.
TASK_OFFSETS = {"task_leader_off": ("task_struct", "group_leader"), "task_comm_off": ("task_struct", "comm")}
TASK_READ_NONE, TASK_READ_PROBE, TASK_READ_BTF = 0, 1, 2  # KIT_TASK_READ in probes/kit_prelude.h
NO_TASK_OFFSETS = {"task_read": TASK_READ_NONE, **dict.fromkeys(TASK_OFFSETS, 0)}


@functools.lru_cache(maxsize=1)
def _task_btf_helper():
    """bpf_get_current_task_btf (5.11+): typed loads instead of two bpf_probe_read_kernel calls, about
    12 ns less per event the rule rejects (measured with bpf_stats on the syscalls recipe)."""
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(" bpf_get_current_task_btf") for line in f)
    except OSError:
        return False


def task_offsets(values, notes=None):
    """{task_read, task_leader_off, task_comm_off}: how the prelude reads a thread's process name, from this
    kernel's BTF. Off when --comm is unset, or when this kernel cannot give the offsets (no BTF) or forbids
    the read (lockdown=confidentiality): --comm then matches each thread's own name, and a note says so."""
    if values.get("comm") is None:
        return dict(NO_TASK_OFFSETS)
    from kit.host import btf, features
    if not features.btf_available():
        why = "this kernel has no BTF"
    elif features.lockdown() == "confidentiality":
        why = "lockdown=confidentiality forbids reading kernel memory"
    else:
        try:
            offs = btf.offsets(TASK_OFFSETS)
        except Unsupported as e:
            why = e.message
        else:
            return {"task_read": TASK_READ_BTF if _task_btf_helper() else TASK_READ_PROBE, **offs}
    if notes is not None:
        notes.append(f"--comm matched each thread's own name only ({why}): threads a process renamed were missed; "
                     "--pid takes every thread of a process")
    return dict(NO_TASK_OFFSETS)


def scope_literals(recipe, values, task=None):
    """Literals for the prelude's task-scope filters; unset scopes are off. task: task_offsets()."""
    def lit(name, on):
        spec = recipe.params.get(name)
        v = values.get(name)
        if spec is None or v is None:
            return on
        return ptypes.emit(spec, v)

    def comm(name):
        spec = recipe.params.get(name)
        v = values.get(name) if spec else None
        return (ptypes.emit(spec, v) if v is not None else ptypes.TYPES["comm"].off()), "1" if v is not None else "0"

    scope_comm, comm_on = comm("comm")
    scope_thread_comm, thread_comm_on = comm("thread_comm")
    task = dict(NO_TASK_OFFSETS if task is None else task)
    if set(task) != set(NO_TASK_OFFSETS) or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                                for v in task.values()) or task["task_read"] > TASK_READ_BTF:
        raise CatalogError(f"recipe {recipe.name!r}: task offsets {task!r} are not {', '.join(NO_TASK_OFFSETS)} "
                           "as integers", "this is a kit bug")
    reads = comm_on == "1" and task["task_read"] != TASK_READ_NONE
    return {
        "scope_tgid": lit("pid", "0"),
        "scope_tid": lit("tid", "0"),
        "scope_cgroup": lit("cgroup", "0ULL"),
        "scope_comm": scope_comm,
        "scope_comm_on": comm_on,
        "scope_thread_comm": scope_thread_comm,
        "scope_thread_comm_on": thread_comm_on,
        "scope_task_read": str(task["task_read"]) if reads else "0",
        "scope_task_leader_off": str(task["task_leader_off"]) if reads else "0",
        "scope_task_comm_off": str(task["task_comm_off"]) if reads else "0",
    }


def render(recipe, hook, values, extra=None, probes_dir=PROBES_DIR, task=None):
    """values: param name -> parsed value (or None); extra: name -> int, computed by kit (e.g. BTF offsets);
    task: task_offsets() for the prelude (looked up here when not given)."""
    extra = extra or {}
    if task is None:
        task = task_offsets(values)
    fills = {}
    for name, spec in recipe.params.items():
        if spec.in_c:
            fills[name] = ptypes.emit(spec, values.get(name))
    for name, v in extra.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise CatalogError(f"recipe {recipe.name!r}: computed value {name!r} is not an integer", "this is a kit bug")
        if name in fills:
            raise CatalogError(f"recipe {recipe.name!r}: computed value {name!r} shadows a parameter", "rename it")
        fills[name] = str(v)
    prelude = _fill(_read(os.path.join(probes_dir, PRELUDE)), scope_literals(recipe, values, task), PRELUDE,
                    recipe, {})
    body = _fill(_read(recipe.template_path), fills, os.path.basename(recipe.template_path), recipe, fills)
    head = (f"/* kit recipe {recipe.name}: generated by kit; every value below came through kit's typed layer */\n"
            f"#define KIT_HOOK_{hook.type.upper()} 1\n")
    return head + prelude + "\n" + body


def _fill(text, fills, fname, recipe, must_use):
    used, missing = set(), []

    def sub(m):
        name = m.group(1)
        if name not in fills:
            missing.append(name)
            return m.group(0)
        used.add(name)
        return fills[name]

    out = PLACEHOLDER.sub(sub, text)
    if missing:
        raise CatalogError(f"recipe {recipe.name!r}: {fname} has placeholder(s) {', '.join(sorted(set(missing)))} "
                           "that no parameter fills", "declare the parameter in incident_recipes.yaml or fix the template")
    unused = sorted(set(must_use) - used)
    if unused:
        raise CatalogError(f"recipe {recipe.name!r}: parameter(s) {', '.join(unused)} not used by {fname}",
                           "use them as {{name}} in the template or remove them from the catalog")
    if re.search(r"\{\{\s*[A-Za-z_]", out):
        raise CatalogError(f"recipe {recipe.name!r}: {fname} has a malformed placeholder", "write it as {{name}}")
    return out


class _Named:
    def __init__(self, name):
        self.name = name


def own_program(path, fills, probes_dir=PROBES_DIR):
    """One of kit's own programs under probes/ (calibration), filled like a recipe's template: every
    placeholder by a literal from the typed layer, every literal used."""
    return _fill(_read(os.path.join(probes_dir, path)), fills, path, _Named(path), fills)


def prelude(literals, probes_dir=PROBES_DIR, who="kit"):
    """The shared prelude alone, filled with scope literals (for kit's own probes, e.g. calibration)."""
    return _fill(_read(os.path.join(probes_dir, PRELUDE)), literals, PRELUDE, _Named(who), {})
