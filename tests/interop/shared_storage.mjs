// Interop, shared storage (issue 13 §4): two real headless CLIs on ONE session-state directory, a
// pool with `storage: shared` and `on_owner_down: failover`, session pins shared by replicas
// through a real redis-server. Proxy mode only (skipped with INTEROP_DIRECT=1).
//
//   node --test shared_storage.mjs     (run.sh runs it after run.mjs; see README.md)
//
// Environment: as run.mjs (SESSIONGATE_BIN, SESSIONGATE_ARGS, COPILOT_CLI_BIN, INTEROP_KEEP=1), plus
// REDIS_SERVER_BIN (default redis-server on the PATH).
//
// The story, one session S (its id picked so that its ring owner is node X; Y is the other node):
//   1. P1 (redis) creates S on X and sends; the pin S -> X reaches Redis.
//   2. X is SIGKILLed under the live SDK client; P1 marks X down; the same client resumes S: it lands
//      on Y (failover), with X's events, alreadyInUse false, and a send works; the Redis pin is Y.
//   3. X restarts on its port and the shared dir; P1 sees it healthy; P1 still routes S to Y (pin).
//   4. A fresh replica P2 (same Redis) resumes S on Y: the pin from Redis, not the ring (X).
//   5. One writer: exactly one live `inuse.<pid>.lock` in S's folder, Y's; no resume saw alreadyInUse.
//   6. The control: P3 has no redis (a startup warning says so); it resumes S on the ring owner X while
//      Y holds it: alreadyInUse true, counted in sessiongate_sessions_already_in_use_total and logged.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { approveAll } from '@github/copilot-sdk';
import {
  DIRECT, KEEP, POOL, RPC_TIMEOUT,
  until, withTimeout, freePort, spawnTracked, stopProc, startCli, startGate, gateConfigYaml, adminGet,
  ringOwners,
  clients, newClient, closeClient, waitForEvent, gateLogTail,
} from './lib.mjs';

const REDIS_BIN = process.env.REDIS_SERVER_BIN ?? 'redis-server';
const STEP_TIMEOUT = 30_000;
const NO_REDIS_WARNING = 'storage: shared without redis';
const SECOND_WRITER_WARNING = 'a node resumed a session another CLI process holds';
const IN_USE_METRIC = 'sessiongate_sessions_already_in_use_total';
const DISCOVERY_METRIC = 'sessiongate_owner_discovery_total';

// ───────────────────────────── redis ─────────────────────────────

/** A redis-server on a free loopback port, nothing saved, its working dir under root. */
async function startRedis(root) {
  const dir = path.join(root, 'redis');
  await fsp.mkdir(dir, { recursive: true });
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = spawnTracked(REDIS_BIN, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
      { env: process.env, cwd: dir, logFile: path.join(root, 'redis.log') });
    const ready = await Promise.race([
      until('redis-server answers PING', async () => (await redisCommand(port, 'PING')) === 'PONG', { timeoutMs: 10_000, everyMs: 50 }).then(() => true),
      proc.exited.then(() => false),
    ]);
    if (ready) return { port, proc };
    await stopProc(proc, 'SIGKILL');
    if (attempt >= 5) throw new Error(`redis-server did not start:\n${proc.output}`);
  }
}

/** One command over RESP; the answer as a string, a number or null (no arrays needed here). */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    sock.setTimeout(2000, () => { sock.destroy(); reject(new Error(`redis ${args[0]}: no answer`)); });
    sock.on('error', reject);
    sock.on('connect', () => sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const eol = buf.indexOf('\r\n');
      if (eol < 0) return;
      const head = buf.slice(1, eol).toString();
      let value;
      switch (String.fromCharCode(buf[0])) {
        case '+': value = head; break;
        case ':': value = Number(head); break;
        case '-': sock.destroy(); reject(new Error(`redis ${args[0]}: ${head}`)); return;
        case '$': {
          const len = Number(head);
          if (len < 0) { value = null; break; }
          if (buf.length < eol + 2 + len + 2) return;
          value = buf.slice(eol + 2, eol + 2 + len).toString();
          break;
        }
        default: sock.destroy(); reject(new Error(`redis ${args[0]}: unexpected answer ${buf.toString().slice(0, 80)}`)); return;
      }
      sock.end();
      resolve(value);
    });
  });
}

