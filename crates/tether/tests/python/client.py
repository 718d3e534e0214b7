"""Interop peer: a Python `websockets` asyncio client for tether's server.

    client.py URL SCENARIO [none|deflate]

Scenarios (each prints result lines on stdout and exits 0, or exits 1 on a mismatch):

  echo        sends text and binary messages of every size in common.SIZES and the
              non-ASCII texts; checks each echo byte for byte and prints `echoed KIND SIZE`;
              then closes with 1000 and prints `done`.
  ping        pings, prints `pong SECONDS`, then checks one echo: `echoed after-ping`.
  close       closes with 1000 'python done ✓'; prints `closed clean|unclean CODE 'REASON'`
              with the server's answering Close frame.
  wait-close  checks one echo, prints `ready`, then waits for the server to close and prints
              `closed CODE 'REASON'`.
  compress    for compression: prints `extensions HEADER` (the server's
              Sec-WebSocket-Extensions response header, or None) and the `negotiated ...` line
              of common.describe_extensions, then sends, for every size in
              common.COMPRESSION_SIZES, JSON-like text (compressible), random bytes
              (incompressible) and JSON-like bytes as a binary message, checks each echo and
              prints `echoed json|random|json-binary SIZE`; then the non-ASCII texts
              (`echoed non-ascii SIZE`); closes with 1000 and prints `done`.

The last argument sets websockets' `compression`: `none` (the default here: compression=None,
which keeps the tests of the uncompressed path uncompressed) or `deflate` (websockets' own
default, permessage-deflate on). The proxy is off, so that proxy variables in the environment
don't matter.
"""

from __future__ import annotations

import asyncio
import sys

from common import (
    COMPRESSION_SIZES,
    NON_ASCII,
    SIZES,
    binary_payload,
    compression_mode,
    describe_extensions,
    json_text,
    random_bytes,
    report,
    setup,
    text_payload,
)
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


async def compress(ws: ClientConnection) -> None:
    report(f"extensions {ws.response.headers.get('Sec-WebSocket-Extensions')}")
    report(describe_extensions(ws.protocol.extensions))
    for size in COMPRESSION_SIZES:
        await check_echo(ws, json_text(size), f"json {size}")
        await check_echo(ws, random_bytes(size, size), f"random {size}")
        await check_echo(ws, json_text(size).encode(), f"json-binary {size}")
    for text in NON_ASCII:
        await check_echo(ws, text, f"non-ascii {len(text.encode())}")
    await ws.close(1000, "")
    report("done")


SCENARIOS = {
    "echo": echo,
    "ping": ping,
    "close": close,
    "wait-close": wait_close,
    "compress": compress,
}


async def main(url: str, scenario: str, compression: str | None) -> None:
    async with connect(
        url,
        compression=compression,
        max_size=None,
        proxy=None,
        ping_interval=None,
        open_timeout=TIMEOUT,
    ) as ws:
        await SCENARIOS[scenario](ws)


if __name__ == "__main__":
    setup()
    if len(sys.argv) not in (3, 4) or sys.argv[2] not in SCENARIOS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode = compression_mode(sys.argv[3] if len(sys.argv) == 4 else "none")
    asyncio.run(main(sys.argv[1], sys.argv[2], mode))
