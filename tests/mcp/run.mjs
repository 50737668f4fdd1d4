// MCP interop suite: real MCP servers (the official TypeScript SDK's Streamable HTTP server
// transport, stateful) and the SDK's official client, through sessiongate's learned affinity
// (`learn: [{ response_header: Mcp-Session-Id }]`). See README.md.
//
//   node --test run.mjs
//
// Environment:
//   SESSIONGATE_BIN   proxy binary (default ../../target/release/sessiongate relative to this file)
//   SESSIONGATE_ARGS  proxy arguments, space separated, "{config}" replaced by the config path
//                     (default "run --config {config} --log-format json")
//   MCP_KEEP=1        keep the temp dir (proxy config and logs, server logs) after the run
//
// The tests run in order and build on each other: 12 sessions are made first, then checked,
// one is ended with DELETE, then one server is killed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema, LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';

// ───────────────────────────── settings ─────────────────────────────

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KEEP = process.env.MCP_KEEP === '1';
const SG_BIN = path.resolve(HERE, process.env.SESSIONGATE_BIN ?? '../../target/release/sessiongate');
const SG_ARGS = (process.env.SESSIONGATE_ARGS ?? 'run --config {config} --log-format json')
  .split(/\s+/).filter(Boolean);
const POOL = 'mcp';
const N_SERVERS = 3;
const N_CLIENTS = 12;
const CALLS_PER_CLIENT = 4;
const RPC_TIMEOUT = 10_000;
const TEST_TIMEOUT = 60_000;
const SDK_VERSION = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', '@modelcontextprotocol', 'sdk', 'package.json'), 'utf8')).version;
// What sessiongate answers itself for a session whose pinned upstream is gone (on_owner_down: not_found).
const PROXY_NOT_FOUND = 'session not found: the upstream that held it is gone';

const children = new Set();
function killAllSync() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAllSync(); process.exit(130); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, { timeoutMs = 10_000, everyMs = 50 } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(everyMs);
  }
}
function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// ───────────────────────────── processes ─────────────────────────────

