"""The main job: run kit against the bundled demo service and show the answer.

`./demo.sh` builds demo/pay_svc.c (a fake payment service that is slow
because its threads wait), starts it, and runs the first command of the SEV
story against it in the foreground, exactly as an on-call engineer would:

    kit run offcpu --comm pay-svc --for 10s

(10 s instead of the usual 20 s, to keep the demo short.) It then stops the
service. `./demo.sh triage` runs the whole walk-through as one command instead,

    kit triage --comm pay-svc --for 45s --out demo/pay-svc-report

(the first look, then lockhold on the pool lock it points at, then getaddrinfo
for the lookup inside it), and `./demo.sh tcpretrans` the retransmit demo:
retransmits in a network namespace that drops packets.
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))  # its workloads

DEMO_FOR = "10s"


def kit(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kit", *args], cwd=ROOT, **kw)


def build_pay_svc(directory):
    out = os.path.join(directory, "pay-svc")
    cc = shutil.which("gcc") or shutil.which("cc")
    subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", out,
                    os.path.join(ROOT, "demo", "pay_svc.c")], check=True)
    return out


def demo_offcpu():
    with tempfile.TemporaryDirectory(prefix="kit-demo-") as d:
        svc = subprocess.Popen([build_pay_svc(d)], stdout=subprocess.PIPE, text=True)
        try:
            print(svc.stdout.readline().strip(), flush=True)
            print(f"$ kit run offcpu --comm pay-svc --for {DEMO_FOR}   # pay-svc is slow but not busy: where does it wait?",
                  flush=True)
            svg = os.path.join(ROOT, "demo", "pay-svc-offcpu.svg")
            p = kit("run", "offcpu", "--comm", "pay-svc", "--for", DEMO_FOR, "--svg", svg)
            code = p.wait()
        finally:
            svc.terminate()
            svc.wait()
        print(f"(open {os.path.relpath(svg, ROOT)} in a browser for the flame graph)")
        return code


def demo_triage():
    report = os.path.join(ROOT, "demo", "pay-svc-report")
    if os.path.isdir(report):  # the last demo's report: kit writes only into a new or empty directory
        shutil.rmtree(report)
    with tempfile.TemporaryDirectory(prefix="kit-demo-") as d:
        svc = subprocess.Popen([build_pay_svc(d)], stdout=subprocess.PIPE, text=True)
        try:
            print(svc.stdout.readline().strip(), flush=True)
            print("$ kit triage --comm pay-svc --for 45s --out demo/pay-svc-report   # p99 is up, CPU is flat: why?",
                  flush=True)
            code = kit("triage", "--comm", "pay-svc", "--for", "45s", "--out", report).wait()
        finally:
            svc.terminate()
            svc.wait()
        print(f"(the report, its data and flame graphs are in {os.path.relpath(report, ROOT)}/)")
        return code


def demo_tcpretrans():
    from workloads import retrans
    ns = f"kit-demo-{os.getpid()}"
    with retrans.netns(ns):
        print(f"$ kit run tcpretrans --netns {ns} --for 10s   # a demo service in {ns} is losing packets", flush=True)
        p = kit("run", "tcpretrans", "--netns", ns, "--for", "10s", stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            sys.stderr.write(line)
            if " attached to " in line:
                break
        _cport, delta = retrans.provoke(ns, port=8080, hold=lambda pid: p.wait())
        sys.stderr.write(p.stderr.read())
        print(f"(the kernel's own counter for {ns}: TcpRetransSegs +{delta})")
        return p.returncode


DEMOS = {"offcpu": demo_offcpu, "triage": demo_triage, "tcpretrans": demo_tcpretrans}

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "offcpu"
    if which not in DEMOS:
        sys.exit(f"usage: ./demo.sh [{'|'.join(DEMOS)}]")
    sys.exit(DEMOS[which]())
