#!/usr/bin/env bash
# Mixed soak, not in CI: SOAK_MINS minutes (default 30) of HTTP (oha, fixed rate) and JSON-RPC
# (compare_tools jsonrpc-load) load through a release-built sessiongate, with a reload every
# minute (a weight flips) and an upstream restart every three minutes (a mock CLI killed, or an
# nginx upstream stopped, and restarted on its port). Samples the proxy's RSS and fds and its
# /metrics; writes $RESULTS_DIR/soak-mixed.md (slopes, expected and unexpected errors) and
# soak-mixed.csv. The logs and the raw segments stay in $SOAK_WORKDIR. Settings: the
# environment variables at the top of benches/soak/mixed.py.
#
#   benches/soak/mixed.sh                   # 30 minutes
#   SOAK_MINS=3 benches/soak/mixed.sh       # a quick check
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export SOAK_MINS="${SOAK_MINS:-30}"
export RESULTS_DIR="${RESULTS_DIR:-$REPO/benches/results}"
export WORK="${SOAK_WORKDIR:-$REPO/benches/results/tmp/soak-mixed}"
if ! command -v "${OHA:-oha}" >/dev/null; then
  [[ -x "$HOME/.cargo/bin/oha" ]] && export OHA="$HOME/.cargo/bin/oha" ||
    { say "oha is needed (cargo install oha --locked)"; exit 1; }
fi
command -v nginx >/dev/null || { say "nginx is needed (apt-get install nginx-light)"; exit 1; }
build_binaries
rm -rf "$WORK"
mkdir -p "$WORK"
say "mixed soak: $SOAK_MINS min; logs in $WORK"
exec python3 "$REPO/benches/soak/mixed.py"
