#!/usr/bin/env python3
"""Mixed soak (run by benches/soak/mixed.sh, which builds the binaries first).

sessiongate (release build, black box: binary + generated config) in front of three nginx HTTP
upstreams and four mock Copilot CLIs, on free loopback ports, for SOAK_MINS minutes:

- HTTP load: oha at a fixed rate over keys in the path (`/sessions/{key}`), in segments of
  HTTP_SEGMENT_SECS, each segment's status codes and errors kept with its time span;
- JSON-RPC load: `compare_tools jsonrpc-load` (session.create, then session.getMetadata
  pipelined) in segments of RPC_SEGMENT_SECS, each with fresh sessions;
- a reload every RELOAD_SECS (upstream u3's weight flips 1 <-> 2, then SIGHUP);
- an upstream restart every RESTART_SECS, alternating: mock CLI cli-2 killed with SIGKILL, nginx
  u2 stopped with SIGTERM (its fast shutdown drops every connection); each comes back on the
  same port after DOWN_SECS;
- every SAMPLE_SECS the proxy's RSS and open fds; every METRICS_SECS a /metrics scrape.

Errors are split into expected and unexpected. Expected by design: answers that name the
restarted node's absence — HTTP 502/503/504 in a segment that overlaps an HTTP upstream's
restart window, JSON-RPC -32001 (owner down) or `Session not found` (the node restarted and
lost its sessions) in a segment that overlaps a mock CLI's restart window. A restart window runs
from the kill until RECOVERY_SECS after the node listens again (health checks take it back).
Anything else is unexpected: any error outside those windows, other codes, socket errors, load
tools that fail. The proxy's own count (`sessiongate_requests_total` by upstream) gives the
second view: failures on the restarted nodes vs on the others.

Writes RESULTS_DIR/soak-mixed.md and soak-mixed.csv (the samples); exits 1 when there was an
unexpected error, a failed reload, or the proxy died.
"""

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def env_num(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


SOAK_MINS = env_num("SOAK_MINS", 30)
RELOAD_SECS = env_num("RELOAD_SECS", 60)
RESTART_SECS = env_num("RESTART_SECS", 180)
DOWN_SECS = env_num("DOWN_SECS", 5)
RECOVERY_SECS = env_num("RECOVERY_SECS", 5)
HTTP_RATE = int(env_num("HTTP_RATE", 1000))
HTTP_CONNS = int(env_num("HTTP_CONNS", 20))
HTTP_SEGMENT_SECS = int(env_num("HTTP_SEGMENT_SECS", 10))
RPC_CONNS = int(env_num("RPC_CONNS", 4))
RPC_SESSIONS = int(env_num("RPC_SESSIONS", 10))
RPC_DEPTH = int(env_num("RPC_DEPTH", 2))
RPC_SEGMENT_SECS = int(env_num("RPC_SEGMENT_SECS", 30))
SAMPLE_SECS = env_num("SAMPLE_SECS", 5)
METRICS_SECS = env_num("METRICS_SECS", 30)
SG_WORKERS = int(env_num("SG_WORKERS", 1))
SG_BIN = os.environ["SG_BIN"]
TOOLS_BIN = os.environ["TOOLS_BIN"]
OHA = os.environ.get("OHA", "oha")
REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", REPO / "benches/results"))
NAME = os.environ.get("NAME", "soak-mixed")
WORK = Path(os.environ["WORK"])
MOCKS, WEBS = 4, 3
MOCK_VICTIM, WEB_VICTIM = "cli-2", "u2"
DESIGNED_HTTP = {"502", "503", "504"}
DESIGNED_RPC = {"-32001", "session-not-found"}


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr,
          flush=True)


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port: int, secs: float = 10) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def wait_port_free(port: int, secs: float = 10) -> None:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            time.sleep(0.05)
        except OSError:
            return


PORTS = free_ports(2 + 1 + MOCKS + WEBS)
RPC_PORT, ADMIN_PORT, HTTP_PORT = PORTS[0], PORTS[1], PORTS[2]
MOCK_PORTS = dict((f"cli-{i + 1}", PORTS[3 + i]) for i in range(MOCKS))
WEB_PORTS = dict((f"u{i + 1}", PORTS[3 + MOCKS + i]) for i in range(WEBS))
CONF = WORK / "sessiongate.yaml"
T0 = time.monotonic()
stop = threading.Event()
lock = threading.Lock()


def now() -> float:
    return time.monotonic() - T0


