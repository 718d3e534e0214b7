"""Interop peer: a Python `websockets` asyncio server for tether's client.

    server.py [none|deflate]

Listens on 127.0.0.1 with an ephemeral port and prints the port as its first line. Paths:

  /echo                       sends every message back; when the client closes, prints
                              `closed CODE 'REASON'` (the client's Close frame).
  /close?code=C&reason=R      closes at once with C and R; prints `closed-by-server CODE
                              'REASON'` with the Close frame the client answered with.

The argument sets websockets' `compression`: `none` (the default here: compression=None, so
the tests of the uncompressed path stay uncompressed whatever tether offers) or `deflate`
(websockets' own default, permessage-deflate on). With `deflate`, each connection first prints
`extensions HEADER` (the Sec-WebSocket-Extensions response header sent, or None) and the
`negotiated ...` line of common.describe_extensions.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

from common import compression_mode, describe_extensions, report, setup
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


COMPRESSION: str | None = None


async def handler(ws: ServerConnection) -> None:
    if COMPRESSION is not None:
        report(f"extensions {ws.response.headers.get('Sec-WebSocket-Extensions')}")
        report(describe_extensions(ws.protocol.extensions))
    url = urlsplit(ws.request.path)
    query = parse_qs(url.query, keep_blank_values=True)
    if url.path == "/echo":
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        report(f"closed {ws.close_code} {ws.close_reason!r}")
    elif url.path == "/close":
        code = int(query["code"][0])
        reason = query.get("reason", [""])[0]
        await ws.close(code, reason)
        report(f"closed-by-server {ws.close_code} {ws.close_reason!r}")
    else:
        report(f"unknown path {url.path}")
        await ws.close(1008, "unknown path")


async def main() -> None:
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=COMPRESSION,
        max_size=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        report(port)
        await asyncio.Future()


if __name__ == "__main__":
    setup()
    if len(sys.argv) > 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMPRESSION = compression_mode(sys.argv[1] if len(sys.argv) == 2 else "none")
    asyncio.run(main())
