#!/usr/bin/env bash
# Side-by-side load harness: direct vs sessiongate vs HAProxy 2.6 vs nginx 1.22 on this machine.
#
#   benches/compare/run.sh                      # the full run (about 45 minutes)
#   ROUNDS=2 ROUND_SECS=3 benches/compare/run.sh  # a quick check of the harness
#
# Installs what it needs (Debian: haproxy nginx wrk gnuplot-nox openssl; crates: oha), builds
# sessiongate and the helper tools, makes an ECDSA P-256 certificate, then runs
# benches/compare/compare.py, which writes benches/results/{results.md,raw.json,*.csv,*.png}.
# Every setting is an environment variable; see benches/README.md for the list. With CRITERION=1
# (the default) the criterion micro-benchmarks run first, pinned to the proxy core, and their
# medians go into results.md too (CRITERION_ARGS passes criterion flags, e.g. a shorter
# --measurement-time).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export RESULTS_DIR="${RESULTS_DIR:-$REPO/benches/results}"
export WORKDIR="${WORKDIR:-$RESULTS_DIR/tmp}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"

say() { printf '[run.sh] %s\n' "$*" >&2; }

# Debian packages: HAProxy and nginx under test, wrk (closed loop), gnuplot (plots).
install_packages() {
  local missing=()
  command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v taskset >/dev/null || missing+=(util-linux)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# oha (open-loop runs with --latency-correction). Optional: without it the open-loop phase is
# skipped and the report says so. Its TLS stack wants cmake to build.
install_oha() {
  if command -v oha >/dev/null || [[ -x "$HOME/.cargo/bin/oha" ]]; then
    return
  fi
  if ! command -v cmake >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null || true
  fi
  say "installing oha (cargo install oha --locked; a few minutes)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/oha-build" cargo install oha --locked \
    || say "oha did not build: the open-loop phase will be skipped"
}

build() {
  say "building sessiongate and the helper tools (profile bench) in $CARGO_TARGET_DIR"
  cd "$REPO"
  cargo build --profile bench --bin sessiongate
  # Compile the criterion benches now too, so their runs below measure without building.
  [[ "${CRITERION:-1}" != 1 ]] || cargo bench --no-run --bench ring --bench keys \
    --bench jsonrpc --bench pins
  export SG_BIN="$CARGO_TARGET_DIR/release/sessiongate"
  # The bench profile inherits release and shares its output folder.
  [[ -x "$SG_BIN" ]] || SG_BIN="$CARGO_TARGET_DIR/bench/sessiongate"
  TOOLS_BIN="$(cargo bench --no-run --bench compare_tools --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "compare_tools" and m.get("executable"):
        print(m["executable"])')"
  export TOOLS_BIN
  [[ -x "$SG_BIN" && -x "$TOOLS_BIN" ]] || { say "build outputs not found"; exit 1; }
}

# One ECDSA P-256 leaf (SAN localhost, 127.0.0.1) signed by a throwaway CA; sessiongate and
# HAProxy serve the same certificate.
make_certs() {
  local d="$WORKDIR/certs"
  mkdir -p "$d"
  [[ -s "$d/haproxy.pem" ]] && return
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=sessiongate bench CA" -days 30 \
    -out "$d/ca.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/leaf.key" 2>/dev/null
  openssl req -new -key "$d/leaf.key" -subj "/CN=localhost" -out "$d/leaf.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >"$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/leaf.ext" -out "$d/leaf.pem" 2>/dev/null
  cat "$d/leaf.pem" "$d/leaf.key" >"$d/haproxy.pem"
}

# Criterion micro-benchmarks (benches/*.rs), before any server starts.
run_criterion() {
  [[ "${CRITERION:-1}" == 1 ]] || return 0
  local b
  # The report leaves out older results criterion still keeps (benchmarks since removed).
  CRITERION_SINCE="$(date +%s)"
  export CRITERION_SINCE
  for b in ring keys jsonrpc pins; do
    say "criterion: $b"
    # shellcheck disable=SC2086 # CRITERION_ARGS is a list of flags
    taskset -c "${PROXY_CORE:-0}" cargo bench --bench "$b" -- ${CRITERION_ARGS:-} 2>&1 |
      grep -v '^Benchmarking' || true
  done
}

main() {
  [[ $(nproc) -ge 2 ]] || { say "needs at least 2 cores"; exit 1; }
  install_packages
  install_oha
  export PATH="$PATH:$HOME/.cargo/bin"
  build
  run_criterion
  mkdir -p "$WORKDIR"
  make_certs
  # 9,000 idle connections need ~9,000 descriptors on each side; the hard cap here is 20,000.
  ulimit -n "$(ulimit -Hn)" || true
  say "ulimit -n $(ulimit -n); results in $RESULTS_DIR"
  exec python3 "$REPO/benches/compare/compare.py"
}

main "$@"
