// shared_probe.mjs: how real headless Copilot CLIs behave when they share ONE session-state directory
// (the scaling guide's "shared storage" alternative to sticky routing). Standalone, no proxy:
//
//   node tests/interop/shared_probe.mjs          (from anywhere; ~1-2 min; prints a JSON report)
//
// What it shows (real @github/copilot CLI + real @github/copilot-sdk, loopback only):
//   - setup: the CLI resolves its session-state dir as <configDir | $COPILOT_HOME | ~/.copilot>/session-state
//     (no dedicated env var); each CLI gets its own HOME and COPILOT_HOME, and
//     $COPILOT_HOME/session-state is a symlink to one shared directory.
//   - A creates + sends; B resumes the same session while A is alive (raw wire answer of
//     session.resume, the session.resume event's alreadyInUse, whether B takes a send);
//     release of B's hold (session.detach, connection close); A is SIGKILLed (stale lock?); B resumes
//     again and sees A's events; a new CLI C resumes while B holds it; B exits gracefully; C again.
//   - after every step: the session folder's tree (file names, lock file contents), the CLI pids,
//     and sessions.checkInUse as seen from every live CLI.
//
// Environment: COPILOT_CLI_BIN (CLI binary), PROBE_PKG_CACHE (COPILOT_PKG_CACHE_HOME shared by the
// CLIs; default a dir in the temp root), PROBE_KEEP=1 (keep the temp root), PROBE_OUT (write the
// JSON report there too).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { CopilotClient, RuntimeConnection, approveAll } from '@github/copilot-sdk';
import { CLI_BIN, freePort, sleep, until, withTimeout } from './lib.mjs';

