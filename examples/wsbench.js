#!/usr/bin/env node
// An independent WebSocket load client for examples/bench.sh: Node.js and the
// `ws` package (the one tests/browser/ installs), sharing no code with shunt's
// own Rust client (examples/loadgen.rs), so the bench's ratios can be checked
// against a second implementation in the same run. Ends with one JSON line.
//
//   node examples/wsbench.js --url ws://127.0.0.1:8080/bench --mode handshakes --conns 32 --duration 4
//   node examples/wsbench.js --url wss://127.0.0.1:8443/bench --ca ca.pem --mode tls-handshakes --conns 32
//
// Modes:
// - handshakes: C concurrent loops of connect (+ TLS), upgrade, send one
//   S-byte message, read its echo, close and wait for the close; handshakes/s
//   and the p50/p99 of one loop. Over wss:// every handshake is full (no
//   session is offered) unless --resume, which offers the session the same
//   loop got last time (TLS 1.2 session ID or ticket, TLS 1.3 ticket).
// - tls-handshakes: handshakes over wss://, the full ones for --duration,
//   then the resumed ones for --duration; both in the one line (full_*,
//   resumed_*), with the reuse the client saw (isSessionReused) for each.
// - rtt: C connections, each sends one S-byte message every I ms and waits for
//   its echo; 1 s warm-up excluded; round trip p50/p90/p99/p99.9/max in µs.
//
// --procs P splits the loops or connections over P processes (one Node
// process is one core); "client_cpu_us" is the CPU all of them used, so a
// client-bound run shows (client CPU near P × the wall time).
// Every loop is bounded by --duration and a 5 s timeout per step.
'use strict';

const { fork } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');

let WebSocket;
try {
  WebSocket = require('ws');
} catch {
  WebSocket = require(path.join(__dirname, '..', 'tests', 'browser', 'node_modules', 'ws'));
}

const USAGE = 'usage: wsbench.js --url ws[s]://host:port/path --mode handshakes|tls-handshakes|rtt ' +
  '[--conns N] [--size BYTES] [--interval-ms MS] [--duration SECS] [--procs P] [--ca PEM] [--resume] [--label TEXT]';

function parseArgs(argv) {
  const a = { url: null, mode: null, conns: 32, size: 640, intervalMs: 20, duration: 4, procs: 1, ca: null, resume: false, label: '' };
  const numeric = { '--conns': 'conns', '--size': 'size', '--interval-ms': 'intervalMs', '--duration': 'duration', '--procs': 'procs' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--resume') { a.resume = true; continue; }
    if (v === undefined) throw new Error(`${k} needs a value\n${USAGE}`);
    if (numeric[k]) {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${k}: not a positive number: ${v}`);
      a[numeric[k]] = n;
    } else if (k === '--url') a.url = v;
    else if (k === '--mode') a.mode = v;
    else if (k === '--ca') a.ca = v;
    else if (k === '--label') a.label = v;
    else throw new Error(`unknown argument ${k}\n${USAGE}`);
    i++;
  }
  if (!a.url || !/^wss?:\/\//.test(a.url)) throw new Error(`--url ws://… or wss://… is required\n${USAGE}`);
  if (!['handshakes', 'tls-handshakes', 'rtt'].includes(a.mode)) throw new Error(`--mode must be handshakes, tls-handshakes or rtt\n${USAGE}`);
  a.tls = a.url.startsWith('wss://');
  if (a.mode === 'tls-handshakes' && !a.tls) throw new Error('tls-handshakes needs a wss:// --url');
  if (a.tls && !a.ca) throw new Error('--ca is required for wss://');
  a.conns = Math.floor(a.conns);
  a.procs = Math.max(1, Math.min(Math.floor(a.procs), a.conns));
  return a;
}

const STEP_TIMEOUT_MS = 5000;

/// The options every connection gets: no compression (the proxies relay raw
/// frames), for wss:// the one TLS context with the CA (a context per
/// connection would cost the client more than the handshake), and a session
/// to resume when given one.
function wsOptions(args, ctx, session) {
  const o = { perMessageDeflate: false, handshakeTimeout: STEP_TIMEOUT_MS };
  if (args.tls) {
    o.secureContext = ctx;
    if (session) o.session = session;
  }
  return o;
}

/// The TLS context of this process (wss:// only).
function tlsContext(args) {
  return args.tls ? tls.createSecureContext({ ca: fs.readFileSync(args.ca) }) : undefined;
}

/// One connect + upgrade + message + echo + close. Resolves with the socket's
/// TLS facts ({ reused, session }) or null for ws://.
function handshakeOnce(args, ca, payload, session) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(args.url, wsOptions(args, ca, session));
    let tls = null;
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('timeout')); }, STEP_TIMEOUT_MS);
    ws.on('open', () => ws.send(payload));
    ws.on('message', () => {
      const sock = ws._socket; // a tls.TLSSocket for wss://; the ticket arrived before the echo
      if (args.tls && sock) tls = { reused: sock.isSessionReused(), session: sock.getSession() };
      ws.close(1000);
    });
    ws.on('close', () => { clearTimeout(timer); resolve(tls); });
    ws.on('error', (e) => { clearTimeout(timer); ws.terminate(); reject(e); });
  });
}

