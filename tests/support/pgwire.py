"""A loopback TCP relay in front of PostgreSQL that counts round trips on the wire.

A client waits for the server once per ``Query`` (simple protocol) and once per ``Sync``
(extended protocol: Parse/Bind/Execute … Sync); each ends with the server's
ReadyForQuery. Counting those two frontend messages counts what a client really waits
for, whatever the driver does underneath (prepares, resets, pipelined batches). Plain
connections only: a relay cannot read TLS (``sslmode=disable`` in the URL it serves).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

__all__ = ["WireCounter", "counting_relay"]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class WireCounter:
    """Round trips (``Query`` + ``Sync``) and connections seen, over every connection."""

    def __init__(self) -> None:
        self.messages: Counter[str] = Counter()
        self.connections = 0

    @property
    def round_trips(self) -> int:
        return self.messages["Q"] + self.messages["S"]

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Untyped messages first: SSL/GSS requests (refused by the server) and the startup packet.
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            writer.write(head + await reader.readexactly(length - 8))
            if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                break
        while True:
            head = await reader.readexactly(5)
            kind, length = head[:1].decode("ascii"), struct.unpack("!i", head[1:])[0]
            self.messages[kind] += 1
            writer.write(head + await reader.readexactly(length - 4))
            await writer.drain()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     host: str, port: int) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection(host, port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(self._client_to_server(client_r, server_w)),
                 asyncio.ensure_future(pipe(server_r, client_w))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()
            await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def counting_relay(url: str) -> AsyncIterator[tuple[str, WireCounter]]:
    """Relay to the TCP address of ``url``; yields the URL to use instead and its counter."""
    parts = urlsplit(url)
    counter = WireCounter()
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    relays: set[asyncio.Task[None]] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(counter._serve(reader, writer, host, port))
        relays.add(task)
        task.add_done_callback(relays.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    relay_port = server.sockets[0].getsockname()[1]
    user = f"{parts.username}@" if parts.username else ""
    query = "&".join(filter(None, [parts.query, "sslmode=disable"]))
    try:
        yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{relay_port}", query=query)), counter
    finally:
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