const KEEP = process.env.PROBE_KEEP === '1';
const T0 = Date.now();
const log = (...a) => console.error(`[${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);

// ───────────── process helpers (process groups: SIGKILL must reach the CLI's whole tree) ─────────────

const children = new Set();
function killAllSync() {
  for (const c of children) { try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ } }
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAllSync(); process.exit(130); });


/** All pids whose process group is pgid (the CLI binary and whatever it spawned). */
function groupPids(pgid) {
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state ppid pgrp ...
      if (Number(f[2]) === pgid && f[0] !== 'Z') out.push(Number(d));
    } catch { /* raced */ }
  }
  return out.sort((a, b) => a - b);
}

/**
 * One headless CLI with its own HOME and COPILOT_HOME; $COPILOT_HOME/session-state is a symlink to
 * the shared dir. Spawned detached (own process group) so SIGKILL reaches the whole tree.
 */
async function startCli(name, root, shared, pkgCache) {
  const base = path.join(root, name);
  const home = path.join(base, 'home');          // HOME
  const copilotHome = path.join(base, 'copilot'); // COPILOT_HOME
  const cwd = path.join(base, 'cwd');
  for (const d of [home, copilotHome, cwd]) await fsp.mkdir(d, { recursive: true });
  await fsp.symlink(shared, path.join(copilotHome, 'session-state'));
  const env = { ...process.env, HOME: home, COPILOT_HOME: copilotHome, COPILOT_PKG_CACHE_HOME: pkgCache };
  for (const k of ['COPILOT_CONNECTION_TOKEN', 'COPILOT_GITHUB_TOKEN', 'GH_TOKEN', 'GITHUB_TOKEN', 'XDG_STATE_HOME', 'XDG_CONFIG_HOME']) delete env[k];
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = spawn(CLI_BIN, ['--headless', '--port', String(port), '--no-auto-login'],
      { env, cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    children.add(proc);
    proc.output = '';
    const logf = fs.createWriteStream(path.join(base, 'cli.out'), { flags: 'a' });
    const onData = (d) => { proc.output += d.toString(); logf.write(d); };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.exited = new Promise((r) => proc.on('exit', (code, signal) => { children.delete(proc); logf.end(); r({ code, signal }); }));
    const ready = await Promise.race([
      until(`${name} ready`, () => /CLI server listening on port \d+/.test(proc.output), { timeoutMs: 60_000, everyMs: 50 }).then(() => true),
      proc.exited.then(() => false),
    ]);
    if (ready) return { name, port, home, copilotHome, proc, pgid: proc.pid };
    if (/Address already in use/.test(proc.output) && attempt < 5) continue;
    throw new Error(`${name} failed to start:\n${proc.output}`);
  }
}
async function killGroup(cli, signal) {
  const pids = groupPids(cli.pgid);
  try { process.kill(-cli.pgid, signal); } catch { /* gone */ }
  const t = setTimeout(() => { try { process.kill(-cli.pgid, 'SIGKILL'); } catch { /* gone */ } }, 8000);
  const ex = await cli.proc.exited;
  await until(`${cli.name} group gone`, () => groupPids(cli.pgid).length === 0, { timeoutMs: 10_000, everyMs: 100 }).catch(() => {});
  clearTimeout(t);
  cli.dead = true;
  return { signal, pidsBefore: pids, exit: ex, leftover: groupPids(cli.pgid) };
}

// ───────────── raw JSON-RPC client (Content-Length framing, like LSP) ─────────────

class RawClient {
  constructor(name) { this.name = name; this.nextId = 1; this.pending = new Map(); this.notes = []; this.serverRequests = []; this.buf = Buffer.alloc(0); }
  open(port) {
    return new Promise((resolve, reject) => {
      this.sock = net.connect({ host: '127.0.0.1', port }, resolve);
      this.sock.on('error', reject);
      this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.#drain(); });
    });
  }
  #drain() {
    for (;;) {
      const sep = this.buf.indexOf('\r\n\r\n');
      if (sep < 0) return;
      const m = /content-length:\s*(\d+)/i.exec(this.buf.slice(0, sep).toString());
      const len = Number(m?.[1] ?? 0);
      if (this.buf.length < sep + 4 + len) return;
      const msg = JSON.parse(this.buf.slice(sep + 4, sep + 4 + len).toString());
      this.buf = this.buf.slice(sep + 4 + len);
      if (msg.method && msg.id !== undefined) { // server -> client request: refuse, keep a record
        this.serverRequests.push(msg);
        this.#write({ jsonrpc: '2.0', id: msg.id, error: { code: -32601, message: 'raw probe client' } });
      } else if (msg.method) {
        this.notes.push(msg);
      } else {
        const p = this.pending.get(msg.id);
        if (p) { this.pending.delete(msg.id); Object.defineProperty(msg, 'notesBefore', { value: this.notes.length }); p(msg); }
      }
    }
  }
  #write(obj) {
    const body = Buffer.from(JSON.stringify(obj));
    this.sock.write(`Content-Length: ${body.length}\r\n\r\n`);
    this.sock.write(body);
  }
  /** Resolves with the whole response message ({jsonrpc,id,result} or {jsonrpc,id,error}). */
  call(method, params, ms = 15_000) {
    const id = this.nextId++;
    const p = new Promise((r) => this.pending.set(id, r));
    this.#write({ jsonrpc: '2.0', id, method, params });
    return withTimeout(p, ms, `${this.name} ${method}`);
  }
  close() { this.sock?.destroy(); }
}
async function rawOpen(cli, tag) {
  const c = new RawClient(`${cli.name}/${tag}`);
  await c.open(cli.port);
  const r = await c.call('connect', { supportedTaskKinds: ['agent', 'client', 'shell'] });
  if (r.error) throw new Error(`connect: ${JSON.stringify(r.error)}`);
  return c;
}

// ───────────── SDK helpers ─────────────

const sdkClients = new Set();
async function sdkClient(cli) {
  const c = new CopilotClient({ connection: RuntimeConnection.forUri(`127.0.0.1:${cli.port}`) });
  sdkClients.add(c);
  await withTimeout(c.start(), 15_000, `connect to ${cli.name}`);
  return c;
}
async function sdkStop(c) {
  sdkClients.delete(c);
  const ok = await Promise.race([c.stop().then(() => true, () => false), sleep(5000).then(() => false)]);
  if (!ok) await c.forceStop().catch(() => {});
}
function waitForEvent(events, type, fromIndex, ms = 20_000) {
  return until(`${type} event`, () => events.slice(fromIndex).find((e) => e.type === type), { timeoutMs: ms, everyMs: 50 });
}
const brief = (e) => ({ type: e.type, id: e.id, ...(e.data?.alreadyInUse !== undefined ? { alreadyInUse: e.data.alreadyInUse } : {}), ...(e.type === 'session.error' ? { errorType: e.data.errorType, message: String(e.data.message).slice(0, 120) } : {}) });

// ───────────── observation ─────────────

async function tree(dir, rel = '') {
  const out = [];
  let ents;
  try { ents = await fsp.readdir(path.join(dir, rel), { withFileTypes: true }); } catch { return ['<missing>']; }
  for (const e of ents.sort((a, b) => a.name.localeCompare(b.name))) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(`${r}/`, ...(await tree(dir, r)));
    else {
      const st = await fsp.lstat(path.join(dir, r));
      let s = `${r} (${st.size} B)`;
      if (/lock|hold/i.test(e.name) && st.size < 512) s += ` = ${JSON.stringify((await fsp.readFile(path.join(dir, r), 'utf8')).trim())}`;
      out.push(s);
    }
  }
  return out;
}

// ───────────── the probe ─────────────

const report = { setup: {}, steps: [] };
const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'sessiongate-shared-probe-'));
const shared = path.join(root, 'shared-session-state');
const pkgCache = process.env.PROBE_PKG_CACHE ?? path.join(root, 'pkg-cache');
await fsp.mkdir(shared, { recursive: true });
const SID = crypto.randomUUID();
const clis = {};
const monitors = {}; // raw client per CLI, used only for sessions.checkInUse
const sessionDir = path.join(shared, SID);

async function snap(label, extra = {}) {
  await sleep(400); // events.jsonl and lock files are written lazily
  const inUse = {};
  for (const [n, m] of Object.entries(monitors)) {
    if (clis[n].dead) continue;
    const r = await m.call('sessions.checkInUse', { sessionIds: [SID] }).catch((e) => ({ error: e.message }));
    inUse[n] = r.result ?? r.error;
  }
  const pids = Object.fromEntries(Object.values(clis).map((c) => [c.name, c.dead ? 'dead' : groupPids(c.pgid)]));
  const sharedTop = (await tree(shared)).filter((f) => !f.startsWith(`${SID}/`) && f !== `${SID}/`); // e.g. .session-operation-locks/
  const step = { step: label, ...extra, pids, checkInUseFrom: inUse, sessionDir: await tree(sessionDir), sharedDirOther: sharedTop };
  report.steps.push(step);
  log(label, JSON.stringify({ files: step.sessionDir.filter((f) => /lock|hold/.test(f)), inUse }));
  return step;
}

/** session.resume on the wire: the whole answer plus the notifications that came with it. */
async function rawResume(cli, tag) {
  const c = await rawOpen(cli, tag);
  const n0 = c.notes.length;
  const resp = await c.call('session.resume', { sessionId: SID });
  await sleep(500);
  const notes = c.notes.slice(n0).map((n) => ({ method: n.method, params: n.params }));
  const resumeNote = notes.find((n) => n.params?.event?.type === 'session.resume');
  const resumeEvent = resumeNote?.params.event;
  const lifecycle = notes.filter((n) => n.method === 'session.lifecycle').map((n) => n.params);
  const before = resp.notesBefore - n0; // how many notifications arrived before the answer
  return { client: c, response: resp, notifications: notes.map((n, i) => `${i < before ? 'BEFORE-ANSWER ' : ''}${n.method}:${n.params?.event?.type ?? ''}`), resumeNotificationParamKeys: resumeNote && Object.keys(resumeNote.params), lifecycle, resumeEvent, serverRequests: c.serverRequests.map((r) => r.method) };
}

/** SDK resume + send; events observed from the resume on. */
async function sdkResumeAndSend(cli) {
  const c = await sdkClient(cli);
  const events = [];
  const s = await withTimeout(c.resumeSession(SID, { onPermissionRequest: approveAll, onEvent: (e) => events.push(e) }), 15_000, `resume on ${cli.name}`);
  const persisted = await withTimeout(s.getEvents(), 15_000, 'getEvents');
  // the SDK's handlers may not see the resume event (it can arrive before the answer): fall back to
  // the last persisted session.resume, which is this resume's
  const resumeEv = events.find((e) => e.type === 'session.resume') ?? persisted.filter((e) => e.type === 'session.resume').at(-1);
  const typesSeenDuringResume = events.map((e) => e.type);
  const n0 = events.length;
  let sendResult;
  try {
    const messageId = await withTimeout(s.send(`hello from ${cli.name}`), 15_000, `send on ${cli.name}`);
    const err = await waitForEvent(events, 'session.error', n0);
    sendResult = { messageId, errorEvent: brief(err) };
  } catch (e) { sendResult = { failed: e.message }; }
  return { client: c, session: s, events, typesSeenDuringResume, resumeEvent: resumeEv && brief(resumeEv), resumeEventData: resumeEv?.data, persisted, sendResult };
}

try {
  log(`root ${root}; session ${SID}`);
  // ── 0. two CLIs, one shared session-state dir
  const [A, B] = await Promise.all([startCli('A', root, shared, pkgCache), startCli('B', root, shared, pkgCache)]);
  Object.assign(clis, { A, B });
  for (const c of [A, B]) monitors[c.name] = await rawOpen(c, 'monitor');
  report.setup = {
    sharedDir: shared,
    perCli: Object.fromEntries([A, B].map((c) => [c.name, { HOME: c.home, COPILOT_HOME: c.copilotHome, 'session-state': `symlink -> ${fs.readlinkSync(path.join(c.copilotHome, 'session-state'))}`, port: c.port, spawnedPid: c.proc.pid, groupPids: groupPids(c.pgid) }])),
  };

  // ── 1. create + send on A (SDK, direct)
  const cA = await sdkClient(A);
  const evA = [];
  const sA = await withTimeout(cA.createSession({ sessionId: SID, onPermissionRequest: approveAll, onEvent: (e) => evA.push(e) }), 15_000, 'create on A');
  const startEv = evA.find((e) => e.type === 'session.start');
  await snap('1a A: after session.create (no send yet)', { sessionStart: startEv && brief(startEv) });
  const msgA = await withTimeout(sA.send('hello from A'), 15_000, 'send on A');
  const errA = await waitForEvent(evA, 'session.error', 0);
  await snap('1b A: after first send', { messageId: msgA, errorEvent: brief(errA), errorEventData: errA.data, symlinkStillSymlink: fs.lstatSync(path.join(A.copilotHome, 'session-state')).isSymbolicLink() });

  // ── 2. resume on B while A is alive: raw first (exact wire answer), then SDK resume + send
  const r2 = await rawResume(B, 'raw-resume-1');
  await snap('2a B: after raw session.resume, A alive (no send on B yet)', { rawResume: { response: r2.response, notifications: r2.notifications, resumeNotificationParamKeys: r2.resumeNotificationParamKeys, lifecycle: r2.lifecycle, resumeEvent: r2.resumeEvent, serverRequests: r2.serverRequests } });
  const b2 = await sdkResumeAndSend(B);
  await snap('2b B: after SDK resume + send, A alive', { sdkResumeEventData: b2.resumeEventData, sdkTypesSeenDuringResume: b2.typesSeenDuringResume, sdkSend: b2.sendResult, persistedTypes: b2.persisted.map((e) => e.type) });
  // A still writes too? (two live writers on one session)
  const nA = evA.length;
  const msgA2 = await withTimeout(sA.send('hello again from A'), 15_000, 'send 2 on A');
  const errA2 = await waitForEvent(evA, 'session.error', nA).catch((e) => ({ type: e.message }));
  await sleep(500);
  const bView = await withTimeout(b2.session.getEvents(), 15_000, 'getEvents on B');
  await snap('2c A: second send while B also holds it', { messageId: msgA2, errorEvent: brief(errA2), bGetEventsSeesAsSecondError: bView.some((e) => e.id === errA2.id), bGetEventsTypes: bView.map((e) => e.type), eventsJsonlLines: fs.readFileSync(path.join(sessionDir, 'events.jsonl'), 'utf8').trim().split('\n').length });
  // release of B's hold: session.detach (SDK disconnect), then closing both connections
  await b2.session.disconnect();
  await snap('2d B: after SDK session.disconnect() (= session.detach)');
  await sdkStop(b2.client);
  r2.client.close();
  await snap('2e B: after closing both of B\'s client connections (raw + SDK)');

  // ── 3. SIGKILL A (whole process group), then resume on B
  // what A has persisted (ephemeral events such as session.skills_loaded are never on disk)
  const aPersisted = await withTimeout(sA.getEvents(), 15_000, 'getEvents on A');
  const aEventIds = aPersisted.map((e) => e.id);
  const killed = await killGroup(A, 'SIGKILL');
  await snap('3a after SIGKILL of A\'s process group', { kill: killed });
  const r3 = await rawResume(B, 'raw-resume-2');
  await snap('3b B: after raw session.resume, A dead', { rawResume: { response: r3.response, notifications: r3.notifications, resumeEvent: r3.resumeEvent } });
  const b3 = await sdkResumeAndSend(B);
  const persistedIds = new Set(b3.persisted.map((e) => e.id));
  await snap('3c B: after SDK resume + send, A dead', {
    sdkResumeEventData: b3.resumeEventData,
    sdkTypesSeenDuringResume: b3.typesSeenDuringResume,
    sdkSend: b3.sendResult,
    persistedTypes: b3.persisted.map((e) => e.type),
    allOfAsEventsPresent: aEventIds.every((id) => persistedIds.has(id)),
    aEventsMissing: aEventIds.filter((id) => !persistedIds.has(id)).length,
    aEventsTotal: aEventIds.length,
    aPersistedTypes: aPersisted.map((e) => e.type),
  });

  // ── 4. a replacement CLI C on the same shared dir resumes while B holds it
  const C = await startCli('C', root, shared, pkgCache);
  clis.C = C;
  monitors.C = await rawOpen(C, 'monitor');
  // does a CLI that never touched the session list it? (each COPILOT_HOME has its own session-store.db)
  const l4 = await monitors.C.call('session.list', {});
  const l4b = await monitors.C.call('sessions.list', {});
  await snap('4-pre C: before any resume on C', {
    cSessionListHasIt: JSON.stringify(l4.result ?? l4.error).includes(SID),
    cSessionsListHasIt: JSON.stringify(l4b.result ?? l4b.error).includes(SID),
    cSessionListAnswer: JSON.stringify(l4.result ?? l4.error).slice(0, 600),
  });
  const r4 = await rawResume(C, 'raw-resume-1');
  await snap('4a C: after raw session.resume while B holds it', { rawResume: { response: r4.response, notifications: r4.notifications, resumeEvent: r4.resumeEvent }, cPids: groupPids(C.pgid) });
  r4.client.close();

  // ── 5. B lets go step by step; C resumes again after each
  await b3.session.disconnect();
  await snap('5a B: after SDK session.disconnect() (= session.detach)');
  await sdkStop(b3.client);
  r3.client.close();
  await snap('5b B: after closing all of B\'s client connections');
  const rc = await monitors.B.call('sessions.close', { sessionId: SID });
  await snap('5c B: after sessions.close on B', { answer: rc });
  const r5 = await rawResume(C, 'raw-resume-2');
  await snap('5d C: raw session.resume after B closed it (B alive)', { rawResume: { response: r5.response, resumeEvent: r5.resumeEvent } });
  r5.client.close();
  const termB = await killGroup(B, 'SIGTERM');
  await snap('5e after SIGTERM of B\'s process group', { kill: termB });
  const r6 = await rawResume(C, 'raw-resume-3');
  await snap('5f C: raw session.resume, A and B gone', { rawResume: { response: r6.response, resumeEvent: r6.resumeEvent } });
  const s6 = await r6.client.call('session.send', { sessionId: SID, prompt: 'hello from C (raw)' });
  await sleep(1500);
  await snap('5g C: after raw session.send', { sendAnswer: s6, eventsAfter: r6.client.notes.map((n) => n.params?.event?.type).filter(Boolean) });
  r6.client.close();

  // ── 6. the other knob: a per-session configDir (SDK createSession({configDirectory})); where does the folder land?
  const cfgDir = path.join(root, 'per-session-config-dir');
  await fsp.mkdir(cfgDir, { recursive: true });
  const cC = await sdkClient(C);
  const sid6 = crypto.randomUUID();
  const ev6 = [];
  const s6c = await withTimeout(cC.createSession({ sessionId: sid6, configDirectory: cfgDir, onPermissionRequest: approveAll, onEvent: (e) => ev6.push(e) }), 15_000, 'create with configDirectory');
  await withTimeout(s6c.send('hello with configDir'), 15_000, 'send configDir');
  await waitForEvent(ev6, 'session.error', 0).catch(() => {});
  await sleep(500);
  report.steps.push({
    step: '6 C: createSession({configDirectory}) + send',
    configDirectory: cfgDir,
    underConfigDir: await tree(cfgDir),
    inSharedDir: fs.existsSync(path.join(shared, sid6)),
    inCsOwnHome: fs.existsSync(path.join(C.copilotHome, 'session-state', sid6)),
  });
  log('6', JSON.stringify(report.steps.at(-1)).slice(0, 600));
} catch (e) {
  report.error = e.stack;
  log('FAILED', e.stack);
} finally {
  for (const c of [...sdkClients]) await sdkStop(c).catch(() => {});
  for (const m of Object.values(monitors)) m.close();
  for (const c of Object.values(clis)) if (!c.dead) await killGroup(c, 'SIGKILL');
  report.sessionId = SID;
  report.root = KEEP ? root : `${root} (removed)`;
  const text = JSON.stringify(report, null, 2);
  if (process.env.PROBE_OUT) fs.writeFileSync(process.env.PROBE_OUT, text);
  console.log(text);
  if (!KEEP) await fsp.rm(root, { recursive: true, force: true });
  log('done');
  process.exit(report.error ? 1 : 0);
}
