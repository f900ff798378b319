"""Blob bodies relayed socket to socket (or sent from a file) in a worker thread.

When a backend hands over its plain-TCP upstream connection (``BlobReader.detach``) and
the client's connection is plain TCP too, the body skips aiohttp's client stream reader
and the server transport: one thread per stream moves it between duplicates of the two
sockets, ``recv_into`` one reused 1 MiB buffer and ``send``, releasing the GIL in each
call. A body that must be verified (every whole read from a registry backend, or a blob
not yet in the storage's ledger of verified blobs) is hashed in the same thread while the
bytes are still in cache, its last piece sent only once the digest matches. (Splicing it
into a pipe, ``tee(2)``-ing that into a second pipe read for the hash and splicing on to
the client measured no cheaper: 0.92-1.00 against 0.88-0.93 CPU-s per GB.)

How a trusted body moves depends on company. A stream alone in the process is copied
through user space: ``splice(2)`` would spend less of our CPU, but it hands the client
the upstream's page fragments as they are, and a curl on the same machine spent 0.43
instead of 0.25 CPU-seconds per GB receiving those (one stream: 0.88x of
docker-registry's rate spliced, 0.96x copied). With other streams running, CPU is what
runs out, and the body goes socket -> pipe -> socket with ``splice`` and never enters
user space (0.31 against 0.46 CPU-s per GB; four streams: 0.79x spliced, 0.74x copied).
The choice is made again before each piece, so a stream that started alone switches as
others begin.

Files of the embedded storage go the same way with ``sendfile(2)`` (``send_file``), so
concurrent streams spread over every core instead of sharing the event-loop thread.

A dedicated thread, not the loop's default executor: a stream can hold it for minutes,
and the executor also runs DNS lookups and disk work that must not queue behind it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import select
import socket
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from aiohttp import web

from ..backend import SocketSource
from ..oci.errors import Errors, RegistryError

__all__ = ["client_socket", "relay", "send_file"]

_CHUNK = 1024 * 1024


class _Streams:
    """How many bodies this process's relay threads are moving right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    @contextlib.contextmanager
    def moving(self) -> Iterator[None]:
        with self._lock:
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1

    def crowded(self) -> bool:
        return self.count > 1


_streams = _Streams()


def client_socket(request: web.Request) -> socket.socket | None:
    """A duplicate of the client's socket if it is plain TCP with nothing queued on it."""
    transport = request.transport
    if transport is None or transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
        return None
    raw = transport.get_extra_info("socket")
    if raw is None or transport.get_write_buffer_size():
        return None  # TLS, or headers still queued: bytes must go through the transport
    return socket.socket(fileno=os.dup(raw.fileno()))


async def relay(
    source: SocketSource, sink: socket.socket, digest: str | None, client_timeout: float | None = None
) -> None:
    """Copy ``source`` to ``sink`` and close both. With ``digest``, the bytes are hashed
    and the last piece is sent only once they match: a mismatch never reaches the client
    as a complete body. Without, they are copied or spliced (see the module's note). A
    bad or short upstream body raises ``UNAVAILABLE``, a client that went away (or read
    nothing for ``client_timeout``, by default the source's) ``ConnectionResetError``."""
    waits = client_timeout or source.timeout
    work = partial(_copy, source, sink, digest, waits) if digest is not None else partial(_move, source, sink, waits)
    await _in_thread(work, (source.sock, sink))


