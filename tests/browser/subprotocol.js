// Opens a WebSocket from headless Chromium (through playwright-core) the way
// a browser app sends its token: new WebSocket(url, ["bearer", token]).
// Run by tests/it/jwks.rs with a plan as the first argument (JSON):
//
//   { "url": "ws://127.0.0.1:PORT/audio", "token": "..." }
//
// Prints "RESULT {json}": {"protocol": ws.protocol, "message": the first
// message} when the handshake completed, {"error": ...} when the browser
// failed it (e.g. the server selected no protocol it offered), or
// {"timeout": true}. Exits 1 if the browser could not be driven at all.
'use strict';

const { chromium } = require('playwright-core');

const plan = JSON.parse(process.argv[2] || '{}');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

(async () => {
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage();
    const result = await page.evaluate(
      ({ url, token }) =>
        new Promise((resolve) => {
          const ws = new WebSocket(url, ['bearer', token]);
          const timer = setTimeout(() => resolve({ timeout: true }), 5000);
          ws.onmessage = (event) => {
            clearTimeout(timer);
            resolve({ protocol: ws.protocol, message: String(event.data) });
            ws.close(1000);
          };
          ws.onerror = () => {
            clearTimeout(timer);
            resolve({ error: 'the browser failed the WebSocket' });
          };
        }),
      plan,
    );
    console.log('RESULT ' + JSON.stringify(result));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error('FAIL ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
