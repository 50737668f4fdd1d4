#!/usr/bin/env bash
# The whole test suite: unit + integration tests (cargo test), then the interop suite that drives
# the real Copilot SDK against real headless Copilot CLI servers through a release build, and the
# MCP suite (the official MCP SDK's Streamable HTTP servers and client, learned affinity), a
# bounded session soak (100,000 create/resume/delete lifecycles through the release build: fails
# on any failed answer, a session left pinned, a growing series count or RSS growing more than
# 50 MiB over its second half; benches/soak/sessions.sh, the million is a documented bench), and
# the offline checks of the deployment files (deploy/k8s manifests, docker/compose.yaml, their
# sessiongate configs through `sessiongate check`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests/tools.sh
export PATH="$PWD/target/tools:$PATH"
cargo test --locked
cargo build --release --locked
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/interop/run.sh
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/mcp/run.sh
SG_BIN="$PWD/target/release/sessiongate" CARGO_TARGET_DIR="$PWD/target" SESSIONS=100000 \
  MAX_SECS=180 RESULTS_DIR="$PWD/target/soak" benches/soak/sessions.sh
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/k8s/validate.sh
