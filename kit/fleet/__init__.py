"""`kit fleet run RECIPE [scope] --for 30s --hosts INVENTORY`: one recipe on many hosts, through Ansible.

kit does not fan out by itself: ansible-playbook runs deploy/ansible/kit-run.yml
(SSH, --forks bounding the parallelism, the inventory the fleet already has),
which copies kit.pyz to each host when it is absent or stale, and runs
`kit.pyz run RECIPE ... --json` there with the same arguments and time box.
Each host prices and guards the run itself. Ansible's tree callback leaves one
file per host with that host's last outcome: kit's JSON and exit code, or the
failure or unreachability that stopped it earlier. Every inventory host ends
up in the answer, with its result or with its reason: refused (exit 4, the
guardrail's line), failed (kit's error line, or Ansible's), unreachable, or
no answer from Ansible at all.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

from kit.fleet import merge as merge_mod
from kit.catalog import params as ptypes
from kit.errors import BadInput, ExitCode, Unsupported

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(ROOT, "deploy", "ansible", "kit-run.yml")
FORKS_DEFAULT, FORKS_MAX = 10, 100
SLACK_S = 120          # compile, attach, collect and symbolize on a loaded host, beyond --for
HOST_TYPES = {"pid", "tid", "netns", "cgroup", "disk", "binary"}   # checked by each host, which resolves them
NOT_IN_FLEET = (("dry_run", "--dry-run"), ("progress", "--progress"))


def fleet_options(p):
    p.add_argument("--hosts", required=True, metavar="INVENTORY", help="Ansible inventory (file, folder or host,list)")
    p.add_argument("--forks", default=str(FORKS_DEFAULT),
                   help=f"hosts at once (default {FORKS_DEFAULT}, at most {FORKS_MAX})")
    p.add_argument("--pyz", default=None, help="the kit.pyz to ship (default: this one, or one built now)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="write each host's JSON and fleet.json here (default: a new kit-fleet-* folder)")
    p.add_argument("--by-host", action="store_true", help="stacks: the host as the root frame (--folded, --svg)")


def remote_args(recipe, ns, duration):
    """The `kit run` arguments every host gets: the user's own text, re-checked there."""
    args = [recipe.name]
    for spec in recipe.params.values():
        raw = getattr(ns, spec.name)
        if raw is None:
            continue
        if spec.type not in HOST_TYPES:   # fail once here rather than once per host
            ptypes.TYPES[spec.type].parse(raw, spec)
        args += [f"--{spec.flag}"] if spec.type == "flag" else [f"--{spec.flag}={raw}"]
    args += ["--for", f"{duration:g}s"]
    if ns.budget is not None:
        args.append(f"--budget={ns.budget}")
    if ns.force:
        args.append("--force")
    if ns.hook:
        args += ["--hook", ns.hook]
    return args


