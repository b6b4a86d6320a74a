#!/usr/bin/env bash
# Run uv, which installs tokenlb's dependencies exactly as uv.lock pins them. Uses the uv
# on PATH when it is the pinned release, else installs that release from PyPI into
# .tools/ once. Pinned so that every machine reads and checks the lock the same way.
#
#   bash scripts/uv.sh sync --locked ...     what scripts/demo.sh, test.sh, bench and the
#                                            Dockerfile run
set -euo pipefail
UV_VERSION=0.13.9
root="$(cd "$(dirname "$0")/.." && pwd)"
# The interpreter is the machine's python3 (>= 3.11), never one uv downloads: CI and
# air-gapped builds reach package registries only.
export UV_PYTHON="${UV_PYTHON:-python3}" UV_PYTHON_DOWNLOADS=never
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  exec uv "$@"
fi
tool="$root/.tools/uv-$UV_VERSION"
if [ ! -x "$tool/bin/uv" ]; then
  python3 -m venv "$tool"
  "$tool/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
exec "$tool/bin/uv" "$@"
