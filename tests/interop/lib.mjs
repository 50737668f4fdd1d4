// Helpers shared by the interop suites (run.mjs, shared_storage.mjs): settings from the environment,
// processes (free ports, CLI servers, sessiongate and its admin API), SDK clients with timeouts.
// Every process spawned through spawnTracked is killed when the test process exits, also on failure.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CopilotClient, RuntimeConnection } from '@github/copilot-sdk';

// ───────────────────────────── settings ─────────────────────────────

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const DIRECT = process.env.INTEROP_DIRECT === '1';
export const KEEP = process.env.INTEROP_KEEP === '1';
export const CLI_BIN = process.env.COPILOT_CLI_BIN
  ?? path.join(HERE, 'node_modules', '@github', 'copilot-linux-x64', 'copilot');
export const SG_BIN = path.resolve(HERE, process.env.SESSIONGATE_BIN ?? '../../target/release/sessiongate');
export const SG_ARGS = (process.env.SESSIONGATE_ARGS ?? 'run --config {config} --log-format json')
  .split(/\s+/).filter(Boolean);
export const POOL = 'fleet';
export const TEST_TIMEOUT = 60_000; // per test
export const RPC_TIMEOUT = 15_000;  // per SDK call: a proxy that drops or never answers must fail, not hang

// Everything spawned, so that it is killed even when a test throws or the runner is interrupted.
export const children = new Set();
export function killAllSync() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAllSync(); process.exit(130); });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export async function until(what, fn, { timeoutMs = 10_000, everyMs = 200 } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(everyMs);
  }
}

/** Reject after ms: the SDK waits forever on a request whose connection went silent. */
export function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// ───────────────────────────── 2. process helpers ─────────────────────────────