async function handshakeLoops(args, conns, resume, seconds) {
  const ca = tlsContext(args);
  const payload = Buffer.alloc(args.size, 0x42);
  let failures = 0;
  // A resumed run first makes one full handshake per loop to get a session (not counted).
  const sessions = await Promise.all(Array.from({ length: conns }, () => (resume
    ? handshakeOnce(args, ca, payload, undefined).then((t) => t?.session, () => { failures++; })
    : undefined)));
  const begin = process.hrtime.bigint();
  const end = begin + BigInt(Math.round(seconds * 1e9));
  const samples = [];
  let reused = 0;
  const loop = async (session) => {
    while (process.hrtime.bigint() < end) {
      const t = process.hrtime.bigint();
      try {
        const tls = await handshakeOnce(args, ca, payload, resume ? session : undefined);
        samples.push(Number(process.hrtime.bigint() - t) / 1000);
        if (tls?.reused) reused++;
        if (resume && tls?.session) session = tls.session;
      } catch {
        failures++;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };
  await Promise.all(sessions.map(loop));
  return { samples, failures, reused, seconds: Number(process.hrtime.bigint() - begin) / 1e9 };
}

function openConn(args, ca) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(args.url, wsOptions(args, ca));
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('timeout')); }, STEP_TIMEOUT_MS);
    ws.once('open', () => { clearTimeout(timer); resolve(ws); });
    ws.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

async function rttConnect(args, conns) {
  const ca = tlsContext(args);
  let connectErrors = 0;
  const socks = [];
  for (let i = 0; i < conns; i += 64) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(64, conns - i) }, () => openConn(args, ca)));
    for (const r of batch) r.status === 'fulfilled' ? socks.push(r.value) : connectErrors++;
  }
  return { socks, connectErrors };
}

async function rttCalls(args, { socks, connectErrors }, startAt, index, procs) {
  const payload = Buffer.alloc(args.size, 0x5a);
  // Every process starts its clock at the same wall time and its calls take
  // every procs-th slot, so the calls of all processes spread evenly over one
  // interval, like independent calls.
  await sleepUntil(startAt);
  const t0 = process.hrtime.bigint();
  const warmUntil = t0 + 1_000_000_000n;
  const end = warmUntil + BigInt(Math.round(args.duration * 1e9));
  const samples = [];
  let failures = 0;
  const call = (ws, offsetMs) => new Promise((resolve) => {
    let sent = 0n;
    let next = t0 + BigInt(Math.round(offsetMs * 1e6));
    let timer = null;
    const finish = () => { clearTimeout(timer); ws.removeAllListeners('message'); ws.close(1000); resolve(); };
    const fire = () => {
      if (process.hrtime.bigint() >= end) return finish();
      sent = process.hrtime.bigint();
      timer = setTimeout(() => { failures++; finish(); }, STEP_TIMEOUT_MS);
      ws.send(payload);
    };
    const schedule = () => {
      // Missed ticks are delayed, not bunched (one message in flight per call).
      const now = process.hrtime.bigint();
      while (next <= now) next += BigInt(args.intervalMs * 1e6);
      setTimeout(fire, Number(next - now) / 1e6);
    };
    ws.on('message', () => {
      clearTimeout(timer);
      if (sent >= warmUntil) samples.push(Number(process.hrtime.bigint() - sent) / 1000);
      schedule();
    });
    ws.once('close', () => { clearTimeout(timer); resolve(); });
    ws.on('error', () => { failures++; finish(); });
    schedule();
  });
  await Promise.all(socks.map((ws, i) => call(ws, (args.intervalMs * (i * procs + index)) / Math.max(args.conns, 1))));
  return { samples, failures, connectErrors };
}

/// The child's setup before the common start (rtt: its connections).
async function prepare(args, conns) {
  return args.mode === 'rtt' ? rttConnect(args, conns) : null;
}

