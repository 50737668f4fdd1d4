#!/usr/bin/env bash
# Instructions per routed JSON-RPC request through a sessiongate binary, counted by callgrind
# (user space only; repeatable whatever else the machine does, unlike CPU time).
#
#   benches/compare/jsonrpc_instructions.sh BIN [secs] [conns] [sessions] [depth]
#
# Starts 4 mock CLIs (compare_tools mockfleet) and BIN under valgrind in front of them, runs
# compare_tools jsonrpc-load through it, and counts instructions only inside the load's measured
# window (callgrind_control toggles instrumentation at its START and STOP lines). Prints
# instructions per request and per frame (a request and its answer are two frames). Needs
# valgrind and the compare_tools bench binary (cargo bench --no-run --bench compare_tools).
# LISTENER_EXTRA (YAML flow-map entries, e.g. "limits: { per_user: { requests: 1000000000, per: 1m } }")
# is added to the listener, to count what an admission feature costs per request.
set -euo pipefail
BIN=$1; SECS=${2:-30}; CONNS=${3:-10}; SESS=${4:-10}; DEPTH=${5:-32}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS=$(ls -t "${CARGO_TARGET_DIR:-$REPO/target}"/release/deps/compare_tools-* | grep -v '\.d$' | head -1)
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
D=$(mktemp -d)
cleanup() { kill "${PROXY:-}" "${FLEET:-}" "${LOAD:-}" 2>/dev/null || true; }
trap cleanup EXIT
cat >"$D/sessiongate.yaml" <<YAML
runtime: { worker_threads: 1 }
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: rpc, listen: 127.0.0.1:18190, protocol: jsonrpc, pool: cli${LISTENER_EXTRA:+, $LISTENER_EXTRA} }
pools:
  cli:
    health: { probe: tcp, interval: 5s }
    upstreams:
$(for i in 1 2 3 4; do echo "      - { name: cli-$i, addr: 127.0.0.1:$((27100 + i)) }"; done)
YAML
"$TOOLS" mockfleet --listen 127.0.0.1:27101 --count 4 --max-secs $((SECS * 4 + 120)) >"$D/fleet.log" 2>&1 &
FLEET=$!
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/cg.out" \
  "$BIN" --config "$D/sessiongate.yaml" run >"$D/proxy.log" 2>&1 &
PROXY=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18190) 2>/dev/null && break; sleep 0.3; done
"$TOOLS" jsonrpc-load --addr 127.0.0.1:18190 --conns "$CONNS" --sessions "$SESS" --depth "$DEPTH" \
  --secs "$SECS" --run-id "ir$$" >"$D/load.log" 2>&1 &
LOAD=$!
for _ in $(seq 600); do grep -q '^START' "$D/load.log" && break; sleep 0.2; done
callgrind_control -i on "$PROXY" >/dev/null
for _ in $(seq $((SECS * 10 + 600))); do grep -q '^STOP' "$D/load.log" && break; sleep 0.1; done
callgrind_control -i off "$PROXY" >/dev/null
wait "$LOAD"
kill -INT "$PROXY"; wait "$PROXY" 2>/dev/null || true
IR=$(callgrind_annotate "$D/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
ANSWERED=$(sed -n 's/^RESULT //p' "$D/load.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["answered"])')
echo "$BIN: $IR instructions, $ANSWERED requests: $((IR / ANSWERED)) per request, $((IR / ANSWERED / 2)) per frame (callgrind output: $D/cg.out)"
