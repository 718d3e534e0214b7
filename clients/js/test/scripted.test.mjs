// The JavaScript client against a scripted stand-in for the platform's WebSocket (the
// `WebSocket` option), for what a real server does not do on demand: failed handshakes, each
// close code, a replay buffer that fills up. No server needed.
// Run: node --test clients/js/test/scripted.test.mjs (cargo test runs every test file).

import { test } from "node:test";
import assert from "node:assert/strict";

import { ResumableSession, SUBPROTOCOL, encodeAck, encodeHello } from "../tether-resume.mjs";
import { waitFor as waitUntil } from "./wait.mjs";

const GUARD_MS = 5000;
const ID = new Uint8Array(16).fill(9);

/** WELCOME: 0x03, version, id, resumed, delivered (u64), reason length (0 here). */
function welcome(resumed, delivered) {
  const out = new Uint8Array(28);
  out[0] = 3;
  out[1] = 1;
  out.set(ID, 2);
  out[18] = resumed ? 1 : 0;
  new DataView(out.buffer).setBigUint64(19, BigInt(delivered));
  return out.buffer;
}

/**
 * A WebSocket class whose every connection is handed to `script(socket, n)` (n counts from
 * 1) once the client has set its handlers; the script plays the server with `open`,
 * `receive`, `drop` and `fail`. `sockets` lists the connections made.
 */
function scripted(script) {
  const sockets = [];
  class ScriptedSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = "";
      this.sent = [];
      this.closeCode = undefined; // what the client closed with
      this.dropped = false;
      this.at = Date.now();
      sockets.push(this);
      const n = sockets.length;
      setTimeout(() => script(this, n), 0);
    }
    send(data) {
      this.sent.push(data);
    }
    close(code) {
      if (this.closeCode !== undefined) return;
      this.closeCode = code;
      setTimeout(() => this.drop(code), 0);
    }
    /** The handshake succeeds, with the resume subprotocol. */
    open() {
      this.protocol = SUBPROTOCOL;
      this.onopen?.({});
    }
    receive(data) {
      this.onmessage?.({ data });
    }
    drop(code) {
      if (this.dropped) return;
      this.dropped = true;
      this.onclose?.({ code, reason: "" });
    }
    /** The handshake fails, as a browser reports it: `error`, then `close` with 1006. */
    fail() {
      this.onerror?.({});
      this.drop(1006);
    }
  }
  return { ScriptedSocket, sockets };
}

/** Opens `ws` and welcomes it: a new session, or `resumed` with the server's `delivered`. */
function up(ws, resumed = false, delivered = 0) {
  ws.open();
  ws.receive(welcome(resumed, delivered));
}

function waitFor(predicate, what) {
  return waitUntil(predicate, what, GUARD_MS, 2);
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 10));

const quick = { backoff: { initialMs: 20, maxMs: 100 }, reconnectDelayMs: 0 };

test("failed attempts wait with full jitter under a cap that doubles up to maxMs", async () => {
  const caps = [20, 40, 80, 80];
  for (const r of [0, 0.999]) {
    const { ScriptedSocket, sockets } = scripted((ws) => ws.fail());
    const retries = [];
    const session = new ResumableSession("ws://scripted/", {
      WebSocket: ScriptedSocket,
      backoff: { initialMs: 20, maxMs: 80, factor: 2 },
      reconnectDelayMs: 1, // not used: no connection got as far as WELCOME
      maxAttempts: 5,
      random: () => r,
      onevent: (e) => e.type === "retry" && retries.push({ delay: e.delay, at: Date.now() }),
    });
    await waitFor(() => session.ended !== null, "the end");
    assert.equal(session.ended, "gave up after 5 failed attempts");
    assert.equal(sockets.length, 5);
    const delays = retries.map((x) => x.delay);
    if (r === 0) {
      assert.deepEqual(delays, [0, 0, 0, 0]);
    } else {
      assert.ok(delays.every((d, i) => d < caps[i]), `under the caps: ${delays}`);
      const ratios = delays.map((d) => Math.round(d / r));
      assert.deepEqual(ratios, caps, `just under the caps: ${delays}`);
      // Each wait is really waited (give or take the timer's millisecond).
      for (let i = 0; i < 4; i++) {
        const waited = sockets[i + 1].at - retries[i].at;
        assert.ok(waited >= delays[i] - 2, `attempt ${i + 2} after ${waited} ms, not ${delays[i]}`);
      }
    }
  }
});

