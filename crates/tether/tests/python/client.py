"""Interop peer: a Python `websockets` asyncio client for tether's server.

    client.py URL SCENARIO

Scenarios (each prints result lines on stdout and exits 0, or exits 1 on a mismatch):

  echo        sends text and binary messages of every size in common.SIZES and the
              non-ASCII texts; checks each echo byte for byte and prints `echoed KIND SIZE`;
              then closes with 1000 and prints `done`.
  ping        pings, prints `pong SECONDS`, then checks one echo: `echoed after-ping`.
  close       closes with 1000 'python done ✓'; prints `closed clean|unclean CODE 'REASON'`
              with the server's answering Close frame.
  wait-close  checks one echo, prints `ready`, then waits for the server to close and prints
              `closed CODE 'REASON'`.

Compression is off (compression=None): tether has no permessage-deflate yet; it lands in a
later issue. The proxy is off too, so that proxy variables in the environment don't matter.
"""

from __future__ import annotations

import asyncio
import sys

from common import NON_ASCII, SIZES, binary_payload, report, setup, text_payload
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

TIMEOUT = 30.0


def fail(msg: str) -> None:
    report(f"FAIL {msg}")
    sys.exit(1)


async def check_echo(ws: ClientConnection, message: str | bytes, label: str) -> None:
    await ws.send(message)
    got = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if type(got) is not type(message):
        fail(f"{label}: sent {type(message).__name__}, got {type(got).__name__}")
    if got != message:
        first = next((i for i, (a, b) in enumerate(zip(got, message)) if a != b), None)
        fail(f"{label}: echo differs (got {len(got)} long, first difference at {first})")
    report(f"echoed {label}")


async def echo(ws: ClientConnection) -> None:
    for size in SIZES:
        await check_echo(ws, binary_payload(size), f"binary {size}")
        await check_echo(ws, text_payload(size), f"text {size}")
    for text in NON_ASCII:
        await check_echo(ws, text, f"non-ascii {len(text.encode())}")
    await ws.close(1000, "")
    report("done")


async def ping(ws: ClientConnection) -> None:
    pong = await ws.ping(b"tether")
    latency = await asyncio.wait_for(pong, TIMEOUT)
    report(f"pong {latency:.6f}")
    await check_echo(ws, "after ping", "after-ping")


async def close(ws: ClientConnection) -> None:
    await asyncio.wait_for(ws.close(1000, "python done ✓"), TIMEOUT)
    try:
        await ws.recv()
        fail("recv after close returned a message")
    except ConnectionClosedOK:
        clean = "clean"
    except ConnectionClosedError:
        clean = "unclean"
    report(f"closed {clean} {ws.close_code} {ws.close_reason!r}")


async def wait_close(ws: ClientConnection) -> None:
    await check_echo(ws, "hello", "hello")
    report("ready")
    try:
        message = await asyncio.wait_for(ws.recv(), TIMEOUT)
        fail(f"expected the server to close, got a message of {len(message)}")
    except ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    report(f"closed {ws.close_code} {ws.close_reason!r}")


SCENARIOS = {"echo": echo, "ping": ping, "close": close, "wait-close": wait_close}


async def main(url: str, scenario: str) -> None:
    async with connect(
        url,
        compression=None,
        max_size=None,
        proxy=None,
        ping_interval=None,
        open_timeout=TIMEOUT,
    ) as ws:
        await SCENARIOS[scenario](ws)


if __name__ == "__main__":
    setup()
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