def _forks(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= FORKS_MAX:
        raise BadInput(f"--forks {str(text)[:20]!r} is not a number of hosts from 1 to {FORKS_MAX}",
                       f"give e.g. --forks {FORKS_DEFAULT}")
    return n


def _tool(name):
    path = shutil.which(name)
    if path is None:
        raise Unsupported(f"{name} is not installed here", "apt-get install ansible-core (or pip install ansible-core)")
    return path


def inventory_hosts(inventory):
    """Every host name the inventory holds (ansible-inventory's own reading of it)."""
    p = subprocess.run([_tool("ansible-inventory"), "-i", inventory, "--list"], capture_output=True, text=True)
    if p.returncode != 0:
        raise BadInput(f"ansible-inventory cannot read {inventory}: {_last_line(p.stderr)}",
                       "give an inventory file Ansible reads (ini or yaml)")
    inv = json.loads(p.stdout)
    hosts = sorted((inv.get("_meta", {}).get("hostvars") or {}).keys())
    if not hosts:
        for group in inv.values():
            hosts += (group.get("hosts") or []) if isinstance(group, dict) else []
        hosts = sorted(set(hosts))
    if not hosts:
        raise BadInput(f"inventory {inventory} has no hosts", "add hosts to it")
    return hosts


def _last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _kit_error(stderr):
    """kit's own error line (and a refusal's first way out) from a host's stderr."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("kit: error:", "kit.pyz: error:")):
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else "no output"


def outcome(host, tree):
    """One host's entry from its tree-callback result (None: Ansible wrote nothing for it)."""
    if tree is None:
        return {"host": host, "status": "failed", "code": None,
                "reason": "Ansible reported nothing for this host (see the ansible-playbook log)"}
    if tree.get("unreachable"):
        return {"host": host, "status": "unreachable", "code": None,
                "reason": _last_line(tree.get("msg")) or "unreachable"}
    if "rc" not in tree or "cmd" not in tree:   # an earlier task (folder, copy) or the time-out stopped it
        return {"host": host, "status": "failed", "code": None,
                "reason": _last_line(tree.get("msg") or tree.get("module_stderr")) or "failed before kit ran"}
    rc = tree["rc"]
    if rc == ExitCode.REFUSED:
        return {"host": host, "status": "refused", "code": rc, "reason": _kit_error(tree.get("stderr"))}
    try:
        result = json.loads(tree.get("stdout") or "")
    except ValueError:
        result = None
    if not isinstance(result, dict) or "rows" not in result:
        return {"host": host, "status": "failed", "code": rc, "reason": _kit_error(tree.get("stderr"))}
    # a result with a non-zero code (breaker 7, signals) is a partial answer: kept, its code said
    result["host"] = host
    return {"host": host, "status": "ok", "code": rc, "result": result}


def _read_tree(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_playbook(inventory, hosts, args, pyz, forks, timeout, workdir, err):
    """ansible-playbook over every host; returns {host: tree result or None}."""
    tree = os.path.join(workdir, "tree")
    os.makedirs(tree, exist_ok=True)
    extra = os.path.join(workdir, "vars.json")
    with open(extra, "w") as f:
        json.dump({"kit_pyz": pyz, "kit_args": args, "kit_timeout": timeout}, f)
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="tree", ANSIBLE_CALLBACK_TREE_DIR=tree,
               ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_NOCOLOR="1")
    log = os.path.join(workdir, "ansible.log")
    with open(log, "w") as logf:
        p = subprocess.run([_tool("ansible-playbook"), "-i", inventory, "-f", str(forks), "-e", f"@{extra}",
                            PLAYBOOK], stdout=logf, stderr=subprocess.STDOUT, env=env,
                           timeout=timeout * (len(hosts) // forks + 1) + 300)
    if p.returncode not in (0, 2, 4):   # 2: a host failed, 4: a host unreachable; both are reported per host
        err.write(f"kit: ansible-playbook exited {p.returncode}; its log: {log}\n")
    return {h: _read_tree(os.path.join(tree, h)) for h in hosts}


def _pyz(given, workdir):
    """The kit.pyz to ship and its path: the one given, the one running, or one built now."""
    if given:
        if not os.path.isfile(given):
            raise BadInput(f"--pyz {given[:80]}: no such file", "build one with python3 -m kit.fleet.pack -o kit.pyz")
        return os.path.abspath(given)
    if os.environ.get("KIT_PYZ") and os.path.isfile(os.environ["KIT_PYZ"]):
        return os.environ["KIT_PYZ"]
    from kit.fleet import pack
    path = os.path.join(workdir, "kit.pyz")
    pack.build(path)
    return path


def fleet_run(recipe, ns, opts, err):
    """Runs the recipe on every host; returns the fleet document (kind KitFleetRun)."""
    for dest, flag in NOT_IN_FLEET:
        if getattr(ns, dest, None):
            raise BadInput(f"kit fleet run does not take {flag}", f"run `kit estimate` or `kit run {flag}` on a host")
    forks = _forks(ns.forks)
    args = remote_args(recipe, ns, opts.duration)
    hosts = inventory_hosts(ns.hosts)
    results = ns.results or os.path.abspath(time.strftime("kit-fleet-%Y%m%d-%H%M%S"))
    os.makedirs(results, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kit-fleet-")
    try:
        pyz = _pyz(ns.pyz, work)
        timeout = int(opts.duration) + SLACK_S
        err.write(f"kit: fleet run of {recipe.name} on {len(hosts)} hosts, {forks} at a time, "
                  f"{opts.duration:g}s each (ansible-playbook {os.path.relpath(PLAYBOOK, ROOT)})\n")
        err.flush()
        trees = run_playbook(os.path.abspath(ns.hosts) if os.path.exists(ns.hosts) else ns.hosts,
                             hosts, args, pyz, forks, timeout, work, err)
        if os.path.exists(os.path.join(work, "ansible.log")):
            shutil.copy(os.path.join(work, "ansible.log"), os.path.join(results, "ansible.log"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entries = [outcome(h, trees[h]) for h in hosts]
    for e in entries:
        if e["status"] == "ok":
            with open(os.path.join(results, f"{_safe(e['host'])}.json"), "w") as f:
                json.dump(e["result"], f)
        else:
            err.write(f"kit: host {e['host']}: {e['status']}"
                      + (f" (exit {e['code']})" if e["code"] is not None else "") + f": {e['reason']}\n")
    doc = {"kind": merge_mod.FLEET_KIND, "recipe": recipe.name, "args": args, "inventory": ns.hosts,
           "forks": forks, "hosts": entries}
    try:
        doc["merged"] = merge_mod.merge([(os.path.join(results, "fleet.json"), doc)])
    except BadInput as e:   # nothing to merge, or hosts whose results do not add up: said, not hidden
        doc["merged"], doc["merge_error"] = None, e.line()
    with open(os.path.join(results, "fleet.json"), "w") as f:
        json.dump(doc, f)
    err.write(f"kit: results in {results} (fleet.json, one JSON per host; `kit merge {results}/fleet.json`)\n")
    return doc


def _safe(host):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in host)


def exit_code(doc):
    """0 when every host answered in full; FLEET_PARTIAL when any host gave no result or a partial one."""
    if all(h["status"] == "ok" and h["code"] == 0 for h in doc["hosts"]):
        return ExitCode.OK
    return ExitCode.FLEET_PARTIAL


def main(cli, args, out, err):
    """`kit fleet run RECIPE ...` (cli: kit.cli, for the recipe's own parser and checks)."""
    if args.action != "run":
        raise BadInput(f"kit fleet {args.action!r}: unknown action", "use `kit fleet run RECIPE ... --hosts INVENTORY`")
    recipes = cli._load(args)
    if args.recipe is None and args.rest[:1] in (["-h"], ["--help"]):   # argparse hands it to the remainder
        args.verb_help, args.rest = True, args.rest[1:]
    if args.verb_help and args.recipe is None:
        raise cli.HelpShown(out.write("usage: kit fleet run RECIPE [scope] --for 30s --hosts INVENTORY [--forks N]\n"
                                      "runs RECIPE on every inventory host through Ansible (docs/fleet.md)\n"))
    recipe = cli._recipe(recipes, args.recipe)
    p = cli.recipe_parser(recipe, "run", out=out)
    p.prog = f"kit fleet run {recipe.name}"
    fleet_options(p)
    ns = p.parse_args((["--help"] if args.verb_help else []) + args.rest)
    form = cli._form(recipe, ns)
    if form.output == "stream":  # hosts' lines have no merge (kit merge takes one result per host)
        raise BadInput(f"kit fleet run takes aggregating recipes; {recipe.name}"
                       f"{' --stream' if form.form else ''} is a stream (a line per event on one host)",
                       f"run `kit run {recipe.name} ...` on the host" + (", or leave --stream out for its table"
                                                                         if form.form else ""))
    opts = cli._options(recipe, ns, args)
    svg = cli._stack_outputs(recipe, ns, {})
    doc = fleet_run(recipe, ns, opts, err)
    emit(doc.get("merged"), ns, svg, out, err, doc=doc)
    if doc.get("merge_error"):
        err.write(f"kit: error: {doc['merge_error']}\n")
    return exit_code(doc)


def emit(merged, ns, svg, out, err, doc=None):
    """Writes a merged result the way `kit run` writes one: text, --json, --folded, --svg."""
    by_host = getattr(ns, "by_host", False)
    if merged is not None and svg:
        from kit.output import flamegraph
        flamegraph.write(svg, merged["rows"], title=f"kit {merged['recipe']}: {len(merged['hosts'])} hosts",
                         value=merged.get("stack_value", "total_us"), by_host=by_host)
        err.write(f"kit: flame graph written to {svg}\n")
    if getattr(ns, "json", False):
        json.dump(doc if doc is not None else merged, out, default=str)
        out.write("\n")
    elif merged is not None and getattr(ns, "folded", False):
        for line in merge_mod.folded_lines(merged, by_host):
            out.write(line + "\n")
        # stdout stays folded lines; what the flame graph cannot show goes to stderr
        from kit.output import _cell
        if merged["lost_events"]:
            err.write(f"kit: warning: {merged['lost_events']} events were lost on the hosts, "
                      "so the folded stacks undercount (see --json for each host's losses)\n")
        for h in merged["failed_hosts"]:
            err.write(f"kit: host {_cell(h['host'])} gave no result: {h['status']}\n")
    elif merged is not None:
        merge_mod.human(merged, out)
    elif doc is not None:
        for h in doc["hosts"]:
            out.write(f"host {h['host']}: {h['status']}: {h.get('reason', '')}\n")


def merge_main(args, out, err):
    """`kit merge FILE...`."""
    if args.json and args.folded:
        raise BadInput("--json and --folded both write to stdout", "pick one")
    svg = None
    if args.svg:
        from kit.catalog import ParamSpec
        svg = ptypes.TYPES["outpath"].parse(args.svg, ParamSpec(name="svg", type="outpath"))
    merged = merge_mod.merge([(f, merge_mod.read(f)) for f in args.files])
    emit(merged, args, svg, out, err)
    return ExitCode.OK
