// Interop suite: real GitHub Copilot CLI servers (headless) + the real SDK, through sessiongate.
//
//   node --test run.mjs                  proxy mode: SDK -> sessiongate -> 3 (then 4) CLI servers
//   INTEROP_DIRECT=1 node --test run.mjs direct mode: SDK -> first CLI server (no proxy); proves the
//                                        SDK side of this driver and the CLI facts the proxy relies on
//
// Environment:
//   SESSIONGATE_BIN   proxy binary (default ../../target/release/sessiongate relative to this file)
//   SESSIONGATE_ARGS  proxy arguments, space separated, "{config}" replaced by the config path
//                     (default "run --config {config} --log-format json")
//   COPILOT_CLI_BIN   CLI binary (default node_modules/@github/copilot-linux-x64/copilot)
//   INTEROP_KEEP=1    keep the temp dir (CLI homes, proxy config and logs) after the run
//
// Layout of this file (the generic helpers, for processes and SDK clients, are in lib.mjs):
//   1. settings: the suite's session ids
//   2. process helpers: where a session lives, the proxy's config, its ring
//   3. SDK helpers: create+send, resume+read
//   4. the suite (one sequential describe; later tests build on the sessions the earlier ones made)
//   5. ownership: a second describe with its own CLI fleet (requiring a node token) and a proxy
//      with identities; two users with different connection tokens
//   6. fleet cleanup: a third describe with its own CLI fleet and a proxy whose pool has `cleanup:`;
//      POST /admin/cleanup (dry run, then real) deletes unpinned sessions only

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { CopilotClient, RuntimeConnection, approveAll } from '@github/copilot-sdk';
import {
  HERE, DIRECT, KEEP, SG_BIN, POOL, TEST_TIMEOUT, RPC_TIMEOUT,
  until, withTimeout, stopProc, startCli, startGate, gateConfigYaml, adminGet, ringOwners, metricSum,
  clients, newClient, closeClient, waitForEvent, gateLogTail,
} from './lib.mjs';

// ───────────────────────────── 1. settings ─────────────────────────────

const N_SESSIONS = 12;
// Fixed session ids: with random ids, 12 sessions on a 3-node hash ring leave some node empty about
// 2% of the time; fixed ids make "spread over all nodes" deterministic for a given ring.
const SESSION_IDS = Array.from({ length: N_SESSIONS }, (_, i) =>
  `5e55c0de-${String(i).padStart(4, '0')}-4000-8000-${(0x1000_0000_0000 + i * 7919).toString(16).slice(-12)}`);

// ───────────────────────────── 2. process helpers ─────────────────────────────

/** Which CLI holds a session: the one whose COPILOT_HOME has session-state/<id>/. */
function ownersOf(sessionId, clis) {
  return clis.filter((c) => fs.existsSync(path.join(c.home, 'session-state', sessionId))).map((c) => c.name);
}

/** Upstream names (cli-N) that GET /admin/ring?pool=fleet mentions; shape-agnostic on purpose. */
async function ringUpstreams(gate) {
  const { status, text } = await adminGet(gate, `/admin/ring?pool=${POOL}`);
  if (status !== 200) throw new Error(`/admin/ring answered ${status}: ${text.slice(0, 300)}`);
  return [...new Set(text.match(/cli-\d+/g) ?? [])].sort();
}

// ───────────────────────────── 3. SDK helpers ─────────────────────────────

/**
 * Create a session with a caller-chosen id and send one prompt. Without login the CLI answers the
 * prompt with a session.error event (a real event that has to be routed back). A session that never
 * got a message has no events.jsonl and cannot be resumed ("Session not found"), so we always send.
 */
async function createAndSend(client, sessionId) {
  const session = await withTimeout(client.createSession({ sessionId, onPermissionRequest: approveAll }), RPC_TIMEOUT, `session.create ${sessionId}`);
  assert.equal(session.sessionId, sessionId);
  const errored = waitForEvent(session, 'session.error');
  const messageId = await withTimeout(session.send('hello from the interop suite'), RPC_TIMEOUT, `session.send ${sessionId}`);
  assert.match(messageId, /^[0-9a-f-]{36}$/);
  const ev = await errored;
  return { session, errorEvent: ev };
}

/** Resume from a client and check the persisted events are the session's own. */
async function resumeAndRead(client, sessionId) {
  const session = await withTimeout(client.resumeSession(sessionId, { onPermissionRequest: approveAll }), RPC_TIMEOUT, `session.resume ${sessionId}`);
  assert.equal(session.sessionId, sessionId);
  const events = await withTimeout(session.getEvents(), RPC_TIMEOUT, `session.getMessages ${sessionId}`);
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'session.start', `first event of ${sessionId}: ${types}`);
  assert.equal(events[0].data.sessionId, sessionId);
  assert.ok(types.includes('session.error'), `${sessionId} events lack session.error: ${types}`);
  assert.ok(types.includes('session.resume'), `${sessionId} events lack session.resume: ${types}`);
  return { session, events };
}

/**
 * Every method the SDK can send a server, read from its own sources: each
 * `connection.sendRequest("<name>"` inside the client-to-server factories of
 * dist/generated/rpc.js (createServerRpc, createInternalServerRpc, createSessionRpc,
 * createInternalSessionRpc; the register*Handlers functions there are what the server sends the
 * client), plus each `sendRequest("<name>"` of dist/client.js and dist/session.js.
 */
