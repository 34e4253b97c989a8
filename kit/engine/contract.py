"""The recipe contract: what the engine hands a recipe, what a recipe may hand back.

A recipe is its catalog entry and its template; that is enough when its rows are
the catalog's `fields` read from one map (`table:`) and its histograms are log2
arrays (`histograms:`): the default collector below reads them. A recipe needs a
Python module (named by `module:` in the catalog) only for what is not data,
and says which steps it takes with a Hooks object named HOOKS:

  prepare(ctx)       resolve and check inputs that need the system (binaries, symbols)
  extra(ctx)         integers computed by kit for the template (BTF offsets, feature flags)
  attach(ctx, bpf)   explicit attach points; tracepoints and uprobes planned from the catalog attach themselves
  collect(ctx, bpf)  read the maps into {"rows": [...], "histograms": {...}, "notes": [...]}
  detach(ctx, bpf)   stop what attach started (threads polling buffers) before BCC cleans up
  cleanup(ctx)       release what prepare opened
"""

import dataclasses
import errno as errno_mod
import importlib
import importlib.util
import os
import re
import sys
import typing

from kit.engine import prelude
from kit.errors import CatalogError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Hooks:
    prepare: typing.Optional[typing.Callable] = None
    extra: typing.Optional[typing.Callable] = None
    attach: typing.Optional[typing.Callable] = None
    collect: typing.Optional[typing.Callable] = None
    detach: typing.Optional[typing.Callable] = None
    cleanup: typing.Optional[typing.Callable] = None


NO_HOOKS = Hooks()
STEPS = tuple(f.name for f in dataclasses.fields(Hooks))


@dataclasses.dataclass
class Context:
    """Everything a recipe sees: the recipe, the chosen hook, the checked values, and named slots the
    engine and the recipe fill in order (nothing is passed through string-keyed state)."""
    recipe: object
    hook: object
    values: dict
    extra: dict = dataclasses.field(default_factory=dict)          # extra(ctx)'s integers, as rendered
    notes: list = dataclasses.field(default_factory=list)          # shown under the results
    planned_uprobes: list = dataclasses.field(default_factory=list)   # kit.engine.uprobes.plan: resolved, not attached
    attached_uprobes: list = dataclasses.field(default_factory=list)  # kit.engine.uprobes.attach: what did attach
    task_offsets: dict = None   # kit.engine.render.task_offsets: what the prelude's --comm rule reads, as rendered
    private: object = None   # the one object a recipe module keeps between its steps (offcpu: its watcher)
    stream: object = None    # output: stream: the run's kit.engine.stream.Streamer (its tallies, for collect)

    def value(self, name):
        v = self.values.get(name)
        if v is None and name in self.recipe.params:
            return self.recipe.params[name].default_value
        return v


def hooks_of(recipe):
    """The recipe's Hooks, from the module its catalog entry names (none: the defaults)."""
    if not recipe.module:
        return NO_HOOKS
    mod = load_module(recipe.module, recipe)
    hooks = getattr(mod, "HOOKS", None)
    if not isinstance(hooks, Hooks):
        raise CatalogError(f"{recipe.where}: recipe {recipe.name!r}: {recipe.module} defines no HOOKS = Hooks(...)",
                           "say which steps the module takes with kit.engine.contract.Hooks")
    for step in STEPS:  # a step function the Hooks object forgets would silently never run
        fn = getattr(mod, step, None)
        if callable(fn) and getattr(hooks, step) is None:
            raise CatalogError(f"recipe {recipe.name!r}: {recipe.module} defines {step}() but its HOOKS does not "
                               f"name it", f"add {step}={step} to HOOKS, or rename the function")
    return hooks


def load_module(path, recipe):
    """A recipe module by its file path (absolute, as the catalog loader resolved it). kit's own are
    imported under their package name so that tests and the engine share one module object."""
    rel = os.path.relpath(path, ROOT)
    if not rel.startswith("..") and rel.endswith(".py"):
        return importlib.import_module(rel[:-3].replace(os.sep, "."))
    name = "kit_recipe_" + "".join(c if c.isalnum() else "_" for c in path)  # one module per file
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---- the default collector: rows from the catalog's fields, histograms from log2 arrays

def _syscall(nr):
    from bcc.syscall import syscall_name  # late: `kit show` works without bcc
    name = syscall_name(nr)
    return name.decode() if isinstance(name, bytes) else str(name)


def _errno(v):
    v = abs(int(v))
    return errno_mod.errorcode.get(v, str(v)) if v else ""


def _disk(dev):
    from kit.catalog.params import disk_name
    return disk_name(int(dev))


BLOCK_OPS = ("read", "write", "flush", "discard", "other")   # KIT_BLK_* in probes/biolatency.c


def _index(names):
    return lambda v: names[v] if 0 <= v < len(names) else str(v)


# decode: names a field's catalog value may take; each turns the raw member into what is shown
DECODERS = {
    "syscall": _syscall,
    "errno": _errno,
    "disk": _disk,
    "block_op": _index(BLOCK_OPS),
}
UNIT_SCALE = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}   # from a member in nanoseconds (name ends in _ns)
UNIT_DIGITS = {"s": 3, "ms": 3, "us": 2, "ns": 0}