test("close codes that reconnecting cannot fix end the session at once", async () => {
  for (const code of [1002, 1003, 1007, 1008, 1009, 1010]) {
    const { ScriptedSocket, sockets } = scripted((ws) => {
      up(ws);
      ws.drop(code);
    });
    const events = [];
    const session = new ResumableSession("ws://scripted/", {
      WebSocket: ScriptedSocket,
      ...quick,
      onevent: (e) => events.push(e),
    });
    await waitFor(() => session.ended !== null, `the end after ${code}`);
    await settle();
    assert.equal(session.ended, `closed with ${code}`);
    assert.deepEqual(events.map((e) => e.type), ["open", "closed", "ended"], `after ${code}`);
    assert.equal(events[1].code, code);
    assert.equal(sockets.length, 1, `no reconnect after ${code}`);
    await assert.rejects(session.send("late"), /over/);
  }
});

test("transient close codes reconnect after the spread and resume the session", async () => {
  for (const code of [1001, 1006, 1011, 1012]) {
    const got = [];
    const { ScriptedSocket, sockets } = scripted((ws, n) => {
      if (n === 1) {
        up(ws);
        ws.receive("one");
        ws.drop(code);
      } else {
        up(ws, true, 0);
      }
    });
    const events = [];
    const session = new ResumableSession("ws://scripted/", {
      WebSocket: ScriptedSocket,
      ...quick,
      reconnectDelayMs: 10,
      random: () => 0.5,
      onmessage: (d) => got.push(d),
      onevent: (e) => events.push(e),
    });
    const opens = () => events.filter((e) => e.type === "open").length;
    await waitFor(() => opens() === 2, `the resume after ${code}`);
    assert.equal(session.ended, null);
    assert.equal(sockets.length, 2);
    const retry = events.find((e) => e.type === "retry");
    assert.deepEqual(retry, { type: "retry", delay: 5 }, `half the spread after ${code}`);
    assert.equal(events.at(-1).resumed, true);
    // The second HELLO names the session and the one message the application took.
    assert.deepEqual(sockets[1].sent[0], encodeHello(ID, 1));
    assert.deepEqual(got, ["one"]);
    await session.close();
    assert.equal(sockets[1].closeCode, 1000);
  }
});

test("1013 (try again later) takes the backoff's next wait, not the spread", async () => {
  // Welcomed each time; closed with 1013, 1013, 1006 (which restarts the schedule), 1013.
  const closes = [1013, 1013, 1006, 1013];
  const { ScriptedSocket, sockets } = scripted((ws, n) => {
    up(ws, n > 1, 0);
    if (n <= closes.length) ws.drop(closes[n - 1]);
  });
  const delays = [];
  const session = new ResumableSession("ws://scripted/", {
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 40, maxMs: 1000, factor: 3 },
    reconnectDelayMs: 10,
    random: () => 0.5,
    onevent: (e) => e.type === "retry" && delays.push(e.delay),
  });
  await waitFor(() => sockets.length === 5 && session.up, "the fifth connection");
  assert.deepEqual(delays, [20, 60, 5, 20]);
  await session.close();
  assert.equal(session.ended, "closed");
});

