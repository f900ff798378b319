"""Blob bodies relayed socket to socket (or sent from a file) in a worker thread.

When a backend hands over its plain-TCP upstream connection (``BlobReader.detach``) and
the client's connection is plain TCP too, the body skips aiohttp's client stream reader
and the server transport: one thread per stream runs ``recv_into`` / hash / ``sendall``
over duplicates of the two sockets, releasing the GIL in each call. On the bench machine
this took about half the CPU per byte of the chunk loop, digest verification included
(hashing in the same thread, on bytes still in cache, beat handing them to another).

Files of the embedded storage go the same way with ``sendfile(2)`` (``send_file``), so
concurrent streams spread over every core instead of sharing the event-loop thread.

A dedicated thread, not the loop's default executor: a stream can hold it for minutes,
and the executor also runs DNS lookups and disk work that must not queue behind it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from aiohttp import web

from ..backend import SocketSource
from ..oci.errors import Errors, RegistryError

__all__ = ["client_socket", "relay", "send_file"]

_CHUNK = 1024 * 1024


def client_socket(request: web.Request) -> socket.socket | None:
    """A duplicate of the client's socket if it is plain TCP with nothing queued on it."""
    transport = request.transport
    if transport is None or transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
        return None
    raw = transport.get_extra_info("socket")
    if raw is None or transport.get_write_buffer_size():
        return None  # TLS, or headers still queued: bytes must go through the transport
    return socket.socket(fileno=os.dup(raw.fileno()))


async def relay(source: SocketSource, sink: socket.socket, digest: str | None) -> None:
    """Copy ``source`` to ``sink`` and close both. With ``digest``, the bytes are hashed
    and the last piece is sent only once they match: a mismatch never reaches the client
    as a complete body. A bad or short upstream body raises ``UNAVAILABLE``, a client
    that went away ``ConnectionResetError``."""
    await _in_thread(partial(_copy, source, sink, digest), (source.sock, sink))


async def send_file(path: Path, start: int, length: int, sink: socket.socket, timeout: float) -> None:
    """``sendfile(2)`` of a file range to ``sink`` in a thread of its own, then close
    ``sink``: streams of one process run on every core, as nginx's workers do."""
    await _in_thread(partial(_send_file, path, start, length, sink, timeout), (sink,))


async def _in_thread(work: Callable[[], None], sockets: tuple[socket.socket, ...]) -> None:
    """Run ``work`` in a new thread; if we are cancelled, shut ``sockets`` down to wake it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return  # the awaiting task was cancelled
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    thread = threading.Thread(target=run, name="blob-relay", daemon=True)
    thread.start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        # Wake the thread out of its wait; the stream is lost either way.
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        await asyncio.wait([done])
        done.exception()  # retrieved: the thread's error is moot once we are cancelled
        raise


def _send_file(path: Path, start: int, length: int, sink: socket.socket, timeout: float) -> None:
    with sink, open(path, "rb") as source:
        sink.settimeout(timeout)  # a client that stops reading must not pin the thread forever
        try:
            sent = sink.sendfile(source, start, length)
        except OSError as exc:
            raise ConnectionResetError(f"client connection lost: {exc}") from None
    if sent != length:
        # The file is shorter than its stat said: never end a short body cleanly.
        raise RegistryError(Errors.UNAVAILABLE, {"missing": length - sent}, message="blob is truncated on disk")


def _copy(source: SocketSource, sink: socket.socket, digest: str | None) -> None:
    algorithm, _, expected = (digest or "").partition(":")
    hasher = hashlib.new(algorithm) if digest else None
    hashed = 0
    with source.sock, sink:
        sink.settimeout(source.timeout)  # a client that stops reading must not pin the thread forever
        for piece in _pieces(source):
            if hasher is not None:
                hasher.update(piece)  # in this thread, while the bytes are still in cache
                hashed += len(piece)
                if hashed == source.length and hasher.hexdigest() != expected:
                    raise RegistryError(
                        Errors.UNAVAILABLE, {"digest": digest}, message="backend blob failed digest verification"
                    )
            try:
                sink.sendall(piece)
            except OSError as exc:
                raise ConnectionResetError(f"client connection lost: {exc}") from None


def _pieces(source: SocketSource) -> Iterator[memoryview]:
    """The body: what was buffered, then reads into one reused buffer."""
    if source.head:
        yield memoryview(source.head)
    remaining = source.length - len(source.head)
    buffer = memoryview(bytearray(min(_CHUNK, max(remaining, 0))))
    while remaining > 0:
        try:
            received = source.sock.recv_into(buffer, min(len(buffer), remaining))
        except OSError as exc:
            raise RegistryError(Errors.UNAVAILABLE, message=f"backend blob stream failed: {exc}") from None
        if not received:
            raise RegistryError(Errors.UNAVAILABLE, {"missing": remaining}, message="backend stream ended early")
        remaining -= received
        yield buffer[:received]