def _raw(v):
    """A ctypes member as Python: char arrays as text (data from the kernel: decoded, never interpreted)."""
    if isinstance(v, (bytes, bytearray)):  # BCC hands char[] members over as bytes
        return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")
    if hasattr(v, "_length_"):
        try:
            return bytes(bytearray(v)).split(b"\0", 1)[0].decode("utf-8", "replace")
        except (TypeError, ValueError):
            return list(v)
    return int(v) if not isinstance(v, float) else v


# ---- `from:`: where a field's value comes from, one vocabulary for every output. The default
# collector reads the table map's key or value (key.MEMBER, val.MEMBER, or val alone: a scalar count);
# a stream (kit/engine/stream.py) reads the record its template outputs (event.MEMBER) as each arrives.
SOURCES = {"key": "map", "val": "map", "event": "stream"}   # side -> what it reads: a BPF map's entry, a record
SCALAR_SIDES = ("val",)  # sides that may stand alone (the object is the value)
MEMBER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_source(ref, output):
    """(side, member) of a field's `from:` (or a stream field's `len:`) for a recipe of this output;
    ValueError saying what it must be. member is "" for a side standing alone."""
    reads = "stream" if output == "stream" else "map"
    sides = [s for s, r in SOURCES.items() if r == reads]
    side, dot, member = ref.partition(".")
    if side in sides and (MEMBER_RE.fullmatch(member) or (not dot and side in SCALAR_SIDES)):
        return side, member
    forms = [f"{s}.MEMBER" for s in sides] + [f"{s} (a scalar value)" for s in sides if s in SCALAR_SIDES]
    forms_text = forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]
    raise ValueError(f"must be {forms_text}")


def source_value(obj, member):
    """The raw value a field reads: obj.member, or obj itself (its .value) for a side standing alone."""
    return _raw(getattr(obj, member) if member else obj.value)


# decode: names only a stream field may take: kit.engine.stream defines them (they see the run: its clock, the
# cgroup hierarchy) and checks at import that it defines exactly these, so the catalog (which loads before
# any run) validates names without importing the engine above it.
STREAM_DECODERS = ("open_flags", "strings", "wallclock", "exit_code", "exit_signal", "cgroup", "memcg",
                   "memcg_limit", "memcg_max")


def decoders(output):
    """The decode: names a field of this output may take: the row decoders, and for a stream also
    kit.engine.stream's."""
    return sorted(set(DECODERS) | (set(STREAM_DECODERS) if output == "stream" else set()))


def row_of(fields, key, val):
    """One row from a (key, value) pair of the table map, by each field's `from`, `unit`, `per`, `decode`."""
    row, raw = {}, {}
    for f in fields:
        if not f.source:
            continue
        side, _, member = f.source.partition(".")
        v = source_value(key if side == "key" else val, member)
        raw[f.name] = v
        if f.decode:
            v = DECODERS[f.decode](v)
        elif member.endswith("_ns") and f.unit in UNIT_SCALE:
            v = v / UNIT_SCALE[f.unit]
        row[f.name] = v
    for f in fields:
        if f.per and f.source:
            n = raw.get(f.per) or 0
            row[f.name] = row[f.name] / n if n else 0.0
        if f.unit in UNIT_DIGITS and isinstance(row.get(f.name), float):
            row[f.name] = round(row[f.name], UNIT_DIGITS[f.unit])
    return row


def collect_table(recipe, bpf):
    spec = recipe.table
    rows = []
    for k, v in bpf[spec.map].items():
        row = row_of(recipe.fields, k, v)
        if spec.nonzero and not row.get(spec.nonzero):
            continue
        rows.append(row)
    for key in reversed(spec.sort):  # stable sorts, last key first
        name, desc = key.lstrip("-"), key.startswith("-")
        rows.sort(key=lambda r: (r.get(name) is None, r.get(name) if r.get(name) is not None else 0), reverse=desc)
    return rows


def collect_histograms(recipe, bpf):
    """{name: buckets} for every histogram the catalog declares; a histogram keyed by a struct with a
    `slot` member and group members gives one histogram per group, named `name group=value ...`."""
    out = {}
    for h in recipe.histograms:
        try:
            table = bpf[h.map]
        except KeyError:  # compiled out by a parameter (e.g. biolatency's queue_hist without --queued)
            continue
        groups = {}
        for k, v in table.items():
            count = int(v.value)
            if not count:
                continue
            if hasattr(k, "slot"):
                names = [n for n, *_ in k._fields_ if n != "slot" and not n.startswith("_")]
                label = " ".join(_group(recipe, n, getattr(k, n)) for n in names)
                groups.setdefault(label, {})[int(k.slot)] = count
            else:
                groups.setdefault("", {})[int(k.value)] = count
        if not groups:
            out[h.name] = []
        for label, counts in sorted(groups.items()):
            out[f"{h.name} {label}".strip()] = prelude.buckets(counts)
    return out


def _group(recipe, member, raw):
    """A histogram's group member, shown as the table field read from the same key member (its name
    and decoder), so one declaration serves both."""
    v = _raw(raw)
    for f in recipe.fields:
        if f.source == f"key.{member}":
            return f"{f.name}={DECODERS[f.decode](v) if f.decode else v}"
    return f"{member}={v}"


def default_collect(ctx, bpf):
    recipe = ctx.recipe
    out = {}
    if recipe.table is not None:
        out["rows"] = collect_table(recipe, bpf)
    if recipe.histograms:
        out["histograms"] = collect_histograms(recipe, bpf)
    return out
