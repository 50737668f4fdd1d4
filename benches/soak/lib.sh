#!/usr/bin/env bash
# Shared pieces of the soak scripts (sourced, not run): building the binaries, free loopback
# ports, starting and stopping what a script owns by pid, and reading the admin /metrics page.
# Everything is black-box: the sessiongate binary, a generated config, loopback traffic.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export CARGO_TARGET_DIR
OWNED_PIDS=()

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# SG_BIN (release sessiongate) and TOOLS_BIN (the compare_tools bench binary), built unless given.
build_binaries() {
  cd "$REPO"
  if [[ -z "${SG_BIN:-}" ]]; then
    say "building sessiongate (release) in $CARGO_TARGET_DIR"
    cargo build --release --locked --bin sessiongate >&2
    SG_BIN="$CARGO_TARGET_DIR/release/sessiongate"
  fi
  if [[ -z "${TOOLS_BIN:-}" ]]; then
    say "building compare_tools (profile bench)"
    TOOLS_BIN="$(cargo bench --locked --no-run --bench compare_tools --message-format=json |
      python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "compare_tools" and m.get("executable"):
        print(m["executable"])')"
  fi
  [[ -x "$SG_BIN" && -x "$TOOLS_BIN" ]] || { say "binaries not found: '$SG_BIN' '$TOOLS_BIN'"; exit 1; }
  export SG_BIN TOOLS_BIN
}

# N distinct free loopback ports, chosen by the kernel (held open together so they differ).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Run a command in the background with its output in LOG; its pid goes to LAST_PID and to the
# list stop_owned stops.
start_owned() {
  local log="$1"
  shift
  "$@" >"$log" 2>&1 &
  LAST_PID="$!"
  OWNED_PIDS+=("$LAST_PID")
}

# Stop every process this script started, by pid, TERM first.
stop_owned() {
  local pid
  for pid in "${OWNED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${OWNED_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# Wait (bounded) until something accepts TCP connections on 127.0.0.1:PORT.
wait_port() {
  local port="$1" i
  for i in $(seq 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" \
      2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  say "nothing listens on 127.0.0.1:$port"
  return 1
}

# The admin /metrics page of the sessiongate whose admin listener is on PORT.
metrics() {
  python3 - "$1" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode())
PY
}

# Resident set (KiB) and open fds of PID, as "rss fds".
rss_fds() {
  local pid="$1"
  echo "$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)" \
    "$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
}

machine_line() {
  echo "$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -sr)"
}