def sessiongate_conf(weight3: int) -> str:
    webs = "\n".join(
        f"      - {{ name: {n}, addr: 127.0.0.1:{p}"
        + (f", weight: {weight3}" if n == "u3" else "") + " }"
        for n, p in WEB_PORTS.items())
    clis = "\n".join(f"      - {{ name: {n}, addr: 127.0.0.1:{p} }}" for n, p in MOCK_PORTS.items())
    return f"""# The mixed soak (benches/soak/mixed.py); u3's weight flips on every reload.
runtime:
  worker_threads: {SG_WORKERS}
admin:
  listen: 127.0.0.1:{ADMIN_PORT}
shutdown_grace: 2s
listeners:
  - name: web
    listen: 127.0.0.1:{HTTP_PORT}
    protocol: http
    pool: web
    key:
      - path: /sessions/{{key}}
  - name: rpc
    listen: 127.0.0.1:{RPC_PORT}
    protocol: jsonrpc
    pool: cli
pools:
  web:
    health: {{ probe: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }}
    upstreams:
{webs}
  cli:
    health: {{ probe: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 2 }}
    session_idle_ttl: 2m
    upstreams:
{clis}
"""


def nginx_conf(name: str, port: int) -> Path:
    d = WORK / f"nginx-{name}"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "{name}\\n"; }}
  }}
}}
""")
    return conf


class Fleet:
    """Every process the soak starts, by name; stopped by pid at the end."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        logf = open(WORK / f"{name}.log", "ab")
        if name in MOCK_PORTS:
            cmd = [TOOLS_BIN, "mockfleet", "--listen", f"127.0.0.1:{MOCK_PORTS[name]}",
                   "--count", "1", "--max-secs", str(int(SOAK_MINS * 60 + 600))]
            port = MOCK_PORTS[name]
        elif name in WEB_PORTS:
            cmd = ["nginx", "-e", "stderr", "-c", str(nginx_conf(name, WEB_PORTS[name])),
                   "-p", str(WORK)]
            port = WEB_PORTS[name]
        else:
            raise ValueError(name)
        self.procs[name] = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        wait_port(port)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        # A mock CLI crashes (SIGKILL); nginx's fast shutdown (SIGTERM) drops every connection
        # at once, and stops its worker too (SIGKILL on the master would orphan the worker).
        p.send_signal(signal.SIGKILL if name in MOCK_PORTS else signal.SIGTERM)
        p.wait(timeout=20)
        wait_port_free(MOCK_PORTS.get(name) or WEB_PORTS[name])

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def scrape() -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=10).read().decode()
    out = {"series": 0, "requests": {}, "reloads": {}, "pinned": 0, "live": 0, "conns": 0}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        out["series"] += 1
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))
        if name == "sessiongate_requests_total":
            key = f"{labels.get('listener')}|{labels.get('upstream')}|{labels.get('code')}"
            out["requests"][key] = value
        elif name == "sessiongate_config_reloads_total":
            out["reloads"][labels.get("result", "")] = value
        elif name == "sessiongate_pinned_sessions":
            out["pinned"] += value
        elif name == "sessiongate_sessions_live":
            out["live"] += value
        elif name == "sessiongate_connections_active":
            out["conns"] += value
    return out


def proc_rss_fds(pid: int) -> tuple[int, int]:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx if sxx else 0.0


# ---------------------------------------------------------------------------------------------
# Load loops, control loops, sampling

http_segments: list[dict] = []
rpc_segments: list[dict] = []
restarts: list[dict] = []
reloads: list[float] = []
samples: list[tuple[float, int, int]] = []
scrapes: list[tuple[float, dict]] = []
deadline = SOAK_MINS * 60


