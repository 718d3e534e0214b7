"""Interop peer: a scripted server for tether's client, built on websockets' sans-I/O
`ServerProtocol`, that sends what a well-behaved server never would.

Listens on 127.0.0.1 with an ephemeral port and prints the port as its first line. After the
opening handshake it sends, depending on the path:

  /invalid-utf8               a text frame whose payload is not UTF-8 (C3 28)
  /reserved-opcode            a frame with the reserved opcode 0x3
  /binary?size=N&fragments=K  a binary message of N bytes in K frames (default 1)

then waits for the client's Close frame and prints `client-closed CODE 'REASON'` (or
`client-eof` when the connection ended without one). Raw frames are written straight to the
socket; the protocol object only does the handshake and parses what the client sends.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

from common import binary_payload, report, setup
from websockets.http11 import Request
from websockets.server import ServerProtocol

READ_TIMEOUT = 20.0


def flush(proto: ServerProtocol, writer: asyncio.StreamWriter) -> None:
    for data in proto.data_to_send():
        if data:
            writer.write(data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    proto = ServerProtocol(max_size=None)
    try:
        request = None
        while request is None:
            data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
            if not data:
                return
            proto.receive_data(data)
            for event in proto.events_received():
                if isinstance(event, Request):
                    request = event
        proto.send_response(proto.accept(request))
        flush(proto, writer)

        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == "/invalid-utf8":
            writer.write(b"\x81\x02\xc3\x28")
        elif url.path == "/reserved-opcode":
            writer.write(b"\x83\x00")
        elif url.path == "/binary":
            payload = binary_payload(int(query["size"][0]))
            fragments = int(query.get("fragments", ["1"])[0])
            step = -(-len(payload) // fragments)
            chunks = [payload[i * step : (i + 1) * step] for i in range(fragments)]
            proto.send_binary(chunks[0], fin=fragments == 1)
            for i, chunk in enumerate(chunks[1:], start=2):
                proto.send_continuation(chunk, fin=i == fragments)
            flush(proto, writer)
        else:
            report(f"unknown path {url.path}")
        await writer.drain()

        while True:
            data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            proto.events_received()
            if proto.close_rcvd is not None:
                report(f"client-closed {proto.close_rcvd.code} {proto.close_rcvd.reason!r}")
                break
            if not data:
                report("client-eof")
                break
        # Answer the Close (the protocol queued the echo), then end the TCP connection.
        flush(proto, writer)
        await writer.drain()
    except (ConnectionError, asyncio.TimeoutError) as e:
        report(f"connection-error {type(e).__name__}")
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    report(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    setup()
    asyncio.run(main())
