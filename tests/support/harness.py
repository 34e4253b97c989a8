"""Running kit against the test-only catalog (through tests/support/fixtures/kitshim.py) and C workloads."""

import os
import subprocess
import sys

from conftest import ROOT, KitProc
from fixtures import kitshim

SHIM = os.path.join(ROOT, "tests", "support", "fixtures", "kitshim.py")


class ShimProc(KitProc):
    """A kit subprocess that can run the test catalog's recipes (args as for `kit`)."""

    def __init__(self, *args, env=None):
        self.args = args
        self.p = subprocess.Popen([sys.executable, SHIM, "--catalog", kitshim.CATALOG, *args], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.err_lines = []


class Workload:
    """A gated C workload: starts, says "ready", acts on "go", says "done ...", exits on the next line."""

    def __init__(self, *argv):
        self.p = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid
        assert self.p.stdout.readline().strip() == "ready"

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def end(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("go\n")
                self.p.stdin.flush()
                self.p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
