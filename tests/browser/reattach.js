// A call in headless chromium (through playwright-core) that must survive
// backend restarts behind shunt's `backend_loss = "reattach"`. Run by
// tests/it/reattach.rs with a plan as the first argument (JSON):
//
//   { "url": "ws://127.0.0.1:PORT/call", "restarts": 3 }
//
// The page opens the WebSocket, sends its preamble ("subscribe call-7") and
// then a message every 50 ms; it records every message and whether onclose
// ever fired. For each generation g of the backend (1 .. restarts + 1) the
// script waits (at most 10 s) for a message from it; after each but the
// last it prints "STEP restart g" and waits for a line on stdin (the Rust
// test kills the backend and starts generation g + 1).
//
// Checks: onclose never fires; messages from every generation arrive; each
// new backend got the preamble and `x-shunt-reattach: <id>; attempt=<g-1>`.
// Prints "PASS ..." per check and "RESULT {json}"; exits 1 on failure.
'use strict';

const readline = require('readline');
const { chromium } = require('playwright-core');

const plan = JSON.parse(process.argv[2] || '{}');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const nextLine = (() => {
  const rl = readline.createInterface({ input: process.stdin });
  const queue = [];
  const waiters = [];
  rl.on('line', (line) => (waiters.length ? waiters.shift()(line) : queue.push(line)));
  rl.on('close', () => {
    while (waiters.length) waiters.shift()(null);
  });
  return () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
})();

function fail(message) {
  throw new Error(message);
}

async function main() {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    await page.setContent('<!doctype html><title>call</title><p>call</p>');
    await page.evaluate((url) => {
      window.call = { msgs: [], closed: null, errors: 0, sent: 0 };
      const ws = new WebSocket(url);
      ws.onopen = () => {
        ws.send('subscribe call-7');
        window.call.sent += 1;
        setInterval(() => {
          if (ws.readyState === 1) {
            ws.send('audio ' + window.call.sent);
            window.call.sent += 1;
          }
        }, 50);
      };
      ws.onmessage = (e) => window.call.msgs.push(JSON.parse(e.data));
      ws.onclose = (e) => (window.call.closed = { code: e.code, reason: e.reason });
      ws.onerror = () => (window.call.errors += 1);
    }, plan.url);
    const seen = {};
    const last = plan.restarts + 1;
    for (let g = 1; g <= last; g++) {
      const start = Date.now();
      let first = null;
      while (first === null) {
        const state = await page.evaluate(() => ({ closed: window.call.closed, msgs: window.call.msgs.slice(-50) }));
        if (state.closed) fail('onclose fired: ' + JSON.stringify(state.closed));
        first = state.msgs.find((m) => m.gen === g) || null;
        if (first === null) {
          if (Date.now() - start > 10000) fail('no message from backend generation ' + g + ' within 10 s');
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      seen[g] = { after_ms: Date.now() - start, sub: first.sub, reattach: first.reattach };
      if (first.sub !== 'subscribe call-7') fail('generation ' + g + ' got preamble ' + JSON.stringify(first.sub));
      if (g === 1 && first.reattach !== null) fail('the first handshake carried x-shunt-reattach');
      if (g > 1 && !new RegExp('^\\d+; attempt=' + (g - 1) + '$').test(first.reattach || '')) {
        fail('generation ' + g + ' saw x-shunt-reattach ' + JSON.stringify(first.reattach));
      }
      console.log('PASS generation ' + g + ' reached the page');
      if (g < last) {
        console.log('STEP restart ' + g);
        if ((await nextLine()) === null) fail('the test went away');
      }
    }
    // Messages keep arriving from the last generation.
    const before = await page.evaluate(() => window.call.msgs.length);
    await page.waitForFunction((n) => window.call.msgs.length >= n + 10, before, { timeout: 5000 });
    const end = await page.evaluate(() => window.call);
    if (end.closed) fail('onclose fired: ' + JSON.stringify(end.closed));
    console.log('PASS onclose never fired');
    console.log('RESULT ' + JSON.stringify({ generations: seen, messages: end.msgs.length, sent: end.sent, errors: end.errors }));
  } finally {
    await browser.close();
  }
}

// Exits explicitly: the stdin reader would keep node running.
main().then(
  () => process.exit(0),
  (e) => {
    console.error('FAIL ' + e.message);
    process.exit(1);
  }
);
