#!/usr/bin/env bash
# Install tokenlb into .venv and run the demo: a mock upstream, Redis (when redis-server
# is installed; otherwise each replica's embedded store), three proxy replicas, a few
# hundred requests, and the per-target balance. No API key, no docker needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check .
exec .venv/bin/tokenlb demo "$@"
