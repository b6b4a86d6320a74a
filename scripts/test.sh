#!/usr/bin/env bash
# Install tokenlb with its test tools into .venv (a real, non-editable install, as users
# get it, of exactly the versions uv.lock pins), then lint, type-check and run the whole
# test suite. Needs python3 >= 3.11, redis-server and haproxy (both installed with
# apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need ${missing[*]}: install it (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

bash scripts/uv.sh sync --locked --no-editable --no-dev --group test

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  # Two processes for the single-process tests; the multi-replica ones alone afterwards,
  # because they assert on wall-clock behaviour (decay, latency, outages) that a second
  # busy core would distort.
  .venv/bin/python -m pytest -m "not cluster" -n 2 --dist loadscope
  .venv/bin/python -m pytest -m cluster
fi
