#!/usr/bin/env python3
"""Side-by-side load harness: direct vs sessiongate vs HAProxy vs nginx on one 2-core machine.

Started by benches/compare/run.sh, which installs the tools, builds the binaries and makes the
certificates, then runs this file. Everything here is Python 3.11 standard library.

Layout on the machine (core pinning with taskset):
  core PROXY_CORE (0): the proxy under test, one worker each
  core LOAD_CORE  (1): load generator, upstreams (one nginx, 3 server blocks), mock CLI fleet

Phases (PHASES, comma-separated, default all, in this order):
  http      closed loop (wrk) at each CONCURRENCY, ROUNDS rounds interleaved
            direct -> sessiongate -> haproxy -> nginx (-> the EXTRA_BINS builds); first round
            dropped, medians reported
  openloop  fixed rate (oha --latency-correction) at OPEN_LOOP_FRACTION of the slowest proxy's
            peak; p50/p99
  idle      RSS per idle keep-alive connection up to IDLE_CONNS connections
  tls       full TLS handshakes/s, sessiongate vs HAProxy, same ECDSA P-256 certificate
  jsonrpc   routed JSON-RPC message rate and CPU per frame, sessiongate vs direct to the mocks;
            in front of one mock: direct vs sessiongate vs HAProxy mode tcp, closed loop, then
            open loop at a fixed rate (latency from the intended send times); then
            FLEET_SESSIONS sessions over FLEET_CONNS connections: RSS and CPU per frame
  reload    RELOAD_COUNT SIGHUPs during a RELOAD_SECS run; non-2xx and socket errors must be 0

Every load run is bounded in time (and the tools in count); all traffic is on 127.0.0.1.
Raw results go to RESULTS_DIR/raw.json; report.py turns them into results.md, CSVs and PNGs.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


# --------------------------------------------------------------------------------------------
# Settings (environment variables, defaults per the spec)
# --------------------------------------------------------------------------------------------

def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


ROUNDS = env_int("ROUNDS", 5)
ROUND_SECS = env_float("ROUND_SECS", 10)
CONCURRENCY = [int(c) for c in env_list("CONCURRENCY", "10,50,200")]
PHASES = env_list("PHASES", "http,openloop,idle,tls,jsonrpc,reload")
PROXIES = env_list("PROXIES", "sessiongate,haproxy,nginx")
OPEN_LOOP_FRACTION = env_float("OPEN_LOOP_FRACTION", 0.30)
OPEN_LOOP_CONNS = env_int("OPEN_LOOP_CONNS", 50)
IDLE_CONNS = env_int("IDLE_CONNS", 9000)
IDLE_STEPS = [int(s) for s in env_list("IDLE_STEPS", "1000,3000,6000,9000") if int(s) < IDLE_CONNS]
IDLE_STEPS.append(IDLE_CONNS)
TLS_SECS = env_float("TLS_SECS", ROUND_SECS)
TLS_CONCURRENCY = env_int("TLS_CONCURRENCY", 8)
JSONRPC_SECS = env_float("JSONRPC_SECS", ROUND_SECS)
JSONRPC_CONNS = env_int("JSONRPC_CONNS", 10)
JSONRPC_SESSIONS = env_int("JSONRPC_SESSIONS", 10)  # per connection
JSONRPC_DEPTH = env_int("JSONRPC_DEPTH", 32)
JSONRPC_METHOD = os.environ.get("JSONRPC_METHOD", "session.getMetadata")
MOCKS = env_int("MOCKS", 4)
FLEET_CONNS = env_int("FLEET_CONNS", 100)
FLEET_SESSIONS = env_int("FLEET_SESSIONS", 10_000)
FLEET_DEPTH = env_int("FLEET_DEPTH", 8)
# Bounded-load placement for the fleet's new sessions ("" turns it off).
FLEET_LOAD_FACTOR = os.environ.get("FLEET_LOAD_FACTOR", "1.25")
RELOAD_SECS = env_float("RELOAD_SECS", 30)
RELOAD_COUNT = env_int("RELOAD_COUNT", 100)
RELOAD_CONCURRENCY = env_int("RELOAD_CONCURRENCY", 50)
BODY_BYTES = env_int("BODY_BYTES", 64)
SESSION_KEYS = env_int("SESSION_KEYS", 10_000)
PROXY_CORE = os.environ.get("PROXY_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
SG_LOG = os.environ.get("SG_RUST_LOG", "warn")
RESULTS = Path(os.environ.get("RESULTS_DIR", REPO / "benches" / "results"))
WORK = Path(os.environ.get("WORKDIR", RESULTS / "tmp"))
SG_BIN = os.environ.get("SG_BIN", "")
TOOLS_BIN = os.environ.get("TOOLS_BIN", "")
CERT = os.environ.get("CERT", str(WORK / "certs" / "leaf.pem"))
KEY = os.environ.get("KEY", str(WORK / "certs" / "leaf.key"))
WRK = shutil.which("wrk")
OHA = shutil.which("oha") or (
    str(Path.home() / ".cargo/bin/oha") if (Path.home() / ".cargo/bin/oha").exists() else None
)
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# Ports (all on 127.0.0.1), kept below the ephemeral range (32768-60999 here) so that client
# sockets of earlier runs never hold a port a server needs.
UPSTREAM_PORTS = [19081, 19082, 19083]
PORT = {"direct": UPSTREAM_PORTS[0], "sessiongate": 18080, "haproxy": 28080, "nginx": 29080}
TLS_PORT = {"sessiongate": 18443, "haproxy": 28443}
SG_ADMIN = 18901
RPC_PORT = 18090
RPC_ADMIN = 18902
# sessiongate's JSON-RPC listener in front of one mock CLI (the first), beside HAProxy mode tcp
# forwarding to that same mock.
RPC_ONE_PORT = 18099
HAPROXY_TCP_PORT = 28090
MOCK_BASE = 27001
# One-mock JSON-RPC comparison: direct to the first mock, sessiongate routing to it alone, HAProxy
# `mode tcp` forwarding to it. Its own open-loop run comes after the closed-loop rounds.
RPC_ONE = ["direct-1", "sessiongate-1", "haproxy-tcp"]
JSONRPC_OPEN_LOOP_RATE = os.environ.get("JSONRPC_OPEN_LOOP_RATE", "")


def extra_bins() -> list[tuple[str, str]]:
    """Other sessiongate builds run beside the one under test, in the same interleaved rounds on
    the same core: BASELINE_BIN (label `baseline`) and EXTRA_BINS (`label=path` or a bare path,
    comma-separated), e.g. one build per global allocator."""
    out = []
    if os.environ.get("BASELINE_BIN"):
        out.append(("baseline", os.environ["BASELINE_BIN"]))
    for i, item in enumerate(env_list("EXTRA_BINS", "")):
        label, _, path = item.rpartition("=")
        out.append((label or f"extra{i + 1}", path))
    taken = {"direct", "sessiongate", "haproxy", "nginx", *RPC_ONE}
    for label, path in out:
        if label in taken or not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise SystemExit(f"EXTRA_BINS: label {label!r} is taken or not [A-Za-z0-9_.-]+")
        if not Path(path).is_file():
            raise SystemExit(f"EXTRA_BINS: {label}: no file {path}")
        taken.add(label)
    if len(out) > 8:
        raise SystemExit("EXTRA_BINS: at most 8 builds (BASELINE_BIN included)")
    return out


# Extra build i listens on HTTP 18081+i, TLS 18444+i, admin 18911+i; JSON-RPC 18091+i, admin
# 18921+i.
EXTRA_BINS = extra_bins()
EXTRA = [label for label, _ in EXTRA_BINS]
for _i, _label in enumerate(EXTRA):
    PORT[_label] = PORT["sessiongate"] + 1 + _i
    TLS_PORT[_label] = TLS_PORT["sessiongate"] + 1 + _i

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes: start pinned, stop only what we started, read CPU and RSS from /proc
# --------------------------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []


def start(name: str, argv: list[str], core: str, *, env: dict | None = None,
          pipe: bool = False) -> subprocess.Popen:
    """Start argv pinned to `core`, output to WORK/logs/name.log (or a pipe for markers)."""
    logf = open(WORK / "logs" / f"{name}.log", "ab")
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(
        ["taskset", "-c", core, *argv],
        stdout=subprocess.PIPE if pipe else logf,
        stderr=logf,
        stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
        env=full_env,
        text=pipe,
        bufsize=1 if pipe else -1,
    )
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Stop one process we started, by its pid."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(STARTED)):
        stop(proc)


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before :{port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def tree(pid: int) -> list[int]:
    """pid and its descendants (nginx: master and worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_secs(pid: int) -> float:
    """utime + stime of pid and its descendants, in seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_times() -> dict[str, tuple[int, int, int]]:
    """Per core: (busy, total, steal) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not re.match(r"cpu\d", line):
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals]
            total = sum(v[:8])
            idle = v[3] + v[4]
            out[name] = (total - idle, total, v[7])
    return out


