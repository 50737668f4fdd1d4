#!/usr/bin/env bash
# The whole test suite: unit + integration tests (cargo test), then the interop suite that drives
# the real Copilot SDK against real headless Copilot CLI servers through a release build, and the
# MCP suite (the official MCP SDK's Streamable HTTP servers and client, learned affinity), and the
# offline checks of the deployment files (deploy/k8s manifests, docker/compose.yaml, their
# sessiongate configs through `sessiongate check`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tests/tools.sh
export PATH="$PWD/target/tools:$PATH"
cargo test --locked
cargo build --release --locked
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/interop/run.sh
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/mcp/run.sh
SESSIONGATE_BIN="$PWD/target/release/sessiongate" tests/k8s/validate.sh
