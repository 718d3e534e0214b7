// A client of tether's resume protocol (docs/resume-protocol.md) for browsers and Node, on
// the platform's own `WebSocket`. No dependencies.
//
//   import { ResumableSession } from "./tether-resume.mjs";
//   const session = new ResumableSession("wss://example.com/feed", {
//     onmessage: (data) => console.log(data),          // string or Uint8Array, in order, once
//     onevent: (e) => console.log(e.type, e),          // open, closed, retry, lost, ended
//   });
//   await session.send("hello");                       // waits while the buffer is full
//   await session.close();                             // after the server acknowledged all
//
// Guarantees, across any number of reconnects: what `send` accepted reaches the server's
// application exactly once and in order, and `onmessage` sees the server's messages exactly
// once and in order (a message counts as delivered once `onmessage` returned for it). A session
// the server cannot resume is reported (`lost`, with the messages it never acknowledged) and
// never continued silently.

export const SUBPROTOCOL = "tether.resume.1";

const DATA = 0x00;
const ACK = 0x01;
const HELLO = 0x02;
const WELCOME = 0x03;
const VERSION = 1;

/** Close codes after which reconnecting cannot help: the peer rejected what we send. */
const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);
const TRY_AGAIN_LATER = 1013;
/** The server closes a connection whose session another connection took over with this. */
export const SUPERSEDED = 4000;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function u64(view, offset) {
  return Number(view.getBigUint64(offset));
}

/** HELLO: 0x02, version, id length, id, delivered (u64). */
export function encodeHello(id, delivered) {
  const idLen = id ? 16 : 0;
  const out = new Uint8Array(3 + idLen + 8);
  out[0] = HELLO;
  out[1] = VERSION;
  out[2] = idLen;
  if (id) out.set(id, 3);
  new DataView(out.buffer).setBigUint64(3 + idLen, BigInt(delivered));
  return out;
}

/** ACK: 0x01, delivered (u64). */
export function encodeAck(delivered) {
  const out = new Uint8Array(9);
  out[0] = ACK;
  new DataView(out.buffer).setBigUint64(1, BigInt(delivered));
  return out;
}

/**
 * Decodes a control message (a binary frame whose first byte is not the data marker).
 * Throws on anything malformed, as the protocol requires (the caller closes with 1002).
 */
export function decodeControl(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (bytes[0]) {
    case ACK:
      if (bytes.length !== 9) throw new Error("ACK of the wrong length");
      return { type: "ack", delivered: u64(view, 1) };
    case WELCOME: {
      if (bytes.length < 28) throw new Error("WELCOME too short");
      if (bytes[1] !== VERSION) throw new Error(`resume protocol version ${bytes[1]}`);
      const resumed = bytes[18];
      if (resumed > 1) throw new Error("WELCOME: resumed is not 0 or 1");
      const reasonLen = bytes[27];
      if (bytes.length !== 28 + reasonLen) throw new Error("WELCOME of the wrong length");
      return {
        type: "welcome",
        id: bytes.slice(2, 18),
        resumed: resumed === 1,
        delivered: u64(view, 19),
        reason: textDecoder.decode(bytes.subarray(28)),
      };
    }
    case HELLO:
      throw new Error("HELLO from a server");
    default:
      throw new Error(`unknown control message ${bytes[0]}`);
  }
}

