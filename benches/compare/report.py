#!/usr/bin/env python3
"""Turn benches/results/raw.json into results.md, CSVs and PNG plots (gnuplot).

    python3 benches/compare/report.py [benches/results/raw.json]

Medians over rounds, the first round dropped when there are several. Criterion results are
included when CRITERION_DIR (default: $CARGO_TARGET_DIR/criterion or target/criterion) has them
(only those measured since CRITERION_SINCE, Unix seconds, when that is set).
Python 3.11 standard library only.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def median(xs):
    xs = sorted(x for x in xs if x is not None and x == x)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def kept(runs, rounds):
    return [r for r in runs if r.get("round", 0) > 0] if rounds > 1 else runs


def fmt(x, digits=1, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float) and abs(x) >= 1000 and digits <= 1:
        return f"{x:,.0f}{unit}"
    return f"{x:.{digits}f}{unit}"


def last_step_slope(points):
    """Bytes of RSS per connection between the last two connection counts, or None."""
    if len(points) < 2 or points[-1]["conns"] <= points[-2]["conns"]:
        return None
    return ((points[-1]["rss_kb"] - points[-2]["rss_kb"]) * 1024
            / (points[-1]["conns"] - points[-2]["conns"]))


def ratio(a, b):
    return a / b if a is not None and b else None


def table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_csv(path: Path, runs: list[dict]) -> None:
    if not runs:
        return
    keys = sorted({k for r in runs for k in r if not isinstance(r[k], (list, dict))})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)


def gnuplot(script: str, out_dir: Path) -> bool:
    if not shutil.which("gnuplot"):
        return False
    p = subprocess.run(["gnuplot"], input=script, text=True, cwd=out_dir,
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        print(f"gnuplot failed: {p.stderr}", file=sys.stderr)
    return p.returncode == 0


TERM = "set terminal pngcairo size 900,540 font 'DejaVu Sans,11'\n"
COLOR = {"direct": "#7f7f7f", "sessiongate": "#9400d3", "haproxy": "#009e73",
         "nginx": "#56b4e9"}
# Extra sessiongate builds (EXTRA_BINS), in order.
EXTRA_COLORS = ["#e69f00", "#d55e00", "#cc79a7", "#0072b2", "#f0e442", "#000000", "#999933",
                "#882255"]
# The one-mock JSON-RPC comparison (compare.py's RPC_ONE).
RPC_ONE = ["direct-1", "sessiongate-1", "haproxy-tcp"]


def lc(target: str) -> str:
    return f"lc rgb '{COLOR.get(target, '#000000')}'"


def extra_labels(settings: dict) -> list[str]:
    """Labels of the other sessiongate builds run beside the one under test (EXTRA_BINS; older
    runs had only BASELINE_BIN, in the JSON-RPC phase)."""
    if "EXTRA_BINS" in settings:
        return [label for label, _ in settings["EXTRA_BINS"]]
    return ["baseline"] if settings.get("BASELINE_BIN") else []


def extra_paths(settings: dict) -> dict[str, str]:
    if "EXTRA_BINS" in settings:
        return {label: path for label, path in settings["EXTRA_BINS"]}
    return {"baseline": settings["BASELINE_BIN"]} if settings.get("BASELINE_BIN") else {}


def criterion_results() -> list[tuple[str, float, float]]:
    base = os.environ.get("CRITERION_DIR") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "criterion")
    # Criterion keeps every benchmark it ever ran; with CRITERION_SINCE (Unix seconds, set by
    # run.sh when its criterion run starts) results older than this run are left out.
    since = float(os.environ.get("CRITERION_SINCE", "0") or 0)
    out = []
    for est in sorted(Path(base).glob("**/new/estimates.json")):
        if est.stat().st_mtime < since:
            continue
        bench = est.parent.parent.relative_to(base)
        if "report" in bench.parts:
            continue
        bjson = est.parent / "benchmark.json"
        try:
            data = json.loads(est.read_text())
            ns = data["median"]["point_estimate"]
            throughput = json.loads(bjson.read_text()).get("throughput") if bjson.exists() else None
        except (OSError, ValueError, KeyError):
            continue
        if throughput and "Elements" in throughput:
            ns /= throughput["Elements"]
            label = f"{bench} (per element)"
        else:
            label = str(bench)
        out.append((label, ns, est.stat().st_mtime))
    return out


def main() -> int:
    raw_path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benches/results/raw.json"
    raw = json.loads(raw_path.read_text())
    out_dir = raw_path.parent
    m, s = raw["machine"], raw["settings"]
    rounds = s["ROUNDS"]
    extras = extra_labels(s)
    for i, label in enumerate(extras):
        COLOR.setdefault(label, EXTRA_COLORS[i % len(EXTRA_COLORS)])
    # Older runs started the extra builds in the JSON-RPC phase only.
    http_extras = [x for x in extras if any(r["target"] == x for r in raw.get("http", []))]
    proxies = [*s["PROXIES"], *http_extras]
    targets = ["direct", *proxies]
    md = []
    add = md.append
    add("# sessiongate side-by-side benchmark\n")
    add(f"- **Date:** {m['date']}  ")
    add(f"- **Machine:** {m['nproc']} cores, {m['cpu_model']}, Linux {m['kernel']} "
        f"(load average at start {', '.join(m['loadavg_at_start'])})  ")
    add(f"- **Versions:** sessiongate {m['sessiongate']}; {m['haproxy']}; {m['nginx']}; "
        f"{m['wrk']}; {m['oha']}  ")
    add(f"- **Settings:** {rounds} rounds × {s['ROUND_SECS']} s"
        f"{' (first dropped, medians)' if rounds > 1 else ''}; concurrency "
        f"{', '.join(map(str, s['CONCURRENCY']))}; proxy on core {s['PROXY_CORE']}, load "
        f"generator and upstreams on core {s['LOAD_CORE']}; one worker per proxy; "
        f"{s['BODY_BYTES']}-byte upstream body (one nginx worker, 3 server blocks); "
        f"X-Session-Id over {s['SESSION_KEYS']} keys; sessiongate RUST_LOG={s['SG_LOG']}  ")
    add(f"- **Run time:** {raw.get('duration_secs', 0) / 60:.1f} min\n")
    if rounds < 3 or s["ROUND_SECS"] < 10:
        add("> **Short configuration**: these figures validate the harness; they are not the "
            "reference numbers (run with the defaults on a quiet machine for those).\n")

    http = kept(raw.get("http", []), rounds)
    ol = kept(raw.get("openloop", []), rounds)
    tls = kept(raw.get("tls", []), rounds)
    rpc = kept(raw.get("jsonrpc", []), rounds)
    rpc_ol = kept(raw.get("jsonrpc_openloop", []), rounds)

    def med(runs, key, **where):
        return median([r.get(key) for r in runs
                       if all(r.get(k) == v for k, v in where.items())])

    # ---- Targets (issue 5, §4)
    summary = []
    c_head = 50 if 50 in s["CONCURRENCY"] else s["CONCURRENCY"][0]
    sg_cpu = med(http, "cpu_us_per_req", target="sessiongate", conns=c_head)
    ha_cpu = med(http, "cpu_us_per_req", target="haproxy", conns=c_head)
    if sg_cpu and ha_cpu:
        r_ = sg_cpu / ha_cpu
        summary.append(["proxy CPU µs/request (c=%d)" % c_head, "≤ 0.9× HAProxy's",
                        f"{sg_cpu:.1f} vs {ha_cpu:.1f} µs = {r_:.2f}×", "✅" if r_ <= 0.9 else "❌"])
    sg_rps = med(http, "rps", target="sessiongate", conns=c_head)
    d_rps = med(http, "rps", target="direct", conns=c_head)
    if sg_rps and d_rps:
        r_ = sg_rps / d_rps
        summary.append([f"throughput at c={c_head}", "≥ 0.95× direct", f"{r_:.2f}×",
                        "✅" if r_ >= 0.95 else "❌"])
    if ol:
        d99 = med(ol, "p99_us", target="direct")
        sg99 = med(ol, "p99_us", target="sessiongate")
        ha99 = med(ol, "p99_us", target="haproxy")
        if None not in (d99, sg99, ha99):
            a, b = sg99 - d99, ha99 - d99
            summary.append(["open-loop p99 added latency", "≤ HAProxy's",
                            f"{a / 1000:.3f} vs {b / 1000:.3f} ms", "✅" if a <= b else "❌"])
    idle = {r["proxy"]: r for r in raw.get("idle", [])}
    if "sessiongate" in idle:
        b = idle["sessiongate"]["bytes_per_conn"]
        slope = last_step_slope(idle["sessiongate"]["points"])
        also = f" (last step {slope / 1000:.2f} kB)" if slope is not None else ""
        summary.append(["idle RSS per connection", "≤ 1.0 kB", f"{b / 1000:.2f} kB{also}",
                        "✅" if b <= 1000 else "❌"])
    if rpc:
        sg = med(rpc, "rate", target="sessiongate")
        d = med(rpc, "rate", target="direct")
        if sg and d:
            summary.append(["JSON-RPC message rate", "≥ 0.9× direct", f"{sg / d:.2f}×",
                            "✅" if sg / d >= 0.9 else "❌"])
        f_ = med(rpc, "cpu_us_per_frame", target="sessiongate")
        if f_:
            summary.append(["JSON-RPC CPU per frame", "≤ 5 µs", f"{f_:.2f} µs",
                            "✅" if f_ <= 5 else "❌"])
        sg1 = med(rpc, "cpu_us_per_frame", target="sessiongate-1")
        tcp = med(rpc, "cpu_us_per_frame", target="haproxy-tcp")
        if sg1 and tcp:
            summary.append(["JSON-RPC proxy CPU per routed frame (one mock)",
                            "≤ 1.3× HAProxy mode tcp", f"{sg1:.2f} vs {tcp:.2f} µs = "
                            f"{sg1 / tcp:.2f}×", "✅" if sg1 / tcp <= 1.3 else "❌"])
    if rpc_ol:
        d99 = med(rpc_ol, "p99_us", target="direct-1")
        sg99 = med(rpc_ol, "p99_us", target="sessiongate-1")
        tcp99 = med(rpc_ol, "p99_us", target="haproxy-tcp")
        if None not in (d99, sg99, tcp99):
            a, b = sg99 - d99, tcp99 - d99
            summary.append(["JSON-RPC open-loop p99 added latency (one mock)",
                            "≤ HAProxy mode tcp's", f"{a / 1000:.3f} vs {b / 1000:.3f} ms",
                            "✅" if a <= b else "❌"])
    crit = criterion_results()
    ring = [ns for name, ns, _ in crit if name.startswith("ring_owner/")]
    if ring:
        worst = max(ring)
        summary.append(["ring lookup (worst of 3…1000 upstreams)", "≤ 50 ns", f"{worst:.1f} ns",
                        "✅" if worst <= 50 else "❌"])
    if tls:
        sg = med(tls, "rate", proxy="sessiongate")
        ha = med(tls, "rate", proxy="haproxy")
        if sg and ha:
            summary.append(["TLS handshakes/s", "≥ 0.9× HAProxy's", f"{sg:.0f} vs {ha:.0f} = "
                            f"{sg / ha:.2f}×", "✅" if sg / ha >= 0.9 else "❌"])
    if "reload" in raw:
        r_ = raw["reload"]
        summary.append(["reload under load", "0 non-2xx, 0 socket errors",
                        f"{r_['non_2xx']} non-2xx, {r_['socket_errors']} socket errors",
                        "✅" if r_["pass"] else "❌"])
    add("## Against the targets\n")
    add(table(["what", "target", "measured", ""], summary) + "\n")

    # ---- HTTP closed loop
    if http:
        add("## HTTP, closed loop (wrk)\n")
        add("Requests/s (median), its ratio to direct, wrk's latency (closed loop: coordinated "
            "omission applies; see the open-loop table), proxy CPU µs per request from "
            "`/proc/PID/stat` and how busy that made the proxy's core.\n")
        rows = []
        for c in s["CONCURRENCY"]:
            d = med(http, "rps", target="direct", conns=c)
            for t in [t for t in targets if any(r["target"] == t for r in http)]:
                rps = med(http, "rps", target=t, conns=c)
                util = med(http, "proxy_util", target=t, conns=c)
                errs = sum(r["socket_errors"] + r["status"] for r in http
                           if r["target"] == t and r["conns"] == c)
                rows.append([c, t, fmt(rps, 0), fmt(ratio(rps, d), 2),
                             fmt(med(http, "p50_us", target=t, conns=c) / 1000, 3),
                             fmt(med(http, "p99_us", target=t, conns=c) / 1000, 3),
                             fmt(med(http, "cpu_us_per_req", target=t, conns=c), 1),
                             fmt(util, 2) if t != "direct" else "–", errs])
        add(table(["c", "target", "req/s", "× direct", "p50 ms", "p99 ms", "proxy CPU µs/req",
                   "proxy core util", "errors"], rows) + "\n")
        if http_extras and "sessiongate" in proxies:
            paths = extra_paths(s)
            add("Other sessiongate builds run beside the one under test, in the same rounds on "
                "the same core (`EXTRA_BINS`): "
                + "; ".join(f"`{x}` = `{paths.get(x, '?')}`" for x in http_extras) + ".\n")
            rows = []
            for c in s["CONCURRENCY"]:
                sg_rps = med(http, "rps", target="sessiongate", conns=c)
                sg_cpu = med(http, "cpu_us_per_req", target="sessiongate", conns=c)
                for t in ["sessiongate", *http_extras]:
                    rps = med(http, "rps", target=t, conns=c)
                    cpu = med(http, "cpu_us_per_req", target=t, conns=c)
                    rows.append([c, t, fmt(rps, 0), fmt(ratio(rps, sg_rps), 3), fmt(cpu, 1),
                                 fmt(ratio(cpu, sg_cpu), 3),
                                 fmt(med(http, "p99_us", target=t, conns=c) / 1000, 3)])
            add(table(["c", "build", "req/s", "× sessiongate", "proxy CPU µs/req",
                       "× sessiongate's", "p99 ms"], rows) + "\n")
        add("![throughput vs concurrency](throughput.png)\n")
        add("![proxy CPU per request](cpu.png)\n")
        write_csv(out_dir / "http.csv", raw.get("http", []))
        dat = ["# c " + " ".join(targets)]
        for c in s["CONCURRENCY"]:
            dat.append(f"{c} " + " ".join(str(med(http, "rps", target=t, conns=c) or 0)
                                          for t in targets))
        (out_dir / "throughput.dat").write_text("\n".join(dat) + "\n")
        plots = ", ".join(f"'throughput.dat' using 1:{i + 2} with linespoints lw 2 {lc(t)} title '{t}'"
                          for i, t in enumerate(targets))
        gnuplot(TERM + "set output 'throughput.png'\nset title 'Throughput vs concurrency "
                "(median req/s)'\nset xlabel 'connections (c)'\nset ylabel 'requests/s'\n"
                "set logscale x\nset xtics (" + ", ".join(map(str, s["CONCURRENCY"])) + ")\n"
                f"set xrange [{min(s['CONCURRENCY']) * 0.7}:{max(s['CONCURRENCY']) * 1.4}]\n"
                "set yrange [0:*]\nset key bottom right\nset grid\nplot " + plots + "\n", out_dir)
        dat = ["# c " + " ".join(proxies)]
        for c in s["CONCURRENCY"]:
            dat.append(f"{c} " + " ".join(str(med(http, "cpu_us_per_req", target=t, conns=c) or 0)
                                          for t in proxies))
        (out_dir / "cpu.dat").write_text("\n".join(dat) + "\n")
        plots = ", ".join(f"'cpu.dat' using {i + 2}:xtic(1) {lc(t)} title '{t}'"
                          for i, t in enumerate(proxies))
        gnuplot(TERM + "set output 'cpu.png'\nset title 'Proxy CPU per request (µs, lower is "
                "better)'\nset xlabel 'connections (c)'\nset ylabel 'µs CPU / request'\n"
                "set style data histograms\nset style fill solid 0.8\nset boxwidth 0.9\n"
                "set yrange [0:*]\nset grid ytics\nplot " + plots + "\n", out_dir)

    # ---- Open loop
    if ol:
        add(f"## HTTP, open loop at {raw.get('open_loop_rate')} req/s (oha --latency-correction)\n")
        add(f"{s['OPEN_LOOP_FRACTION']:.0%} of the slowest proxy's closed-loop peak, "
            f"{s['OPEN_LOOP_CONNS']} connections, one fixed session key. Added = proxy minus "
            "direct.\n")
        d50 = med(ol, "p50_us", target="direct")
        d99 = med(ol, "p99_us", target="direct")
        rows = []
        for t in [t for t in targets if any(r["target"] == t for r in ol)]:
            p50, p99 = med(ol, "p50_us", target=t), med(ol, "p99_us", target=t)
            rows.append([t, fmt(med(ol, "achieved_rps", target=t), 0),
                         fmt(p50 / 1000, 3), fmt(med(ol, "p90_us", target=t) / 1000, 3),
                         fmt(p99 / 1000, 3), fmt(med(ol, "p999_us", target=t) / 1000, 3),
                         fmt((p50 - d50) / 1000, 3) if t != "direct" else "–",
                         fmt((p99 - d99) / 1000, 3) if t != "direct" else "–",
                         fmt(med(ol, "cpu_us_per_req", target=t), 1),
                         sum(r["non_2xx"] + r["errors"] for r in ol if r["target"] == t)])
        add(table(["target", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                   "added p50 ms", "added p99 ms", "proxy CPU µs/req", "errors"], rows) + "\n")
        add("![latency percentiles](latency.png)\n")
        write_csv(out_dir / "openloop.csv", raw.get("openloop", []))
        dat = ["# pct " + " ".join(targets)]
        for key, label in (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"),
                           ("p999_us", "p99.9")):
            dat.append(f"{label} " + " ".join(str((med(ol, key, target=t) or 0) / 1000)
                                              for t in targets))
        (out_dir / "latency.dat").write_text("\n".join(dat) + "\n")
        plots = ", ".join(f"'latency.dat' using {i + 2}:xtic(1) {lc(t)} title '{t}'"
                          for i, t in enumerate(targets))
        gnuplot(TERM + f"set output 'latency.png'\nset title 'Open-loop latency at "
                f"{raw.get('open_loop_rate')} req/s'\nset ylabel 'ms'\nset style data "
                "histograms\nset style fill solid 0.8\nset boxwidth 0.9\nset logscale y\n"
                "set grid ytics\nplot " + plots + "\n", out_dir)

    # ---- Idle connections
    if idle:
        add("## Idle keep-alive connections\n")
        add("Each connection sent one request, read the answer, then stayed idle. RSS of the "
            "proxy's processes (nginx: master + worker) from `/proc/PID/statm`. \"kB per idle "
            "connection\" is the growth over the RSS before, divided by the connections; the "
            "first connections reuse heap that the earlier phases' load left free, so the last "
            "step's slope (the growth between the last two counts) is shown too.\n")
        rows = []
        for p, r in idle.items():
            pts = r["points"]
            slope = last_step_slope(pts)
            rows.append([p, pts[-1]["conns"], fmt(pts[0]["rss_kb"] / 1024, 1),
                         fmt(pts[-1]["rss_kb"] / 1024, 1), fmt(r["bytes_per_conn"] / 1000, 2),
                         fmt(slope / 1000, 2) if slope is not None else "–",
                         r["closed_while_idle"], r["failed_connects"]])
        add(table(["proxy", "connections", "RSS before MiB", "RSS after MiB",
                   "kB per idle connection", "kB per connection, last step",
                   "closed by the proxy", "failed connects"], rows)
            + "\n")
        add("![RSS vs connections](rss.png)\n")
        with open(out_dir / "idle.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["proxy", "conns", "rss_kb"])
            for p, r in idle.items():
                for pt in r["points"]:
                    w.writerow([p, pt["conns"], pt["rss_kb"]])
        plots = []
        for p, r in idle.items():
            (out_dir / f"rss-{p}.dat").write_text(
                "\n".join(f"{pt['conns']} {pt['rss_kb'] / 1024}" for pt in r["points"]) + "\n")
            plots.append(f"'rss-{p}.dat' using 1:2 with linespoints lw 2 {lc(p)} title '{p}'")
        gnuplot(TERM + "set output 'rss.png'\nset title 'Proxy RSS vs idle keep-alive "
                "connections'\nset xlabel 'connections'\nset ylabel 'RSS (MiB)'\nset grid\n"
                "set key top left\nplot " + ", ".join(plots) + "\n", out_dir)

    # ---- TLS
    if tls:
        add("## TLS full handshakes (ECDSA P-256, TLS 1.3, no resumption)\n")
        rows = []
        for p in ("sessiongate", "haproxy"):
            if any(r["proxy"] == p for r in tls):
                rows.append([p, fmt(med(tls, "rate", proxy=p), 0),
                             fmt(med(tls, "cpu_us_per_handshake", proxy=p), 0),
                             fmt(med(tls, "proxy_util", proxy=p), 2),
                             fmt(med(tls, "p50_us", proxy=p) / 1000, 2),
                             sum(r["errors"] for r in tls if r["proxy"] == p)])
        add(table(["proxy", "handshakes/s", "proxy CPU µs/handshake", "proxy core util",
                   "p50 ms", "errors"], rows) + "\n")
        add("When the proxy core is not saturated (util well below 1.0), the client on the other "
            "core was the limit and CPU µs per handshake is the figure to compare.\n")
        write_csv(out_dir / "tls.csv", raw.get("tls", []))

    # ---- JSON-RPC
    if rpc or "jsonrpc_fleet" in raw:
        add("## JSON-RPC (mock Copilot CLI fleet)\n")
        add(f"`{s['JSONRPC_METHOD']}` requests addressed to sessions created first (so the proxy "
            f"routes each by its pin), {s['JSONRPC_CONNS']} connections × "
            f"{s['JSONRPC_SESSIONS']} sessions, {s['JSONRPC_DEPTH']} in flight per connection, "
            f"{s['MOCKS']} mock servers. A frame is one message through the proxy in one "
            "direction (a request and its answer are two).\n")
        rows = []
        d = med(rpc, "rate", target="direct")
        rpc_targets = ["direct", "sessiongate"]
        rpc_extras = [x for x in extras if any(r["target"] == x for r in rpc)]
        if rpc_extras:
            rpc_targets += rpc_extras
            paths = extra_paths(s)
            add("Other builds (`EXTRA_BINS`, `BASELINE_BIN`) measured in the same rounds on the "
                "same core, for before/after figures: "
                + "; ".join(f"`{x}` = `{paths.get(x, '?')}`" for x in rpc_extras) + ".\n")
        for t in rpc_targets:
            rate = med(rpc, "rate", target=t)
            rows.append([t, fmt(rate, 0), fmt(ratio(rate, d), 2),
                         fmt(med(rpc, "p50_us", target=t) / 1000, 3),
                         fmt(med(rpc, "p99_us", target=t) / 1000, 3),
                         fmt(med(rpc, "cpu_us_per_frame", target=t), 2),
                         fmt(med(rpc, "proxy_util", target=t), 2) if t != "direct" else "–",
                         sum(r["errors"] + r["create_errors"] for r in rpc if r["target"] == t)])
        add(table(["target", "requests/s", "× direct", "p50 ms", "p99 ms", "proxy CPU µs/frame",
                   "proxy core util", "errors"], rows) + "\n")
        if any(r["target"] in RPC_ONE for r in rpc):
            add("### One mock CLI: sessiongate vs HAProxy `mode tcp`\n")
            add("The same load and frames against the first mock alone: `direct-1` connects to "
                "it, `sessiongate-1` is a second JSON-RPC listener of the same sessiongate "
                "process whose pool is that one mock (sessions pinned and every frame routed as "
                "usual), `haproxy-tcp` is HAProxy 2.6 `mode tcp` (one thread, same core) "
                "forwarding each client connection to it blindly. Sessions are created through "
                "the path measured. Closed loop, as above.\n")
            d1 = med(rpc, "rate", target="direct-1")
            rows = []
            for t in RPC_ONE:
                rate = med(rpc, "rate", target=t)
                rows.append([t, fmt(rate, 0), fmt(ratio(rate, d1), 2),
                             fmt(med(rpc, "p50_us", target=t) / 1000, 3),
                             fmt(med(rpc, "p99_us", target=t) / 1000, 3),
                             fmt(med(rpc, "cpu_us_per_frame", target=t), 2),
                             fmt(med(rpc, "proxy_util", target=t), 2)
                             if t != "direct-1" else "–",
                             sum(r["errors"] + r["create_errors"] for r in rpc
                                 if r["target"] == t)])
            add(table(["target", "requests/s", "× direct-1", "p50 ms", "p99 ms",
                       "proxy CPU µs/frame", "proxy core util", "errors"], rows) + "\n")
            sg1 = med(rpc, "cpu_us_per_frame", target="sessiongate-1")
            tcp = med(rpc, "cpu_us_per_frame", target="haproxy-tcp")
            sg1_99 = med(rpc, "p99_us", target="sessiongate-1")
            tcp99 = med(rpc, "p99_us", target="haproxy-tcp")
            if sg1 and tcp:
                add(f"**sessiongate CPU per frame / HAProxy mode tcp CPU per frame = "
                    f"{sg1:.2f} / {tcp:.2f} µs = {sg1 / tcp:.2f}×** (target ≤ 1.3×); closed-loop "
                    f"p99 {fmt(sg1_99 / 1000 if sg1_99 else None, 3)} vs "
                    f"{fmt(tcp99 / 1000 if tcp99 else None, 3)} ms.\n")
        if rpc_ol:
            rate = raw.get("jsonrpc_open_loop_rate")
            add(f"### One mock CLI, open loop at {rate} requests/s\n")
            add(f"`jsonrpc-load --rate`: {rate} requests/s in total "
                + ("(JSONRPC_OPEN_LOOP_RATE)" if s.get("JSONRPC_OPEN_LOOP_RATE") else
                   f"({s['OPEN_LOOP_FRACTION']:.0%} of the slower proxy's closed-loop peak "
                   "above)")
                + f" over the same {s['JSONRPC_CONNS']} connections × {s['JSONRPC_SESSIONS']} "
                "sessions, each request due at a fixed time and its latency counted from then "
                "(coordinated-omission corrected). Added = target minus `direct-1`. Send lag: "
                "how late the load generator's writes finished after the requests were due "
                "(p99 over write batches), already inside the latencies.\n")
            rows = []
            base = {k: med(rpc_ol, k, target="direct-1") for k in ("p50_us", "p99_us", "p999_us")}
            for t in RPC_ONE:
                if not any(r["target"] == t for r in rpc_ol):
                    continue
                p = {k: med(rpc_ol, k, target=t) for k in ("p50_us", "p90_us", "p99_us",
                                                          "p999_us")}

                def added(k):
                    if t == "direct-1" or p[k] is None or base[k] is None:
                        return "–"
                    return fmt((p[k] - base[k]) / 1000, 3)
                rows.append([t, fmt(med(rpc_ol, "rate", target=t), 0),
                             fmt(p["p50_us"] / 1000, 3), fmt(p["p90_us"] / 1000, 3),
                             fmt(p["p99_us"] / 1000, 3), fmt(p["p999_us"] / 1000, 3),
                             added("p50_us"), added("p99_us"), added("p999_us"),
                             fmt(med(rpc_ol, "cpu_us_per_frame", target=t), 2),
                             fmt(med(rpc_ol, "send_lag_p99_us", target=t), 0),
                             sum(r["errors"] + r["create_errors"] + r["unanswered"]
                                 for r in rpc_ol if r["target"] == t)])
            add(table(["target", "answered/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                       "added p50 ms", "added p99 ms", "added p99.9 ms", "proxy CPU µs/frame",
                       "send lag p99 µs", "errors + unanswered"], rows) + "\n")
            sg99 = med(rpc_ol, "p99_us", target="sessiongate-1")
            tcp99 = med(rpc_ol, "p99_us", target="haproxy-tcp")
            if None not in (sg99, tcp99, base["p99_us"]):
                add(f"**Open-loop p99 added over direct: sessiongate "
                    f"{(sg99 - base['p99_us']) / 1000:.3f} ms vs HAProxy mode tcp "
                    f"{(tcp99 - base['p99_us']) / 1000:.3f} ms** (p99 {sg99 / 1000:.3f} vs "
                    f"{tcp99 / 1000:.3f} ms; target: sessiongate's added p99 ≤ HAProxy's).\n")
            write_csv(out_dir / "jsonrpc-openloop.csv", raw.get("jsonrpc_openloop", []))
        f_ = raw.get("jsonrpc_fleet")
        if f_:
            add(f"**{f_['sessions']:,} sessions over {f_['conns']} connections** "
                f"({s['MOCKS']} mocks, {s['FLEET_DEPTH']} in flight per connection): "
                f"{fmt(f_['rate'], 0)} requests/s, "
                f"{fmt(f_.get('cpu_us_per_frame'), 2)} µs CPU per frame, proxy RSS "
                f"{f_['rss_kb_before'] / 1024:.1f} MiB before the connections → "
                f"{f_['rss_kb_at_end'] / 1024:.1f} MiB with them "
                f"({(f_['rss_kb_at_end'] - f_['rss_kb_before']) * 1024 / f_['sessions']:.0f} B "
                f"per session, links included), setup {f_['setup_secs']:.1f} s, errors "
                f"{f_['errors']}/{f_['create_errors']}.\n")
            if "live" in f_:
                add(f"Placement with `load_factor: {f_.get('load_factor') or 'off'}`: live sessions per "
                    f"node {f_['live']}, max/mean {f_['live_max_over_mean']:.3f}.\n")
        write_csv(out_dir / "jsonrpc.csv", raw.get("jsonrpc", []))

    # ---- Reload
    if "reload" in raw:
        r = raw["reload"]
        add("## Reload under load\n")
        add(table(["SIGHUPs", "reloads ok", "reloads failed", "requests", "non-2xx",
                   "socket errors", "result"],
                  [[r["sighups"], int(r["reloads_ok"]), int(r["reloads_failed"]), r["requests"],
                    r["non_2xx"], r["socket_errors"], "PASS" if r["pass"] else "FAIL"]]) + "\n")

    # ---- Criterion
    if crit:
        newest = datetime.datetime.fromtimestamp(max(t for _, _, t in crit),
                                                 datetime.timezone.utc)
        add(f"## Criterion micro-benchmarks (median; measured {newest:%Y-%m-%d %H:%M} UTC)\n")
        add(table(["benchmark", "time"], [[n, f"{ns:,.1f} ns" if ns < 1e5 else
                                           f"{ns / 1e6:,.2f} ms"] for n, ns, _ in crit]) + "\n")

    # ---- Noise
    runs = (raw.get("http", []) + raw.get("openloop", []) + raw.get("tls", [])
            + raw.get("jsonrpc", []) + raw.get("jsonrpc_openloop", []))
    steal = [r.get("cpu0_steal", 0) + r.get("cpu1_steal", 0) for r in runs]
    other0 = [r.get("cpu0_busy", 0) - r.get("proxy_util", 0) for r in runs
              if not r.get("target", r.get("proxy")).startswith("direct")]
    add("## Noise\n")
    add(f"- Median hypervisor steal over both cores during runs: {fmt(median(steal) or 0, 3)} "
        f"(fraction of a core).  ")
    add(f"- Median core-{s['PROXY_CORE']} time not used by the proxy under test during proxy "
        f"runs: {fmt(median(other0) or 0, 3)} of the core (other processes, interrupts).\n")
    if raw.get("notes"):
        add("## Notes\n")
        for n in raw["notes"]:
            add(f"- {n}")
        add("")
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    print(f"report: {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