async def send_file(
    path: Path, start: int, length: int, sink: socket.socket, timeout: float, digest: str | None = None
) -> None:
    """``sendfile(2)`` of a file range to ``sink`` in a thread of its own, then close
    ``sink``: streams of one process run on every core, as nginx's workers do. With
    ``digest`` (a whole file), read, hash and send instead, the last piece held back
    until the digest matches."""
    if digest is None:
        work = partial(_send_file, path, start, length, sink, timeout)
    else:
        work = partial(_send_file_verified, path, length, sink, timeout, digest)
    await _in_thread(work, (sink,))


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
            with _streams.moving():
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
    if length == 0:
        sink.close()  # sendfile(2) refuses a count of 0; there is nothing to send
        return
    with sink, open(path, "rb") as source:
        sink.settimeout(timeout)  # a client that stops reading must not pin the thread forever
        try:
            sent = sink.sendfile(source, start, length)
        except OSError as exc:
            raise ConnectionResetError(f"client connection lost: {exc}") from None
    if sent != length:
        # The file is shorter than its stat said: never end a short body cleanly.
        raise RegistryError(Errors.UNAVAILABLE, {"missing": length - sent}, message="blob is truncated on disk")


def _send_file_verified(path: Path, length: int, sink: socket.socket, timeout: float, digest: str) -> None:
    with sink, open(path, "rb", buffering=0) as source:
        sink.setblocking(False)
        _send_pieces(_file_pieces(source, length), length, sink, timeout, digest)


def _file_pieces(source: Any, length: int) -> Iterator[memoryview]:
    buffer = memoryview(bytearray(min(_CHUNK, max(length, 1))))
    remaining = length
    while remaining > 0:
        received = source.readinto(buffer[: min(len(buffer), remaining)])
        if not received:
            raise RegistryError(Errors.UNAVAILABLE, {"missing": remaining}, message="blob is truncated on disk")
        remaining -= received
        yield buffer[:received]


def _copy(source: SocketSource, sink: socket.socket, digest: str, client_timeout: float) -> None:
    with source.sock, sink:
        source.sock.setblocking(False)
        sink.setblocking(False)
        _send_pieces(_pieces(source), source.length, sink, client_timeout, digest)


def _move(source: SocketSource, sink: socket.socket, client_timeout: float) -> None:
    """A trusted body: each piece copied while this is the process's only stream, spliced
    while others run. Sockets stay non-blocking; ``poll`` waits only when a call would block."""
    with source.sock, sink, _Pipe() as pipe:
        source.sock.setblocking(False)
        sink.setblocking(False)
        if source.head:
            _send_all(sink, source.head, client_timeout)
        remaining = source.length - len(source.head)
        buffer: memoryview | None = None
        while remaining or pipe.buffered:
            if pipe.buffered or _streams.crowded():
                remaining -= pipe.turn(source.sock, sink, remaining, source.timeout, client_timeout)
                continue
            if buffer is None:  # a stream that is never alone never needs one
                buffer = memoryview(bytearray(min(_CHUNK, remaining)))
            received = _receive(source, buffer[: min(len(buffer), remaining)], remaining)
            _send_all(sink, buffer[:received], client_timeout)
            remaining -= received


class _Pipe:
    """A kernel pipe between the two sockets, opened on first use, for ``splice(2)``."""

    def __init__(self) -> None:
        self._ends: tuple[int, int] | None = None
        self._capacity = 0
        self.buffered = 0

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ends is not None:
            for end in self._ends:
                os.close(end)

    def turn(
        self, upstream: socket.socket, client: socket.socket, remaining: int, timeout: float, client_timeout: float
    ) -> int:
        """Take what ``upstream`` has (up to ``remaining``) into the pipe and give
        ``client`` what it accepts, each tried first; sleep in ``poll`` only when neither
        side moved. Returns how many bytes came from ``upstream``."""
        if self._ends is None:
            self._ends = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._ends[1], fcntl.F_SETPIPE_SZ, _CHUNK)  # fewer, larger moves
            self._capacity = fcntl.fcntl(self._ends[1], fcntl.F_GETPIPE_SZ)
        read_end, write_end = self._ends
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        received = sent = 0
        if remaining and self.buffered < self._capacity:
            try:
                received = os.splice(upstream.fileno(), write_end, min(self._capacity - self.buffered, remaining),
                                     flags=flags)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise RegistryError(Errors.UNAVAILABLE, message=f"backend blob stream failed: {exc}") from None
            else:
                if not received:
                    raise RegistryError(Errors.UNAVAILABLE, {"missing": remaining},
                                        message="backend stream ended early")
                self.buffered += received
        if self.buffered:
            more = os.SPLICE_F_MORE if remaining > received else 0
            try:
                sent = os.splice(read_end, client.fileno(), self.buffered, flags=flags | more)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ConnectionResetError(f"client connection lost: {exc}") from None
            self.buffered -= sent
        if not received and not sent:
            waits: dict[socket.socket, int] = {}
            if remaining and self.buffered < self._capacity:
                waits[upstream] = select.POLLIN
            if self.buffered:
                waits[client] = select.POLLOUT
            _wait_for(waits, client_timeout if upstream not in waits else timeout, client_timeout)
        return received


