// Drives Debian's chromium (through playwright-core) against shunt's admin
// dashboard. Run by tests/it/dashboard.rs, which starts shunt, backends, nginx
// and live calls, and passes a plan as the first argument (JSON):
//
//   { "url": "http://127.0.0.1:PORT/", "out_dir": "...", "steps": [STEP...] }
//
// Steps run in order:
//   {"check": "page"}                         CSP header, no CORS header, no script errors
//   {"check": "calls", "calls": [{"path": "...", "upstream": "direct"|"via nginx"}]}
//                                             the calls table lists each (path shown as text)
//   {"check": "text", "path": "<script>…"}    the value is shown as text; no element injected
//   {"check": "stalled", "path": "..."}       that call's row is highlighted as stalled
//   {"check": "sort", "key": "stalls", "first_path": "..."}
//                                             clicking the header puts that call first
//   {"check": "route", "route": "/frontend-audio", "using": "via nginx",
//    "upstream": "direct", "health": "down", "within_ms": 5000}
//                                             the route and upstream display reach that state
//   {"check": "readiness", "badge": "degraded", "contains": ["..."]}  the header badge and readiness note
//   {"check": "certificate", "cert": "localhost", "days": 9, "red": true}
//                                             the certificate row shows the days left, red under 14;
//                                             optional "source" and "error": text its Source and
//                                             Last error cells contain
//   {"check": "narrow", "width": 420}         no horizontal page scroll at that width
//   {"screenshot": "file.png", "width": 1280} a full-page screenshot under out_dir
//   {"refreshes": N}                          waits until the page has refreshed N more times
//   {"host": "NAME"}                          prints "STEP NAME" and waits for a line on stdin
//                                             (the Rust test acts, e.g. kills a backend)
//
// Prints "PASS name" per check and "RESULT {json}" at the end; exits 1 on the
// first failure with "FAIL ..." on stderr.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const plan = JSON.parse(process.argv[2] || '{}');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const results = {};

const stdinLines = (() => {
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

// Calls `probe` (async, returns {ok, ...}) every 100 ms until ok or limitMs.
async function poll(page, probe, limitMs, what) {
  const start = Date.now();
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok) return { elapsed: Date.now() - start, value: last };
    if (Date.now() - start > limitMs) fail(what + ' not reached within ' + limitMs + ' ms; last: ' + JSON.stringify(last));
    await page.waitForTimeout(100);
  }
}

// The calls table as data.
function callRows(page) {
  return page.$$eval('#calls tbody tr[data-call]', (trs) =>
    trs.map((tr) => ({
      id: tr.getAttribute('data-call'),
      path: (tr.querySelector('.path') || {}).textContent || '',
      upstream: (tr.querySelector('td.upstream') || {}).textContent || '',
      stalled: tr.classList.contains('stalled'),
    }))
  );
}

