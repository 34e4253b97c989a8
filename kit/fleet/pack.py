"""Builds kit.pyz: one file a host runs with its own /usr/bin/python3 and Debian's python3-bpfcc.

    python3 -m kit.fleet.pack [-o kit.pyz] [--no-vendor]

The zipapp carries kit/, probes/, the catalog and deploy/ansible/, and (unless
--no-vendor) a vendor/ folder with the pure-Python parts of kit's dependencies
copied from this build host: PyYAML (MIT; its C accelerator is left out, the
pure loader is used), tabulate (MIT) and pyroute2 (Apache-2.0 or GPL-2.0+),
with their licence texts. At run time a host's own packages (Debian's
python3-yaml, python3-tabulate, python3-pyroute2) come first on sys.path and
the vendored copies only fill what is missing. bcc is never vendored: it is
Python over libbcc, and only Debian's python3-bpfcc matches the host's libbcc.

kit reads its templates with open() and imports recipe modules by file path,
so the zipapp cannot run from inside the zip: its __main__ (kit/fleet/pyzboot.py)
extracts it once into a private cache folder named by the archive's hash and
runs from there. The build is reproducible (sorted entries, fixed times), so
the same sources give the same checksum and `kit fleet run` copies nothing to
a host that already has this kit.pyz.
"""

import argparse
import glob
import hashlib
import importlib
import io
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ("kit/**/*.py", "probes/*", "probes/calibrate/*", "incident_recipes.yaml", "deploy/ansible/**/*")
# import name -> (licence, where a Debian host has the package)
DEPS = {
    "yaml": ("MIT", "python3-yaml"),
    "tabulate": ("MIT", "python3-tabulate"),
    "pyroute2": ("Apache-2.0 OR GPL-2.0-or-later", "python3-pyroute2"),
}
HOST_ONLY = {"bcc": "python3-bpfcc"}   # never vendored: it must match the host's libbcc
STAMP = (1980, 1, 1, 0, 0, 0)


def _source_files(root):
    out = set()
    for pattern in SOURCES:
        for p in glob.glob(os.path.join(root, pattern), recursive=True):
            if os.path.isfile(p) and "__pycache__" not in p:
                out.add(os.path.relpath(p, root))
    return sorted(out)


def _vendor_files(name):
    """(path in the archive, file on disk) for the pure-Python files of an importable package."""
    mod = importlib.import_module(name)
    path = mod.__file__
    if os.path.basename(path) == "__init__.py":
        base = os.path.dirname(path)
        files = []
        for dirpath, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for n in sorted(names):
                if n.endswith(".py"):
                    full = os.path.join(dirpath, n)
                    files.append((os.path.join("vendor", name, os.path.relpath(full, base)), full))
        return files
    return [(os.path.join("vendor", os.path.basename(path)), path)]


def _licence_text(name):
    """The package's licence file, from its dist-info or Debian's copyright file."""
    from importlib import metadata
    dist = {"yaml": "PyYAML"}.get(name, name)
    try:
        for f in metadata.files(dist) or []:
            if os.path.basename(str(f)).upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                return f.read_text()
    except metadata.PackageNotFoundError:
        pass
    deb = f"/usr/share/doc/{DEPS[name][1]}/copyright"
    if os.path.exists(deb):
        with open(deb) as f:
            return f.read()
    return f"{name}: {DEPS[name][0]} (no licence file found on the build host)\n"


def _add(z, arcname, data):
    info = zipfile.ZipInfo(arcname.replace(os.sep, "/"), STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)


def build(out, root=ROOT, vendor=True):
    """Writes the zipapp to `out`; returns its sha256."""
    entries = [(p, os.path.join(root, p)) for p in _source_files(root)]
    if vendor:
        for name in DEPS:
            entries += _vendor_files(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        with open(os.path.join(root, "kit", "fleet", "pyzboot.py"), "rb") as f:
            _add(z, "__main__.py", f.read())
        for arc, path in sorted(entries):
            with open(path, "rb") as f:
                _add(z, arc, f.read())
        if vendor:
            _add(z, "vendor/LICENSES.txt", "".join(
                f"==== {n}: {lic} ====\n{_licence_text(n)}\n" for n, (lic, _deb) in DEPS.items()).encode())
    data = b"#!/usr/bin/python3\n" + buf.getvalue()
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return hashlib.sha256(data).hexdigest()


def dependencies():
    """[(name, where it comes from or None, remedy)] for what kit imports on this host."""
    rows = []
    for name, (_lic, deb) in list(DEPS.items()) + [(n, (None, d)) for n, d in HOST_ONLY.items()]:
        try:
            mod = importlib.import_module(name)
            where = os.path.dirname(mod.__file__) if mod.__file__.endswith("__init__.py") else mod.__file__
            if os.sep + "vendor" + os.sep in where:
                where = f"vendored in kit.pyz (apt-get install {deb} to use the host's own)"
        except ImportError as e:
            where = None
            why = str(e)
        rows.append((name, where, None if where else f"{why}: apt-get install {deb}"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m kit.fleet.pack", description="build kit.pyz (see this module's doc)")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "dist", "kit.pyz"), help="where to write it")
    p.add_argument("--no-vendor", action="store_true",
                   help="carry no dependencies: hosts need python3-yaml, python3-tabulate, python3-pyroute2")
    a = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    digest = build(a.output, vendor=not a.no_vendor)
    print(f"{a.output} sha256 {digest} ({os.path.getsize(a.output)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