function sdkClientMethods() {
  const dist = path.join(HERE, 'node_modules', '@github', 'copilot-sdk', 'dist');
  const rpc = fs.readFileSync(path.join(dist, 'generated', 'rpc.js'), 'utf8');
  const factories = ['createServerRpc', 'createInternalServerRpc', 'createSessionRpc', 'createInternalSessionRpc'];
  const fns = [...rpc.matchAll(/^(?:export\s+)?function\s+(\w+)\s*\(/gm)].map((m) => ({ name: m[1], at: m.index }));
  for (const f of factories) if (!fns.some((x) => x.name === f)) throw new Error(`rpc.js has no function ${f}`);
  const names = new Set();
  const add = (text, re) => { for (const m of text.matchAll(re)) names.add(m[1]); };
  fns.forEach((f, i) => {
    if (factories.includes(f.name)) add(rpc.slice(f.at, fns[i + 1]?.at ?? rpc.length), /connection\.sendRequest\(\s*"([^"]+)"/g);
  });
  for (const file of ['client.js', 'session.js']) add(fs.readFileSync(path.join(dist, file), 'utf8'), /sendRequest\(\s*"([^"]+)"/g);
  return names;
}

async function resumeAll(addr, ids) {
  const c = await newClient(addr);
  try {
    for (const id of ids) await resumeAndRead(c, id);
  } finally {
    await closeClient(c);
  }
}

// ───────────────────────────── 4. the suite ─────────────────────────────

// A failure of a test marked critical (nothing after it can work) makes the rest skip at once
// instead of each waiting out its own timeouts.
let blocker = null;

/**
 * Wrap a test body: skip when an earlier critical test failed, and on failure append the tail of
 * the proxy's log (where the why usually is).
 */
function withGateLog(getGate, fn, { critical = false } = {}) {
  return async (t, ...rest) => {
    if (blocker) { t.skip(`blocked by earlier failure: ${blocker}`); return; }
    try {
      return await fn(t, ...rest);
    } catch (e) {
      if (critical) blocker = e.message.split('\n')[0];
      const out = getGate()?.proc?.output;
      if (out) e.message += `\n--- last sessiongate log lines ---\n${gateLogTail(out)}`;
      throw e;
    }
  };
}

describe(`sessiongate interop (${DIRECT ? 'DIRECT: SDK -> CLI, no proxy' : 'proxy: SDK -> sessiongate -> CLI fleet'})`, { timeout: 180_000 }, () => {
  let root;             // temp dir for everything
  const clis = [];      // started CLI servers (cli-1..cli-3, later cli-4)
  let configPath;
  let gate;             // the running sessiongate {proc, cliAddr, adminAddr}
  let target;           // where the SDK connects: gate.cliAddr, or clis[0].addr in direct mode
  let creator;          // the client that created the sessions; stays connected
  const forks = [];     // {id, source, node}: sessions.fork copies of the suite's sessions
  const proxyOnly = DIRECT ? 'proxy mode only (INTEROP_DIRECT=1)' : false;

  before(async () => {
    if (!DIRECT && !fs.existsSync(SG_BIN)) throw new Error(`sessiongate binary not found at ${SG_BIN} (set SESSIONGATE_BIN or cargo build --release)`);
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-interop-'));
    const started = await Promise.all([1, 2, 3].map((i) => startCli(`cli-${i}`, root)));
    clis.push(...started);
    if (DIRECT) {
      target = clis[0].addr;
    } else {
      configPath = path.join(root, 'sessiongate.yaml');
      await fsp.writeFile(configPath, gateConfigYaml(clis));
      gate = await startGate(configPath, root, 'a');
      target = gate.cliAddr;
    }
  });

  after(async () => {
    for (const c of [...clients]) await closeClient(c);
    await stopProc(gate?.proc);
    await Promise.all(clis.map((c) => stopProc(c.proc)));
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  it('connects and pings', { timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const c = await newClient(target);
    try {
      const pong = await withTimeout(c.ping('interop'), RPC_TIMEOUT, 'ping');
      assert.equal(pong.message, 'pong: interop');
      assert.equal(typeof pong.timestamp, 'string');
      assert.equal(pong.protocolVersion, 3);
    } finally {
      await closeClient(c);
    }
  }, { critical: true }));

  it(`creates ${N_SESSIONS} sessions, each event stream reaches the client`, { timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    creator = await newClient(target);
    for (const id of SESSION_IDS) {
      const { errorEvent } = await createAndSend(creator, id);
      assert.equal(errorEvent.data.errorType, 'query');
    }
    // every session exists on exactly one node, never duplicated
    for (const id of SESSION_IDS) assert.equal(ownersOf(id, clis).length, 1, `owners of ${id}: ${ownersOf(id, clis)}`);
    if (DIRECT) for (const id of SESSION_IDS) assert.deepEqual(ownersOf(id, clis), ['cli-1']);
  }, { critical: true }));

  it('spreads the sessions over all three nodes', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const per = Object.fromEntries(clis.map((c) => [c.name, 0]));
    for (const id of SESSION_IDS) per[ownersOf(id, clis)[0]]++;
    for (const c of clis) assert.ok(per[c.name] > 0, `no session on ${c.name}: ${JSON.stringify(per)}`);
  }));

  it('a fresh client resumes every session and reads its events', { timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    await resumeAll(target, SESSION_IDS);
  }));

  it('listSessions returns them all', { timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const c = await newClient(target);
    try {
      const list = await withTimeout(c.listSessions(), RPC_TIMEOUT, 'session.list');
      const ids = new Set(list.map((s) => s.sessionId));
      for (const id of SESSION_IDS) assert.ok(ids.has(id), `listSessions lacks ${id}`);
      for (const s of list) {
        // the SDK turns the wire's ISO-8601 strings into Dates: an unparsable one becomes NaN
        assert.ok(!Number.isNaN(s.startTime.getTime()), `bad startTime for ${s.sessionId}`);
        assert.ok(!Number.isNaN(s.modifiedTime.getTime()), `bad modifiedTime for ${s.sessionId}`);
      }
    } finally {
      await closeClient(c);
    }
  }));

  // ── the server-scoped sessions.* namespace: fan-out, create-from-session, split by owner ──

  it('sessions.list returns every session of every node, once', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const c = await newClient(target);
    try {
      const { sessions } = await withTimeout(c.rpc.sessions.list({}), RPC_TIMEOUT, 'sessions.list');
      const ids = sessions.map((s) => s.sessionId);
      // only the suite's sessions exist so far: exactly those, no copy twice, none left out
      assert.deepEqual([...ids].sort(), [...SESSION_IDS].sort(), 'sessions.list is not exactly the suite\'s sessions');
      for (const cli of clis) {
        const mine = SESSION_IDS.filter((id) => ownersOf(id, [cli]).length);
        assert.ok(mine.length > 0 && mine.every((id) => ids.includes(id)), `sessions of ${cli.name} missing from sessions.list`);
      }
    } finally {
      await closeClient(c);
    }
  }));

  it('sessions.pruneOld dry run names every node\'s sessions and deletes nothing', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const c = await newClient(target);
    try {
      const r = await withTimeout(c.rpc.sessions.pruneOld({ olderThanDays: 0, dryRun: true }), RPC_TIMEOUT, 'sessions.pruneOld');
      assert.equal(r.dryRun, true, `dryRun: ${JSON.stringify(r)}`);
      assert.deepEqual(r.deleted, []);
      assert.deepEqual([...r.candidates].sort(), [...SESSION_IDS].sort(), 'candidates are not exactly the suite\'s sessions');
      assert.equal(typeof r.freedBytes, 'number');
      assert.ok(r.freedBytes > 0, `freedBytes of ${r.candidates.length} candidates: ${r.freedBytes}`);
    } finally {
      await closeClient(c);
    }
    for (const id of SESSION_IDS) assert.equal(ownersOf(id, clis).length, 1, `${id} after a dry run: on ${ownersOf(id, clis)}`);
  }));

  it('sessions.fork makes each copy on its source\'s node, pinned: resuming it needs no owner search', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const discoveries = () => metricSum(gate, 'sessiongate_owner_discovery_total');
    const atStart = await discoveries();
    // All 12 (4 or so per node): a fork's id is random, so some land off their ring owner, where
    // only the pin finds them (the chance that none does is 3^-12).
    for (const source of SESSION_IDS) {
      const node = ownersOf(source, clis)[0];
      const r = await withTimeout(creator.rpc.sessions.fork({ sessionId: source }), RPC_TIMEOUT, `sessions.fork ${source}`);
      assert.match(r.sessionId, /^[0-9a-f-]{36}$/, `fork of ${source}: ${JSON.stringify(r)}`);
      assert.notEqual(r.sessionId, source);
      assert.deepEqual(ownersOf(r.sessionId, clis), [node], `fork ${r.sessionId} of ${source} (on ${node})`);
      forks.push({ id: r.sessionId, source, node });
    }
    for (const cli of clis) assert.ok(forks.some((f) => f.node === cli.name), `no fork on ${cli.name}`);
    const offRing = ringOwners(configPath, forks.map((f) => f.id)).filter(([id, ringNode]) => forks.find((f) => f.id === id).node !== ringNode);
    assert.ok(offRing.length > 0, 'every fork sits on its ring owner: the pin would go untested');
    const afterForks = await discoveries();
    assert.equal(afterForks, atStart, 'forking pinned sessions searched the fleet for an owner');
    await resumeAll(target, forks.map((f) => f.id));
    const afterResumes = await discoveries();
    assert.equal(afterResumes, afterForks,
      `resuming ${forks.length} forks (${offRing.length} off their ring owner) searched the fleet: the forks were not pinned`);
    // Control, so that "did not move" means something: a session the proxy never saw, made
    // straight on a node that is not its ring owner, is found only by a fleet-wide search.
    const stray = '5e55c0de-0088-4000-8000-000000000000';
    const [[, strayRing]] = ringOwners(configPath, [stray]);
    const elsewhere = clis.find((cli) => cli.name !== strayRing);
    const direct = await newClient(elsewhere.addr);
    try { await createAndSend(direct, stray); } finally { await closeClient(direct); }
    await resumeAll(target, [stray]);
    assert.equal(await discoveries(), afterResumes + 1, `resuming ${stray} (on ${elsewhere.name}, ring owner ${strayRing}) through the proxy: one owner search`);
  }));

  it('sessions.bulkDelete over three nodes deletes exactly the sessions named, each on its node', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    // 2 new sessions per node, by ring owner (where a create goes while every node is up)
    const candidates = Array.from({ length: 48 }, (_, i) => `5e55c0de-0077-4000-8000-${String(i).padStart(12, '0')}`);
    const routed = ringOwners(configPath, candidates);
    const doomed = clis.flatMap((cli) => routed.filter(([, node]) => node === cli.name).slice(0, 2).map(([id]) => id));
    assert.equal(doomed.length, 6, `2 candidates per node: ${JSON.stringify(routed)}`);
    const c = await newClient(target);
    try {
      for (const id of doomed) await createAndSend(c, id);
      for (const [id, node] of routed.filter(([id]) => doomed.includes(id))) {
        assert.deepEqual(ownersOf(id, clis), [node], `${id} before bulkDelete`);
      }
      const r = await withTimeout(c.rpc.sessions.bulkDelete({ sessionIds: doomed }), RPC_TIMEOUT, 'sessions.bulkDelete');
      assert.deepEqual(Object.keys(r.freedBytes ?? {}).sort(), [...doomed].sort(), `freedBytes: ${JSON.stringify(r)}`);
      for (const id of doomed) assert.ok(r.freedBytes[id] > 0, `freedBytes[${id}] = ${r.freedBytes[id]}`);
    } finally {
      await closeClient(c);
    }
    for (const id of doomed) assert.deepEqual(ownersOf(id, clis), [], `${id} still on disk after bulkDelete`);
    for (const id of [...SESSION_IDS, ...forks.map((f) => f.id)]) {
      assert.equal(ownersOf(id, clis).length, 1, `${id}, not named in bulkDelete, is gone: on ${ownersOf(id, clis)}`);
    }
  }));

  it('`sessiongate methods` lists every method the SDK can send', { timeout: TEST_TIMEOUT }, withGateLog(() => gate, async (t) => {
    if (DIRECT && !fs.existsSync(SG_BIN)) { t.skip(`no sessiongate binary at ${SG_BIN}`); return; }
    const sdk = sdkClientMethods();
    // the extraction works: both sides of the SDK's own API, no server-to-client method
    for (const m of ['ping', 'connect', 'session.create', 'session.send', 'sessions.fork', 'sessions.bulkDelete']) assert.ok(sdk.has(m), `SDK extraction lacks ${m}`);
    for (const m of ['sessionFs.readFile', 'providerToken.getToken', 'llmInference.httpRequestStart']) assert.ok(!sdk.has(m), `SDK extraction took server-to-client ${m}`);
    const lines = execFileSync(SG_BIN, ['methods'], { encoding: 'utf8' }).trim().split('\n');
    const table = new Map(lines.map((l) => { const [name, cls, ...rest] = l.split('\t'); assert.ok(name && cls && rest.length === 0, `bad line: ${JSON.stringify(l)}`); return [name, cls]; }));
    assert.equal(table.size, lines.length, 'a method is listed twice');
    for (const [name, cls] of table) assert.notEqual(cls, 'unknown', `${name} listed as unknown`);
    const missing = [...sdk].filter((m) => !table.has(m)).sort();
    assert.deepEqual(missing, [], `${missing.length} of the SDK's ${sdk.size} methods are not in the table (so never replayed, routed by guess)`);
    t.diagnostic(`${sdk.size} SDK methods, ${table.size} in the table`);
  }));

  it('resuming on a server that lacks the session fails with "Session not found"', { skip: DIRECT ? false : 'direct mode only', timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const c = await newClient(clis[1].addr);
    try {
      await assert.rejects(withTimeout(c.resumeSession(SESSION_IDS[0], { onPermissionRequest: approveAll }), RPC_TIMEOUT, 'session.resume'), (e) => {
        assert.equal(e.code, -32603);
        assert.match(e.message, new RegExp(`Session not found: ${SESSION_IDS[0]}`));
        return true;
      });
    } finally {
      await closeClient(c);
    }
  }));

  it('a reload that adds a 4th node keeps every session resumable', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const before4 = Object.fromEntries(SESSION_IDS.map((id) => [id, ownersOf(id, clis)[0]]));
    clis.push(await startCli('cli-4', root));
    await fsp.writeFile(configPath, gateConfigYaml(clis));
    gate.proc.kill('SIGHUP');
    await until('admin ring to list 4 upstreams', async () => (await ringUpstreams(gate)).length === 4);
    await resumeAll(target, SESSION_IDS);
    const after4 = Object.fromEntries(SESSION_IDS.map((id) => [id, ownersOf(id, clis)]));
    for (const id of SESSION_IDS) assert.deepEqual(after4[id], [before4[id]], `${id} moved or was duplicated`);
  }));

  it('a restarted proxy still resumes every session', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    if (creator) { await closeClient(creator); creator = null; }
    await stopProc(gate.proc, 'SIGTERM', 10_000);
    gate = await startGate(configPath, root, 'b');
    target = gate.cliAddr;
    await resumeAll(target, SESSION_IDS);
  }));

  it('a killed CLI node yields -32001 naming the session; other nodes keep working', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const victim = clis.find((c) => SESSION_IDS.some((id) => ownersOf(id, [c]).length));
    const onVictim = SESSION_IDS.filter((id) => ownersOf(id, [victim]).length);
    const elsewhere = SESSION_IDS.filter((id) => !onVictim.includes(id));
    await stopProc(victim.proc, 'SIGKILL');
    const c = await newClient(target);
    try {
      const id = onVictim[0];
      let lastErr;
      await until(`-32001 for ${id} on dead ${victim.name}`, async () => {
        try {
          await withTimeout(c.resumeSession(id, { onPermissionRequest: approveAll }), 5000, `session.resume ${id}`);
          lastErr = new Error('resume unexpectedly succeeded');
          return false;
        } catch (e) {
          lastErr = e;
          return e.code === -32001;
        }
      }, { timeoutMs: 10_000, everyMs: 300 }).catch((e) => { throw new Error(`${e.message}; last error: code=${lastErr?.code} ${lastErr?.message}`); });
      assert.ok(lastErr.message.includes(id), `message does not name the session: ${lastErr.message}`);
      assert.match(lastErr.message, /unavailable/i);
      for (const other of elsewhere) await resumeAndRead(c, other);
    } finally {
      await closeClient(c);
    }
  }));

  it('a killed CLI node is marked unhealthy and new sessions are created on the others', { skip: proxyOnly, timeout: TEST_TIMEOUT }, withGateLog(() => gate, async () => {
    const upstreams = async () => JSON.parse((await adminGet(gate, '/admin/upstreams')).text).upstreams;
    await until('the killed node to be marked unhealthy', async () => (await upstreams()).some((u) => !u.healthy), { timeoutMs: 10_000, everyMs: 200 });
    const dead = (await upstreams()).filter((u) => !u.healthy).map((u) => u.name);
    assert.equal(dead.length, 1, `exactly the killed node is down: ${dead}`);
    // Pick new ids whose ring owner (health ignored, offline `sessiongate route`) is the dead
    // node, plus some that are not: both kinds must be created without error on live nodes.
    const candidates = Array.from({ length: 64 }, (_, i) => `5e55c0de-0099-4000-8000-${String(i).padStart(12, '0')}`);
    const routed = ringOwners(configPath, candidates);
    const ownedByDead = routed.filter(([, name]) => name === dead[0]).map(([id]) => id).slice(0, 4);
    const others = routed.filter(([, name]) => name !== dead[0]).map(([id]) => id).slice(0, 4);
    assert.ok(ownedByDead.length > 0, 'some candidate ids hash onto the dead node');
    const c = await newClient(target);
    try {
      for (const id of [...ownedByDead, ...others]) await createAndSend(c, id);
    } finally {
      await closeClient(c);
    }
    for (const id of [...ownedByDead, ...others]) {
      const owners = ownersOf(id, clis);
      assert.equal(owners.length, 1, `${id} lives on exactly one node: ${owners}`);
      assert.notEqual(owners[0], dead[0], `${id} was placed on the dead node`);
    }
  }));
});

