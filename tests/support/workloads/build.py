"""Compiles the C workloads (target.c, fill.c) once per test session, with frame pointers."""

import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def build(name, outdir):
    out = os.path.join(outdir, name)
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", out,
                    os.path.join(HERE, f"{name}.c")], check=True, capture_output=True, text=True)
    return out
