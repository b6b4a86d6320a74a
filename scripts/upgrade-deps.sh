#!/usr/bin/env bash
# Move the locks forward, deliberately: re-resolve uv.lock and bench/litellm/uv.lock to the
# newest releases pyproject.toml's bounds allow, run the whole suite on them
# (scripts/test.sh: lint, types, every test) and keep the new locks only when it passes;
# otherwise put the old ones back. Then review `git diff uv.lock` and commit it.
#
#   bash scripts/upgrade-deps.sh             upgrade, test, keep or restore
#   bash scripts/upgrade-deps.sh -m "not cluster"   the same, with these pytest arguments
#
# It prints what moved, and the direct dependencies an upper bound holds back: to take
# those, raise the bound in pyproject.toml (read the release notes) and run it again.
set -euo pipefail
cd "$(dirname "$0")/.."
locks=(uv.lock bench/litellm/uv.lock)
saved=$(mktemp -d)
trap 'rm -rf "$saved"' EXIT
for lock in "${locks[@]}"; do cp "$lock" "$saved/${lock//\//_}"; done

bash scripts/uv.sh lock --upgrade 2>&1 | tee "$saved/moved"
bash scripts/uv.sh lock --upgrade --project bench/litellm 2>&1 | tee -a "$saved/moved"
if ! grep -qE '^(Updated|Added|Removed) ' "$saved/moved"; then
  echo "upgrade-deps: every lock already holds the newest allowed releases"
elif bash scripts/test.sh "$@"; then
  echo "upgrade-deps: the suite passed; the new locks stay (commit them):"
  grep -E '^(Updated|Added|Removed) ' "$saved/moved" | sed 's/^/  /'
else
  for lock in "${locks[@]}"; do cp "$saved/${lock//\//_}" "$lock"; done
  bash scripts/uv.sh sync --locked --no-editable --no-dev --group test >/dev/null
  echo "upgrade-deps: the suite failed on the new versions; the old locks are back" >&2
  exit 1
fi
echo "upgrade-deps: newer releases an upper bound in pyproject.toml holds back:"
bash scripts/uv.sh tree --outdated --depth 1 --all-groups --frozen 2>/dev/null \
  | grep '(latest:' || echo "  none"