/** A port that was free a moment ago (bind 127.0.0.1:0, read it, close). Callers retry on EADDRINUSE. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

/** Spawn, remember for cleanup, and collect stdout+stderr as text (also teed to logFile). */
export function spawnTracked(bin, args, { env, cwd, logFile }) {
  const child = spawn(bin, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.output = '';
  const log = logFile ? fs.createWriteStream(logFile, { flags: 'a' }) : null;
  const onData = (d) => { child.output += d.toString(); log?.write(d); };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  child.exited = new Promise((r) => child.on('exit', (code, signal) => {
    children.delete(child); log?.end(); r({ code, signal });
  }));
  return child;
}

export async function stopProc(child, signal = 'SIGTERM', graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(t);
}

/** Environment for a CLI: its own COPILOT_HOME, and no credentials or connection token leaking in. */
export function cliEnv(home) {
  const env = { ...process.env, COPILOT_HOME: home };
  for (const k of ['COPILOT_CONNECTION_TOKEN', 'COPILOT_GITHUB_TOKEN', 'GH_TOKEN', 'GITHUB_TOKEN']) delete env[k];
  return env;
}

/**
 * Start one headless CLI server on a free port with its own COPILOT_HOME.
 * Ready = the line "CLI server listening on port N" on stdout (about 0.8 s after spawn; the port is
 * open at the same moment). A port lost to a race makes the CLI print "Address already in use" and
 * exit 1: retry with another port.
 * Options: `port` (start on this one, e.g. to restart a node where it was; a port still held is
 * retried a few times), `sessionState` (a directory shared by several CLIs: the CLI reads and writes
 * sessions in `$COPILOT_HOME/session-state`, made a symlink to it).
 */
export async function startCli(name, root, extraEnv = {}, { port: fixedPort, sessionState } = {}) {
  const home = path.join(root, name, 'home');
  const cwd = path.join(root, name, 'cwd'); // sessions record this cwd; keep it out of any git repo
  await fsp.mkdir(home, { recursive: true });
  await fsp.mkdir(cwd, { recursive: true });
  if (sessionState && !fs.existsSync(path.join(home, 'session-state'))) {
    await fsp.symlink(sessionState, path.join(home, 'session-state'));
  }
  for (let attempt = 1; ; attempt++) {
    const port = fixedPort ?? await freePort();
    const proc = spawnTracked(CLI_BIN, ['--headless', '--port', String(port), '--no-auto-login'],
      { env: { ...cliEnv(home), ...extraEnv }, cwd, logFile: path.join(root, name, 'cli.out') });
    const ready = await Promise.race([
      until(`${name} ready`, () => /CLI server listening on port \d+/.test(proc.output), { timeoutMs: 20_000, everyMs: 50 })
        .then(() => true),
      proc.exited.then(() => false),
    ]);
    if (ready) return { name, port, addr: `127.0.0.1:${port}`, home, cwd, proc };
    if (/Address already in use/.test(proc.output) && attempt < 5) {
      if (fixedPort) await sleep(500);
      continue;
    }
    throw new Error(`${name} failed to start (attempt ${attempt}):\n${proc.output}`);
  }
}

/**
 * Parse sessiongate's JSON log lines (stdout+stderr) for
 *   {"fields":{"message":"listener bound","listener":"cli","addr":"127.0.0.1:43125"},...}
 * Returns {name: addr} once every wanted listener is bound. Tolerates flattened fields.
 */
/**
 * A sessiongate config with one JSON-RPC listener `cli` in front of pool `fleet` over `clis`:
 * `top` lines at the top level, `listener` lines for `cli`, `pool` lines for the pool (before its
 * health probe), `health` its probe (tcp every 500ms by default).
 */
export function gateConfigYaml(clis, {
  top = [],
  listener = [],
  pool = [],
  health = '{ probe: tcp, interval: 500ms, timeout: 500ms, rise: 1, fall: 1 }',
} = {}) {
  return [
    'admin:',
    '  listen: 127.0.0.1:0',
    'shutdown_grace: 2s',
    ...top,
    'listeners:',
    '  - name: cli',
    '    listen: 127.0.0.1:0',
    '    protocol: jsonrpc',
    `    pool: ${POOL}`,
    ...listener,
    'pools:',
    `  ${POOL}:`,
    ...pool,
    `    health: ${health}`,
    '    upstreams:',
    ...clis.map((c) => `      - { name: ${c.name}, addr: ${c.addr} }`),
    '',
  ].join('\n');
}

export function parseBoundListeners(text) {
  const bound = {};
  for (const line of text.split('\n')) {
    const s = line.trim();
    if (!s.startsWith('{')) continue;
    let obj;
    try { obj = JSON.parse(s); } catch { continue; }
    const f = obj.fields ?? obj;
    if (f.message === 'listener bound' && f.listener && f.addr) bound[String(f.listener)] = String(f.addr);
  }
  return bound;
}

export async function startGate(configPath, root, tag, extraEnv = {}) {
  if (!fs.existsSync(SG_BIN)) throw new Error(`sessiongate binary not found at ${SG_BIN} (set SESSIONGATE_BIN or cargo build --release)`);
  const args = SG_ARGS.map((a) => a.replace('{config}', configPath));
  const proc = spawnTracked(SG_BIN, args, { env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', ...extraEnv }, cwd: root, logFile: path.join(root, `sessiongate-${tag}.log`) });
  const listeners = await Promise.race([
    until('sessiongate listeners "cli" and "admin" bound', () => {
      const b = parseBoundListeners(proc.output);
      return b.cli && b.admin ? b : null;
    }, { timeoutMs: 15_000, everyMs: 50 }),
    proc.exited.then(({ code, signal }) => { throw new Error(`sessiongate exited (code ${code}, signal ${signal}) before binding:\n${proc.output.slice(-4000)}`); }),
  ]);
  return { proc, cliAddr: listeners.cli, adminAddr: listeners.admin };
}

export async function adminGet(gate, pathAndQuery) {
  const res = await fetch(`http://${gate.adminAddr}${pathAndQuery}`);
  return { status: res.status, text: await res.text() };
}

/** The ring owner of each id (`sessiongate route`, offline, health ignored): [[id, node], ...]. */
export function ringOwners(configPath, ids, extraEnv = {}) {
  return execFileSync(SG_BIN, ['route', '--config', configPath, '--pool', POOL, ...ids], { encoding: 'utf8', env: { ...process.env, ...extraEnv } })
    .trim().split('\n').map((line) => line.split('\t'));
}

/** Sum of a counter over all its series of this pool, from GET /metrics (0 while it has none). */
export async function metricSum(gate, name) {
  const { status, text } = await adminGet(gate, '/metrics');
  if (status !== 200) throw new Error(`/metrics answered ${status}: ${text.slice(0, 300)}`);
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^(\w+)(\{[^}]*\})?\s+(\S+)$/);
    if (m && m[1] === name && (m[2] ?? '').includes(`pool="${POOL}"`)) sum += Number(m[3]);
  }
  return sum;
}

export const clients = new Set();
export async function newClient(addr) {
  const c = new CopilotClient({ connection: RuntimeConnection.forUri(addr) });
  clients.add(c);
  await withTimeout(c.start(), RPC_TIMEOUT, `connect to ${addr}`);
  return c;
}
export async function closeClient(c) {
  clients.delete(c);
  const stopped = await Promise.race([c.stop().then(() => true, () => false), sleep(5000).then(() => false)]);
  if (!stopped) await c.forceStop().catch(() => {});
}

export function waitForEvent(session, type, timeoutMs = 15_000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { off(); reject(new Error(`no ${type} event for ${session.sessionId} within ${timeoutMs} ms`)); }, timeoutMs);
    const off = session.on((e) => { if (e.type === type) { clearTimeout(t); off(); resolve(e); } });
  });
}

/** The proxy log without Rust backtrace frames, last n lines. */
export function gateLogTail(out, n = 30) {
  return out.trimEnd().split('\n').filter((l) => !/^\s+(\d+: |at )/.test(l)).slice(-n).join('\n');
}