// ───────────────────────────── 5. ownership: two users, two tokens ─────────────────────────────
//
// Its own fleet and proxy: 3 CLI servers that require a node connection token
// (COPILOT_CONNECTION_TOKEN, as the SDK sets it for the servers it spawns), and a sessiongate with
// `identities:` (a tokens file of two users) whose listener requires a token, and whose pool sends
// the nodes their own token (`token_env`). Alice (token A) makes sessions; Bob (token B) may not
// resume, read, send to, re-create, fork, delete or prune them, and his lists never show them.

const OWN_POOL_TOKEN_ENV = 'SESSIONGATE_INTEROP_NODE_TOKEN';
const sha256hex = (text) => crypto.createHash('sha256').update(text).digest('hex');

/** Config of the ownership proxy: token identities required on `cli`, node token from the env. */
function ownershipConfigYaml(clis, tokensFile) {
  return gateConfigYaml(clis, {
    top: ['identities:', `  tokens_file: ${tokensFile}`],
    listener: ['    identity: { from: [token], required: true }'],
    pool: [`    token_env: ${OWN_POOL_TOKEN_ENV}`],
  });
}

/** A client presenting `connectionToken` (none when undefined) in `connect`. */
async function newClientWithToken(addr, connectionToken) {
  const c = new CopilotClient({ connection: RuntimeConnection.forUri(addr, connectionToken === undefined ? {} : { connectionToken }) });
  clients.add(c);
  try {
    await withTimeout(c.start(), RPC_TIMEOUT, `connect to ${addr}`);
  } catch (e) {
    await closeClient(c);
    throw e;
  }
  return c;
}

