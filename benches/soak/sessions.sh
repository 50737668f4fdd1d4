#!/usr/bin/env bash
# Session soak: SESSIONS (default one million) session lifecycles — session.create with an
# explicit id, session.resume, session.delete — through a release-built sessiongate in front of
# four mock Copilot CLIs, on free loopback ports. `compare_tools soak-sessions` drives the load,
# samples the proxy's RSS and fds every second, fits the RSS slope over the second half and checks
# /metrics at the end (no session left pinned or live, the series count not growing); this script
# writes $RESULTS_DIR/$NAME.md and $NAME.csv and exits non-zero if the soak failed.
#
#   benches/soak/sessions.sh                              # the full million
#   SESSIONS=100000 MAX_SECS=120 benches/soak/sessions.sh # the bounded run tests/run.sh does
#
# SG_BIN / TOOLS_BIN: use these binaries instead of building. CONNS, DEPTH: client connections
# and sessions in flight on each. MAX_SECS: no new session after this long. MAX_GROWTH_MIB: fail
# when the fitted RSS growth over the second half is larger. SG_WORKERS: the proxy's worker
# threads (1, as in the comparison harness).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS="${SESSIONS:-1000000}"
CONNS="${CONNS:-8}"
DEPTH="${DEPTH:-32}"
MAX_SECS="${MAX_SECS:-600}"
MAX_GROWTH_MIB="${MAX_GROWTH_MIB:-50}"
SG_WORKERS="${SG_WORKERS:-1}"
MOCKS=4
RESULTS_DIR="${RESULTS_DIR:-$REPO/benches/results}"
NAME="${NAME:-soak-sessions}"

build_binaries
WORK="$(mktemp -d /tmp/sessiongate-soak-sessions.XXXXXX)"
trap 'stop_owned; rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS_DIR"

read -r -a PORTS <<<"$(free_ports $((MOCKS + 2)))"
RPC_PORT="${PORTS[0]}"
ADMIN_PORT="${PORTS[1]}"
UPSTREAMS=""
for i in $(seq 1 "$MOCKS"); do
  port="${PORTS[$((i + 1))]}"
  start_owned "$WORK/mock-$i.log" "$TOOLS_BIN" mockfleet --listen "127.0.0.1:$port" --count 1 \
    --max-secs $((MAX_SECS + 600))
  UPSTREAMS+="      - { name: cli-$i, addr: 127.0.0.1:$port }"$'\n'
done
cat >"$WORK/sessiongate.yaml" <<YAML
# The session soak: sessiongate in front of $MOCKS mock CLIs.
runtime:
  worker_threads: $SG_WORKERS
admin:
  listen: 127.0.0.1:$ADMIN_PORT
shutdown_grace: 2s
listeners:
  - name: rpc
    listen: 127.0.0.1:$RPC_PORT
    protocol: jsonrpc
    pool: cli
pools:
  cli:
    hash:
      vnodes: 160
    health:
      probe: tcp
      interval: 5s
    upstreams:
$UPSTREAMS
YAML
for i in $(seq 1 "$MOCKS"); do wait_port "${PORTS[$((i + 1))]}"; done
RUST_LOG=warn start_owned "$WORK/sessiongate.log" "$SG_BIN" --config "$WORK/sessiongate.yaml" run
SG_PID="$LAST_PID"
wait_port "$RPC_PORT"
wait_port "$ADMIN_PORT"

say "soak: $SESSIONS sessions, $CONNS connections x $DEPTH in flight, bound ${MAX_SECS}s (proxy pid $SG_PID)"
status=0
"$TOOLS_BIN" soak-sessions --addr "127.0.0.1:$RPC_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
  --proxy-pid "$SG_PID" --sessions "$SESSIONS" --conns "$CONNS" --depth "$DEPTH" \
  --max-secs "$MAX_SECS" --max-growth-mib "$MAX_GROWTH_MIB" --run-id "soak-$$" \
  --csv "$RESULTS_DIR/$NAME.csv" | tee "$WORK/tool.out" || status=$?
kill -0 "$SG_PID" 2>/dev/null || { say "sessiongate exited during the soak:"; cat "$WORK/sessiongate.log" >&2; status=1; }

COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
DIRTY="$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | head -1)"
python3 - "$WORK/tool.out" "$RESULTS_DIR/$NAME.md" "$NAME.csv" "$COMMIT${DIRTY:+ (+ local changes)}" \
  "$(machine_line)" "$SG_WORKERS" <<'PY'
import json, sys, datetime
out, md, csv, commit, machine, workers = sys.argv[1:7]
lines = [l for l in open(out) if l.startswith("RESULT ")]
if not lines:
    open(md, "w").write("# Session soak\n\nNo result: the load tool failed before the end.\n")
    sys.exit(0)
r = json.loads(lines[-1][len("RESULT "):])
e = r["errors"]
mb, mh, me = r["metrics_before"], r["metrics_half_way"], r["metrics_end"]
rows = [
    ("sessions (create + resume + delete)", f"{r['sessions_done']:,} of {r['sessions_requested']:,}"
     + ("" if r["complete"] else " (time bound hit)")),
    ("connections x sessions in flight", f"{r['conns']} x {r['depth']}"),
    ("wall time", f"{r['secs']:.1f} s"),
    ("rate", f"{r['sessions_per_sec']:,.0f} sessions/s ({r['requests_per_sec']:,.0f} requests/s)"),
    ("failed answers (create / resume / delete)", f"{e['create']} / {e['resume']} / {e['delete']}"),
    ("failed connections", str(len(r["failures"]))),
    ("notifications received", f"{r['notifications']:,}"),
    ("proxy RSS before / peak / end", f"{r['rss_kib_before']/1024:.1f} / {r['rss_kib_peak']/1024:.1f} / {r['rss_kib_end']/1024:.1f} MiB"),
    ("RSS slope, second half", f"{r['slope_kib_per_100k_sessions']:.1f} KiB per 100k sessions, {r['slope_kib_per_min']:.1f} KiB/min"),
    ("fitted RSS growth over the second half", f"{r['second_half_fitted_growth_kib']/1024:.2f} MiB over {r['second_half_secs']:.0f} s"),
    ("proxy fds peak / end", f"{r['fds_peak']} / {r['fds_end']}"),
    ("pinned sessions before / half-way / end", f"{mb['pinned_sessions']} / {mh['pinned_sessions']} / {me['pinned_sessions']}"),
    ("live sessions before / half-way / end", f"{mb['sessions_live']} / {mh['sessions_live']} / {me['sessions_live']}"),
    ("series in /metrics before / half-way / end", f"{mb['series']} / {mh['series']} / {me['series']}"),
    ("verdict", "PASS" if r["pass"] else "FAIL: " + "; ".join(r["verdicts"])),
]
with open(md, "w") as f:
    f.write("# Session soak\n\n")
    f.write(f"`benches/soak/sessions.sh`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"commit {commit}; {machine}; sessiongate release build, {workers} worker thread(s), "
            f"4 mock CLIs, all on one shared machine.\n\n")
    f.write("| | |\n|---|---|\n")
    for k, v in rows:
        f.write(f"| {k} | {v} |\n")
    f.write(f"\nRSS and fds every second: `{csv}` (secs, sessions done, RSS KiB, fds). The slope is a "
            "least-squares fit over the samples of the second half of the run (by time).\n")
    if r["error_samples"]:
        f.write("\nFirst failed answers:\n\n")
        for s in r["error_samples"]:
            f.write(f"    {s}\n")
PY
say "wrote $RESULTS_DIR/$NAME.md"
exit "$status"