function spawnTracked(bin, args, { env, cwd, logFile }) {
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

async function stopProc(child, signal = 'SIGTERM', graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(t);
}

/** One MCP server (server.mjs) on a port of its own choosing; ready = its JSON "ready" line. */
async function startServer(name, root) {
  const proc = spawnTracked(process.execPath, [path.join(HERE, 'server.mjs'), name, '0'],
    { env: process.env, cwd: HERE, logFile: path.join(root, `${name}.log`) });
  const ready = await Promise.race([
    until(`${name} ready`, () => {
      const m = proc.output.match(/^\{"ready":true.*\}$/m);
      return m ? JSON.parse(m[0]) : null;
    }, { timeoutMs: 15_000 }),
    proc.exited.then(({ code, signal }) => { throw new Error(`${name} exited (code ${code}, signal ${signal}):\n${proc.output}`); }),
  ]);
  return { name, port: ready.port, addr: `127.0.0.1:${ready.port}`, proc };
}

function gateConfigYaml(servers, poolExtra = []) {
  return [
    'admin:',
    '  listen: 127.0.0.1:0',
    'shutdown_grace: 1s',
    'listeners:',
    '  - name: mcp',
    '    listen: 127.0.0.1:0',
    '    protocol: http',
    `    pool: ${POOL}`,
    '    key: [{ header: Mcp-Session-Id }]',
    '    learn: [{ response_header: Mcp-Session-Id }]',
    '    no_key: random',
    'pools:',
    `  ${POOL}:`,
    '    on_owner_down: not_found',
    '    health: { probe: tcp, interval: 200ms, timeout: 100ms, fall: 1, rise: 1 }',
    ...poolExtra.map((l) => `    ${l}`),
    '    upstreams:',
    ...servers.map((s) => `      - { name: ${s.name}, addr: "${s.addr}" }`),
    '',
  ].join('\n');
}

/** {listener: addr} from sessiongate's JSON log lines `"message":"listener bound"`. */
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

async function startGate(configPath, root, tag = 'main') {
  if (!fs.existsSync(SG_BIN)) throw new Error(`sessiongate binary not found at ${SG_BIN} (set SESSIONGATE_BIN or cargo build --release)`);
  const args = SG_ARGS.map((a) => a.replace('{config}', configPath));
  const proc = spawnTracked(SG_BIN, args, { env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' }, cwd: root, logFile: path.join(root, `sessiongate-${tag}.log`) });
  const listeners = await Promise.race([
    until('sessiongate listeners "mcp" and "admin" bound', () => {
      const b = parseBoundListeners(proc.output);
      return b.mcp && b.admin ? b : null;
    }, { timeoutMs: 15_000 }),
    proc.exited.then(({ code, signal }) => { throw new Error(`sessiongate exited (code ${code}, signal ${signal}) before binding:\n${proc.output.slice(-4000)}`); }),
  ]);
  return { proc, mcpAddr: listeners.mcp, adminAddr: listeners.admin, url: `http://${listeners.mcp}/mcp` };
}

async function adminGet(gate, pathAndQuery) {
  const res = await fetch(`http://${gate.adminAddr}${pathAndQuery}`);
  return { status: res.status, text: await res.text() };
}
async function adminJson(gate, pathAndQuery) {
  const { status, text } = await adminGet(gate, pathAndQuery);
  assert.equal(status, 200, `${pathAndQuery} answered ${status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** Series of a metric of this pool from /metrics: [{labels, value}]. */
async function metricSeries(gate, name) {
  const { status, text } = await adminGet(gate, '/metrics');
  assert.equal(status, 200, `/metrics answered ${status}`);
  const out = [];
  for (const line of text.split('\n')) {
    const m = line.match(/^(\w+)(?:\{([^}]*)\})?\s+(\S+)$/);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (labels.pool === POOL) out.push({ labels, value: Number(m[3]) });
  }
  return out;
}
const metricSum = async (gate, name, filter = () => true) =>
  (await metricSeries(gate, name)).filter((s) => filter(s.labels)).reduce((a, s) => a + s.value, 0);

function gateLogTail(out, n = 30) {
  return out.trimEnd().split('\n').filter((l) => !/^\s+(\d+: |at )/.test(l)).slice(-n).join('\n');
}

// ───────────────────────────── SDK helpers ─────────────────────────────

/**
 * An SDK client connected (initialize + initialized) through the proxy. Standalone-SSE
 * reconnection is slowed down so that, after a server dies, the test's own next call is the first
 * request the proxy sees for the session (otherwise the client's GET reconnect may be).
 */
async function connectClient(url, label) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    reconnectionOptions: { initialReconnectionDelay: 5000, maxReconnectionDelay: 5000, reconnectionDelayGrowFactor: 1, maxRetries: 1 },
  });
  const client = new Client({ name: `sessiongate-mcp-interop-${label}`, version: '1.0.0' });
  const c = { label, client, transport, errors: [], logs: [] };
  client.onerror = (e) => c.errors.push(e);
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { c.logs.push(n.params); });
  await withTimeout(client.connect(transport), RPC_TIMEOUT, `initialize ${label}`);
  c.sessionId = transport.sessionId;
  assert.match(c.sessionId ?? '', /^[0-9a-f-]{36}$/, `${label}: no Mcp-Session-Id after initialize`);
  return c;
}

async function whoami(c) {
  const r = await withTimeout(c.client.callTool({ name: 'whoami', arguments: {} }), RPC_TIMEOUT, `whoami ${c.label}`);
  assert.equal(r.isError ?? false, false, `${c.label}: whoami isError: ${JSON.stringify(r)}`);
  assert.equal(r.structuredContent.sessionId, c.sessionId, `${c.label}: server saw another session id`);
  assert.equal(r.content[0].text, r.structuredContent.server);
  return r.structuredContent.server;
}

async function closeClient(c) {
  await Promise.race([c.client.close().catch(() => {}), sleep(2000)]);
}

/** A raw POST of tools/call with an explicit session id, to see exactly who answers what. */
async function rawCall(url, sessionId, protocolVersion) {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-session-id': sessionId,
      'mcp-protocol-version': protocolVersion,
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'tools/call', params: { name: 'whoami', arguments: {} } }),
  });
  return { status: res.status, server: res.headers.get('x-mcp-server'), text: await res.text() };
}

// ───────────────────────────── the suite ─────────────────────────────

describe('MCP Streamable HTTP through sessiongate (learned affinity)', { timeout: 180_000 }, () => {
  let root;
  let servers = [];
  let gate;
  let clients = [];   // connected, with .server = the name of the server that issued the session
  let ended;          // the client whose session was ended with DELETE
  let blocker = null; // a critical failure: later tests skip instead of timing out one by one

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-mcp-'));
    servers = await Promise.all(Array.from({ length: N_SERVERS }, (_, i) => startServer(`m${i + 1}`, root)));
    const configPath = path.join(root, 'sessiongate.yaml');
    await fsp.writeFile(configPath, gateConfigYaml(servers));
    gate = await startGate(configPath, root);
    // Every upstream healthy before the first request (probes run every 200 ms).
    await until('all upstreams healthy', async () => {
      const { upstreams } = await adminJson(gate, '/admin/upstreams');
      return upstreams.filter((u) => u.pool === POOL && u.healthy).length === N_SERVERS;
    });
  });

  after(async () => {
    await Promise.all(clients.map(closeClient));
    await stopProc(gate?.proc);
    await Promise.all(servers.map((s) => stopProc(s.proc)));
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  function step(name, fn, { critical = false } = {}) {
    it(name, { timeout: TEST_TIMEOUT }, async (t) => {
      if (blocker) { t.skip(`blocked by: ${blocker}`); return; }
      try {
        await fn(t);
      } catch (e) {
        if (critical) blocker = name;
        if (gate?.proc) e.message += `\n--- sessiongate log (tail) ---\n${gateLogTail(gate.proc.output)}`;
        throw e;
      }
    });
  }

  step(`${N_CLIENTS} SDK clients initialize through the proxy and every call reaches the server that issued the session`, async (t) => {
    clients = await Promise.all(Array.from({ length: N_CLIENTS }, (_, i) => connectClient(gate.url, `c${i}`)));
    const first = clients[0];
    const protocolVersion = first.transport.protocolVersion;
    const serverInfo = first.client.getServerVersion();
    t.diagnostic(`@modelcontextprotocol/sdk ${SDK_VERSION}; negotiated MCP protocol version ${protocolVersion} (SDK latest ${LATEST_PROTOCOL_VERSION}); serverInfo ${JSON.stringify(serverInfo)}`);
    assert.equal(protocolVersion, LATEST_PROTOCOL_VERSION);
    assert.equal(new Set(clients.map((c) => c.sessionId)).size, N_CLIENTS, 'session ids are not unique');
    await Promise.all(clients.map(async (c) => {
      // serverInfo.name from the initialize result is the issuing server's name
      c.server = c.client.getServerVersion().name;
      for (let i = 0; i < CALLS_PER_CLIENT; i++) {
        assert.equal(await whoami(c), c.server, `${c.label} (session ${c.sessionId}) call ${i} reached another server`);
      }
    }));
    const spread = {};
    for (const c of clients) spread[c.server] = (spread[c.server] ?? 0) + 1;
    t.diagnostic(`sessions per server: ${JSON.stringify(spread)}`);
    assert.ok(Object.keys(spread).length > 1, `all sessions on one server: ${JSON.stringify(spread)}`);
  }, { critical: true });

  step('the proxy learned one pin per session, on the issuing server', async () => {
    const learned = await metricSeries(gate, 'sessiongate_pins_learned_total');
    const sum = learned.reduce((a, s) => a + s.value, 0);
    assert.equal(sum, N_CLIENTS, `pins learned: ${JSON.stringify(learned)}`);
    for (const name of servers.map((s) => s.name)) {
      const onIt = clients.filter((c) => c.server === name).length;
      const got = learned.filter((s) => s.labels.upstream === name).reduce((a, s) => a + s.value, 0);
      assert.equal(got, onIt, `pins learned on ${name}`);
    }
    for (const c of clients) {
      const r = await adminJson(gate, `/admin/route?pool=${POOL}&key=${encodeURIComponent(c.sessionId)}`);
      assert.ok('source' in r, `/admin/route has no "source" field: this sessiongate build predates it, rebuild (${JSON.stringify(r)})`);
      assert.equal(r.source, 'pin', `${c.label}: ${JSON.stringify(r)}`);
      assert.equal(r.name, c.server, `${c.label}: ${JSON.stringify(r)}`);
    }
    const { upstreams } = await adminJson(gate, '/admin/upstreams');
    for (const u of upstreams.filter((x) => x.pool === POOL)) {
      assert.equal(u.live_sessions, clients.filter((c) => c.server === u.name).length, `live_sessions of ${u.name}`);
    }
  });

  step('server notifications reach each client on its standalone GET SSE stream', async () => {
    // The SDK client opens the standalone stream (GET /mcp) after `initialized`; the server's
    // unrelated notification can only travel there.
    await Promise.all(clients.map(async (c) => {
      const r = await withTimeout(c.client.callTool({ name: 'notify', arguments: {} }), RPC_TIMEOUT, `notify ${c.label}`);
      assert.equal(r.content[0].text, 'scheduled');
    }));
    await until('every client got its logging notification', () => clients.every((c) => c.logs.length >= 1), { timeoutMs: 5000 });
    for (const c of clients) {
      assert.deepEqual(c.logs[0].data, { server: c.server, sessionId: c.sessionId }, `${c.label} got someone else's notification`);
      assert.equal(c.logs.length, 1, `${c.label}: ${JSON.stringify(c.logs)}`);
      assert.deepEqual(c.errors.map(String), [], `${c.label}: transport errors`);
    }
    assert.equal(await metricSum(gate, 'sessiongate_pins_learned_total'), N_CLIENTS, 'SSE responses must not re-learn pins');
  });

  step('terminateSession (DELETE) through the proxy ends the session and drops its pin', async (t) => {
    ended = clients.shift();
    const { sessionId, server } = ended;
    const protocolVersion = ended.transport.protocolVersion;
    const droppedBefore = await metricSum(gate, 'sessiongate_pins_dropped_total', (l) => l.reason === 'deleted');
    await withTimeout(ended.transport.terminateSession(), RPC_TIMEOUT, `terminateSession ${ended.label}`);
    assert.equal(ended.transport.sessionId, undefined);
    await closeClient(ended);
    assert.equal(await metricSum(gate, 'sessiongate_pins_dropped_total', (l) => l.reason === 'deleted'), droppedBefore + 1, 'pin not dropped as deleted');
    const route = await adminJson(gate, `/admin/route?pool=${POOL}&key=${encodeURIComponent(sessionId)}`);
    assert.equal(route.source, 'ring', `pin survived the DELETE: ${JSON.stringify(route)}`);
    // The old id must not be served by anyone: 404 from the server the ring now picks.
    const r = await rawCall(gate.url, sessionId, protocolVersion);
    t.diagnostic(`old session of ${server} -> ${r.status} from ${r.server ?? 'the proxy'} (ring owner ${route.name})`);
    assert.equal(r.status, 404, `request with the ended session id: ${r.status} ${r.text}`);
    assert.equal(r.server, route.name, `404 not from the ring owner: ${JSON.stringify(r)}`);
    assert.match(r.text, /Session not found/);
    // A 404 from a non-owner must not create a pin either.
    const after = await adminJson(gate, `/admin/route?pool=${POOL}&key=${encodeURIComponent(sessionId)}`);
    assert.equal(after.source, 'ring');
    // Everyone else is unaffected.
    await Promise.all(clients.map(async (c) => assert.equal(await whoami(c), c.server)));
  });

  step('a killed server: its sessions get 404 from the proxy, others keep working, re-initialize works', async (t) => {
    // Kill the server holding the most remaining sessions.
    const count = (name) => clients.filter((c) => c.server === name).length;
    const victim = [...servers].sort((a, b) => count(b.name) - count(a.name))[0];
    const orphans = clients.filter((c) => c.server === victim.name);
    const survivors = clients.filter((c) => c.server !== victim.name);
    t.diagnostic(`killing ${victim.name} (${orphans.length} sessions); ${survivors.length} sessions elsewhere`);
    assert.ok(orphans.length > 0 && survivors.length > 0);
    await stopProc(victim.proc, 'SIGKILL');
    await until(`${victim.name} marked down`, async () => {
      const { upstreams } = await adminJson(gate, '/admin/upstreams');
      return upstreams.find((u) => u.pool === POOL && u.name === victim.name)?.healthy === false;
    }, { timeoutMs: 10_000 });
    const healthy = await metricSeries(gate, 'sessiongate_upstream_healthy');
    assert.equal(healthy.find((s) => s.labels.upstream === victim.name)?.value, 0, `gauge: ${JSON.stringify(healthy)}`);

    const droppedBefore = await metricSum(gate, 'sessiongate_pins_dropped_total', (l) => l.reason === 'owner_gone');
    await Promise.all(orphans.map(async (c) => {
      const err = await withTimeout(c.client.callTool({ name: 'whoami', arguments: {} }), RPC_TIMEOUT, `whoami ${c.label}`)
        .then((r) => { throw new Error(`${c.label}: call on a dead server's session succeeded: ${JSON.stringify(r)}`); }, (e) => e);
      assert.ok(err instanceof StreamableHTTPError, `${c.label}: ${err}`);
      assert.equal(err.code, 404, `${c.label}: ${err.message}`);
      assert.ok(err.message.includes(PROXY_NOT_FOUND), `${c.label}: 404 not the proxy's: ${err.message}`);
    }));
    assert.equal(await metricSum(gate, 'sessiongate_pins_dropped_total', (l) => l.reason === 'owner_gone'), droppedBefore + orphans.length);
    await Promise.all(survivors.map(async (c) => {
      for (let i = 0; i < 2; i++) assert.equal(await whoami(c), c.server, `${c.label} moved`);
    }));

    // The SDK leaves a new session to the application: a fresh initialize lands on a live server.
    const learnedBefore = await metricSum(gate, 'sessiongate_pins_learned_total');
    await Promise.all(orphans.map(closeClient));
    const renewed = await Promise.all(orphans.map((c) => connectClient(gate.url, `${c.label}-new`)));
    clients = clients.filter((c) => !orphans.includes(c)).concat(renewed);
    await Promise.all(renewed.map(async (c) => {
      c.server = c.client.getServerVersion().name;
      assert.notEqual(c.server, victim.name);
      for (let i = 0; i < 3; i++) assert.equal(await whoami(c), c.server);
    }));
    assert.equal(await metricSum(gate, 'sessiongate_pins_learned_total'), learnedBefore + orphans.length);
    // The orphans' standalone SSE streams were cut by the kill: the only errors allowed are those.
    for (const c of survivors) assert.deepEqual(c.errors.map(String), [], `${c.label}: transport errors`);
  });
});