/** The node Redis pins a session to (src/store/pins.rs: `sessiongate:pin:{pool}:{session}`). */
const redisPin = (redis, sid) => redisCommand(redis.port, 'GET', `sessiongate:pin:${POOL}:${sid}`);

// ───────────────────────────── the proxies ─────────────────────────────

/** P1 and P2 (with redis) and P3 (without): the same pool over the same two nodes. */
function sharedConfigYaml(clis, redisPort) {
  return gateConfigYaml(clis, {
    top: redisPort ? ['redis:', `  url: redis://127.0.0.1:${redisPort}`] : [],
    pool: ['    storage: shared', '    on_owner_down: failover'],
    health: '{ probe: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }',
  });
}

/** A counter's value summed over its series that carry all of `labels` (0 while it has none). */
async function metricValue(gate, name, labels = {}) {
  const { status, text } = await adminGet(gate, '/metrics');
  if (status !== 200) throw new Error(`/metrics answered ${status}: ${text.slice(0, 300)}`);
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^(\w+)(?:\{([^}]*)\})?\s+(\S+)$/);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** One upstream as GET /admin/upstreams shows it. */
async function upstreamState(gate, name) {
  const { status, text } = await adminGet(gate, '/admin/upstreams');
  if (status !== 200) throw new Error(`/admin/upstreams answered ${status}: ${text.slice(0, 300)}`);
  const u = JSON.parse(text).upstreams.find((x) => x.pool === POOL && x.name === name);
  if (!u) throw new Error(`/admin/upstreams has no ${name}: ${text.slice(0, 500)}`);
  return u;
}

