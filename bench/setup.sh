#!/usr/bin/env bash
# Install what bench/run.py needs, outside tokenlb's own dependencies:
#   bench/.venv          tokenlb (editable) + psutil, matplotlib, py-spy, pyinstrument
#   bench/.venv-litellm  LiteLLM's proxy, the system compared against (never a tokenlb dependency)
# and, as root, redis-server, haproxy and wrk from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for tool in redis-server haproxy wrk; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  fi
fi
[ -x bench/.venv/bin/python ] || "$PYTHON" -m venv bench/.venv
bench/.venv/bin/pip install -q -e . psutil matplotlib py-spy pyinstrument
[ -x bench/.venv-litellm/bin/python ] || "$PYTHON" -m venv bench/.venv-litellm
bench/.venv-litellm/bin/pip install -q 'litellm[proxy]'
echo "ready: bench/.venv/bin/python bench/run.py --quick"