/** A request the SDK has no public call for from this client (no session handle): raw. */
function rawRequest(client, method, params) {
  return withTimeout(client.connection.sendRequest(method, params), RPC_TIMEOUT, method);
}

/** `promise` fails with JSON-RPC -32003 whose message names `sessionId` (when given). */
async function assertForbidden(promise, what, sessionId) {
  await assert.rejects(withTimeout(promise, RPC_TIMEOUT, what), (e) => {
    assert.equal(e.code, -32003, `${what}: expected -32003, got code ${e.code}: ${e.message}`);
    assert.match(e.message, /another user/, `${what}: ${e.message}`);
    if (sessionId) assert.ok(e.message.includes(sessionId), `${what}: message does not name ${sessionId}: ${e.message}`);
    return true;
  }, `${what} succeeded`);
}

let ownBlocker = null;
function ownTest(getGate, fn, { critical = false } = {}) {
  return async (t, ...rest) => {
    if (ownBlocker) { t.skip(`blocked by earlier failure: ${ownBlocker}`); return; }
    try {
      return await fn(t, ...rest);
    } catch (e) {
      if (critical) ownBlocker = e.message.split('\n')[0].slice(0, 200);
      const out = getGate()?.proc?.output;
      if (out) e.message += `\n--- last sessiongate log lines ---\n${gateLogTail(out)}`;
      throw e;
    }
  };
}

