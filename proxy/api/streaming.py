"""All HTTP streaming in one place: Range parsing, request bodies, blob responses.

Rules (aiohttp): headers and ``Content-Length`` are set before ``prepare()`` (else
aiohttp switches to chunked encoding); bodies move in bounded chunks; a full-blob
response verifies the digest while streaming unless the storage vouches for the bytes
(``BlobReader.verified``), and aborts the connection on mismatch or upstream failure
(never a clean end of a truncated body)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from typing import AsyncGenerator, AsyncIterator, Mapping, Protocol

from aiohttp import web

from ..backend import BlobReader
from ..oci.errors import Errors, RegistryError
from . import relay
from .state import CONFIG, METRICS

__all__ = ["ByteRange", "StreamPart", "parse_range", "request_chunks", "read_body", "send_blob", "send_direct", "send_stream", "CHUNK"]

CHUNK = 1024 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ByteRange:
    __slots__ = ("start", "end")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end  # inclusive end

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range (RFC 9110 §14.1.2) clipped to ``size``; ``None`` for no
    header. Multi-range, malformed or unsatisfiable ranges raise ``RANGE_INVALID``."""
    if header is None:
        return None
    unsatisfiable = RegistryError(
        Errors.RANGE_INVALID, {"range": header[:100], "size": size}, headers={"Content-Range": f"bytes */{size}"}
    )
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise unsatisfiable
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(size - count, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise unsatisfiable
    return ByteRange(start, min(end, size - 1))


async def request_chunks(request: web.Request, limit: int | None = None) -> AsyncIterator[bytes]:
    """The request body in bounded chunks; ``limit`` caps the total (``SIZE_INVALID``)."""
    metrics = request.app[METRICS]
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        if limit is not None and total > limit:
            raise RegistryError(Errors.SIZE_INVALID, {"limit": limit}, message="request body exceeds the declared length")
        metrics.bytes_in.inc(len(chunk))
        yield chunk


async def read_body(request: web.Request, limit: int, error=Errors.MANIFEST_TOO_LARGE) -> bytes:
    """A small body read whole, refused past ``limit`` without reading further."""
    if request.content_length is not None and request.content_length > limit:
        raise RegistryError(error, {"size": request.content_length, "limit": limit})
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise RegistryError(error, {"limit": limit})
    request.app[METRICS].bytes_in.inc(len(data))
    return bytes(data)


async def send_blob(
    request: web.Request,
    reader: BlobReader,
    headers: Mapping[str, str],
    *,
    status: int = 200,
    verify: bool = True,
) -> web.StreamResponse:
    """Stream ``reader`` as the response body and close it, whatever happens."""
    metrics = request.app[METRICS]
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = reader.length
    metrics.in_flight_streams.inc()
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        # Hash whole blobs the storage doesn't vouch for; a match is recorded (confirm).
        verify = verify and not reader.verified and reader.start == 0 and reader.length == reader.size
        if not await send_direct(request, reader, reader.digest if verify else None):
            if reader.path is not None and not verify:
                await _sendfile(request, response, reader)
            else:
                await _copy(request, response, reader, verify)
        if verify:
            reader.confirm()
        await response.write_eof()
        metrics.bytes_out.inc(reader.length)
        return response
    finally:
        # A failure once the headers are out propagates to ``render_errors``, which
        # aborts the connection: the one place that decides what a failure looks like.
        metrics.in_flight_streams.dec()
        await reader.close()


async def _copy(request: web.Request, response: web.StreamResponse, reader: BlobReader, verify: bool) -> None:
    hasher = hashlib.new(reader.digest.split(":", 1)[0]) if verify else None
    sent = 0
    async for chunk in reader:
        sent += len(chunk)
        if hasher is None:
            await response.write(chunk)
        elif sent < reader.length and len(chunk) > 256 * 1024:
            # hashlib releases the GIL on large buffers: hash beside the network write.
            await asyncio.gather(asyncio.to_thread(hasher.update, chunk), response.write(chunk))
        else:
            hasher.update(chunk)
            if sent == reader.length:
                _check_digest(reader, hasher.hexdigest())  # before the last bytes leave
            await response.write(chunk)
    if verify and reader.length == 0:
        _check_digest(reader, hasher.hexdigest())  # type: ignore[union-attr]
    if sent != reader.length:
        raise RegistryError(Errors.UNAVAILABLE, {"expected": reader.length, "received": sent},
                            message="backend stream ended early")


async def send_direct(request: web.Request, reader: BlobReader, digest: str | None) -> bool:
    """Send the reader's bytes from a worker thread (``relay.py``) — ``sendfile`` from a
    local file, or socket to socket from the backend — when the reader and the client
    connection allow it; hashed against ``digest`` when given. ``False``: nothing was
    sent, the caller streams through the event loop."""
    sink = relay.client_socket(request)  # None for TLS, or while earlier bytes are queued
    if sink is None:
        return False
    # A client that stops reading is given up after ``server.body_timeout``.
    timeout = request.app[CONFIG].server.body_timeout
    if reader.path is not None:
        await relay.send_file(reader.path, reader.start, reader.length, sink, timeout, digest)
        return True
    source = reader.detach()
    if source is None:
        sink.close()
        return False
    await relay.relay(source, sink, digest, timeout)
    return True


def _check_digest(reader: BlobReader, hexdigest: str) -> None:
    if f"{reader.digest.split(':', 1)[0]}:{hexdigest}" != reader.digest:
        raise RegistryError(Errors.UNAVAILABLE, {"digest": reader.digest}, message="backend blob failed digest verification")


async def _sendfile(request: web.Request, response: web.StreamResponse, reader: BlobReader) -> None:
    """Zero-copy from a local file on the event loop's transport (where ``send_direct``
    could not take the socket); TLS transports can't, so they take the chunk loop."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client disconnected")
    assert reader.path is not None
    with open(reader.path, "rb") as fobj:
        try:
            await asyncio.get_running_loop().sendfile(transport, fobj, reader.start, reader.length)
            return
        except NotImplementedError:
            pass
    async for chunk in reader:
        await response.write(chunk)


class StreamPart(Protocol):
    """A piece of a generated body that writes itself (a blob relayed socket to socket);
    returns the bytes it sent."""

    async def send(self, request: web.Request, response: web.StreamResponse) -> int: ...


async def send_stream(
    request: web.Request,
    chunks: AsyncGenerator["bytes | StreamPart", None],
    headers: Mapping[str, str],
    *,
    status: int = 200,
    length: int | None = None,
) -> web.StreamResponse:
    """Stream a generated body (``length`` known: ``Content-Length``, else chunked).

    The generator is closed whatever happens (so its backend streams are released when
    the client goes away); if it fails once the headers are out, or yields a different
    number of bytes than ``length``, the error propagates and the connection is aborted
    (``middleware.render_errors``), never ended cleanly."""
    metrics = request.app[METRICS]
    response = web.StreamResponse(status=status, headers=headers)
    if length is not None:
        response.content_length = length
    metrics.in_flight_streams.inc()
    sent = 0
    try:
        async with contextlib.aclosing(chunks):
            await response.prepare(request)
            async for chunk in chunks:
                if isinstance(chunk, (bytes, bytearray, memoryview)):
                    await response.write(chunk)
                    sent += len(chunk)
                else:
                    sent += await chunk.send(request, response)
        if length is not None and sent != length:
            raise RuntimeError(f"generated {sent} bytes, promised {length}")
        await response.write_eof()
        return response
    finally:
        # As in ``send_blob``: a failure after the headers aborts the connection
        # (``render_errors``); the generator is closed above whatever happened.
        metrics.bytes_out.inc(sent)
        metrics.in_flight_streams.dec()