def http_loop() -> None:
    url = f"http://127.0.0.1:{HTTP_PORT}/sessions/[a-z0-9]{{3}}"
    while not stop.is_set() and now() + 1 < deadline:
        secs = int(min(HTTP_SEGMENT_SECS, deadline - now()))
        start = now()
        p = subprocess.run([OHA, "--no-tui", "--output-format", "json", "-z", f"{secs}s", "-w",
                            "-q", str(HTTP_RATE), "-c", str(HTTP_CONNS), "--rand-regex-url", url],
                           capture_output=True, text=True, timeout=secs + 60)
        seg = {"start": start, "end": now()}
        try:
            r = json.loads(p.stdout)
            seg["status"] = {str(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
            seg["errors"] = r.get("errorDistribution", {})
        except json.JSONDecodeError:
            seg["status"], seg["errors"] = {}, {f"oha failed: {p.stderr.strip()[:200]}": 1}
        with lock:
            http_segments.append(seg)


def rpc_loop() -> None:
    n = 0
    while not stop.is_set() and now() + 3 < deadline:
        secs = max(1, int(min(RPC_SEGMENT_SECS, deadline - now() - 2)))
        n += 1
        start = now()
        p = subprocess.run([TOOLS_BIN, "jsonrpc-load", "--addr", f"127.0.0.1:{RPC_PORT}",
                            "--conns", str(RPC_CONNS), "--sessions", str(RPC_SESSIONS),
                            "--depth", str(RPC_DEPTH), "--secs", str(secs),
                            "--run-id", f"mixed-{os.getpid()}-{n}", "--setup-timeout-secs", "60"],
                           capture_output=True, text=True, timeout=secs + 120)
        seg = {"start": start, "end": now()}
        lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if lines:
            r = json.loads(lines[-1][len("RESULT "):])
            seg.update(answered=r["answered_total"], kinds=r.get("error_kinds", {}),
                       failures=r["failures"])
        else:
            seg.update(answered=0, kinds={}, failures=[f"jsonrpc-load failed: {p.stderr.strip()[-300:]}"])
        with lock:
            rpc_segments.append(seg)


def reload_loop(sg: subprocess.Popen) -> None:
    i = 0
    while not stop.wait(RELOAD_SECS) and now() + 5 < deadline:
        i += 1
        CONF.write_text(sessiongate_conf(weight3=2 if i % 2 else 1))
        sg.send_signal(signal.SIGHUP)
        with lock:
            reloads.append(now())


def restart_loop(fleet: Fleet) -> None:
    i = 0
    while not stop.wait(RESTART_SECS / 2 if i == 0 else RESTART_SECS) \
            and now() + DOWN_SECS + RECOVERY_SECS + 10 < deadline:
        name = MOCK_VICTIM if i % 2 == 0 else WEB_VICTIM
        i += 1
        killed = now()
        fleet.kill(name)
        time.sleep(DOWN_SECS)
        fleet.start(name)
        listening = now()
        log(f"restarted {name}: down {listening - killed:.1f} s")
        with lock:
            restarts.append({"name": name, "kind": "rpc" if name in MOCK_PORTS else "http",
                             "killed": killed, "listening": listening,
                             "window_end": listening + RECOVERY_SECS})


def sample_loop(pid: int) -> None:
    last_scrape = -METRICS_SECS
    while not stop.is_set():
        t = now()
        try:
            rss, fds = proc_rss_fds(pid)
        except OSError:
            return
        with lock:
            samples.append((t, rss, fds))
        if t - last_scrape >= METRICS_SECS:
            last_scrape = t
            try:
                m = scrape()
                with lock:
                    scrapes.append((t, m))
            except OSError as e:
                log(f"/metrics scrape failed: {e}")
        stop.wait(SAMPLE_SECS)


# ---------------------------------------------------------------------------------------------
# Accounting and report

def in_window(seg: dict, kind: str) -> bool:
    return any(r["kind"] == kind and seg["start"] <= r["window_end"] and r["killed"] <= seg["end"]
               for r in restarts)


def account() -> dict:
    acc = {"http_ok": 0, "http_expected": {}, "http_unexpected": {}, "rpc_ok": 0,
           "rpc_expected": {}, "rpc_unexpected": {}, "unexpected_where": []}

    def add(d: dict, k: str, v: int) -> None:
        d[k] = d.get(k, 0) + v

    for seg in http_segments:
        window = in_window(seg, "http")
        for code, count in seg["status"].items():
            if code.startswith("2"):
                acc["http_ok"] += count
            elif window and code in DESIGNED_HTTP:
                add(acc["http_expected"], f"HTTP {code}", count)
            else:
                add(acc["http_unexpected"], f"HTTP {code}", count)
                acc["unexpected_where"].append(f"HTTP {code} x{count} at {seg['start']:.0f}-{seg['end']:.0f} s")
        for err, count in seg["errors"].items():
            add(acc["http_unexpected"], err, count)
            acc["unexpected_where"].append(f"{err} x{count} at {seg['start']:.0f}-{seg['end']:.0f} s")
    for seg in rpc_segments:
        window = in_window(seg, "rpc")
        errors = sum(seg["kinds"].values())
        acc["rpc_ok"] += max(0, seg["answered"] - errors)
        for kind, count in seg["kinds"].items():
            if window and kind in DESIGNED_RPC:
                add(acc["rpc_expected"], kind, count)
            else:
                add(acc["rpc_unexpected"], kind, count)
                acc["unexpected_where"].append(f"JSON-RPC {kind} x{count} at {seg['start']:.0f}-{seg['end']:.0f} s")
        for f in seg["failures"]:
            key = "connection failure (expected: restart window)" if window else "connection failure"
            add(acc["rpc_expected"] if window else acc["rpc_unexpected"], key, 1)
            if not window:
                acc["unexpected_where"].append(f"JSON-RPC {f} at {seg['start']:.0f}-{seg['end']:.0f} s")
    return acc


def proxy_view(first: dict, last: dict) -> dict:
    """Requests the proxy counted during the soak, by listener and upstream: ok vs failed."""
    out: dict[str, dict[str, int]] = {}
    for key, value in last["requests"].items():
        listener, upstream, code = key.split("|")
        delta = int(value - first["requests"].get(key, 0))
        if delta == 0:
            continue
        ok = code.startswith("2") or code == "ok"
        row = out.setdefault(f"{listener} → {upstream}", {})
        row["ok" if ok else code] = row.get("ok" if ok else code, 0) + delta
    return out


def main() -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fleet = Fleet()
    for name in list(MOCK_PORTS) + list(WEB_PORTS):
        fleet.start(name)
    CONF.write_text(sessiongate_conf(weight3=1))
    sg_log = open(WORK / "sessiongate.log", "ab")
    sg = subprocess.Popen([SG_BIN, "--config", str(CONF), "run"], stdout=sg_log, stderr=sg_log,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    exit_code = 0
    try:
        wait_port(HTTP_PORT)
        wait_port(RPC_PORT)
        wait_port(ADMIN_PORT)
        # The signal handlers are installed once the listeners serve; give the first SIGHUP no
        # chance to arrive before that (the first reload is RELOAD_SECS away anyway).
        log(f"soak for {SOAK_MINS:g} min: proxy pid {sg.pid}, HTTP :{HTTP_PORT}, JSON-RPC :{RPC_PORT}, admin :{ADMIN_PORT}")
        global T0
        T0 = time.monotonic()
        threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in [
            (sample_loop, (sg.pid,)), (http_loop, ()), (rpc_loop, ()), (reload_loop, (sg,)),
            (restart_loop, (fleet,))]]
        for t in threads:
            t.start()
        while now() < deadline and sg.poll() is None:
            time.sleep(1)
            if int(now()) % 60 == 0:
                with lock:
                    s = samples[-1] if samples else (0, 0, 0)
                log(f"{now() / 60:.0f} min: RSS {s[1] / 1024:.1f} MiB, fds {s[2]}, "
                    f"{len(http_segments)} HTTP + {len(rpc_segments)} JSON-RPC segments, "
                    f"{len(reloads)} reloads, {len(restarts)} restarts")
        for t in threads[1:3]:
            t.join(timeout=180)
        stop.set()
        for t in threads[3:]:
            t.join(timeout=60)
        proxy_alive = sg.poll() is None
        final = scrape() if proxy_alive else None
    finally:
        stop.set()
        if sg.poll() is None:
            sg.send_signal(signal.SIGTERM)
            try:
                sg.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sg.kill()
        fleet.stop_all()

    with open(RESULTS_DIR / f"{NAME}.csv", "w") as f:
        f.write("secs,rss_kib,fds\n")
        for t, rss, fds in samples:
            f.write(f"{t:.1f},{rss},{fds}\n")
    end = samples[-1][0] if samples else 0
    half = [s for s in samples if s[0] >= end / 2]
    rss_slope = slope([(t, rss) for t, rss, _ in half]) * 60
    fds_slope = slope([(t, fds) for t, _, fds in half]) * 60
    acc = account()
    first = scrapes[0][1] if scrapes else {"requests": {}, "reloads": {}}
    last = final or (scrapes[-1][1] if scrapes else first)
    reloads_ok = last["reloads"].get("success", 0) - first["reloads"].get("success", 0)
    reloads_failed = last["reloads"].get("failure", 0) - first["reloads"].get("failure", 0)
    unexpected = sum(acc["http_unexpected"].values()) + sum(acc["rpc_unexpected"].values())
    verdicts = []
    if not proxy_alive:
        verdicts.append("sessiongate exited during the soak")
    if unexpected:
        verdicts.append(f"{unexpected} unexpected errors")
    if reloads_failed:
        verdicts.append(f"{reloads_failed:.0f} failed reloads")
    if reloads and not reloads_ok:
        verdicts.append("no reload applied")
    exit_code = 1 if verdicts else 0

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    fmt = lambda d: ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) or "0"
    md = [
        "# Mixed soak\n",
        f"`SOAK_MINS={SOAK_MINS:g} benches/soak/mixed.sh`, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit}{' (+ local changes)' if dirty else ''}; {os.cpu_count()} cores ({cpu}); "
        f"sessiongate release build, {SG_WORKERS} worker thread(s); 3 nginx HTTP upstreams, 4 mock CLIs; "
        "one shared machine (other builds running).\n",
        "## Load and events\n",
        "| | |\n|---|---|",
        f"| duration | {end / 60:.1f} min |",
        f"| HTTP load | oha, {HTTP_RATE} req/s over {HTTP_CONNS} connections, keys `/sessions/[a-z0-9]{{3}}`, {len(http_segments)} segments of {HTTP_SEGMENT_SECS} s |",
        f"| JSON-RPC load | jsonrpc-load, {RPC_CONNS} connections x {RPC_SESSIONS} sessions, depth {RPC_DEPTH}, `session.getMetadata`, {len(rpc_segments)} segments of {RPC_SEGMENT_SECS} s (fresh sessions each) |",
        f"| reloads | {len(reloads)} SIGHUPs (u3's weight flipped each time); applied {reloads_ok:.0f}, failed {reloads_failed:.0f} |",
        f"| upstream restarts | {len(restarts)}: " + ", ".join(
            f"{r['name']} at {r['killed'] / 60:.1f} min (down {r['listening'] - r['killed']:.1f} s)" for r in restarts) + " |",
        "\n## Results\n",
        "| | |\n|---|---|",
        f"| HTTP answered 2xx | {acc['http_ok']:,} |",
        f"| HTTP errors expected (502/503/504 in an HTTP upstream restart window) | {fmt(acc['http_expected'])} |",
        f"| HTTP errors unexpected | {fmt(acc['http_unexpected'])} |",
        f"| JSON-RPC answered ok | {acc['rpc_ok']:,} |",
        f"| JSON-RPC errors expected (-32001 / Session not found in a mock CLI restart window) | {fmt(acc['rpc_expected'])} |",
        f"| JSON-RPC errors unexpected | {fmt(acc['rpc_unexpected'])} |",
        f"| proxy RSS start / peak / end | {samples[0][1] / 1024:.1f} / {max(s[1] for s in samples) / 1024:.1f} / {samples[-1][1] / 1024:.1f} MiB |" if samples else "| proxy RSS | no samples |",
        f"| RSS slope, second half | {rss_slope:.1f} KiB/min |",
        f"| proxy fds start / peak / end | {samples[0][2]} / {max(s[2] for s in samples)} / {samples[-1][2]} |" if samples else "",
        f"| fd slope, second half | {fds_slope:.2f} fds/min |",
        f"| series in /metrics first / last | {first.get('series', 0)} / {last.get('series', 0)} |",
        f"| pinned sessions / live sessions at the end | {last.get('pinned', 0):.0f} / {last.get('live', 0):.0f} |",
        f"| verdict | {'PASS' if not verdicts else 'FAIL: ' + '; '.join(verdicts)} |",
        "\n## The proxy's count (`sessiongate_requests_total` during the soak)\n",
        f"Failures on `{WEB_VICTIM}` and `{MOCK_VICTIM}` are the restarted nodes'; any on the others would be collateral.\n",
        "| listener → upstream | ok | failed, by code |\n|---|---|---|",
    ]
    for key, row in sorted(proxy_view(first, last).items()):
        failed = {k: v for k, v in row.items() if k != "ok"}
        md.append(f"| {key} | {row.get('ok', 0):,} | {fmt(failed) if failed else '0'} |")
    if acc["unexpected_where"]:
        md.append("\n## Unexpected errors, where\n")
        md.extend(f"- {w}" for w in acc["unexpected_where"][:40])
    md.append(f"\nSamples every {SAMPLE_SECS:g} s (secs, RSS KiB, fds): `{NAME}.csv`. Slopes are "
              "least-squares fits over the second half of the run. A restart window runs from the "
              f"kill to {RECOVERY_SECS:g} s after the node listens again; a load segment that overlaps "
              "one may have designed errors.\n")
    (RESULTS_DIR / f"{NAME}.md").write_text("\n".join(l for l in md if l is not None) + "\n")
    (WORK / f"{NAME}-raw.json").write_text(json.dumps({
        "http_segments": http_segments, "rpc_segments": rpc_segments, "restarts": restarts,
        "reloads": reloads, "scrapes": scrapes}, indent=1))
    log(f"wrote {RESULTS_DIR / (NAME + '.md')}: {'PASS' if not verdicts else 'FAIL: ' + '; '.join(verdicts)}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