// A learned pin is the only record of where an upstream-issued session lives (the ring cannot
// know, and HTTP has no owner discovery). Without requests it would expire after
// session_idle_ttl even while the session's standalone SSE stream is open and carrying
// notifications; the session would then follow the ring and, unless the ring happened to pick
// its server, gets 404 from a server that never had it. An open response now holds its
// session's pin (the proxy keeps it past the TTL and the table's bound until the stream ends).
describe('learned pins and session_idle_ttl', { timeout: 60_000 }, () => {
  let root;
  let servers = [];
  let gate;
  let clients = [];

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-mcp-ttl-'));
    servers = await Promise.all(Array.from({ length: N_SERVERS }, (_, i) => startServer(`t${i + 1}`, root)));
    const configPath = path.join(root, 'sessiongate.yaml');
    await fsp.writeFile(configPath, gateConfigYaml(servers, ['session_idle_ttl: 1s']));
    gate = await startGate(configPath, root, 'ttl');
    await until('all upstreams healthy', async () => {
      const { upstreams } = await adminJson(gate, '/admin/upstreams');
      return upstreams.filter((u) => u.pool === POOL && u.healthy).length === N_SERVERS;
    });
  });

  after(async () => {
    await Promise.all(clients.map(closeClient));
    await stopProc(gate?.proc);
    await Promise.all(servers.map((s) => stopProc(s.proc)));
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  it('a session idle longer than session_idle_ttl, with its SSE stream open, still reaches its server',
    { timeout: TEST_TIMEOUT },
    async (t) => {
      clients = await Promise.all(Array.from({ length: 9 }, (_, i) => connectClient(gate.url, `i${i}`)));
      for (const c of clients) c.server = c.client.getServerVersion().name;
      await Promise.all(clients.map(async (c) => assert.equal(await whoami(c), c.server)));
      // A notification on each session's SSE stream, then idle (no requests) past the TTL.
      await Promise.all(clients.map((c) => c.client.callTool({ name: 'notify', arguments: {} })));
      await sleep(2500);
      const lost = [];
      for (const c of clients) {
        const route = await adminJson(gate, `/admin/route?pool=${POOL}&key=${encodeURIComponent(c.sessionId)}`);
        const got = await whoami(c).catch((e) => `error: ${e.message.split('\n')[0]}`);
        if (route.source !== 'pin' || got !== c.server) lost.push(`${c.label} on ${c.server}: route ${route.source}->${route.name}, call -> ${got}`);
      }
      if (lost.length) t.diagnostic(`lost after idling: ${lost.length}/${clients.length}`);
      assert.deepEqual(lost, []);
    });
});