class Sample:
    """CPU and core usage between two points in time, for one process tree."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu0 = cpu_secs(pid) if pid else 0.0
        self.cores0 = core_times()

    def end(self) -> dict:
        t = time.monotonic() - self.t0
        cpu = (cpu_secs(self.pid) if self.pid else 0.0) - self.cpu0
        cores = core_times()
        out = {"wall_secs": t, "proxy_cpu_secs": cpu, "proxy_util": cpu / t if t else 0}
        for name, (busy, total, steal) in cores.items():
            b0, t0, s0 = self.cores0[name]
            dt = max(total - t0, 1)
            out[f"{name}_busy"] = (busy - b0) / dt
            out[f"{name}_steal"] = (steal - s0) / dt
        return out


def read_marker(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """Read stdout lines until one starts with `prefix` (tools print START/STOP/RESULT...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[3:5]} exited ({proc.returncode}) before {prefix}")
            continue
        line = line.strip()
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no {prefix} from {proc.args[3:5]} within {timeout}s")


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a reload never reads half a file
    return path


def upstream_nginx_conf() -> str:
    body = ("sessiongate-bench-upstream " * 20)[: max(BODY_BYTES - 1, 1)]
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "{body}\\n"; }}
    }}""" for port in UPSTREAM_PORTS)
    return f"""# Upstreams: one nginx worker, {len(UPSTREAM_PORTS)} server blocks, a {BODY_BYTES}-byte body.
