// A Node `ws` call backend for tests/it/reattach.rs: `node ws_backend.js PORT GEN`.
//
// Listens on 127.0.0.1:PORT and prints "LISTENING" once it does. Each call:
// the first message the client sends (its preamble, replayed by shunt to a
// new backend) is remembered; every 50 ms the backend sends
// {"gen", "seq", "sub", "reattach", "echoed"} as text: GEN tells the test which
// backend process the message came from, `sub` the preamble this process got,
// `reattach` the x-shunt-reattach header of the handshake (or null), and
// `echoed` how many client messages this connection received. The test kills
// the process (SIGKILL: the call's backend leg is lost without a Close) and
// starts the next GEN on the same port.
'use strict';

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const gen = Number(process.argv[3] || 1);
const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('listening', () => console.log('LISTENING'));
wss.on('error', (e) => {
  console.error('backend error: ' + e.message);
  process.exit(1);
});
wss.on('connection', (ws, req) => {
  const reattach = req.headers['x-shunt-reattach'] || null;
  let sub = null;
  let echoed = 0;
  let seq = 0;
  ws.on('message', (data) => {
    if (sub === null) sub = data.toString();
    echoed += 1;
  });
  const timer = setInterval(() => {
    seq += 1;
    ws.send(JSON.stringify({ gen, seq, sub, reattach, echoed }));
  }, 50);
  ws.on('close', () => clearInterval(timer));
});