test("a full replay buffer makes send wait for the server's acknowledgement", async () => {
  for (const limit of ["messages", "bytes"]) {
    let server = null;
    const { ScriptedSocket } = scripted((ws) => {
      server = ws;
    });
    const session = new ResumableSession("ws://scripted/", {
      WebSocket: ScriptedSocket,
      ...quick,
      ...(limit === "messages" ? { maxBufferedMessages: 2 } : { maxBufferedBytes: 4 }),
    });
    // Full while the handshake is under way: two messages of a buffer of two, or 2 + 1 + 3
    // bytes for a buffer of 4.
    await session.send(limit === "messages" ? "a" : "ab");
    await session.send("c");
    let accepted = false;
    const third = session.send("def").then(() => (accepted = true));
    await waitFor(() => server !== null, "the connection");
    up(server);
    await settle();
    assert.equal(accepted, false, `full by ${limit}`);
    assert.equal(server.sent.length, 3, "the buffer replayed on WELCOME");
    server.receive(encodeAck(1).buffer);
    await third;
    assert.equal(server.sent.at(-1), "def", "sent once accepted");
    server.receive(encodeAck(3).buffer);
    await session.close();
  }
  // A message larger than the whole buffer goes, alone, once the buffer is empty.
  const { ScriptedSocket, sockets } = scripted((ws) => up(ws));
  const session = new ResumableSession("ws://scripted/", {
    WebSocket: ScriptedSocket,
    ...quick,
    maxBufferedBytes: 4,
  });
  await session.send("gh");
  let accepted = false;
  const big = session.send("ijklm").then(() => (accepted = true));
  await waitFor(() => session.up, "the session");
  await settle();
  assert.equal(accepted, false, "waits for the buffer to empty");
  sockets[0].receive(encodeAck(1).buffer);
  await big;
  assert.deepEqual(sockets[0].sent.slice(1), ["gh", "ijklm"], "nothing dropped");
  sockets[0].receive(encodeAck(2).buffer);
  await session.close();
});

test("a send waiting on a full buffer fails when the session ends", async () => {
  const { ScriptedSocket, sockets } = scripted(() => {});
  const session = new ResumableSession("ws://scripted/", {
    WebSocket: ScriptedSocket,
    ...quick,
    maxBufferedMessages: 1,
  });
  await session.send("kept");
  const waiting = session.send("waiting");
  await waitFor(() => sockets.length === 1, "the connection");
  up(sockets[0]);
  sockets[0].drop(1008);
  await assert.rejects(waiting, /the session is over/);
  assert.equal(session.ended, "closed with 1008");
  assert.deepEqual(sockets[0].sent.slice(1), ["kept"]);
});

test("close before the first WELCOME ends the handshake under way", async () => {
  const { ScriptedSocket, sockets } = scripted(() => {});
  const session = new ResumableSession("ws://scripted/", { WebSocket: ScriptedSocket, ...quick });
  await waitFor(() => sockets.length === 1, "the connection");
  await session.close();
  assert.equal(session.ended, "closed");
  assert.equal(sockets[0].closeCode, 1000, "the connecting socket is closed, not left to open");
});

test("a typed array or DataView is sent as its bytes", async () => {
  const { ScriptedSocket, sockets } = scripted((ws) => up(ws));
  const session = new ResumableSession("ws://scripted/", { WebSocket: ScriptedSocket, ...quick });
  await waitFor(() => session.up, "the session");
  const words = new Uint16Array([0x0102, 0xfffe]);
  const bytes = new Uint8Array([9, 5, 6, 7, 9]);
  await session.send(words);
  await session.send(new DataView(bytes.buffer, 1, 3));
  await session.send(bytes.subarray(1, 4));
  const ws = sockets[0];
  assert.deepEqual(Array.from(ws.sent[1]), [0, ...new Uint8Array(words.buffer)]);
  assert.deepEqual(Array.from(ws.sent[2]), [0, 5, 6, 7]);
  assert.deepEqual(Array.from(ws.sent[3]), [0, 5, 6, 7]);
  ws.receive(encodeAck(3).buffer);
  await session.close();
});
