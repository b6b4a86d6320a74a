#!/usr/bin/env bash
# Install what bench/run.py needs, each from its lock, outside tokenlb's own install:
#   bench/.venv          tokenlb (editable: cpu_ab.py compares the working tree) plus the
#                        `bench` group of uv.lock (psutil, matplotlib, py-spy, pyinstrument)
#   bench/.venv-litellm  LiteLLM's proxy, the system compared against, from
#                        bench/litellm/uv.lock (never a tokenlb dependency)
# and, as root, redis-server, haproxy and wrk from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for tool in redis-server haproxy wrk; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  fi
fi
UV_PROJECT_ENVIRONMENT="$PWD/bench/.venv" bash scripts/uv.sh sync --locked --no-dev --group bench
UV_PROJECT_ENVIRONMENT="$PWD/bench/.venv-litellm" \
  bash scripts/uv.sh sync --locked --project bench/litellm
echo "ready: bench/.venv/bin/python bench/run.py --quick"
