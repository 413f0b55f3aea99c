// Opens a wss:// call from Debian's chromium (through playwright-core), as a
// browser user would: the page at https://HOST:PORT/ (shunt's TLS listener,
// its certificate from a test CA, so certificate errors are ignored), then
// `new WebSocket('wss://HOST:PORT/PATH')` in it. Run by tests/it/acme/post_quantum.rs,
// which reads the key exchange group chromium negotiated from shunt's /status.
//
//   node wss.js '{"url": "https://localhost:PORT/", "ws": "wss://localhost:PORT/frontend-audio"}'
//
// Prints "RESULT {json}" (`first` is the first message the call received)
// and exits 0, or prints "FAIL ..." on stderr and exits 1.
'use strict';

const { chromium } = require('playwright-core');

const plan = JSON.parse(process.argv[2] || '{}');

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--ignore-certificate-errors'],
  });
  try {
    const page = await browser.newPage({ ignoreHTTPSErrors: true });
    const resp = await page.goto(plan.url, { timeout: 20000 });
    const first = await page.evaluate(
      (url) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          const timer = setTimeout(() => reject(new Error('no message within 10 s')), 10000);
          ws.onmessage = (m) => {
            clearTimeout(timer);
            ws.close(1000);
            resolve(String(m.data));
          };
          ws.onerror = () => reject(new Error('WebSocket error'));
        }),
      plan.ws
    );
    console.log('RESULT ' + JSON.stringify({ status: resp.status(), first: first }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error('FAIL ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
