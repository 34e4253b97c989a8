"""kit.pyz's __main__ (kit/fleet/pack.py puts this file at the archive's root).

kit opens its templates as files and imports recipe modules by path, so it
runs from a copy of the archive unpacked once into a cache folder:
$KIT_PYZ_CACHE, else /var/cache/kit/pyz as root (~/.cache/kit/pyz otherwise),
one subfolder per archive, named by its sha256. The folders are this user's
alone (mode 0700): whoever could write them would choose what kit loads into
the kernel (the rule kit/catalog/trust.py applies to the catalog), so kit refuses a
cache folder another user owns or may write, and re-checks every file's CRC
against the archive before each run. Nothing here imports kit before the
unpacked copy is first on sys.path.
"""

import hashlib
import os
import shutil
import stat
import sys
import tempfile
import zipfile
import zlib

MARK = ".kit-pyz-complete"


def fail(message):
    sys.stderr.write(f"kit.pyz: error: {message}\n")
    sys.exit(3)   # ExitCode.CATALOG: what kit would load is not trustworthy


def cache_root():
    if os.environ.get("KIT_PYZ_CACHE"):
        return os.environ["KIT_PYZ_CACHE"]
    if os.geteuid() == 0:
        return "/var/cache/kit/pyz"
    return os.path.join(os.path.expanduser("~"), ".cache", "kit", "pyz")


def private_dir(path):
    """Creates path (mode 0700) if absent; refuses it unless it is ours and nobody else's."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        fail(f"cache folder {path} is not a private folder of uid {os.geteuid()} (owner uid {st.st_uid}, "
             f"mode {stat.S_IMODE(st.st_mode):o}), so others could choose what kit loads — "
             f"chown {os.geteuid()} {path} && chmod 700 {path}, or set KIT_PYZ_CACHE to a private folder")


def intact(target, z):
    """True when every archive member is in target with the archive's CRC."""
    for info in z.infolist():
        path = os.path.join(target, info.filename)
        try:
            with open(path, "rb") as f:
                if zlib.crc32(f.read()) != info.CRC:
                    return False
        except OSError:
            return False
    return True


def unpack(archive):
    with open(archive, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    root = cache_root()
    private_dir(root)
    target = os.path.join(root, digest[:32])
    with zipfile.ZipFile(archive) as z:
        if os.path.isdir(target):
            private_dir(target)
            if os.path.exists(os.path.join(target, MARK)) and intact(target, z):
                return target, digest
            shutil.rmtree(target)   # half-written or altered: unpack it again
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=root)
        try:
            z.extractall(tmp)
            with open(os.path.join(tmp, MARK), "w") as f:
                f.write(digest + "\n")
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(os.path.join(target, MARK)):   # not another kit.pyz winning the race
                raise
    return target, digest


def main():
    archive = os.path.abspath(os.path.dirname(__file__))   # the .pyz itself when run as a zipapp
    if not zipfile.is_zipfile(archive):
        fail(f"{archive} is not a zip archive: run kit.pyz itself")
    target, digest = unpack(archive)
    sys.path[:] = [target] + [p for p in sys.path if os.path.abspath(p or ".") != archive] + \
                  [os.path.join(target, "vendor")]   # the host's own packages first, vendored copies last
    os.environ["KIT_PYZ"] = archive   # `kit fleet run` ships this very file by default
    os.environ["KIT_PYZ_SHA256"] = digest
    if sys.argv[1:2] == ["doctor"]:
        from kit.fleet import pack
        for name, where, remedy in pack.dependencies():
            sys.stdout.write(f"python {name:<9} {'ok  ' if where else 'NO  '}{where or remedy}\n")
        sys.stdout.write(f"kit.pyz   {digest[:16]} unpacked in {target}\n")
    try:
        from kit.cli import main as kit_main
    except ImportError as e:
        fail(f"{e}: run `kit.pyz doctor` to see what this host lacks")
    sys.exit(kit_main())


if __name__ == "__main__":
    main()
