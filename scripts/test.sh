#!/usr/bin/env bash
# Installs everything from the repo's own files and runs the test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup_env.sh
# Real Fashion-MNIST for the real-data tests, where it can be installed.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "Could not install dataset-fashion-mnist; real-data tests will be skipped."
fi
# XLA:CPU compiles (and serialises) nested programs recursively: give each
# thread a roomy stack where the hard limit allows, and log what it got.
ulimit -S -s "$(ulimit -H -s | awk '{print ($1 == "unlimited" || $1 > 65536) ? 65536 : $1}')" || true
echo "Tests: $(nproc) cores, stack limit $(ulimit -s) KiB, $(python --version)."
# A crashed worker ends the run (reported): after replacing one, xdist's
# loadfile scheduler can wait forever.
python -m pytest -n 2 --dist=loadfile --max-worker-restart=0 -q --durations=15 "$@"
