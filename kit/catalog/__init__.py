"""Loads incident_recipes.yaml strictly into Recipe objects.

One schema, checked here: unknown keys, wrong types, duplicate keys or
recipes, a default duration over the maximum, an unknown hook type or a
missing template are errors naming file:line and the recipe.
"""

import dataclasses
import os
import re

import yaml

from kit.catalog import trust
from kit.guard import costs
from kit.host import features
from kit.errors import CatalogError
from kit.catalog.params import TYPES, Duration

API_VERSION = "kit/v1"
KIND = "RecipeCatalog"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CATALOG = os.path.join(ROOT, "incident_recipes.yaml")
PROBES_DIR = os.path.join(ROOT, "probes")

HOOK_TYPES = features.HOOK_TYPES     # one list, defined where each type's availability is decided
COST_CLASSES = tuple(costs.CLASSES)  # one list, defined where each class is priced
OUTPUTS = ("table", "stacks", "histograms", "stream")
SHOW = ("always", "nonzero", "json")  # stream fields: where a field appears (json: JSON Lines only)
TASK_SCOPES = {
    "comm": dict(type="comm", help="threads whose own name, or whose process's name (its main thread's: what "
                 "`ps -o comm` shows), is exactly this (at most 15 bytes): every thread of a process, renamed or not"),
    "thread_comm": dict(type="comm", help="threads whose own name is exactly this (`ps -L -o comm`, at most 15 "
                        "bytes), whatever their process is named"),
    "pid": dict(type="pid", help="process id (all its threads)"),
    "tid": dict(type="tid", help="thread id"),
    "cgroup": dict(type="cgroup", help="cgroup v2 directory, e.g. system.slice/nginx.service"),
}


@dataclasses.dataclass
class ParamSpec:
    name: str
    type: str
    help: str = ""
    default: object = None
    min: int = 0
    max: int = 2**63 - 1
    choices: tuple = ()
    scope: bool = False      # narrows which events are paid for in full
    task_scope: bool = False  # filtered by the shared prelude rather than the template
    line: int = 0

    @property
    def flag(self):
        return self.name.replace("_", "-")

    @property
    def in_c(self):
        return TYPES[self.type].c_emitter and not self.task_scope

    @property
    def default_value(self):
        return None if self.default is None else TYPES[self.type].parse(self.default, self)


@dataclasses.dataclass
class Attach:
    fn: str            # C function in the template
    symbol: str = ""   # uprobes: name of the symbol parameter (or a literal symbol after '=')
    at: str = "entry"  # entry or return
    optional: bool = False  # uprobes: skip (with a note) when the symbol is absent, e.g. gethostbyname;
                            # silently when its symbol parameter is unset (lockhold's --inside)


@dataclasses.dataclass
class Hook:
    type: str
    target: str = ""
    attach: list = dataclasses.field(default_factory=list)
    binary: str = ""    # uprobes: name of the parameter that gives the binary
    frequency: str = ""  # perf_event: name of the parameter that gives the samples per second per CPU
    requires: tuple = ()  # extra kernel facts this rung needs: btf, kernel_read (bpf_probe_read_kernel)
    line: int = 0


@dataclasses.dataclass
class Field:
    name: str
    unit: str = ""
    help: str = ""
    source: str = ""   # `from`: key.MEMBER or val.MEMBER of the table map (default collector)
    per: str = ""      # divide by this field's raw value (a mean)
    decode: str = ""   # an allow-listed decoder (kit.engine.contract.DECODERS; streams also kit.engine.stream.DECODERS)
    # stream fields only (output: stream; `from: event.MEMBER` of the record the template outputs):
    length: str = ""   # `len`: event.MEMBER holding how many bytes of this member are valid (decode: strings)
    values: tuple = () # the member is an index into these names (e.g. the event's kind)
    kinds: tuple = ()  # the event kinds that carry this field (default: all)
    show: str = "always"  # always | nonzero (human lines skip 0/empty) | json (JSON Lines only)
    failure: bool = False  # a truthy value marks the event failed (the summary counts failures per group)
    width: int = 0     # human column width (0: as wide as the header)


@dataclasses.dataclass
class Table:
    """Where the default collector reads rows: one BPF hash, one row per entry."""
    map: str
    sort: tuple = ()      # field names, '-' first for descending
    nonzero: str = ""     # drop rows where this field is 0


