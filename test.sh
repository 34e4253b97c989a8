#!/usr/bin/env bash
# The whole test suite, real-kernel tests included. Kernel tests that cannot
# run fail (they never skip) unless KIT_ALLOW_SKIP=1 is set by hand.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m pytest "$@"
