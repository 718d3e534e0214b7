// Node `ws` echo server with permessage-deflate, for tether's compression benchmark.
//
//   node bench/node/echo.mjs [port]     (port 0, the default, picks a free one)
//
// Prints `LISTENING 127.0.0.1:<port>` once it listens, echoes every message as it came (text
// as text), and exits when its standard input closes, like the harness's own servers. The
// orchestrator starts it under `taskset` and runs `npm ci` here first if node_modules is
// missing.

import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? 0);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: {
    threshold: 0,
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
  },
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  process.stdout.write(`LISTENING 127.0.0.1:${wss.address().port}\n`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
