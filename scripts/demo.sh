#!/usr/bin/env bash
# Install tokenlb into .venv, exactly as uv.lock pins it, and run the demo: a mock
# upstream, Redis (when redis-server is installed; otherwise each replica's embedded
# store), three proxy replicas, a few hundred requests, and the per-target balance.
# No API key, no docker needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/uv.sh sync --locked --no-editable --no-dev
exec .venv/bin/tokenlb demo "$@"