describe('sessiongate interop, ownership: two SDK clients with different connection tokens', { skip: DIRECT ? 'proxy mode only (INTEROP_DIRECT=1)' : false, timeout: 180_000 }, () => {
  const TOKEN_A = `alice-${crypto.randomBytes(16).toString('hex')}`;
  const TOKEN_B = `bob-${crypto.randomBytes(16).toString('hex')}`;
  const NODE_TOKEN = `node-${crypto.randomBytes(16).toString('hex')}`;
  let root;
  const clis = [];
  let configPath;
  let gate;
  let alice;            // Alice's client (token A), connected through the proxy
  let bob;              // Bob's client (token B)
  let aliceIds = [];    // Alice's sessions, 2 per node by ring owner
  let aliceFork;        // a fork Alice made of one of them
  const BOB_ID = '5e55c0de-00b0-4000-8000-000000000001';
  const BOB_SPARE = '5e55c0de-00b0-4000-8000-000000000002';

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-interop-owners-'));
    const started = await Promise.all([1, 2, 3].map((i) => startCli(`cli-${i}`, root, { COPILOT_CONNECTION_TOKEN: NODE_TOKEN })));
    clis.push(...started);
    const tokensFile = path.join(root, 'tokens.yaml');
    await fsp.writeFile(tokensFile, [
      `- { sha256: ${sha256hex(TOKEN_A)}, user: alice, tenant: acme }`,
      `- { sha256: ${sha256hex(TOKEN_B)}, user: bob, tenant: acme }`,
      '',
    ].join('\n'));
    configPath = path.join(root, 'sessiongate.yaml');
    await fsp.writeFile(configPath, ownershipConfigYaml(clis, tokensFile));
    gate = await startGate(configPath, root, 'owners', { [OWN_POOL_TOKEN_ENV]: NODE_TOKEN });
  });

  after(async () => {
    for (const c of [...clients]) await closeClient(c);
    await stopProc(gate?.proc);
    await Promise.all(clis.map((c) => stopProc(c.proc)));
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  it('the CLIs take only the node token: straight at a CLI, the clients\' tokens and none are refused', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async (t) => {
    for (const [what, token] of [['token A', TOKEN_A], ['token B', TOKEN_B], ['no token', undefined]]) {
      await assert.rejects(newClientWithToken(clis[0].addr, token), (e) => {
        t.diagnostic(`CLI direct, ${what}: code ${e.code}: ${e.message.split('\n')[0]}`);
        // the CLI's own refusal (the proxy's says why: "unknown token", "an identity is required")
        assert.equal(e.code, -32002, `${what}: code ${e.code}: ${e.message}`);
        assert.match(e.message, /AUTHENTICATION_FAILED/, `${what}: ${e.message}`);
        return true;
      }, `a CLI requiring the node token accepted ${what}`);
    }
    const c = await newClientWithToken(clis[0].addr, NODE_TOKEN);
    try {
      assert.equal((await withTimeout(c.ping('node'), RPC_TIMEOUT, 'ping')).message, 'pong: node');
    } finally {
      await closeClient(c);
    }
  }, { critical: true }));

  it('through the proxy: no token and an unknown token are refused at connect with -32002', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async (t) => {
    for (const [what, token, why] of [['no token', undefined, /identity is required/], ['an unknown token', `mallory-${crypto.randomBytes(8).toString('hex')}`, /unknown token/]]) {
      await assert.rejects(newClientWithToken(gate.cliAddr, token), (e) => {
        t.diagnostic(`proxy, ${what}: code ${e.code}: ${e.message.split('\n')[0]}`);
        assert.equal(e.code, -32002, `${what}: code ${e.code}: ${e.message}`);
        assert.match(e.message, why, `${what}: ${e.message}`);
        return true;
      }, `the proxy let a client with ${what} connect`);
    }
  }));

  it('Alice (token A) connects through the proxy and creates sessions on all three nodes', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    // The CLIs refuse token A (previous test): that this works means they got the node token.
    alice = await newClientWithToken(gate.cliAddr, TOKEN_A);
    const candidates = Array.from({ length: 48 }, (_, i) => `5e55c0de-00a0-4000-8000-${String(i).padStart(12, '0')}`);
    const routed = ringOwners(configPath, candidates, { [OWN_POOL_TOKEN_ENV]: NODE_TOKEN });
    aliceIds = clis.flatMap((cli) => routed.filter(([, node]) => node === cli.name).slice(0, 2).map(([id]) => id));
    assert.equal(aliceIds.length, 6, `2 candidates per node: ${JSON.stringify(routed)}`);
    for (const id of aliceIds) await createAndSend(alice, id);
    for (const id of aliceIds) assert.equal(ownersOf(id, clis).length, 1, `${id} on ${ownersOf(id, clis)}`);
    for (const cli of clis) assert.ok(aliceIds.some((id) => ownersOf(id, [cli]).length), `no session of Alice's on ${cli.name}`);
    const r = await withTimeout(alice.rpc.sessions.fork({ sessionId: aliceIds[0] }), RPC_TIMEOUT, 'sessions.fork (Alice, own session)');
    aliceFork = r.sessionId;
    assert.deepEqual(ownersOf(aliceFork, clis), ownersOf(aliceIds[0], clis), `Alice's fork ${aliceFork}`);
  }, { critical: true }));

  it('Bob (token B) connects and makes his own sessions', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    bob = await newClientWithToken(gate.cliAddr, TOKEN_B);
    await createAndSend(bob, BOB_ID);
    await createAndSend(bob, BOB_SPARE);
  }, { critical: true }));

  it('Bob cannot resume, read, send to, or look up Alice\'s sessions: -32003 each', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    for (const id of [...aliceIds, aliceFork]) {
      await assertForbidden(bob.resumeSession(id, { onPermissionRequest: approveAll }), `session.resume ${id} (Bob)`, id);
      await assertForbidden(rawRequest(bob, 'session.getMessages', { sessionId: id }), `session.getMessages ${id} (Bob)`, id);
      await assertForbidden(rawRequest(bob, 'session.send', { sessionId: id, prompt: 'from bob' }), `session.send ${id} (Bob)`, id);
      await assertForbidden(bob.getSessionMetadata(id), `session.getMetadata ${id} (Bob)`, id);
    }
  }));

  it('Bob cannot re-create Alice\'s session ids, fork them, or delete them', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    for (const id of aliceIds) {
      await assertForbidden(bob.createSession({ sessionId: id, onPermissionRequest: approveAll }), `session.create ${id} (Bob)`, id);
      await assertForbidden(bob.rpc.sessions.fork({ sessionId: id }), `sessions.fork ${id} (Bob)`, id);
      await assertForbidden(bob.deleteSession(id), `session.delete ${id} (Bob)`, id);
    }
    // all of Alice's: the whole request is refused, naming them
    await assert.rejects(withTimeout(bob.rpc.sessions.bulkDelete({ sessionIds: [...aliceIds, aliceFork] }), RPC_TIMEOUT, 'sessions.bulkDelete (Bob)'), (e) => {
      assert.equal(e.code, -32003, `bulkDelete of Alice's sessions: code ${e.code}: ${e.message}`);
      assert.deepEqual([...(e.data?.refusedSessionIds ?? [])].sort(), [...aliceIds, aliceFork].sort(), `refusedSessionIds: ${JSON.stringify(e.data)}`);
      return true;
    });
    // Bob's own among Alice's: only his goes
    const r = await withTimeout(bob.rpc.sessions.bulkDelete({ sessionIds: [aliceIds[1], BOB_SPARE, aliceIds[3]] }), RPC_TIMEOUT, 'sessions.bulkDelete (Bob, mixed)');
    assert.deepEqual(Object.keys(r.freedBytes ?? {}), [BOB_SPARE], `mixed bulkDelete: ${JSON.stringify(r)}`);
    assert.ok(r.freedBytes[BOB_SPARE] > 0, `freedBytes: ${JSON.stringify(r)}`);
    assert.deepEqual([...(r.refusedSessionIds ?? [])].sort(), [aliceIds[1], aliceIds[3]].sort(), `mixed bulkDelete names Alice's as refused: ${JSON.stringify(r)}`);
    assert.deepEqual(ownersOf(BOB_SPARE, clis), [], `${BOB_SPARE} (Bob's) still on disk after Bob's bulkDelete`);
  }));

  it('Bob\'s lists show none of Alice\'s sessions; Alice\'s show all of hers and none of his', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    const alices = [...aliceIds, aliceFork];
    const bobList = (await withTimeout(bob.listSessions(), RPC_TIMEOUT, 'session.list (Bob)')).map((s) => s.sessionId);
    const bobRpcList = (await withTimeout(bob.rpc.sessions.list({}), RPC_TIMEOUT, 'sessions.list (Bob)')).sessions.map((s) => s.sessionId);
    for (const [what, ids] of [['listSessions', bobList], ['sessions.list', bobRpcList]]) {
      assert.deepEqual(ids, [BOB_ID], `Bob's ${what}: ${JSON.stringify(ids)}`);
    }
    const last = await withTimeout(bob.getLastSessionId(), RPC_TIMEOUT, 'session.getLastId (Bob)');
    assert.equal(last, BOB_ID, `Bob's last session`);
    const dry = await withTimeout(bob.rpc.sessions.pruneOld({ olderThanDays: 0, dryRun: true }), RPC_TIMEOUT, 'sessions.pruneOld dry run (Bob)');
    assert.deepEqual(dry.candidates, [BOB_ID], `Bob's pruneOld candidates: ${JSON.stringify(dry)}`);
    const aliceList = (await withTimeout(alice.listSessions(), RPC_TIMEOUT, 'session.list (Alice)')).map((s) => s.sessionId);
    const aliceRpcList = (await withTimeout(alice.rpc.sessions.list({}), RPC_TIMEOUT, 'sessions.list (Alice)')).sessions.map((s) => s.sessionId);
    for (const [what, ids] of [['listSessions', aliceList], ['sessions.list', aliceRpcList]]) {
      assert.deepEqual([...ids].sort(), [...alices].sort(), `Alice's ${what}: ${JSON.stringify(ids)}`);
    }
    const aliceLast = await withTimeout(alice.getLastSessionId(), RPC_TIMEOUT, 'session.getLastId (Alice)');
    assert.ok(alices.includes(aliceLast), `Alice's last session ${aliceLast} is not hers`);
  }));

  it('Bob\'s pruneOld (not a dry run) deletes only his; Alice\'s sessions are all on disk and hers to resume', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    const r = await withTimeout(bob.rpc.sessions.pruneOld({ olderThanDays: 0 }), RPC_TIMEOUT, 'sessions.pruneOld (Bob)');
    assert.deepEqual(r.deleted, [BOB_ID], `Bob's pruneOld: ${JSON.stringify(r)}`);
    assert.deepEqual(ownersOf(BOB_ID, clis), [], `${BOB_ID} (Bob's) still on disk after his pruneOld`);
    // Bob has no session left: the last one is none, not one of Alice's
    const last = await withTimeout(bob.getLastSessionId(), RPC_TIMEOUT, 'session.getLastId (Bob, none left)');
    assert.equal(last, undefined, `Bob's last session, with none of his own left`);
    assert.deepEqual((await withTimeout(bob.listSessions(), RPC_TIMEOUT, 'session.list (Bob, none left)')), [], 'Bob\'s listSessions with none of his own left');
    for (const id of [...aliceIds, aliceFork]) {
      assert.equal(ownersOf(id, clis).length, 1, `Alice's ${id} after Bob's attempts: on ${ownersOf(id, clis)}`);
    }
    // a fresh client of Alice's (same token, new connection) resumes and reads every one
    const again = await newClientWithToken(gate.cliAddr, TOKEN_A);
    try {
      for (const id of aliceIds) await resumeAndRead(again, id);
      const fork = await withTimeout(again.resumeSession(aliceFork, { onPermissionRequest: approveAll }), RPC_TIMEOUT, `session.resume ${aliceFork}`);
      assert.equal(fork.sessionId, aliceFork);
    } finally {
      await closeClient(again);
    }
  }));

  it('no client token reached a CLI or the logs', { timeout: TEST_TIMEOUT }, ownTest(() => gate, async () => {
    for (const cli of clis) {
      const out = cli.proc.output;
      for (const [what, token] of [['token A', TOKEN_A], ['token B', TOKEN_B]]) assert.ok(!out.includes(token), `${cli.name}'s output contains ${what}`);
    }
    for (const token of [TOKEN_A, TOKEN_B, NODE_TOKEN]) assert.ok(!gate.proc.output.includes(token), 'the proxy logged a token');
  }));
});

