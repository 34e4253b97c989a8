"""The bundled demo service, demo/pay_svc.c, built under a name of the test's own (its comm) and driven
through --control: pause() parks its workers between requests and returns its own books (pool holds,
cache misses, lookups and failures, ledger holds, requests), resume() lets them go on."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SOURCE = os.path.join(ROOT, "demo", "pay_svc.c")


def build(directory, name):
    """demo/pay_svc.c as directory/name, built as demo/run_demo.py builds it (name: at most 15 bytes)."""
    assert len(name) <= 15
    path = os.path.join(directory, name)
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", path, SOURCE], check=True,
                   capture_output=True, text=True)
    return path


class Service:
    def __init__(self, binary, env=None):
        self.p = subprocess.Popen([binary, "--control"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)
        line = self.p.stdout.readline()
        assert "serving (pid" in line, line
        self.pid = self.p.pid

    def _say(self, word):
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()

    def pause(self):
        """Parks every worker between two requests (holding no lock) and returns the books so far."""
        self._say("pause")
        return json.loads(self.p.stdout.readline())

    def resume(self):
        self._say("resume")

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()  # end of input: it exits
                self.p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def delta(after, before):
    return {k: after[k] - before[k] for k in after if isinstance(after[k], int) and k != "pid"}
