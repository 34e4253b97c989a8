"""The main job: run a kit recipe against a bundled demo target and show the answer.

Starts the demo target, runs kit against it in the foreground (so the output
is exactly what an on-call engineer sees), then stops the target.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from workloads import retrans  # noqa: E402


def kit(*args):
    return subprocess.Popen([sys.executable, "-m", "kit", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)


def demo_tcpretrans():
    ns = f"kit-demo-{os.getpid()}"
    with retrans.netns(ns):
        print(f"$ kit run tcpretrans --netns {ns} --for 10s   # a demo service in {ns} is losing packets", flush=True)
        p = kit("run", "tcpretrans", "--netns", ns, "--for", "10s")
        for line in p.stderr:
            sys.stderr.write(line)
            if " attached to " in line:
                break
        _cport, delta = retrans.provoke(ns, port=8080, hold=lambda pid: p.wait())
        sys.stderr.write(p.stderr.read())
        print(f"(the kernel's own counter for {ns}: TcpRetransSegs +{delta})")
        return p.returncode


if __name__ == "__main__":
    sys.exit(demo_tcpretrans())