@dataclasses.dataclass
class Histogram:
    name: str             # shown as the histogram's title, and its key in the result
    map: str              # a log2 BPF_HISTOGRAM (slot index, or a struct key with a `slot` member)


@dataclasses.dataclass
class Stream:
    """Where a stream recipe's events come from and how the engine (kit/engine/stream.py) tallies them."""
    buffer: str           # the template's BPF_RINGBUF_OUTPUT / BPF_PERF_OUTPUT map
    kind: str = ""        # the field (with values:) saying which kind of event a record is
    group: tuple = ()     # fields the summary counts events by (e.g. comm)
    limit: int = 1000     # lines per second shown by default (--limit); the rest are counted, not shown
    pages: int = 64       # buffer size in pages (ring buffer: in all; perf buffer: per CPU), a power of 2


@dataclasses.dataclass
class Guard:
    hot_path: bool
    cost_class: str
    scope_required: bool
    rate_hook: str = ""   # which hook the rate estimate counts, default the first attach point


@dataclasses.dataclass
class Recipe:
    name: str
    summary: str
    hooks: list
    params: dict
    duration_default: float
    duration_max: float
    guard: Guard
    output: str
    fields: list
    runbook: str
    example: str
    template_path: str
    line: int
    source: str
    module: str = ""          # path of the recipe's Python module (kit.engine.contract.Hooks), or "" for none
    table: Table = None       # rows by the default collector
    histograms: list = dataclasses.field(default_factory=list)  # [Histogram], by the default collector
    stream: Stream = None     # output: stream: the buffer and its tallies (kit/engine/stream.py)
    # A table recipe whose stream: block has fields of its own also runs as a stream (`--stream`): that
    # form is this recipe with output stream, those fields and the block's cost class; the template
    # tells the two apart by {{kit_stream}}. form is "stream" on the form itself.
    stream_form: "Recipe" = None
    form: str = ""

    @property
    def where(self):
        return f"{self.source}:{self.line}"

    def scope_params(self):
        return [p for p in self.params.values() if p.scope]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader that records line numbers and refuses duplicate keys (libyaml's when
    present: ~10x faster, ~0.1 s of kit's start-up; same nodes, same marks)."""


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if key in out:
            raise CatalogError(f"{loader.name}:{knode.start_mark.line + 1}: duplicate key {key!r}",
                               "remove one of the two")
        out[key] = loader.construct_object(vnode, deep=True)
        out.lines[key] = vnode.start_mark.line + 1
    return out


class _Map(dict):
    line = 0

    def __init__(self):
        super().__init__()
        self.lines = {}


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Checker:
    def __init__(self, source):
        self.source = source
        self.recipe = None

    def fail(self, line, msg, hint="fix incident_recipes.yaml"):
        who = f" recipe {self.recipe!r}:" if self.recipe else ""
        raise CatalogError(f"{self.source}:{line}:{who} {msg}", hint)

    def keys(self, m, required, optional=()):
        if not isinstance(m, _Map):
            self.fail(getattr(m, "line", 0), f"expected a mapping, got {type(m).__name__}")
        for k in m:
            if k not in required and k not in optional:
                self.fail(m.lines[k], f"unknown key {k!r}", f"allowed here: {', '.join(list(required) + list(optional))}")
        for k in required:
            if k not in m:
                self.fail(m.line, f"missing key {k!r}")

    def typed(self, m, key, typ, default=None):
        if key not in m:
            return default
        v = m[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            self.fail(m.lines[key], f"{key!r} must be {typ.__name__}, got {type(v).__name__} {v!r}")
        return v

    def duration(self, m, key):
        v = m[key]
        try:
            return Duration.seconds(v, key)
        except Exception:
            self.fail(m.lines[key], f"{key!r}: {v!r} is not a duration like 20s or 2m")


NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
# options kit run (kit/cli.py) gives every recipe, or every recipe of a kind: no parameter may take their names
RUN_OPTIONS = frozenset({"duration", "for", "json", "budget", "force", "dry_run", "hook", "progress", "out", "unit",
                         "container", "folded", "svg", "help"})


def load(path=DEFAULT_CATALOG, probes_dir=None):
    """A catalog's templates live in probes/ beside it (for the shipped catalog, kit's own probes/)."""
    if probes_dir is None:
        probes_dir = os.path.join(os.path.dirname(os.path.abspath(path)), "probes")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise CatalogError(f"cannot read catalog {path}: {e.strerror}", "check the path given to --catalog") from None
    trust.check(path, "catalog")
    return parse(text, path, probes_dir)


def parse(text, source="<catalog>", probes_dir=PROBES_DIR):
    loader = _Loader(text)
    loader.name = source
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise CatalogError(f"{source}:{line}: malformed YAML: {getattr(e, 'problem', e)}",
                           "fix the YAML syntax there") from None
    finally:
        loader.dispose()
    c = _Checker(source)
    if not isinstance(doc, _Map):
        c.fail(1, "the catalog must be a mapping with apiVersion, kind and recipes")
    c.keys(doc, ("apiVersion", "kind", "recipes"), ("requires",))
    if doc["apiVersion"] != API_VERSION:
        c.fail(doc.lines["apiVersion"], f"apiVersion {doc['apiVersion']!r} is not {API_VERSION!r}",
               "this kit reads kit/v1 catalogs")
    if doc["kind"] != KIND:
        c.fail(doc.lines["kind"], f"kind {doc['kind']!r} is not {KIND!r}")
    if not isinstance(doc["recipes"], list) or not doc["recipes"]:
        c.fail(doc.lines["recipes"], "recipes must be a non-empty list")
    recipes = {}
    for r in doc["recipes"]:
        c.recipe = None
        recipe = _recipe(c, r, source, probes_dir)
        if recipe.name in recipes:
            c.fail(r.line, f"duplicate recipe {recipe.name!r} (first at line {recipes[recipe.name].line})",
                   "rename or remove one")
        recipes[recipe.name] = recipe
    return recipes


def _recipe(c, r, source, probes_dir):
    c.recipe = r.get("name") if isinstance(r, dict) and isinstance(r.get("name"), str) else None
    if isinstance(r, dict) and "next" in r:  # catalogs written before kit/output/hints.py
        c.fail(r.lines["next"], "`next:` is no longer part of a recipe: next steps are computed from each run's "
               "results (kit/output/hints.py)", "remove the next: list")
    c.keys(r, ("name", "summary", "hooks", "duration", "guard", "output", "fields", "runbook", "example"),
           ("params", "scopes", "module", "table", "histograms", "stream"))
    name = c.typed(r, "name", str)
    if not NAME_RE.fullmatch(name):
        c.fail(r.lines["name"], f"recipe name {name!r} must be lower-case letters, digits and _")
    c.recipe = name
    summary = c.typed(r, "summary", str)
    params = {}
    scopes = c.typed(r, "scopes", list, [])
    for s in scopes:
        if s not in TASK_SCOPES:
            c.fail(r.lines["scopes"], f"unknown scope {s!r}", f"task scopes are {', '.join(TASK_SCOPES)}")
        params[s] = ParamSpec(name=s, scope=True, task_scope=True, line=r.lines["scopes"], **TASK_SCOPES[s])
    if ("comm" in scopes) != ("thread_comm" in scopes):  # one meaning of --comm everywhere, and its sibling
        c.fail(r.lines["scopes"], "scopes comm and thread_comm go together", "list both, or neither")
    for pname, p in (c.typed(r, "params", dict, {}) or {}).items():
        if pname in params:
            c.fail(r.lines["params"], f"parameter {pname!r} is also a scope")
        if not NAME_RE.fullmatch(str(pname)):
            c.fail(r.lines["params"], f"parameter name {pname!r} must be lower-case letters, digits and _")
        if pname in RUN_OPTIONS:
            c.fail(r.lines["params"], f"parameter {pname!r} is named like `kit run`'s own --{pname.replace('_', '-')}",
                   "give it another name")
        c.keys(p, ("type", "help"), ("default", "min", "max", "choices", "scope"))
        ptype = c.typed(p, "type", str)
        if ptype not in TYPES:
            c.fail(p.lines["type"], f"parameter {pname!r}: unknown type {ptype!r}", f"types: {', '.join(TYPES)}")
        spec = ParamSpec(name=pname, type=ptype, help=c.typed(p, "help", str), default=p.get("default"),
                         min=c.typed(p, "min", int, 0), max=c.typed(p, "max", int, 2**63 - 1),
                         choices=tuple(c.typed(p, "choices", list, [])), scope=c.typed(p, "scope", bool, False),
                         line=p.line)
        if ptype == "enum" and not spec.choices:
            c.fail(p.line, f"enum parameter {pname!r} needs choices")
        if spec.default is not None:
            try:
                spec.default_value
            except Exception as e:
                c.fail(p.lines["default"], f"parameter {pname!r}: bad default {spec.default!r}: {e}")
        params[pname] = spec
    hooks = _hooks(c, r, params)
    d = r["duration"]
    c.keys(d, ("default", "max"))
    dmax, ddef = c.duration(d, "max"), c.duration(d, "default")
    if ddef > dmax:
        c.fail(d.lines["default"], f"default duration {d['default']} is over the maximum {d['max']}")
    g = r["guard"]
    c.keys(g, ("hot_path", "cost_class", "scope_required"), ("rate_hook",))
    guard = Guard(hot_path=c.typed(g, "hot_path", bool), cost_class=c.typed(g, "cost_class", str),
                  scope_required=c.typed(g, "scope_required", bool), rate_hook=c.typed(g, "rate_hook", str, ""))
    if guard.cost_class not in COST_CLASSES:
        c.fail(g.lines["cost_class"], f"unknown cost_class {guard.cost_class!r}", f"one of {', '.join(COST_CLASSES)}")
    if guard.scope_required and not any(p.scope for p in params.values()):
        c.fail(g.line, "scope_required but the recipe declares no scope parameter")
    output = c.typed(r, "output", str)
    if output not in OUTPUTS:
        c.fail(r.lines["output"], f"unknown output {output!r}", f"one of {', '.join(OUTPUTS)}")
    fields = _fields(c, r, output)
    module = _module(c, r, os.path.dirname(os.path.abspath(probes_dir)))
    table = _table(c, r, fields)
    histograms = []
    for h in c.typed(r, "histograms", list, []):
        c.keys(h, ("name", "map"))
        histograms.append(Histogram(name=c.typed(h, "name", str), map=c.typed(h, "map", str)))
    if not module and output == "table" and table is None:
        c.fail(r.line, "a table recipe without a module needs table: {map: ...} for the default collector",
               "name the BPF map its rows come from, or give module: with a collect step")
    stream, form = _stream(c, r, fields, output)
    template = os.path.join(probes_dir, f"{name}.c")
    if not os.path.isfile(template):
        c.fail(r.line, f"missing template probes/{name}.c", "every recipe needs probes/<name>.c")
    trust.check(template, "template")
    recipe = Recipe(name=name, summary=summary, hooks=hooks, params=params, duration_default=ddef,
                    duration_max=dmax, guard=guard, output=output, fields=fields, runbook=c.typed(r, "runbook", str),
                    example=c.typed(r, "example", str), template_path=template,
                    line=r.line, source=source, module=module, table=table, histograms=histograms,
                    stream=stream)
    if form is not None:
        form_stream, form_fields, cost_class = form
        recipe.stream_form = dataclasses.replace(
            recipe, output="stream", fields=form_fields, table=None, histograms=[], stream=form_stream,
            guard=dataclasses.replace(guard, cost_class=cost_class or guard.cost_class), form="stream")
    return recipe


IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fields(c, r, output="table"):
    from kit.engine.contract import decoders as decoders_for, parse_source
    decoders = decoders_for(output)
    stream_keys = ("len", "values", "kinds", "show", "failure", "width") if output == "stream" else ()
    fields = []
    for f in c.typed(r, "fields", list):
        c.keys(f, ("name", "help"), ("unit", "from", "per", "decode") + stream_keys)
        field = Field(name=c.typed(f, "name", str), unit=c.typed(f, "unit", str, ""), help=c.typed(f, "help", str),
                      source=c.typed(f, "from", str, ""), per=c.typed(f, "per", str, ""),
                      decode=c.typed(f, "decode", str, ""), length=c.typed(f, "len", str, ""),
                      values=tuple(c.typed(f, "values", list, [])), kinds=tuple(c.typed(f, "kinds", list, [])),
                      show=c.typed(f, "show", str, "always"), failure=c.typed(f, "failure", bool, False),
                      width=c.typed(f, "width", int, 0))
        for key, ref in (("from", field.source), ("len", field.length)):
            if ref:
                try:
                    _side, member = parse_source(ref, output)
                except ValueError as e:
                    c.fail(f.lines[key], f"field {field.name!r}: {key} {ref!r} {e}")
                if key == "len" and not member:
                    c.fail(f.lines[key], f"field {field.name!r}: len {ref!r} must name a member")
        if field.decode and field.decode not in decoders:
            c.fail(f.lines["decode"], f"field {field.name!r}: unknown decode {field.decode!r}",
                   f"one of {', '.join(decoders)}")
        if field.show not in SHOW:
            c.fail(f.lines["show"], f"field {field.name!r}: show {field.show!r}", f"one of {', '.join(SHOW)}")
        if output == "stream" and not field.source:
            c.fail(f.line, f"field {field.name!r}: a stream field needs from: event.MEMBER")
        fields.append(field)
    names = {f.name for f in fields}
    for f in fields:
        if f.per and f.per not in names:
            c.fail(r.lines["fields"], f"field {f.name!r}: per {f.per!r} names no field")
    return fields


def _stream(c, r, fields, output):
    """(Stream, form): the stream: block of an output: stream recipe, or of a table recipe that also
    runs as a stream with --stream: then the block has its own fields (and may price them with its own
    cost_class), and form is (Stream, fields, cost_class)."""
    s = c.typed(r, "stream", dict, None)
    if output == "stream":
        if s is None:
            c.fail(r.line, "an output: stream recipe needs stream: {buffer: MAP}",
                   "name the template's BPF_RINGBUF_OUTPUT/BPF_PERF_OUTPUT map")
        return _stream_spec(c, r, s, fields, ()), None
    if s is None:
        return None, None
    if output != "table" or "fields" not in s:
        c.fail(r.lines["stream"], "stream: of a recipe whose output is not stream is its --stream form: it needs "
               "fields: of its own (from: event.MEMBER)" if output == "table" else
               "stream: belongs to output: stream recipes, and to table recipes as their --stream form")
    form_fields = _fields(c, s, "stream")
    cost_class = c.typed(s, "cost_class", str, "")
    if cost_class and cost_class not in COST_CLASSES:
        c.fail(s.lines["cost_class"], f"unknown cost_class {cost_class!r}", f"one of {', '.join(COST_CLASSES)}")
    return None, (_stream_spec(c, s, s, form_fields, ("fields", "cost_class")), form_fields, cost_class)


def _stream_spec(c, r, s, fields, form_keys):
    """The Stream of a stream: block s (r: where its fields are listed)."""
    c.keys(s, ("buffer",), ("kind", "group", "limit", "pages") + form_keys)
    stream = Stream(buffer=c.typed(s, "buffer", str), kind=c.typed(s, "kind", str, ""),
                    group=tuple(c.typed(s, "group", list, [])), limit=c.typed(s, "limit", int, 1000),
                    pages=c.typed(s, "pages", int, 64))
    if not IDENT_RE.fullmatch(stream.buffer):
        c.fail(s.lines["buffer"], f"stream buffer {stream.buffer!r} is not a C identifier")
    by_name = {f.name: f for f in fields}
    if stream.kind and (stream.kind not in by_name or not by_name[stream.kind].values):
        c.fail(s.lines["kind"], f"stream kind {stream.kind!r} must name a field with values:")
    kinds = by_name[stream.kind].values if stream.kind else ()
    for f in fields:
        for k in f.kinds:
            if k not in kinds:
                c.fail(r.lines["fields"], f"field {f.name!r}: kind {k!r} is not one of the stream's kinds "
                       f"({', '.join(kinds) or 'none: give stream: {kind: FIELD}'})")
    for g in stream.group:
        if g not in by_name:
            c.fail(s.lines["group"], f"stream group {g!r} names no field")
    if stream.limit < 0:
        c.fail(s.lines["limit"], "stream limit must be 0 (no limit) or more lines per second")
    if stream.pages < 1 or stream.pages & (stream.pages - 1) or stream.pages > 65536:
        c.fail(s.lines["pages"], f"stream pages {stream.pages} must be a power of 2 up to 65536")
    return stream


def _module(c, r, base):
    """module: is relative to the catalog's folder (the parent of its probes/)."""
    rel = c.typed(r, "module", str, "")
    if not rel:
        return ""
    path = os.path.normpath(os.path.join(base, rel))
    if not rel.endswith(".py") or not os.path.isfile(path):
        c.fail(r.lines["module"], f"module {rel!r} is not a Python file beside the catalog",
               "give the path of the recipe's module relative to the catalog, e.g. kit/recipes/NAME.py")
    trust.check(path, "recipe module")
    return path


def _table(c, r, fields):
    t = c.typed(r, "table", dict, None)
    if t is None:
        return None
    c.keys(t, ("map",), ("sort", "nonzero"))
    names = {f.name for f in fields}
    table = Table(map=c.typed(t, "map", str), sort=tuple(c.typed(t, "sort", list, [])),
                  nonzero=c.typed(t, "nonzero", str, ""))
    for s in table.sort + ((table.nonzero,) if table.nonzero else ()):
        if s.lstrip("-") not in names:
            c.fail(t.line, f"table: {s!r} names no field")
    if not all(f.source for f in fields):
        missing = ", ".join(f.name for f in fields if not f.source)
        c.fail(r.lines["fields"], f"fields without from: {missing}", "the default collector needs from: on every field")
    return table


def _hooks(c, r, params):
    ladder = c.typed(r, "hooks", list)
    if not ladder:
        c.fail(r.lines["hooks"], "hooks must list at least one alternative")
    hooks = []
    for h in ladder:
        c.keys(h, ("type",), ("target", "attach", "binary", "requires", "frequency"))
        htype = c.typed(h, "type", str)
        if htype not in HOOK_TYPES:
            c.fail(h.lines["type"], f"unknown hook type {htype!r}", f"one of {', '.join(HOOK_TYPES)}")
        hook = Hook(type=htype, target=c.typed(h, "target", str, ""), binary=c.typed(h, "binary", str, ""),
                    requires=tuple(c.typed(h, "requires", list, [])), line=h.line,
                    frequency=c.typed(h, "frequency", str, ""))
        for a in c.typed(h, "attach", list, []):
            c.keys(a, ("fn",), ("symbol", "at", "optional"))
            at = c.typed(a, "at", str, "entry")
            if at not in ("entry", "return"):
                c.fail(a.lines["at"], f"attach 'at' must be entry or return, got {at!r}")
            sym = c.typed(a, "symbol", str, "")
            if sym and not sym.startswith("=") and sym not in params:
                c.fail(a.lines["symbol"], f"attach symbol refers to unknown parameter {sym!r}",
                       "name a symbol parameter, or write =literal_symbol")
            hook.attach.append(Attach(fn=c.typed(a, "fn", str), symbol=sym, at=at,
                                      optional=c.typed(a, "optional", bool, False)))
        if htype in ("uprobe", "uretprobe"):
            if not hook.attach:
                c.fail(h.line, "a uprobe hook needs attach points")
            if not hook.binary or hook.binary not in params:
                c.fail(h.line, "a uprobe hook needs binary: naming a binary parameter")
        elif not hook.target:
            c.fail(h.line, f"a {htype} hook needs a target")
        if htype == "perf_event":
            from kit.host.perfevent import SAMPLING_EVENTS
            if hook.target not in SAMPLING_EVENTS:
                c.fail(h.lines["target"], f"unknown perf event {hook.target!r}", f"one of {', '.join(SAMPLING_EVENTS)}")
            if len(hook.attach) != 1:
                c.fail(h.line, "a perf_event hook needs one attach point: attach: [{fn: FUNCTION}]")
            spec = params.get(hook.frequency)
            if spec is None or spec.type != "hertz":
                c.fail(h.line, "a perf_event hook needs frequency: naming a hertz parameter",
                       "declare e.g. hz: {type: hertz, default: 49, min: 1, max: 999, help: ...}")
        elif hook.frequency:
            c.fail(h.lines["frequency"], f"frequency is for perf_event hooks, not {htype}")
        for req in hook.requires:
            if req not in ("btf", "kernel_read"):
                c.fail(h.lines["requires"], f"unknown requirement {req!r}", "known: btf, kernel_read")
        hooks.append(hook)
    return hooks
