// The JavaScript client against tether's own server (`tether serve --resume`, the binary in
// $TETHER_BIN, default target/debug/tether), through a TCP proxy of the test's own that can
// cut every connection. Run: node --experimental-websocket --test clients/js/test/*.test.mjs
// (scripts/test.sh does, after cargo has built the binary).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { ResumableSession, decodeControl, encodeAck, encodeHello } from "../tether-resume.mjs";
import { waitFor as waitUntil } from "./wait.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.TETHER_BIN || path.join(here, "../../../target/debug/tether");
const GUARD_MS = 20000;

/** Starts `tether serve 127.0.0.1:0 ...args`; resolves with its port and the process. */
function serve(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ["serve", "127.0.0.1:0", ...args], {
      stdio: ["pipe", "ignore", "pipe"],
      env: { ...process.env, NO_COLOR: "1" },
    });
    let err = "";
    child.stderr.on("data", (chunk) => {
      err += chunk;
      const m = err.match(/listening on ws:\/\/127\.0\.0\.1:(\d+)/);
      if (m) resolve({ port: Number(m[1]), child });
    });
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`tether serve exited with ${code}: ${err}`)));
  });
}

/** A proxy to 127.0.0.1:target whose connections can all be cut (reset) at once. */
function proxy(target) {
  const sockets = new Set();
  const state = { target };
  const server = net.createServer((client) => {
    const upstream = net.connect(state.target, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: server.address().port,
        cut() {
          for (const s of sockets) s.resetAndDestroy();
        },
        retarget(port) {
          state.target = port;
        },
        close() {
          server.close();
          for (const s of sockets) s.destroy();
        },
      });
    });
  });
}

function waitFor(predicate, what) {
  return waitUntil(predicate, what, GUARD_MS, 5);
}

// Reconnects at once after a cut (no spread), so that every cut finds a connection to cut.
const quick = { backoff: { initialMs: 20, maxMs: 100 }, reconnectDelayMs: 0 };