// ───────────────────────────── 6. fleet cleanup: POST /admin/cleanup ─────────────────────────────
//
// Its own fleet and proxy: 3 CLI servers and a sessiongate whose pool has
// `cleanup: { older_than: 0s, every: 1000h, ... }` (the scheduled round would come at a random point
// of the first 1000 h: never during the test). Sessions made through the proxy are pinned there and
// passed to each node's `sessions.pruneOld` as `excludeSessionIds`; sessions made straight on a node
// are not, and with `older_than: 0s` every one of those (that ever had a message) is old.

/** Config of the cleanup proxy: the pool runs `sessions.pruneOld` fleet-wide. */
function cleanupConfigYaml(clis) {
  return gateConfigYaml(clis, {
    pool: ['    cleanup: { older_than: 0s, every: 1000h, dry_run: false, include_named: false }'],
  });
}

async function adminPost(gate, pathAndQuery) {
  const res = await fetch(`http://${gate.adminAddr}${pathAndQuery}`, { method: 'POST' });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { /* not JSON: the status check reports the text */ }
  return { status: res.status, text, json };
}

let cleanBlocker = null;
function cleanTest(getGate, fn, { critical = false } = {}) {
  return async (t, ...rest) => {
    if (cleanBlocker) { t.skip(`blocked by earlier failure: ${cleanBlocker}`); return; }
    try {
      return await fn(t, ...rest);
    } catch (e) {
      if (critical) cleanBlocker = e.message.split('\n')[0].slice(0, 200);
      const out = getGate()?.proc?.output;
      if (out) e.message += `\n--- last sessiongate log lines ---\n${gateLogTail(out)}`;
      throw e;
    }
  };
}