async function adminRoute(gate, key) {
  const { status, text } = await adminGet(gate, `/admin/route?pool=${POOL}&key=${key}`);
  if (status !== 200) throw new Error(`/admin/route answered ${status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** The proxy's JSON log lines whose message contains `text`, as their fields. */
function logLines(gate, text) {
  const out = [];
  for (const line of gate.proc.output.split('\n')) {
    if (!line.trim().startsWith('{')) continue;
    let obj;
    try { obj = JSON.parse(line); } catch { continue; }
    const f = { ...obj, ...(obj.fields ?? {}) };
    if (String(f.message ?? '').includes(text)) out.push(f);
  }
  return out;
}

// ───────────────────────────── the suite ─────────────────────────────

let blocker = null;

describe('sessiongate interop, shared storage: failover, pins through Redis, one writer per session', { skip: DIRECT ? 'proxy mode only (INTEROP_DIRECT=1)' : false, timeout: 120_000 }, () => {
  let root;
  let shared;          // the session-state dir both CLIs use
  let redis;
  const clis = [];     // node-a, node-b (a restarted node replaces its entry)
  let withRedis;       // config of P1 and P2
  let withoutRedis;    // config of P3
  const gates = {};    // p1, p2, p3
  let SID;
  let X;               // S's ring owner, where P1 creates it; SIGKILLed, then restarted
  let Y;               // the other node, where S fails over
  let creator;         // the SDK client (through P1) that creates S, stays connected, resumes it on Y
  let xEventIds = [];  // persisted events of S while it was on X
  const resumes = [];  // [{via, node, alreadyInUse}]: every session.resume event seen

  const cli = (name) => clis.find((c) => c.name === name);
  /** The node whose COPILOT_HOME the session's workspacePath is under (the CLI that answered). */
  const nodeOf = (session) => {
    const hit = clis.find((c) => session.workspacePath === path.join(c.home, 'session-state', SID));
    assert.ok(hit, `workspacePath ${session.workspacePath} is under no node's COPILOT_HOME`);
    return hit.name;
  };
  /** S's `inuse.<pid>.lock` files: all of them, and those whose pid is alive. */
  const locks = () => {
    const all = fs.readdirSync(path.join(shared, SID)).map((f) => f.match(/^inuse\.(\d+)\.lock$/)).filter(Boolean).map((m) => Number(m[1]));
    const alive = (pid) => { try { process.kill(pid, 0); return true; } catch (e) { return e.code === 'EPERM'; } };
    return { all: all.sort(), live: all.filter(alive).sort() };
  };
  /** Resume S from client and wait for the session.resume event (its data says alreadyInUse). */
  const resume = async (client, via) => {
    const events = [];
    const session = await withTimeout(client.resumeSession(SID, { onPermissionRequest: approveAll, onEvent: (e) => events.push(e) }), RPC_TIMEOUT, `session.resume through ${via}`);
    const ev = await until(`the session.resume event through ${via}`, () => events.find((e) => e.type === 'session.resume'), { timeoutMs: 5000, everyMs: 20 });
    assert.equal(typeof ev.data.alreadyInUse, 'boolean', `session.resume event data: ${JSON.stringify(ev.data)}`);
    const node = nodeOf(session);
    resumes.push({ via, node, alreadyInUse: ev.data.alreadyInUse });
    return { session, events, node, alreadyInUse: ev.data.alreadyInUse };
  };
  /** Send a prompt; unauthenticated, the answer is a session.error event (a real one). */
  const sendExpectingError = async (session, what) => {
    const errored = waitForEvent(session, 'session.error');
    const messageId = await withTimeout(session.send(`hello ${what}`), RPC_TIMEOUT, `session.send ${what}`);
    assert.match(messageId, /^[0-9a-f-]{36}$/);
    const ev = await errored;
    assert.equal(ev.data.errorType, 'query', `session.error ${what}: ${JSON.stringify(ev.data)}`);
    return ev;
  };

  /** Skip after a failed step (each builds on the last); on failure, the proxies' log tails. */
  const step = (fn) => async (t) => {
    if (blocker) { t.skip(`blocked by earlier failure: ${blocker}`); return; }
    try {
      return await fn(t);
    } catch (e) {
      blocker = e.message.split('\n')[0].slice(0, 200);
      for (const [tag, g] of Object.entries(gates)) {
        if (g?.proc?.output) e.message += `\n--- last ${tag} log lines ---\n${gateLogTail(g.proc.output, 15)}`;
      }
      throw e;
    }
  };

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-interop-shared-'));
    shared = path.join(root, 'shared-session-state');
    await fsp.mkdir(shared, { recursive: true });
    const [r, ...started] = await Promise.all([
      startRedis(root),
      startCli('node-a', root, {}, { sessionState: shared }),
      startCli('node-b', root, {}, { sessionState: shared }),
    ]);
    redis = r;
    clis.push(...started);
    withRedis = path.join(root, 'with-redis.yaml');
    withoutRedis = path.join(root, 'without-redis.yaml');
    await fsp.writeFile(withRedis, sharedConfigYaml(clis, redis.port));
    await fsp.writeFile(withoutRedis, sharedConfigYaml(clis, null));
    // S: an id whose ring owner is X, so that a proxy without pins (P3) sends it to X.
    [[SID, X]] = ringOwners(withoutRedis, ['5e55c0de-05a4-4000-8000-000000000001']);
    Y = clis.find((c) => c.name !== X).name;
    gates.p1 = await startGate(withRedis, root, 'p1');
  });

  after(async () => {
    for (const c of [...clients]) await closeClient(c);
    await Promise.all(Object.values(gates).map((g) => stopProc(g?.proc)));
    await Promise.all(clis.map((c) => stopProc(c.proc, 'SIGKILL')));
    await stopProc(redis?.proc);
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  it('P1 (storage: shared, redis) creates S on its ring owner X; a send gives a session.error event; the pin reaches Redis', { timeout: STEP_TIMEOUT }, step(async (t) => {
    t.diagnostic(`session ${SID}: ring owner X = ${X}, Y = ${Y}; pids ${clis.map((c) => `${c.name}=${c.proc.pid}`).join(' ')}`);
    assert.equal(logLines(gates.p1, NO_REDIS_WARNING).length, 0, 'P1 has redis: yet warned that it has none');
    const routed = await adminRoute(gates.p1, SID);
    assert.deepEqual([routed.source, routed.name], ['ring', X], `/admin/route before the create: ${JSON.stringify(routed)}`);
    creator = await newClient(gates.p1.cliAddr);
    const session = await withTimeout(creator.createSession({ sessionId: SID, onPermissionRequest: approveAll }), RPC_TIMEOUT, 'session.create');
    assert.equal(nodeOf(session), X, 'the node that created S');
    await sendExpectingError(session, 'on X');
    const persisted = await withTimeout(session.getEvents(), RPC_TIMEOUT, 'getEvents on X');
    const types = persisted.map((e) => e.type);
    for (const type of ['session.start', 'session.error']) assert.ok(types.includes(type), `S's events on X lack ${type}: ${types}`);
    xEventIds = persisted.map((e) => e.id);
    // The CLI writes events.jsonl lazily (a session whose file is not there yet cannot be resumed:
    // "Session not found"); X is killed in the next step, so wait until its events are on disk.
    const t0 = Date.now();
    const file = path.join(shared, SID, 'events.jsonl');
    await until(`S's events in ${file}`, () => fs.existsSync(file) && xEventIds.every((id) => fs.readFileSync(file, 'utf8').includes(id)), { timeoutMs: 10_000, everyMs: 20 });
    t.diagnostic(`events.jsonl had X's ${xEventIds.length} events ${Date.now() - t0} ms after getEvents`);
    assert.deepEqual(locks().live, [cli(X).proc.pid], `live locks of S on X: ${JSON.stringify(locks())}`);
    await until(`Redis to pin S to ${X}`, async () => (await redisPin(redis, SID)) === X, { timeoutMs: 5000, everyMs: 50 });
    t.diagnostic(`on X: ${types.length} persisted events (${types.join(', ')}); locks ${JSON.stringify(locks())}; redis pin ${await redisPin(redis, SID)}`);
  }));

  it('X is SIGKILLed under the live client; P1 marks it down; the same client resumes S on Y with X\'s events, alreadyInUse false, and sends there', { timeout: STEP_TIMEOUT }, step(async (t) => {
    const killedPid = cli(X).proc.pid;
    await stopProc(cli(X).proc, 'SIGKILL');
    await until(`P1 to mark ${X} down`, async () => !(await upstreamState(gates.p1, X)).healthy, { timeoutMs: 5000, everyMs: 50 });
    assert.equal((await upstreamState(gates.p1, Y)).healthy, true, `${Y} stays healthy`);
    const r = await resume(creator, 'P1 (X down)');
    assert.equal(r.node, Y, 'after failover S is resumed on');
    assert.equal(r.alreadyInUse, false, 'alreadyInUse of the resume on Y (X is dead)');
    const persisted = await withTimeout(r.session.getEvents(), RPC_TIMEOUT, 'getEvents on Y');
    const ids = new Set(persisted.map((e) => e.id));
    const missing = xEventIds.filter((id) => !ids.has(id));
    assert.deepEqual(missing, [], `events of S written on X that Y does not return (of ${xEventIds.length})`);
    await sendExpectingError(r.session, 'on Y');
    const l = locks();
    assert.deepEqual(l.live, [cli(Y).proc.pid], `live locks of S after the send on Y: ${JSON.stringify(l)}`);
    await until(`Redis to pin S to ${Y}`, async () => (await redisPin(redis, SID)) === Y, { timeoutMs: 5000, everyMs: 50 });
    assert.equal(await metricValue(gates.p1, IN_USE_METRIC), 0, `P1's ${IN_USE_METRIC}`);
    t.diagnostic(`killed ${X} (pid ${killedPid}); resumed on ${r.node}, alreadyInUse ${r.alreadyInUse}; ${persisted.length} events on Y, all ${xEventIds.length} of X's among them; locks ${JSON.stringify(l)}; redis pin ${await redisPin(redis, SID)}`);
  }));

  it('X restarts on its port and the shared dir; P1 sees it healthy and keeps S on Y (its pin; the ring says X)', { timeout: STEP_TIMEOUT }, step(async (t) => {
    const old = cli(X);
    const again = await startCli(X, root, {}, { port: old.port, sessionState: shared });
    clis[clis.indexOf(old)] = again;
    await until(`P1 to see ${X} healthy`, async () => {
      const u = await upstreamState(gates.p1, X);
      return u.healthy && !u.ejected;
    }, { timeoutMs: 10_000, everyMs: 50 });
    const routed = await adminRoute(gates.p1, SID);
    assert.deepEqual([routed.source, routed.name, routed.ring], ['pin', Y, X], `P1's /admin/route for S: ${JSON.stringify(routed)}`);
    t.diagnostic(`${X} restarted as pid ${again.proc.pid} on port ${again.port}; P1 /admin/route: ${JSON.stringify(routed)}`);
  }));

  it('a fresh replica P2 (same Redis) resumes S on Y: the pin from Redis, not the ring; no owner discovery, no second writer', { timeout: STEP_TIMEOUT }, step(async (t) => {
    gates.p2 = await startGate(withRedis, root, 'p2');
    assert.equal(logLines(gates.p2, NO_REDIS_WARNING).length, 0, 'P2 has redis: yet warned that it has none');
    const client = await newClient(gates.p2.cliAddr);
    const r = await resume(client, 'P2');
    assert.equal(r.node, Y, 'P2 resumed S on');
    assert.equal(r.alreadyInUse, false, 'alreadyInUse of the resume through P2');
    const discovery = await metricValue(gates.p2, DISCOVERY_METRIC);
    assert.equal(discovery, 0, `P2's ${DISCOVERY_METRIC}`);
    for (const tag of ['p1', 'p2']) assert.equal(await metricValue(gates[tag], IN_USE_METRIC), 0, `${tag}'s ${IN_USE_METRIC}`);
    const routed = await adminRoute(gates.p2, SID);
    assert.deepEqual([routed.source, routed.name], ['pin', Y], `P2's /admin/route for S: ${JSON.stringify(routed)}`);
    t.diagnostic(`P2 resumed on ${r.node}, alreadyInUse ${r.alreadyInUse}; P2 ${DISCOVERY_METRIC} ${discovery}; P2 /admin/route ${JSON.stringify(routed)}`);
  }));

  it('one writer: S has exactly one live lock (Y\'s CLI) and no resume saw alreadyInUse', { timeout: STEP_TIMEOUT }, step(async (t) => {
    const l = locks();
    assert.deepEqual(l.live, [cli(Y).proc.pid], `live inuse.<pid>.lock files of S: ${JSON.stringify(l)}`);
    assert.equal(resumes.length, 2, `resumes so far: ${JSON.stringify(resumes)}`);
    for (const r of resumes) assert.equal(r.alreadyInUse, false, `a resume saw another writer: ${JSON.stringify(r)}`);
    t.diagnostic(`locks ${JSON.stringify(l)} (${Y} pid ${cli(Y).proc.pid}); resumes ${JSON.stringify(resumes)}`);
  }));

  it('control: P3 without redis warns at startup and resumes S on the ring owner X while Y holds it: alreadyInUse true, counted, logged', { timeout: STEP_TIMEOUT }, step(async (t) => {
    gates.p3 = await startGate(withoutRedis, root, 'p3');
    const startup = logLines(gates.p3, NO_REDIS_WARNING);
    assert.equal(startup.length, 1, `P3's startup warning "${NO_REDIS_WARNING}"`);
    assert.equal(startup[0].level, 'WARN', JSON.stringify(startup[0]));
    assert.equal(await metricValue(gates.p3, IN_USE_METRIC), 0, `P3's ${IN_USE_METRIC} before the resume`);
    const client = await newClient(gates.p3.cliAddr);
    const r = await resume(client, 'P3 (no redis)');
    assert.equal(r.node, X, 'P3 (no pin) resumed S on its ring owner');
    assert.equal(r.alreadyInUse, true, 'alreadyInUse of the resume on X while Y holds S');
    assert.ok(locks().live.includes(cli(Y).proc.pid), `Y's lock: ${JSON.stringify(locks())}`);
    const counted = await until(`P3's ${IN_USE_METRIC}{upstream="${X}"}`, async () => (await metricValue(gates.p3, IN_USE_METRIC, { pool: POOL, upstream: X })) || null, { timeoutMs: 3000, everyMs: 50 });
    assert.equal(counted, 1, `P3's ${IN_USE_METRIC}{pool="${POOL}",upstream="${X}"}`);
    assert.equal(await metricValue(gates.p3, IN_USE_METRIC), 1, `P3's ${IN_USE_METRIC} over all series`);
    const warned = logLines(gates.p3, SECOND_WRITER_WARNING);
    assert.equal(warned.length, 1, `P3's "${SECOND_WRITER_WARNING}" warnings: ${JSON.stringify(warned)}`);
    assert.deepEqual([warned[0].level, warned[0].pool, warned[0].upstream, warned[0].session], ['WARN', POOL, X, SID], JSON.stringify(warned[0]));
    for (const tag of ['p1', 'p2']) {
      assert.equal(await metricValue(gates[tag], IN_USE_METRIC), 0, `${tag}'s ${IN_USE_METRIC}`);
      assert.equal(logLines(gates[tag], SECOND_WRITER_WARNING).length, 0, `${tag} logged a second writer`);
    }
    t.diagnostic(`P3 resumed on ${r.node}, alreadyInUse ${r.alreadyInUse}; P3 ${IN_USE_METRIC}{upstream="${X}"} ${counted}; locks ${JSON.stringify(locks())}; warning ${JSON.stringify(warned[0])}`);
  }));
});