/// The child's share of the work, by mode, from the common start time.
async function work(args, prepared, conns, index, procs, startAt) {
  if (args.mode === 'rtt') return { rtt: await rttCalls(args, prepared, startAt, index, procs) };
  await sleepUntil(startAt);
  if (args.mode === 'tls-handshakes') {
    // Both phases start at the same wall times in every process.
    const full = await handshakeLoops(args, conns, false, args.duration);
    await sleepUntil(startAt + args.duration * 1000 + 500);
    const resumed = await handshakeLoops(args, conns, true, args.duration);
    return { full, resumed };
  }
  return { hs: await handshakeLoops(args, conns, args.resume, args.duration) };
}

function sleepUntil(wallMs) {
  const d = wallMs - Date.now();
  return d > 0 ? new Promise((r) => setTimeout(r, d)) : Promise.resolve();
}

function pct(sorted, p) {
  if (!sorted.length) return 0;
  return Math.round(sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]);
}

function merge(parts, key) {
  const xs = parts.map((p) => p[key]);
  const samples = xs.flatMap((x) => x.samples).sort((a, b) => a - b);
  return {
    samples,
    failures: xs.reduce((s, x) => s + x.failures, 0),
    reused: xs.reduce((s, x) => s + (x.reused || 0), 0),
    connectErrors: xs.reduce((s, x) => s + (x.connectErrors || 0), 0),
    seconds: Math.max(...xs.map((x) => x.seconds || 0)),
  };
}

function hsFields(m, prefix) {
  return {
    [`${prefix}handshakes`]: m.samples.length,
    [`${prefix}failures`]: m.failures,
    [`${prefix}resumed_seen`]: m.reused,
    [`${prefix}per_s`]: m.samples.length / m.seconds,
    [`${prefix}p50_us`]: pct(m.samples, 50),
    [`${prefix}p99_us`]: pct(m.samples, 99),
  };
}

async function main() {
  if (process.env.WSBENCH_CHILD) {
    // A child: its share, then its result and its CPU to the parent.
    process.once('message', async ({ args, conns, index, procs }) => {
      const prepared = await prepare(args, conns);
      process.once('message', async ({ startAt }) => {
        const r = await work(args, prepared, conns, index, procs, startAt);
        const cpu = process.cpuUsage();
        process.send({ r, cpuUs: cpu.user + cpu.system }, () => process.exit(0));
      });
      process.send({ ready: true });
    });
    return;
  }
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
  const bound = (args.mode === 'tls-handshakes' ? 2 : 1) * args.duration * 1000 + 120_000;
  const killer = setTimeout(() => { console.error('wsbench: workers did not finish'); process.exit(1); }, bound);
  const children = Array.from({ length: args.procs }, (_, i) => {
    const conns = Math.floor(args.conns / args.procs) + (i < args.conns % args.procs ? 1 : 0);
    const child = fork(__filename, [], { env: { ...process.env, WSBENCH_CHILD: '1' } });
    const messages = [];
    let waiting = null;
    child.on('message', (m) => (waiting ? (waiting(m), (waiting = null)) : messages.push(m)));
    child.once('exit', (code) => {
      if (code !== 0) { console.error(`wsbench: worker ${i} exited with ${code}`); process.exit(1); }
    });
    const next = () => new Promise((resolve) => (messages.length ? resolve(messages.shift()) : (waiting = resolve)));
    child.send({ args, conns, index: i, procs: args.procs });
    return { child, next };
  });
  await Promise.all(children.map((c) => c.next())); // every worker ready (rtt: connected)
  const startAt = Date.now() + 100;
  for (const c of children) c.child.send({ startAt });
  const results = await Promise.all(children.map((c) => c.next()));
  clearTimeout(killer);
  const clientCpuUs = results.reduce((s, x) => s + x.cpuUs, 0);
  const parts = results.map((x) => x.r);
  const out = { client: 'node-ws', url: args.url, label: args.label, mode: args.mode, procs: args.procs, client_cpu_us: clientCpuUs };
  if (args.mode === 'rtt') {
    const m = merge(parts, 'rtt');
    Object.assign(out, {
      conns: args.conns, size: args.size, interval_ms: args.intervalMs, messages: m.samples.length,
      connect_errors: m.connectErrors, failures: m.failures,
      p50_us: pct(m.samples, 50), p90_us: pct(m.samples, 90), p99_us: pct(m.samples, 99),
      p999_us: pct(m.samples, 99.9), max_us: Math.round(m.samples[m.samples.length - 1] || 0),
    });
  } else if (args.mode === 'tls-handshakes') {
    Object.assign(out, { concurrency: args.conns }, hsFields(merge(parts, 'full'), 'full_'), hsFields(merge(parts, 'resumed'), 'resumed_'));
  } else {
    Object.assign(out, { concurrency: args.conns, resume: args.resume }, hsFields(merge(parts, 'hs'), ''));
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
