#!/usr/bin/env bash
# The main job: set up, start the bundled demo target, and run kit against it.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python demo/run_demo.py "$@"