test("the wire format matches the protocol document", () => {
  const id = new Uint8Array(16).fill(7);
  assert.deepEqual(Array.from(encodeHello(null, 0)), [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const hello = encodeHello(id, 258);
  assert.equal(hello.length, 3 + 16 + 8);
  assert.deepEqual(Array.from(hello.subarray(19)), [0, 0, 0, 0, 0, 0, 1, 2]);
  assert.deepEqual(decodeControl(encodeAck(5)), { type: "ack", delivered: 5 });
  const welcome = new Uint8Array([3, 1, ...id, 1, 0, 0, 0, 0, 0, 0, 0, 9, 7, ...new TextEncoder().encode("expired")]);
  const w = decodeControl(welcome);
  assert.equal(w.resumed, true);
  assert.equal(w.delivered, 9);
  assert.equal(w.reason, "expired");
  assert.throws(() => decodeControl(new Uint8Array([1, 0])), /wrong length/);
  assert.throws(() => decodeControl(new Uint8Array([9])), /unknown control/);
  assert.throws(() => decodeControl(welcome.subarray(0, 27)), /too short/);
});

test("messages round-trip in order, text and binary, and close ends the session", async () => {
  const { port, child } = await serve(["--resume"]);
  try {
    const got = [];
    const events = [];
    const session = new ResumableSession(`ws://127.0.0.1:${port}/`, {
      ...quick,
      onmessage: (d) => got.push(d),
      onevent: (e) => events.push(e.type),
    });
    for (let i = 0; i < 50; i++) await session.send(`m${i}`);
    await session.send(new Uint8Array([0, 1, 2, 255]));
    await waitFor(() => got.length === 51, "51 echoes");
    assert.deepEqual(got.slice(0, 50), Array.from({ length: 50 }, (_, i) => `m${i}`));
    assert.deepEqual(Array.from(got[50]), [0, 1, 2, 255], "binary keeps its bytes");
    await session.close();
    assert.deepEqual(events, ["open", "closed", "ended"]);
    assert.equal(session.ended, "closed");
  } finally {
    child.kill();
  }
});

test("nothing is lost or repeated across cut connections, in either direction", async () => {
  const { port, child } = await serve(["--resume"]);
  const relay = await proxy(port);
  try {
    const got = [];
    const opens = [];
    const session = new ResumableSession(`ws://127.0.0.1:${relay.port}/`, {
      ...quick,
      onmessage: (d) => got.push(d),
      onevent: (e) => {
        if (e.type === "open") opens.push(e);
        assert.notEqual(e.type, "lost", "no session lost");
      },
    });
    const total = 600;
    for (let i = 1; i <= total; i++) {
      await session.send(`n${i}`);
      // Cut every 100 messages, while echoes and acknowledgements are in flight.
      if (i % 100 === 0) relay.cut();
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    await waitFor(() => got.length >= total, `${total} echoes`);
    await session.close();
    assert.deepEqual(got, Array.from({ length: total }, (_, i) => `n${i + 1}`), "exactly once, in order");
    const resumes = opens.filter((o) => o.resumed).length;
    assert.ok(resumes >= 5, `resumed ${resumes} times`);
    assert.equal(opens[0].resumed, false);
  } finally {
    relay.close();
    child.kill();
  }
});

test("after a cut, the reconnect waits a random spread within reconnectDelayMs", async () => {
  const { port, child } = await serve(["--resume"]);
  const relay = await proxy(port);
  try {
    const events = [];
    const got = [];
    const session = new ResumableSession(`ws://127.0.0.1:${relay.port}/`, {
      ...quick,
      reconnectDelayMs: 300,
      random: () => 0.5,
      onmessage: (d) => got.push(d),
      onevent: (e) => events.push({ ...e, at: Date.now() }),
    });
    await session.send("before");
    await waitFor(() => got.length === 1, "the first echo");
    relay.cut();
    await session.send("after");
    await waitFor(() => got.length === 2, "the echo after the cut");
    const retry = events.find((e) => e.type === "retry");
    assert.ok(retry, JSON.stringify(events));
    assert.equal(retry.delay, 150, "half of reconnectDelayMs with random() = 0.5");
    const reopened = events.filter((e) => e.type === "open")[1];
    assert.ok(reopened.resumed);
    assert.ok(reopened.at - retry.at >= 140, `reconnected after ${reopened.at - retry.at} ms`);
    await session.close();
    assert.deepEqual(got, ["before", "after"]);
  } finally {
    relay.close();
    child.kill();
  }
});

test("a session the server does not know is reported lost with what was not acknowledged", async () => {
  const first = await serve(["--resume"]);
  const second = await serve(["--resume"]);
  const relay = await proxy(first.port);
  try {
    const events = [];
    const session = new ResumableSession(`ws://127.0.0.1:${relay.port}/`, {
      ...quick,
      onevent: (e) => events.push(e),
    });
    await session.send("one");
    await waitFor(() => events.some((e) => e.type === "open"), "open");
    // The next connection lands on a server that never heard of the session.
    relay.retarget(second.port);
    relay.cut();
    await waitFor(() => session.ended !== null, "the end");
    const lost = events.find((e) => e.type === "lost");
    assert.ok(lost, JSON.stringify(events));
    assert.equal(lost.reason, "unknown");
    assert.equal(session.ended, "lost: unknown");
    await assert.rejects(session.send("late"), /over/);
  } finally {
    relay.close();
    first.child.kill();
    second.child.kill();
  }
});

test("against a server without sessions the handshake fails and attempts are bounded", async () => {
  const { port, child } = await serve([]);
  try {
    const events = [];
    const session = new ResumableSession(`ws://127.0.0.1:${port}/`, {
      ...quick,
      maxAttempts: 3,
      onevent: (e) => events.push(e),
    });
    await waitFor(() => session.ended !== null, "the end");
    // The platform refuses a 101 without the offered subprotocol (as browsers do), or
    // opens it without one: either way the session never starts.
    assert.match(session.ended, /^(gave up after 3 failed attempts|sessions not offered)$/);
    assert.ok(!events.some((e) => e.type === "open"), JSON.stringify(events));
    await assert.rejects(session.send("x"), /over/);
  } finally {
    child.kill();
  }
});
