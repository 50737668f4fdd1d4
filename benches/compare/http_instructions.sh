#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request, counted by callgrind (user space only; repeatable
# whatever else the machine does, unlike CPU time), for a sessiongate binary or HAProxy.
#
#   benches/compare/http_instructions.sh BIN|haproxy [secs] [conns]
#
# One nginx upstream serving a 64-byte body, the proxy under valgrind in front of it (one
# worker, hash on X-Session-Id, keep-alive upstream connections, X-Forwarded-For added), wrk
# with a Lua script varying the key over 10,000 values. Instrumentation is on only for the
# measured wrk run (a warm-up run goes first). Prints instructions per request.
set -euo pipefail
BIN=$1; SECS=${2:-10}; CONNS=${3:-50}
for tool in valgrind wrk nginx haproxy; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind wrk nginx haproxy >/dev/null; break; }
done
D=$(mktemp -d)
cleanup() { kill "${PROXY:-}" 2>/dev/null || true; [ -f "$D/nginx.pid" ] && kill "$(cat "$D/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$D/logs"
cat >"$D/nginx.conf" <<CONF
worker_processes 1; daemon on; pid $D/nginx.pid; error_log $D/logs/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19181; location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; } } }
CONF
nginx -p "$D" -c "$D/nginx.conf"
if [ "$BIN" = haproxy ]; then
  cat >"$D/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:18181
  default_backend be
backend be
  balance hdr(X-Session-Id)
  hash-type consistent
  server u1 127.0.0.1:19181
CONF
  CMD=(haproxy -db -f "$D/haproxy.cfg")
else
  cat >"$D/sessiongate.yaml" <<YAML
runtime: { worker_threads: 1 }
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, listen: 127.0.0.1:18181, protocol: http, pool: web, key: [{ header: X-Session-Id }] }
pools:
  web:
    health: { probe: tcp, interval: 5s }
    upstreams:
      - { name: u1, addr: 127.0.0.1:19181 }
YAML
  CMD=("$BIN" --config "$D/sessiongate.yaml" run)
fi
cat >"$D/keys.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["X-Session-Id"] = "s" .. (n % 10000) })
end
LUA
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/cg.out" "${CMD[@]}" >"$D/proxy.log" 2>&1 &
PROXY=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18181) 2>/dev/null && break; sleep 0.3; done
wrk -t1 -c"$CONNS" -d2s -s "$D/keys.lua" http://127.0.0.1:18181/ >/dev/null
callgrind_control -i on "$PROXY" >/dev/null
wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$D/keys.lua" http://127.0.0.1:18181/ >"$D/wrk.txt"
callgrind_control -i off "$PROXY" >/dev/null
# HAProxy stops on SIGTERM (it ignores SIGINT in -db mode); sessiongate on either.
kill -TERM "$PROXY"; wait "$PROXY" 2>/dev/null || true
IR=$(callgrind_annotate "$D/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
REQS=$(awk '/requests in/ {print $1}' "$D/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$D/wrk.txt")
echo "$BIN: $IR instructions, $REQS requests (non-2xx: ${NON2XX:-0}): $((IR / REQS)) per request (callgrind output: $D/cg.out)"