function hex(id) {
  return Array.from(id, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * One end of a resumable session, client side. Options (all optional):
 * - `WebSocket`: the constructor to use (default: the global one);
 * - `onmessage(data)`: each server message, `string` or `Uint8Array`;
 * - `onevent(event)`: `{type: "open", resumed, replayed}`, `{type: "closed", code, reason}`,
 *   `{type: "retry", delay}`, `{type: "lost", reason, unacknowledged}`, `{type: "fatal",
 *   reason}` (a protocol error, or a server without sessions; `ended` follows), `{type:
 *   "ended", reason}`;
 * - `continueAfterLoss`: start a new session after a loss instead of ending (default false);
 * - `maxBufferedMessages` (4096), `maxBufferedBytes` (1 MiB): the replay buffer;
 * - `ackEvery` (32), `ackDelayMs` (100): acknowledgement coalescing;
 * - `backoff`: `{initialMs: 1000, maxMs: 30000, factor: 2}`, full jitter;
 * - `reconnectDelayMs` (1000): after a resumed or new session's connection ends, wait a
 *   random time in [0, reconnectDelayMs] before reconnecting, so that the clients of a
 *   restarting server do not all return at once (0: at once); a close with 1013 (try again
 *   later) takes the backoff's next wait instead;
 * - `maxAttempts`: give up after this many failed attempts in a row (default: never). A
 *   browser fails the handshake itself against a server that does not select the
 *   subprotocol (Chromium: "Sent non-empty 'Sec-WebSocket-Protocol' header but no response
 *   was received"), and a page cannot tell that from a server that is down, so only this
 *   limit ends such a session; a platform that does open the socket without the subprotocol
 *   ends it at once ("sessions not offered");
 * - `random`: a function returning [0, 1) (default Math.random), for tests.
 */
export class ResumableSession {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket implementation");
    this.maxMessages = options.maxBufferedMessages ?? 4096;
    this.maxBytes = options.maxBufferedBytes ?? 1 << 20;
    this.ackEvery = options.ackEvery ?? 32;
    this.ackDelayMs = options.ackDelayMs ?? 100;
    this.backoff = { initialMs: 1000, maxMs: 30000, factor: 2, ...(options.backoff ?? {}) };
    this.random = options.random ?? Math.random;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 1000;
    this.maxAttempts = options.maxAttempts ?? Infinity;

    this.id = null; // Uint8Array(16) once the server named the session
    this.sent = 0; // our messages, numbered from 1
    this.unacked = []; // {kind, payload} for numbers peerDelivered+1 ..= sent
    this.unackedBytes = 0;
    this.peerDelivered = 0;
    this.delivered = 0; // server messages our application took
    this.ackTold = 0;
    this.ackTimer = null;
    this.ws = null;
    this.up = false; // a connection carries the session (after WELCOME)
    this.ended = null; // the reason, once over
    this.closing = false;
    this.attempt = 0;
    this.spaceWaiters = [];
    this.closeWaiters = [];
    this.connect();
  }

  /**
   * Sends text or bytes (an ArrayBuffer or a view of one); resolves once accepted into the
   * replay buffer (waits while full; a message larger than the whole buffer goes alone).
   */
  async send(data) {
    const kind = typeof data === "string" ? "text" : "binary";
    // A view (typed array, DataView) sends its own bytes, whatever its element type.
    const payload =
      kind === "text"
        ? data
        : ArrayBuffer.isView(data)
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice()
          : new Uint8Array(data);
    const size = kind === "text" ? textEncoder.encode(payload).length : payload.length;
    for (;;) {
      if (this.ended !== null || this.closing) throw new Error("the session is over");
      const full =
        this.unacked.length > 0 &&
        (this.unacked.length >= this.maxMessages || this.unackedBytes + size > this.maxBytes);
      if (!full) break;
      await new Promise((resolve) => this.spaceWaiters.push(resolve));
    }
    this.sent += 1;
    this.unacked.push({ kind, payload, size });
    this.unackedBytes += size;
    if (this.up) this.transmit({ kind, payload });
  }

  /** Waits until the server acknowledged everything sent, then ends the session (1000). */
  async close() {
    while (this.ended === null && this.unacked.length > 0) {
      await new Promise((resolve) => this.spaceWaiters.push(resolve));
    }
    if (this.ended !== null) return;
    this.closing = true;
    const done = new Promise((resolve) => this.closeWaiters.push(resolve));
    if (this.ws && this.up) {
      this.ws.close(1000);
    } else {
      // No connection carries the session: a handshake under way must not go on to start one.
      this.ws?.close(1000);
      this.end("closed");
    }
    await done;
  }

  emit(event) {
    this.options.onevent?.(event);
  }

  wake() {
    const waiters = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const w of waiters) w();
  }

  end(reason) {
    if (this.ended !== null) return;
    this.ended = reason;
    this.up = false;
    clearTimeout(this.ackTimer);
    this.emit({ type: "ended", reason });
    this.wake();
    for (const w of this.closeWaiters.splice(0)) w();
  }

  transmit(message) {
    if (message.kind === "text") {
      this.ws.send(message.payload);
    } else {
      const framed = new Uint8Array(message.payload.length + 1);
      framed[0] = DATA;
      framed.set(message.payload, 1);
      this.ws.send(framed);
    }
  }

  connect() {
    if (this.ended !== null) return;
    this.attempt += 1;
    const ws = new this.WebSocket(this.url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    let welcomed = false;
    ws.onopen = () => {
      opened = true;
      if (ws.protocol !== SUBPROTOCOL) {
        // A server without sessions: the default is to fail clearly.
        this.emit({ type: "fatal", reason: "the server does not offer sessions" });
        ws.close(1000);
        this.end("sessions not offered");
        return;
      }
      ws.send(encodeHello(this.id, this.delivered));
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || this.ended !== null) return;
      try {
        if (typeof event.data === "string") {
          if (!welcomed) throw new Error("text before WELCOME");
          this.deliver(event.data);
          return;
        }
        const bytes = new Uint8Array(event.data);
        if (bytes.length === 0) throw new Error("empty binary message");
        if (bytes[0] === DATA) {
          if (!welcomed) throw new Error("data before WELCOME");
          this.deliver(bytes.slice(1));
          return;
        }
        const control = decodeControl(bytes);
        if (control.type === "welcome") {
          if (welcomed) throw new Error("a second WELCOME");
          welcomed = true;
          this.welcome(control);
        } else {
          if (!welcomed) throw new Error("ACK before WELCOME");
          this.acknowledge(control.delivered);
        }
      } catch (err) {
        this.emit({ type: "fatal", reason: String(err.message ?? err) });
        ws.close(1002);
        this.end(`protocol error: ${err.message ?? err}`);
      }
    };
    // Some platforms (Node's undici) report a failed handshake with `error` and never
    // `close`: a failure before opening ends the attempt at once.
    ws.onerror = () => {
      if (!opened && this.ws === ws) {
        const onclose = ws.onclose;
        ws.onerror = null;
        ws.onclose = null;
        onclose({ code: 1006, reason: "" });
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.up = false;
      this.ws = null;
      clearTimeout(this.ackTimer);
      this.ackTimer = null;
      this.emit({ type: "closed", code: event.code, reason: event.reason });
      if (this.ended !== null) return;
      if (this.closing || event.code === 1000) {
        this.end(this.closing ? "closed" : "closed by server");
        return;
      }
      if (event.code === SUPERSEDED) {
        this.lose("superseded");
        return;
      }
      if (FATAL_CLOSE_CODES.has(event.code)) {
        this.end(`closed with ${event.code}`);
        return;
      }
      // Transient. A connection that got as far as WELCOME restarts the schedule and waits
      // a random spread; 1013 (try again later) and anything that failed earlier back off
      // with full jitter.
      const tryLater = event.code === TRY_AGAIN_LATER;
      if (welcomed && !tryLater) this.attempt = 0;
      if (this.attempt >= this.maxAttempts) {
        this.end(`gave up after ${this.attempt} failed attempts`);
        return;
      }
      const step = Math.max(0, this.attempt - 1);
      const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * this.backoff.factor ** step);
      const spread = opened && welcomed && !tryLater;
      const delay = this.random() * (spread ? this.reconnectDelayMs : cap);
      this.emit({ type: "retry", delay });
      setTimeout(() => this.connect(), delay);
    };
  }

  welcome({ id, resumed, delivered, reason }) {
    const asked = this.id !== null;
    if (asked && !resumed) {
      this.lose(reason || "unknown", id);
      if (this.ended !== null) return;
    } else if (!asked) {
      this.id = id;
    }
    this.acknowledge(delivered);
    this.up = true;
    this.ackTold = this.delivered;
    const replay = this.unacked.slice();
    for (const message of replay) this.transmit(message);
    const wasResumed = asked && resumed;
    this.emit({
      type: "open",
      resumed: wasResumed,
      replayed: wasResumed ? replay.length : 0,
      id: hex(this.id),
    });
  }

  /** The server cannot resume: report it, with what it never acknowledged. */
  lose(reason, newId = null) {
    const unacknowledged = this.unacked.map((m) => m.payload);
    this.emit({ type: "lost", reason, unacknowledged });
    if (!this.options.continueAfterLoss || newId === null) {
      if (this.ws) this.ws.close(1000);
      this.end(`lost: ${reason}`);
      return;
    }
    // A new session, numbered from the start in both directions.
    this.id = newId;
    this.sent = 0;
    this.unacked = [];
    this.unackedBytes = 0;
    this.peerDelivered = 0;
    this.delivered = 0;
    this.ackTold = 0;
    this.wake();
  }

  acknowledge(peerDelivered) {
    if (peerDelivered > this.sent || peerDelivered < this.peerDelivered) {
      throw new Error(`acknowledgement ${peerDelivered} out of range`);
    }
    while (this.peerDelivered < peerDelivered) {
      const m = this.unacked.shift();
      this.unackedBytes -= m.size;
      this.peerDelivered += 1;
    }
    this.wake();
  }

  deliver(data) {
    try {
      this.options.onmessage?.(data);
    } catch (err) {
      // The application had the message: it counts as delivered. Its error is its own, not
      // the protocol's: report it without breaking the session.
      queueMicrotask(() => {
        throw err;
      });
    }
    this.delivered += 1;
    if (this.delivered - this.ackTold >= this.ackEvery) {
      this.sendAck();
    } else if (this.ackTimer === null) {
      this.ackTimer = setTimeout(() => this.sendAck(), this.ackDelayMs);
    }
  }

  sendAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (this.up && this.ws && this.ackTold !== this.delivered) {
      this.ackTold = this.delivered;
      this.ws.send(encodeAck(this.delivered));
    }
  }
}