def _send_pieces(pieces: Iterator[memoryview], length: int, sink: socket.socket, timeout: float, digest: str) -> None:
    """Send ``pieces``, hashing them; the last goes only once the digest matches."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    if length == 0 and hasher.hexdigest() != expected:
        raise RegistryError(Errors.UNAVAILABLE, {"digest": digest}, message="blob failed digest verification")
    hashed = 0
    for piece in pieces:
        hasher.update(piece)  # in this thread, while the bytes are still in cache
        hashed += len(piece)
        if hashed == length and hasher.hexdigest() != expected:
            raise RegistryError(Errors.UNAVAILABLE, {"digest": digest}, message="blob failed digest verification")
        _send_all(sink, piece, timeout)


def _pieces(source: SocketSource) -> Iterator[memoryview]:
    """The body: what was buffered, then reads into one reused buffer."""
    if source.head:
        yield memoryview(source.head)
    remaining = source.length - len(source.head)
    buffer = memoryview(bytearray(min(_CHUNK, max(remaining, 0))))
    while remaining > 0:
        received = _receive(source, buffer[: min(len(buffer), remaining)], remaining)
        remaining -= received
        yield buffer[:received]


def _receive(source: SocketSource, into: memoryview, remaining: int) -> int:
    """Read what has arrived (at least one byte) from the non-blocking upstream socket:
    the thread polls only when nothing has (a timeout per call would poll before every read)."""
    while True:
        try:
            received = source.sock.recv_into(into)
        except BlockingIOError:
            _wait_for({source.sock: select.POLLIN}, source.timeout)
            continue
        except OSError as exc:
            raise RegistryError(Errors.UNAVAILABLE, message=f"backend blob stream failed: {exc}") from None
        if not received:
            raise RegistryError(Errors.UNAVAILABLE, {"missing": remaining}, message="backend stream ended early")
        return received


def _send_all(sink: socket.socket, data: bytes | memoryview, timeout: float) -> None:
    """Send all of ``data`` on a non-blocking ``sink``, polling only when it is full."""
    view = memoryview(data)
    while view:
        try:
            sent = sink.send(view)
        except BlockingIOError:
            _wait_for({sink: select.POLLOUT}, timeout)
            continue
        except OSError as exc:
            raise ConnectionResetError(f"client connection lost: {exc}") from None
        view = view[sent:]


def _wait_for(waits: dict[socket.socket, int], timeout: float, client_timeout: float | None = None) -> None:
    """Sleep until a socket in ``waits`` is ready for its event (or hung up). Only the
    client is waited on to send and only the upstream to receive. Waiting on both, each
    has its own limit (``client_timeout`` for the client), and the first to run out is
    blamed; waiting on one, ``timeout`` is its limit."""
    poller = select.poll()
    for sock, event in waits.items():
        poller.register(sock, event)
    sending = select.POLLOUT in waits.values()
    receiving = select.POLLIN in waits.values()
    limit = timeout
    if sending and receiving and client_timeout is not None:
        limit = min(timeout, client_timeout)
        sending = client_timeout <= timeout  # whose limit runs out first
    if poller.poll(limit * 1000):
        return
    if sending:
        raise ConnectionResetError(f"client read nothing for {limit:.0f} s")
    raise RegistryError(Errors.UNAVAILABLE, message=f"backend sent nothing for {limit:.0f} s")
