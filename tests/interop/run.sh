#!/usr/bin/env bash
# Interop suite: real Copilot CLI servers + SDK through sessiongate. See README.md.
# Installs the pinned npm packages when missing or stale, then runs the node:test suites (run.mjs,
# then shared_storage.mjs; one file at a time: each starts its own CLI fleet and proxies).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -x node_modules/@github/copilot-linux-x64/copilot ] \
   || [ ! -f node_modules/.package-lock.json ] \
   || [ package.json -nt node_modules/.package-lock.json ] \
   || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  # npm ci refuses this lock: @github/copilot-sdk lists optional platform packages that were never
  # published (e.g. copilot-sdk-darwin-arm64), so the lock can never be "in sync"; fall back quietly.
  ci_log=$(mktemp)
  if ! npm ci --no-audit --no-fund >"$ci_log" 2>&1; then
    echo "run.sh: npm ci failed (see $ci_log); falling back to npm install" >&2
    npm install --no-audit --no-fund
  fi
fi

exec node --test --test-concurrency=1 run.mjs shared_storage.mjs "$@"