daemon off;
worker_processes 1;
pid {WORK}/upstream-nginx.pid;
error_log {WORK}/logs/upstream-nginx.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {WORK}/nginx-tmp/upstream-body;
    proxy_temp_path {WORK}/nginx-tmp/upstream-proxy;
    fastcgi_temp_path {WORK}/nginx-tmp/upstream-fastcgi;
    uwsgi_temp_path {WORK}/nginx-tmp/upstream-uwsgi;
    scgi_temp_path {WORK}/nginx-tmp/upstream-scgi;
{servers}
}}
"""


def proxy_nginx_conf() -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in UPSTREAM_PORTS)
    return f"""# nginx as the proxy under test: consistent hash on X-Session-Id, one worker.
daemon off;
worker_processes 1;
pid {WORK}/proxy-nginx.pid;
error_log {WORK}/logs/proxy-nginx.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {WORK}/nginx-tmp/proxy-body;
    proxy_temp_path {WORK}/nginx-tmp/proxy-proxy;
    fastcgi_temp_path {WORK}/nginx-tmp/proxy-fastcgi;
    uwsgi_temp_path {WORK}/nginx-tmp/proxy-uwsgi;
    scgi_temp_path {WORK}/nginx-tmp/proxy-scgi;
    upstream pool {{
        hash $http_x_session_id consistent;
{servers}
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{PORT['nginx']} backlog=4096;
        location / {{
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def haproxy_conf() -> str:
    servers = "\n".join(
        f"    server u{i + 1} 127.0.0.1:{p}" for i, p in enumerate(UPSTREAM_PORTS))
    return f"""# HAProxy as the proxy under test: consistent hash on X-Session-Id, one thread.
global
    nbthread 1
    maxconn 9500
    tune.ssl.default-dh-param 2048

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout http-request 10s

frontend web
    bind 127.0.0.1:{PORT['haproxy']}
    http-request set-header X-Forwarded-Proto http
    default_backend pool

frontend web_tls
    bind 127.0.0.1:{TLS_PORT['haproxy']} ssl crt {WORK}/certs/haproxy.pem
    http-request set-header X-Forwarded-Proto https
    default_backend pool

backend pool
    balance hdr(X-Session-Id)
    hash-type consistent
{servers}
"""


def sessiongate_conf(weight3: int = 1, target: str = "sessiongate") -> str:
    """The HTTP proxy config; `target` picks the ports (an extra build's are its own)."""
    admin = SG_ADMIN + (10 + EXTRA.index(target) if target in EXTRA else 0)
    ups = "\n".join(
        f"      - {{ name: u{i + 1}, addr: 127.0.0.1:{p}"
        + (f", weight: {weight3}" if i == 2 else "") + " }"
        for i, p in enumerate(UPSTREAM_PORTS))
    return f"""# sessiongate as the proxy under test: one worker thread, consistent hash on X-Session-Id.
runtime:
  worker_threads: 1
admin:
  listen: 127.0.0.1:{admin}
shutdown_grace: 2s
listeners:
  - name: web
    listen: 127.0.0.1:{PORT[target]}
    protocol: http
    pool: web
    max_connections: 19000
    key:
      - header: X-Session-Id
  - name: web-tls
    listen: 127.0.0.1:{TLS_PORT[target]}
    protocol: http
    pool: web
    tls:
      cert: {CERT}
      key: {KEY}
    key:
      - header: X-Session-Id
pools:
  web:
    hash:
      vnodes: 160
    health:
      probe: tcp
      interval: 5s
    pool_max_idle_per_upstream: 256
    upstreams:
{ups}
"""


def sessiongate_rpc_conf(port: int = RPC_PORT, admin: int = RPC_ADMIN,
                         load_factor: str = "", one_mock_port: int | None = None) -> str:
    """sessiongate in front of the mock fleet; with `one_mock_port`, a second listener whose pool
    is the first mock alone (the one HAProxy mode tcp forwards to)."""
    ups = "\n".join(
        f"      - {{ name: cli-{i + 1}, addr: 127.0.0.1:{MOCK_BASE + i} }}" for i in range(MOCKS))
    one_listener = f"""  - name: rpc-one
    listen: 127.0.0.1:{one_mock_port}
    protocol: jsonrpc
    pool: cli-one
    max_connections: 19000
""" if one_mock_port else ""
    one_pool = f"""  cli-one:
    hash:
      vnodes: 160
    health:
      probe: tcp
      interval: 5s
    upstreams:
      - {{ name: one-cli-1, addr: 127.0.0.1:{MOCK_BASE} }}
""" if one_mock_port else ""
    return f"""# sessiongate in front of the mock CLI fleet: one worker thread.
runtime:
  worker_threads: 1
admin:
  listen: 127.0.0.1:{admin}
shutdown_grace: 2s
listeners:
  - name: rpc
    listen: 127.0.0.1:{port}
    protocol: jsonrpc
    pool: cli
    max_connections: 19000
{one_listener}pools:
  cli:
    hash:
      vnodes: 160
{f"      load_factor: {load_factor}" + chr(10) if load_factor else ""}    health:
      probe: tcp
      interval: 5s
    upstreams:
{ups}
{one_pool}"""


def haproxy_tcp_conf() -> str:
    return f"""# HAProxy mode tcp in front of one mock CLI: a blind forward of the JSON-RPC byte stream, one
# thread; the yardstick for sessiongate's routed JSON-RPC path.
global
    nbthread 1
    maxconn 9500

defaults
    mode tcp
    timeout connect 2s
    timeout client 300s
    timeout server 300s

frontend rpc
    bind 127.0.0.1:{HAPROXY_TCP_PORT}
    default_backend cli

backend cli
    server cli-1 127.0.0.1:{MOCK_BASE}
"""


WRK_LUA = f"""-- Vary X-Session-Id over {SESSION_KEYS} keys so requests spread over the upstreams.
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {{["X-Session-Id"] = "s-" .. (n % {SESSION_KEYS})}})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


# --------------------------------------------------------------------------------------------
# Fixture: upstreams and proxies
# --------------------------------------------------------------------------------------------

class Fixture:
    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}

    def pid(self, target: str) -> int | None:
        proc = self.procs.get(target)
        return proc.pid if proc else None

    def start_upstreams(self):
        conf = write(WORK / "upstream-nginx.conf", upstream_nginx_conf())
        proc = start("upstream-nginx", [NGINX, "-c", str(conf), "-p", str(WORK)], LOAD_CORE)
        for p in UPSTREAM_PORTS:
            wait_port(p, proc=proc)
        self.procs["upstream"] = proc

    def start_proxies(self):
        if "sessiongate" in PROXIES:
            conf = write(WORK / "sessiongate.yaml", sessiongate_conf())
            proc = start("sessiongate", [SG_BIN, "--config", str(conf), "run"], PROXY_CORE,
                         env={"RUST_LOG": SG_LOG})
            wait_port(PORT["sessiongate"], proc=proc)
            wait_port(TLS_PORT["sessiongate"], proc=proc)
            self.procs["sessiongate"] = proc
        for label, path in EXTRA_BINS:
            # Another build beside the one under test: same config but its own ports.
            conf = write(WORK / f"sessiongate-{label}.yaml", sessiongate_conf(target=label))
            proc = start(f"sessiongate-{label}", [path, "--config", str(conf), "run"], PROXY_CORE,
                         env={"RUST_LOG": SG_LOG})
            wait_port(PORT[label], proc=proc)
            self.procs[label] = proc
        if "haproxy" in PROXIES:
            conf = write(WORK / "haproxy.cfg", haproxy_conf())
            proc = start("haproxy", [HAPROXY, "-db", "-f", str(conf)], PROXY_CORE)
            wait_port(PORT["haproxy"], proc=proc)
            self.procs["haproxy"] = proc
        if "nginx" in PROXIES:
            conf = write(WORK / "proxy-nginx.conf", proxy_nginx_conf())
            proc = start("proxy-nginx", [NGINX, "-c", str(conf), "-p", str(WORK)], PROXY_CORE)
            wait_port(PORT["nginx"], proc=proc)
            self.procs["nginx"] = proc
        time.sleep(0.5)
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {WORK}/logs")

    def check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} died (exit {proc.returncode}); see {WORK}/logs")


def targets() -> list[str]:
    return ["direct", *PROXIES, *EXTRA]


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------

def run_wrk(fx: Fixture, target: str, conns: int, secs: float, url_port: int | None = None,
            during=None) -> dict:
    """One closed-loop wrk run; CPU of the proxy (if any) sampled around it."""
    port = url_port or PORT[target]
    script = WORK / "keys.lua"
    cmd = ["taskset", "-c", LOAD_CORE, WRK, "-t1", f"-c{conns}", f"-d{max(1, round(secs))}s",
           "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}/"]
    s = Sample(fx.pid(target) if target != "direct" else None)
    up = Sample(fx.pid("upstream"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if during:
        during(proc)
    out, _ = proc.communicate(timeout=secs + 60)
    usage = s.end()
    up_usage = up.end()
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no summary:\n{out}")
    r = json.loads(m.group(1))
    secs_run = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs_run
    r["socket_errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"]
    r.update(usage)
    r["upstream_cpu_secs"] = up_usage["proxy_cpu_secs"]
    if target != "direct" and r["requests"]:
        r["cpu_us_per_req"] = usage["proxy_cpu_secs"] * 1e6 / r["requests"]
    r["upstream_cpu_us_per_req"] = up_usage["proxy_cpu_secs"] * 1e6 / max(r["requests"], 1)
    return r


def phase_http(fx: Fixture, raw: dict) -> None:
    runs = raw.setdefault("http", [])
    for rnd in range(ROUNDS):
        for conns in CONCURRENCY:
            for target in targets():
                fx.check_alive()
                r = run_wrk(fx, target, conns, ROUND_SECS)
                r.update(round=rnd, conns=conns, target=target)
                runs.append(r)
                log(f"http  round {rnd} c={conns:<4} {target:<12} {r['rps']:>10.0f} req/s  "
                    f"p99 {r['p99_us'] / 1000:.2f} ms  "
                    + (f"cpu {r['cpu_us_per_req']:.1f} us/req  util {r['proxy_util']:.2f}"
                       if "cpu_us_per_req" in r else "")
                    + (f"  ERRORS {r['socket_errors']}+{r['status']}"
                       if r["socket_errors"] or r["status"] else ""))
                time.sleep(0.5)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def kept_rounds(runs: list[dict]) -> list[dict]:
    """Drop the first round when there is more than one."""
    return [r for r in runs if r["round"] > 0] if ROUNDS > 1 else runs


def open_loop_rate(raw: dict) -> float:
    if os.environ.get("OPEN_LOOP_RATE"):
        return float(os.environ["OPEN_LOOP_RATE"])
    runs = kept_rounds(raw.get("http", []))
    peaks = []
    for proxy in PROXIES:
        per_c = [median([r["rps"] for r in runs if r["target"] == proxy and r["conns"] == c])
                 for c in CONCURRENCY]
        per_c = [x for x in per_c if x == x]
        if per_c:
            peaks.append(max(per_c))
    if not peaks:
        raise RuntimeError("open loop needs the http phase (or OPEN_LOOP_RATE)")
    return OPEN_LOOP_FRACTION * min(peaks)


def phase_openloop(fx: Fixture, raw: dict) -> None:
    if not OHA:
        log("openloop: oha not found; skipped")
        raw["notes"].append("open-loop phase skipped: oha is not installed")
        return
    rate = round(open_loop_rate(raw))
    raw["open_loop_rate"] = rate
    runs = raw.setdefault("openloop", [])
    for rnd in range(ROUNDS):
        for target in targets():
            fx.check_alive()
            out_json = WORK / f"oha-{target}-{rnd}.json"
            cmd = ["taskset", "-c", LOAD_CORE, OHA, "--no-tui", "--output-format", "json",
                   "-o", str(out_json), "-z", f"{ROUND_SECS}s", "-q", str(rate),
                   "--latency-correction", "-c", str(OPEN_LOOP_CONNS),
                   "-H", "X-Session-Id: open-loop-key",
                   f"http://127.0.0.1:{PORT[target]}/"]
            s = Sample(fx.pid(target) if target != "direct" else None)
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=ROUND_SECS + 60, check=True)
            usage = s.end()
            data = json.loads(out_json.read_text())
            summary, pct = data["summary"], data["latencyPercentiles"]
            statuses = data.get("statusCodeDistribution", {})
            ok = sum(v for k, v in statuses.items() if k.startswith("2"))
            r = {
                "round": rnd, "target": target, "rate": rate,
                "achieved_rps": summary.get("requestsPerSec"),
                "p50_us": pct["p50"] * 1e6, "p90_us": pct["p90"] * 1e6,
                "p99_us": pct["p99"] * 1e6, "p999_us": pct["p99.9"] * 1e6,
                "ok": ok, "non_2xx": sum(statuses.values()) - ok,
                # Requests still in flight when -z ends are "aborted due to deadline": not errors.
                "errors": sum(v for k, v in data.get("errorDistribution", {}).items()
                              if "deadline" not in k),
                "error_kinds": data.get("errorDistribution", {}),
            }
            r.update(usage)
            if target != "direct" and ok:
                r["cpu_us_per_req"] = usage["proxy_cpu_secs"] * 1e6 / (ok + r["non_2xx"])
            runs.append(r)
            log(f"open  round {rnd} {rate}/s {target:<12} p50 {r['p50_us'] / 1000:.3f} ms  "
                f"p99 {r['p99_us'] / 1000:.3f} ms  achieved {r['achieved_rps']:.0f}/s")
            time.sleep(0.5)


def phase_idle(fx: Fixture, raw: dict) -> None:
    out = raw.setdefault("idle", [])
    for proxy in [*PROXIES, *EXTRA]:
        fx.check_alive()
        pid = fx.pid(proxy)
        time.sleep(1)
        base = rss_kb(pid)
        points = [{"conns": 0, "rss_kb": base}]
        tool = start(f"idle-{proxy}", [TOOLS_BIN, "idle-conns", "--addr",
                                       f"127.0.0.1:{PORT[proxy]}", "--steps",
                                       ",".join(map(str, IDLE_STEPS)), "--stdin-control",
                                       "--max-secs", "600"], LOAD_CORE, pipe=True)
        closed = failed = 0
        for _ in IDLE_STEPS:
            line = read_marker(tool, "HELD", 300)
            n = int(line.split()[1])
            closed = int(re.search(r"closed=(\d+)", line).group(1))
            failed = int(re.search(r"failed=(\d+)", line).group(1))
            time.sleep(1.5)
            points.append({"conns": n, "rss_kb": rss_kb(pid)})
            log(f"idle  {proxy:<12} {n:>6} conns  rss {points[-1]['rss_kb'] / 1024:.1f} MiB")
            tool.stdin.write("next\n")
            tool.stdin.flush()
        done = read_marker(tool, "DONE", 120)
        closed = int(re.search(r"closed=(\d+)", done).group(1))
        tool.stdin.close()
        tool.wait(timeout=60)
        STARTED.remove(tool)
        top = points[-1]
        per_conn = (top["rss_kb"] - base) * 1024 / max(top["conns"], 1)
        out.append({"proxy": proxy, "points": points, "bytes_per_conn": per_conn,
                    "closed_while_idle": closed, "failed_connects": failed})
        log(f"idle  {proxy:<12} {per_conn:.0f} B per idle connection "
            f"(closed early: {closed}, failed connects: {failed})")
        time.sleep(3)  # let the proxy close its side


def phase_tls(fx: Fixture, raw: dict) -> None:
    runs = raw.setdefault("tls", [])
    for rnd in range(ROUNDS):
        for proxy in [p for p in ("sessiongate", "haproxy") if p in PROXIES]:
            fx.check_alive()
            tool = start(f"tls-{proxy}", [TOOLS_BIN, "tls-handshakes", "--addr",
                                          f"127.0.0.1:{TLS_PORT[proxy]}", "--secs",
                                          str(TLS_SECS), "--concurrency",
                                          str(TLS_CONCURRENCY)], LOAD_CORE, pipe=True)
            read_marker(tool, "START", 30)
            s = Sample(fx.pid(proxy))
            read_marker(tool, "STOP", TLS_SECS + 60)
            usage = s.end()
            r = json.loads(read_marker(tool, "RESULT", 30).split(" ", 1)[1])
            tool.wait(timeout=30)
            STARTED.remove(tool)
            r.update(usage, round=rnd, proxy=proxy)
            r["cpu_us_per_handshake"] = usage["proxy_cpu_secs"] * 1e6 / max(r["handshakes"], 1)
            runs.append(r)
            log(f"tls   round {rnd} {proxy:<12} {r['rate']:>8.0f} handshakes/s  "
                f"cpu {r['cpu_us_per_handshake']:.0f} us/handshake  util {r['proxy_util']:.2f}"
                f"  errors {r['errors']}")
            time.sleep(1)


def jsonrpc_run(rpc: subprocess.Popen | None, addrs: list[str], conns: int, sessions: int,
                depth: int, secs: float, run_id: str, name: str,
                rate: float | None = None) -> dict:
    """One `jsonrpc-load` run: closed loop (`depth` in flight per connection), or open loop at
    `rate` requests/s with latency from the intended send times. CPU of `rpc`'s process tree is
    sampled between the tool's START and STOP."""
    argv = [TOOLS_BIN, "jsonrpc-load", "--addr", ",".join(addrs), "--conns", str(conns),
            "--sessions", str(sessions), "--depth", str(depth), "--secs", str(secs),
            "--method", JSONRPC_METHOD, "--run-id", run_id, "--setup-timeout-secs", "300"]
    if rate is not None:
        argv += ["--rate", str(rate)]
    tool = start(name, argv, LOAD_CORE, pipe=True)
    read_marker(tool, "START", 330)
    pid = rpc.pid if rpc else None
    rss_start = rss_kb(pid) if pid else 0
    s = Sample(pid)
    read_marker(tool, "STOP", secs + 60)
    usage = s.end()
    rss_end = rss_kb(pid) if pid else 0
    r = json.loads(read_marker(tool, "RESULT", 60).split(" ", 1)[1])
    tool.wait(timeout=60)
    STARTED.remove(tool)
    r.update(usage, rss_kb_at_start=rss_start, rss_kb_at_end=rss_end)
    if pid and r["answered"]:
        # One routed request = one frame in and one frame out, each way through the proxy.
        r["cpu_us_per_request"] = usage["proxy_cpu_secs"] * 1e6 / r["answered"]
        r["cpu_us_per_frame"] = r["cpu_us_per_request"] / 2
    return r


def log_rpc(kind: str, rnd: int, target: str, r: dict) -> None:
    log(f"{kind} round {rnd} {target:<13} {r['rate']:>9.0f} req/s  p50 "
        f"{r['p50_us'] / 1000:.3f} ms  p99 {r['p99_us'] / 1000:.3f} ms  p99.9 "
        f"{r['p999_us'] / 1000:.3f} ms  "
        + (f"cpu {r['cpu_us_per_frame']:.2f} us/frame util {r['proxy_util']:.2f}"
           if "cpu_us_per_frame" in r else "")
        + f"  errors {r['errors']}/{r['create_errors']}"
        + (f"  unanswered {r['unanswered']}  send lag p99 {r['send_lag_p99_us']} us"
           if "unanswered" in r else ""))


def jsonrpc_open_loop_rate(raw: dict) -> float:
    """JSONRPC_OPEN_LOOP_RATE, or OPEN_LOOP_FRACTION of the slower proxy's closed-loop peak in the
    one-mock comparison."""
    if JSONRPC_OPEN_LOOP_RATE:
        return float(JSONRPC_OPEN_LOOP_RATE)
    runs = kept_rounds(raw.get("jsonrpc", []))
    peaks = [median([r["rate"] for r in runs if r["target"] == t]) for t in RPC_ONE[1:]]
    peaks = [p for p in peaks if p == p]
    if not peaks:
        raise RuntimeError("JSON-RPC open loop needs the closed-loop one-mock runs")
    return OPEN_LOOP_FRACTION * min(peaks)


def phase_jsonrpc(fx: Fixture, raw: dict) -> None:
    fleet = start("mockfleet", [TOOLS_BIN, "mockfleet", "--listen", f"127.0.0.1:{MOCK_BASE}",
                                "--count", str(MOCKS), "--watch-stdin", "--max-secs", "7200"],
                  LOAD_CORE, pipe=True)
    read_marker(fleet, "READY", 30)
    conf = write(WORK / "sessiongate-rpc.yaml",
                 sessiongate_rpc_conf(load_factor=FLEET_LOAD_FACTOR, one_mock_port=RPC_ONE_PORT))
    rpc = start("sessiongate-rpc", [SG_BIN, "--config", str(conf), "run"], PROXY_CORE,
                env={"RUST_LOG": SG_LOG})
    wait_port(RPC_PORT, proc=rpc)
    wait_port(RPC_ONE_PORT, proc=rpc)
    mocks = [f"127.0.0.1:{MOCK_BASE + i}" for i in range(MOCKS)]
    # target -> (proxy process or None for direct, addresses the load connects to)
    plan: dict[str, tuple[subprocess.Popen | None, list[str]]] = {
        "direct": (None, mocks), "sessiongate": (rpc, [f"127.0.0.1:{RPC_PORT}"])}
    extras = []
    for i, (label, path) in enumerate(EXTRA_BINS):
        # Another build on the same core, measured in the same rounds (4-mock fleet).
        conf_x = write(WORK / f"sessiongate-rpc-{label}.yaml",
                       sessiongate_rpc_conf(RPC_PORT + 1 + i, RPC_ADMIN + 19 + i))
        proc = start(f"sessiongate-rpc-{label}", [path, "--config", str(conf_x), "run"],
                     PROXY_CORE, env={"RUST_LOG": SG_LOG})
        wait_port(RPC_PORT + 1 + i, proc=proc)
        extras.append(proc)
        plan[label] = (proc, [f"127.0.0.1:{RPC_PORT + 1 + i}"])
    one_mock = []
    if "haproxy" in PROXIES:
        conf_h = write(WORK / "haproxy-tcp.cfg", haproxy_tcp_conf())
        hap = start("haproxy-tcp", [HAPROXY, "-db", "-f", str(conf_h)], PROXY_CORE)
        wait_port(HAPROXY_TCP_PORT, proc=hap)
        extras.append(hap)
        one_mock = RPC_ONE
        plan.update({"direct-1": (None, [mocks[0]]),
                     "sessiongate-1": (rpc, [f"127.0.0.1:{RPC_ONE_PORT}"]),
                     "haproxy-tcp": (hap, [f"127.0.0.1:{HAPROXY_TCP_PORT}"])})
    time.sleep(0.5)
    runs = raw.setdefault("jsonrpc", [])
    for rnd in range(ROUNDS):
        for target, (proc, addrs) in plan.items():
            r = jsonrpc_run(proc, addrs, JSONRPC_CONNS, JSONRPC_SESSIONS, JSONRPC_DEPTH,
                            JSONRPC_SECS, f"r{rnd}-{target}-{os.getpid()}", f"jsonrpc-{target}")
            r.update(round=rnd, target=target, mocks=1 if target in one_mock else MOCKS)
            runs.append(r)
            log_rpc("rpc  ", rnd, target, r)
            time.sleep(0.5)
    if one_mock:
        # Open loop at a fixed rate, same connections and sessions, the one-mock targets only.
        rate = round(jsonrpc_open_loop_rate(raw))
        raw["jsonrpc_open_loop_rate"] = rate
        ol = raw.setdefault("jsonrpc_openloop", [])
        for rnd in range(ROUNDS):
            for target in one_mock:
                proc, addrs = plan[target]
                r = jsonrpc_run(proc, addrs, JSONRPC_CONNS, JSONRPC_SESSIONS, JSONRPC_DEPTH,
                                JSONRPC_SECS, f"o{rnd}-{target}-{os.getpid()}",
                                f"jsonrpc-open-{target}", rate=rate)
                r.update(round=rnd, target=target, mocks=1)
                ol.append(r)
                log_rpc(f"rpc open {rate}/s", rnd, target, r)
                time.sleep(0.5)
    for proc in extras:
        stop(proc)
    # Many sessions: FLEET_SESSIONS over FLEET_CONNS connections, through sessiongate only.
    base = rss_kb(rpc.pid)
    per_conn = max(1, FLEET_SESSIONS // FLEET_CONNS)
    r = jsonrpc_run(rpc, [f"127.0.0.1:{RPC_PORT}"], FLEET_CONNS, per_conn, FLEET_DEPTH,
                    JSONRPC_SECS, f"fleet-{os.getpid()}", "jsonrpc-fleet")
    r.update(rss_kb_before=base, target="sessiongate")
    live = live_sessions(RPC_ADMIN, "cli")
    if live:
        mean = sum(live.values()) / len(live)
        r.update(live=live, live_max_over_mean=max(live.values()) / mean if mean else 0.0,
                 load_factor=FLEET_LOAD_FACTOR or None)
    raw["jsonrpc_fleet"] = r
    log(f"rpc   fleet live per node {live} (max/mean {r.get('live_max_over_mean', 0):.3f}, "
        f"load_factor {FLEET_LOAD_FACTOR or 'off'})")
    log(f"rpc   fleet {r['sessions']} sessions / {r['conns']} conns: {r['rate']:.0f} req/s  "
        f"cpu {r.get('cpu_us_per_frame', float('nan')):.2f} us/frame  rss "
        f"{base / 1024:.1f} -> {r['rss_kb_at_end'] / 1024:.1f} MiB  errors "
        f"{r['errors']}/{r['create_errors']}")
    stop(rpc)
    try:
        # communicate() closes the fleet's stdin: it stops then, and says what it served.
        rest, _ = fleet.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        rest = ""
    raw["mock_served"] = [l.strip() for l in rest.splitlines() if l.startswith("SERVED")]
    stop(fleet)


def live_sessions(port: int, pool: str) -> dict:
    """Live sessions per upstream of `pool` from the admin listener's /admin/upstreams."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /admin/upstreams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return {u["name"]: u["live_sessions"] for u in body["upstreams"] if u["pool"] == pool}
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def metric(port: int, name: str, label: str) -> float:
    """A counter from the admin /metrics page (0 if absent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    total = 0.0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def phase_reload(fx: Fixture, raw: dict) -> None:
    if "sessiongate" not in PROXIES:
        return
    conf = WORK / "sessiongate.yaml"
    proc = fx.procs["sessiongate"]
    before = metric(SG_ADMIN, "sessiongate_config_reloads_total", 'result="success"')
    failed_before = metric(SG_ADMIN, "sessiongate_config_reloads_total", 'result="failure"')
    sent = 0

    def hup_loop(wrk_proc: subprocess.Popen) -> None:
        # Spread RELOAD_COUNT SIGHUPs over the run, each after a real config change
        # (upstream u3's weight flips between 1 and 2, so the ring changes every time).
        nonlocal sent
        gap = RELOAD_SECS / (RELOAD_COUNT + 1)
        time.sleep(gap)
        for i in range(RELOAD_COUNT):
            if wrk_proc.poll() is not None:
                break
            write(conf, sessiongate_conf(weight3=2 if i % 2 == 0 else 1))
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(gap)

    r = run_wrk(fx, "sessiongate", RELOAD_CONCURRENCY, RELOAD_SECS, during=hup_loop)
    write(conf, sessiongate_conf())
    time.sleep(1)
    r["sighups"] = sent
    r["reloads_ok"] = metric(SG_ADMIN, "sessiongate_config_reloads_total", 'result="success"') - before
    r["reloads_failed"] = (metric(SG_ADMIN, "sessiongate_config_reloads_total",
                                  'result="failure"') - failed_before)
    r["non_2xx"] = r["status"]
    # Signals that arrive while a reload runs may coalesce, so fewer reloads than SIGHUPs is fine;
    # none at all means the test did not test anything.
    r["pass"] = r["non_2xx"] == 0 and r["socket_errors"] == 0 and r["reloads_ok"] > 0
    raw["reload"] = r
    log(f"reload {sent} SIGHUPs, {r['reloads_ok']:.0f} reloads ok, {r['reloads_failed']:.0f} "
        f"failed; {r['requests']} requests, non-2xx {r['non_2xx']}, socket errors "
        f"{r['socket_errors']} -> {'PASS' if r['pass'] else 'FAIL'}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"

    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = "n/a"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "sessiongate": rev,
        "haproxy": version([HAPROXY, "-v"]),
        "nginx": version([NGINX, "-v"]),
        "wrk": version([WRK, "-v"]) if WRK else "n/a",
        "oha": version([OHA, "--version"]) if OHA else "n/a",
    }


def settings() -> dict:
    return {k: globals()[k] for k in (
        "ROUNDS", "ROUND_SECS", "CONCURRENCY", "PHASES", "PROXIES", "OPEN_LOOP_FRACTION",
        "OPEN_LOOP_CONNS", "IDLE_CONNS", "IDLE_STEPS", "TLS_SECS", "TLS_CONCURRENCY",
        "JSONRPC_SECS", "JSONRPC_CONNS", "JSONRPC_SESSIONS", "JSONRPC_DEPTH", "JSONRPC_METHOD",
        "MOCKS", "FLEET_CONNS", "FLEET_SESSIONS", "FLEET_DEPTH", "RELOAD_SECS", "RELOAD_COUNT",
        "RELOAD_CONCURRENCY", "BODY_BYTES", "SESSION_KEYS", "PROXY_CORE", "LOAD_CORE",
        "SG_LOG", "EXTRA_BINS", "JSONRPC_OPEN_LOOP_RATE")}


def main() -> int:
    for what, path in (("SG_BIN", SG_BIN), ("TOOLS_BIN", TOOLS_BIN), ("wrk", WRK)):
        if not path or not Path(path).exists():
            print(f"compare.py: {what} not found; start me through benches/compare/run.sh",
                  file=sys.stderr)
            return 2
    for d in ("logs", "nginx-tmp"):
        (WORK / d).mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # This process and its helpers stay off the proxy core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    (WORK / "keys.lua").write_text(WRK_LUA)
    raw = {"machine": machine(), "settings": settings(), "notes": []}
    log(f"machine: {raw['machine']['nproc']} cores, {raw['machine']['cpu_model']}; "
        f"settings: ROUNDS={ROUNDS} ROUND_SECS={ROUND_SECS} PHASES={','.join(PHASES)}")
    fx = Fixture()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        fx.start_upstreams()
        fx.start_proxies()
        phases = {"http": phase_http, "openloop": phase_openloop, "idle": phase_idle,
                  "tls": phase_tls, "jsonrpc": phase_jsonrpc, "reload": phase_reload}
        unknown = [p for p in PHASES if p not in phases]
        if unknown:
            raise SystemExit(f"unknown phase(s) {unknown}; known: {', '.join(phases)}")
        for name in PHASES:
            log(f"--- phase {name}")
            try:
                phases[name](fx, raw)
            except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as e:
                log(f"phase {name} FAILED: {e}")
                raw["notes"].append(f"phase {name} failed: {e}")
            # Write as we go, so a failure later keeps what was measured.
            (RESULTS / "raw.json").write_text(json.dumps(raw, indent=1))
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); reporting what was measured")
        raw["notes"].append(f"run interrupted ({e}): later phases missing, the last one partial")
    finally:
        stop_all()
    raw["duration_secs"] = time.monotonic() - started
    (RESULTS / "raw.json").write_text(json.dumps(raw, indent=1))
    log(f"raw results: {RESULTS / 'raw.json'}")
    return subprocess.call([sys.executable, str(HERE / "report.py"), str(RESULTS / "raw.json")])


if __name__ == "__main__":
    sys.exit(main())