const checks = {
  async page(page, step, ctx) {
    const headers = ctx.response.headers();
    if (headers['content-security-policy'] !== "default-src 'self'") {
      fail('Content-Security-Policy is ' + JSON.stringify(headers['content-security-policy']));
    }
    if ('access-control-allow-origin' in headers) fail('the page sends a CORS header');
    await poll(
      page,
      async () => ({ ok: Number((await page.getAttribute('body', 'data-refreshes')) || 0) >= 2 }),
      10000,
      'two refreshes'
    );
    if (ctx.errors.length) fail('script errors: ' + ctx.errors.join(' | '));
    return { refreshes_seen: 2 };
  },

  async calls(page, step) {
    const want = step.calls;
    const got = await poll(
      page,
      async () => {
        const rows = await callRows(page);
        const missing = want.filter((w) => !rows.some((r) => r.path.includes(w.path) && r.upstream === w.upstream));
        return { ok: missing.length === 0, missing: missing, rows: rows };
      },
      10000,
      'calls ' + JSON.stringify(want)
    );
    return { rows: got.value.rows.length, elapsed_ms: got.elapsed };
  },

  async text(page, step) {
    const r = await poll(
      page,
      () =>
        page.evaluate((value) => {
          const cells = Array.from(document.querySelectorAll('#calls .path'));
          const cell = cells.find((c) => c.textContent.includes(value));
          return {
            ok: !!cell,
            injected: document.querySelectorAll('#calls script, #calls img, #calls iframe, #calls svg script').length,
            scripts: document.querySelectorAll('script').length,
            flag: window.__shunt_xss === undefined ? null : window.__shunt_xss,
          };
        }, step.path),
      10000,
      'the text ' + JSON.stringify(step.path)
    );
    if (r.value.injected !== 0) fail(r.value.injected + ' element(s) injected into the calls table');
    if (r.value.scripts !== 1) fail(r.value.scripts + ' script elements in the page, expected 1');
    if (r.value.flag !== null) fail('injected script ran: window.__shunt_xss = ' + r.value.flag);
    return { shown_as_text: true };
  },

  async stalled(page, step) {
    const r = await poll(
      page,
      async () => {
        const rows = await callRows(page);
        const row = rows.find((x) => x.path.includes(step.path));
        const others = rows.filter((x) => !x.path.includes(step.path) && x.stalled).length;
        return { ok: !!row && row.stalled, row: row, others_stalled: others };
      },
      step.within_ms || 10000,
      'stalled highlight on ' + step.path
    );
    return { elapsed_ms: r.elapsed, others_stalled: r.value.others_stalled };
  },

  async sort(page, step) {
    await page.click('#calls th[data-sort="' + step.key + '"]');
    const first = await page.evaluate(() => {
      const tr = document.querySelector('#calls tbody tr[data-call] .path');
      return tr ? tr.textContent : null;
    });
    const aria = await page.getAttribute('#calls th[data-sort="' + step.key + '"]', 'aria-sort');
    if (!aria) fail('sorted header has no aria-sort');
    if (step.first_path && !(first || '').includes(step.first_path)) fail('after sorting by ' + step.key + ' the first call is ' + first);
    return { first: first, aria_sort: aria };
  },

  async route(page, step) {
    const r = await poll(
      page,
      () =>
        page.evaluate((s) => {
        const row = Array.from(document.querySelectorAll('#routes tbody tr')).find((tr) => tr.getAttribute('data-route') === s.route);
        const up = Array.from(document.querySelectorAll('#upstreams tbody tr')).find((tr) => tr.getAttribute('data-upstream') === s.upstream);
        const using = row ? row.querySelector('.using').textContent : null;
        const health = up ? up.querySelector('.health').textContent : null;
        return { ok: using !== null && using.startsWith(s.using) && health === s.health, using: using, health: health };
        }, step),
      step.within_ms || 5000,
      'route ' + step.route + ' using ' + step.using + ' and ' + step.upstream + ' ' + step.health
    );
    return { elapsed_ms: r.elapsed, using: r.value.using };
  },

  async readiness(page, step) {
    // The header's badge and the readiness note: e.g. "degraded" naming the route and why.
    const r = await poll(
      page,
      () =>
        page.evaluate((s) => {
          const badge = document.getElementById('ready').textContent;
          const note = document.getElementById('readiness').textContent;
          return { ok: badge === s.badge && s.contains.every((t) => note.includes(t)), badge: badge, note: note };
        }, step),
      step.within_ms || 5000,
      'readiness ' + step.badge + ' naming ' + JSON.stringify(step.contains)
    );
    return { badge: r.value.badge, note: r.value.note };
  },

  async certificate(page, step) {
    const r = await poll(
      page,
      () =>
        page.$$eval('#certificates tbody tr', (trs) =>
          trs.map((tr) => ({
            names: tr.cells[0] ? tr.cells[0].textContent : '',
            days: tr.querySelector('.days') ? tr.querySelector('.days').textContent : null,
            red: tr.classList.contains('expiring') && getComputedStyle(tr).color === 'rgb(179, 38, 30)',
            source: tr.querySelector('.source') ? tr.querySelector('.source').textContent : '',
            error: tr.querySelector('.last-error') ? tr.querySelector('.last-error').textContent : '',
          }))
        ).then((rows) => {
          const row = rows.find((x) => x.names.includes(step.cert));
          const extra = (r) => (!step.source || r.source.includes(step.source)) && (!step.error || r.error.includes(step.error));
          return { ok: !!row && row.days === String(step.days) && row.red === step.red && extra(row), row: row, rows: rows };
        }),
      10000,
      'certificate ' + step.cert + ' with ' + step.days + ' days left'
    );
    return r.value.row;
  },

  async narrow(page, step) {
    const width = step.width || 420;
    await page.setViewportSize({ width: width, height: 900 });
    await page.waitForTimeout(100);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const cards = await page.evaluate(() => {
      const td = document.querySelector('#calls tbody td');
      return td ? getComputedStyle(td).display : null;
    });
    if (step.screenshot) await page.screenshot({ path: path.join(plan.out_dir, step.screenshot), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });
    if (overflow > 1) fail('the page scrolls sideways by ' + overflow + ' px at ' + width + ' px');
    return { overflow_px: overflow, cell_display: cards };
  },
};

async function main() {
  fs.mkdirSync(plan.out_dir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(m.text());
    });
    const response = await page.goto(plan.url, { waitUntil: 'load' });
    if (!response || response.status() !== 200) fail('GET ' + plan.url + ' answered ' + (response && response.status()));
    const ctx = { response: response, errors: errors };
    for (const step of plan.steps || []) {
      if (step.host) {
        console.log('STEP ' + step.host);
        const line = await stdinLines();
        if (line === null) fail('the test closed stdin during step ' + step.host);
        continue;
      }
      if (step.refreshes) {
        const count = async () => Number((await page.getAttribute('body', 'data-refreshes')) || 0);
        const target = (await count()) + step.refreshes;
        await poll(page, async () => ({ ok: (await count()) >= target }), 5000 * step.refreshes, step.refreshes + ' refreshes');
        continue;
      }
      if (step.screenshot && !step.check) {
        if (step.width) await page.setViewportSize({ width: step.width, height: 900 });
        await page.screenshot({ path: path.join(plan.out_dir, step.screenshot), fullPage: true });
        console.log('SCREENSHOT ' + path.join(plan.out_dir, step.screenshot));
        continue;
      }
      const check = checks[step.check];
      if (!check) fail('unknown step ' + JSON.stringify(step));
      const name = step.name || step.check;
      results[name] = await check(page, step, ctx);
      console.log('PASS ' + name + ' ' + JSON.stringify(results[name]));
    }
    if (errors.length) fail('script errors: ' + errors.join(' | '));
    console.log('RESULT ' + JSON.stringify(results));
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error('FAIL ' + (e && e.message ? e.message : e));
    process.exit(1);
  }
);