describe('sessiongate interop, fleet cleanup', { skip: DIRECT ? 'proxy mode only (INTEROP_DIRECT=1)' : false, timeout: 180_000 }, () => {
  let root;
  const clis = [];
  let configPath;
  let gate;
  let pinned = [];      // [[id, node]]: made through the proxy, one per node (by ring owner)
  const direct = [];    // [[id, node]]: made straight on each node, never seen by the proxy
  const sorted = (a) => [...a].sort();

  before(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-interop-cleanup-'));
    const started = await Promise.all([1, 2, 3].map((i) => startCli(`cli-${i}`, root)));
    clis.push(...started);
    configPath = path.join(root, 'sessiongate.yaml');
    await fsp.writeFile(configPath, cleanupConfigYaml(clis));
    gate = await startGate(configPath, root, 'cleanup');
  });

  after(async () => {
    for (const c of [...clients]) await closeClient(c);
    await stopProc(gate?.proc);
    await Promise.all(clis.map((c) => stopProc(c.proc)));
    if (root && !KEEP) await fsp.rm(root, { recursive: true, force: true });
    else if (root) console.log(`# kept ${root}`);
  });

  it('sessions through the proxy (pinned), one per node, and one straight on each node (not)', { timeout: TEST_TIMEOUT }, cleanTest(() => gate, async () => {
    const candidates = Array.from({ length: 24 }, (_, i) => `5e55c0de-00c1-4000-8000-${String(i).padStart(12, '0')}`);
    const routed = ringOwners(configPath, candidates);
    pinned = clis.map((cli) => routed.find(([, node]) => node === cli.name)).filter(Boolean);
    assert.equal(pinned.length, 3, `a candidate per node: ${JSON.stringify(routed)}`);
    const viaProxy = await newClient(gate.cliAddr);
    try {
      for (const [id] of pinned) await createAndSend(viaProxy, id);
    } finally {
      await closeClient(viaProxy);
    }
    for (const [id, node] of pinned) assert.deepEqual(ownersOf(id, clis), [node], `${id} (through the proxy)`);
    for (const [i, cli] of clis.entries()) {
      const id = `5e55c0de-00c2-4000-8000-${String(i).padStart(12, '0')}`;
      const c = await newClient(cli.addr);
      try { await createAndSend(c, id); } finally { await closeClient(c); }
      assert.deepEqual(ownersOf(id, clis), [cli.name], `${id} (straight on ${cli.name})`);
      direct.push([id, cli.name]);
    }
  }, { critical: true }));

  it('POST /admin/cleanup dry run: candidates are exactly the direct sessions, from every node; nothing deleted', { timeout: TEST_TIMEOUT }, cleanTest(() => gate, async (t) => {
    const { status, text, json: r } = await adminPost(gate, `/admin/cleanup?pool=${POOL}&dry_run=true`);
    assert.equal(status, 200, `/admin/cleanup dry run answered ${status}: ${text.slice(0, 500)}`);
    t.diagnostic(`dry run report: ${JSON.stringify(r)}`);
    assert.equal(r.dry_run, true, `dry_run: ${text}`);
    assert.equal(r.older_than_days, 0, `older_than_days: ${text}`);
    assert.equal(r.failed, 0, `failed: ${text}`);
    assert.equal(r.sessions, direct.length, `sessions: ${text}`);
    assert.ok(r.freed_bytes > 0, `freed_bytes of the candidates: ${text}`);
    assert.deepEqual(sorted(r.nodes.map((n) => n.upstream)), sorted(clis.map((c) => c.name)), `nodes: ${text}`);
    for (const [id, node] of direct) {
      const n = r.nodes.find((x) => x.upstream === node);
      assert.equal(n.error, null, `${node}: ${JSON.stringify(n)}`);
      assert.deepEqual(n.candidates, [id], `${node}'s candidates: ${JSON.stringify(n)}`);
      assert.deepEqual(n.deleted, [], `${node} deleted on a dry run: ${JSON.stringify(n)}`);
    }
    const all = r.nodes.flatMap((n) => [...n.candidates, ...n.deleted]);
    for (const [id] of pinned) assert.ok(!all.includes(id), `pinned ${id} is a candidate: ${text}`);
    for (const [id, node] of [...pinned, ...direct]) assert.deepEqual(ownersOf(id, clis), [node], `${id} after a dry run`);
    assert.equal(await metricSum(gate, 'sessiongate_cleanup_deleted_sessions_total'), 0, 'a dry run counted deletions');
    // Control, so that "not a candidate" means excluded by the proxy, not ineligible: the node's own
    // dry run, asked straight (no excludeSessionIds), names its pinned session as well.
    for (const cli of clis) {
      const c = await newClient(cli.addr);
      try {
        const own = await withTimeout(c.rpc.sessions.pruneOld({ olderThanDays: 0, dryRun: true }), RPC_TIMEOUT, `sessions.pruneOld dry run straight on ${cli.name}`);
        const want = [...pinned, ...direct].filter(([, node]) => node === cli.name).map(([id]) => id);
        assert.deepEqual(sorted(own.candidates), sorted(want), `${cli.name}'s own dry run: ${JSON.stringify(own)}`);
      } finally {
        await closeClient(c);
      }
    }
  }));

  it('POST /admin/cleanup deletes the direct sessions on every node; the pinned ones stay and resume', { timeout: TEST_TIMEOUT }, cleanTest(() => gate, async (t) => {
    const { status, text, json: r } = await adminPost(gate, `/admin/cleanup?pool=${POOL}`);
    assert.equal(status, 200, `/admin/cleanup answered ${status}: ${text.slice(0, 500)}`);
    t.diagnostic(`round report: ${JSON.stringify(r)}`);
    assert.equal(r.dry_run, false, `dry_run: ${text}`);
    assert.equal(r.failed, 0, `failed: ${text}`);
    assert.equal(r.sessions, direct.length, `sessions: ${text}`);
    assert.ok(r.freed_bytes > 0, `freed_bytes: ${text}`);
    for (const [id, node] of direct) {
      const n = r.nodes.find((x) => x.upstream === node);
      assert.equal(n.error, null, `${node}: ${JSON.stringify(n)}`);
      assert.deepEqual(n.deleted, [id], `${node}'s deleted: ${JSON.stringify(n)}`);
      assert.ok(n.freed_bytes > 0, `${node}'s freed_bytes: ${JSON.stringify(n)}`);
      assert.deepEqual(ownersOf(id, clis), [], `${id} still on ${node}'s disk after the round`);
    }
    for (const [id, node] of pinned) assert.deepEqual(ownersOf(id, clis), [node], `pinned ${id} after the round`);
    assert.equal(await metricSum(gate, 'sessiongate_cleanup_deleted_sessions_total'), direct.length, 'sessiongate_cleanup_deleted_sessions_total');
    assert.equal(await metricSum(gate, 'sessiongate_cleanup_freed_bytes_total'), r.freed_bytes, 'sessiongate_cleanup_freed_bytes_total');
    await resumeAll(gate.cliAddr, pinned.map(([id]) => id));
  }));
});
