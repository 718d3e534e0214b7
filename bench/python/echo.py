"""Python `websockets` echo server for tether's compression benchmark.

    python bench/python/echo.py [port]     (port 0, the default, picks a free one)

Uses the asyncio implementation with the library's defaults, so permessage-deflate is on
(`compression="deflate"`). Prints `LISTENING 127.0.0.1:<port>` once it listens, echoes every
message as it came (text as text), and exits when its standard input closes, like the
harness's own servers. The orchestrator starts it under `taskset`.
"""

import asyncio
import os
import sys
import threading

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def echo(ws):
    # The load generator drops its connections without a closing handshake at the end of a
    # run: that is not worth a traceback.
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


def exit_when_stdin_closes():
    def wait():
        while sys.stdin.buffer.read(64):
            pass
        os._exit(0)

    threading.Thread(target=wait, daemon=True).start()


async def main(port):
    async with serve(echo, "127.0.0.1", port) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"LISTENING 127.0.0.1:{bound}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    exit_when_stdin_closes()
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
