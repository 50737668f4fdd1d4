#!/usr/bin/env bash
# MCP interop suite: real MCP SDK servers + client through sessiongate's learned affinity. See README.md.
# Installs the pinned npm packages when missing or stale, then runs the node:test suite with the
# node on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -f node_modules/@modelcontextprotocol/sdk/package.json ] \
   || [ ! -f node_modules/.package-lock.json ] \
   || [ package.json -nt node_modules/.package-lock.json ] \
   || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

exec node --test run.mjs "$@"
