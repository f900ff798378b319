"""The socket-to-socket blob relay: the reader hand-over, the thread copy, file sends,
and the whole path through the app in front of a small upstream registry over real
loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import socket
import threading
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.api import relay
from proxy.app import create_app
from proxy.backend import SocketSource
from proxy.backend.remote import RegistryBackend
from proxy.oci.errors import Errors, RegistryError
from tests.conftest import make_config

BLOB = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Upstream:
    """Serves ``BLOB`` under ``DIGEST``; ``corrupt`` flips one byte, ``short`` drops the tail."""

    def __init__(self) -> None:
        self.corrupt = False
        self.short = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/{repo:.+}/blobs/{digest}", self.blob)
        return app

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(BLOB)), "Docker-Content-Digest": DIGEST})
        body = bytearray(BLOB)
        if self.corrupt:
            body[len(body) // 2] ^= 0xFF
        response = web.StreamResponse(headers={"Docker-Content-Digest": DIGEST})
        response.content_length = len(BLOB)
        await response.prepare(request)
        await response.write(bytes(body[: len(body) // 2] if self.short else body))
        if self.short:
            request.transport.close()
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def upstream(aiohttp_server) -> AsyncIterator[tuple[Upstream, RegistryBackend]]:
    fake = Upstream()
    server = await aiohttp_server(fake.app())
    backend = RegistryBackend(str(server.make_url("/")))
    await backend.start()
    yield fake, backend
    await backend.close()


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "blob-relay"]


async def no_relay_threads_left() -> bool:
    """A relay's thread settles its task just before it exits: give it a moment."""
    for _ in range(100):
        if not relay_threads():
            return True
        await asyncio.sleep(0.01)
    return False


# -- the reader hand-over ------------------------------------------------------------------
async def test_detach_hands_over_the_rest_of_the_body(upstream) -> None:
    _, backend = upstream
    reader = await backend.open_blob("a/b", DIGEST)
    source = reader.detach()
    assert source is not None and source.length == len(BLOB)
    assert reader.detach() is None  # consumed once
    received = bytearray(source.head)
    with source.sock as sock:
        sock.settimeout(10)
        while len(received) < len(BLOB):
            piece = sock.recv(1 << 20)
            assert piece
            received += piece
    assert bytes(received) == BLOB
    assert [chunk async for chunk in reader] == []
    await reader.close()


async def test_detach_refuses_a_body_that_needs_skipping(upstream) -> None:
    _, backend = upstream
    # The upstream ignores Range: the reader skips bytes itself, so it must be iterated.
    reader = await backend.open_blob("a/b", DIGEST, 10, 100)
    assert reader.detach() is None
    assert b"".join([chunk async for chunk in reader]) == BLOB[10:110]


# -- the copy ------------------------------------------------------------------------------
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


def feed(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` from a thread (a socketpair holds far less than a blob), then close."""

    def send() -> None:
        with sock:
            sock.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.fixture(params=["alone", "in company", "switching"])
def company(request, monkeypatch) -> str:
    """Trusted bodies are copied while alone and spliced in company: run both, and a
    stream whose company changes before every piece (the pipe drains before a copy).
    Verified bodies take one path whatever the company: they run under it too."""
    if request.param == "in company":
        monkeypatch.setattr(relay._streams, "crowded", lambda: True)
    elif request.param == "switching":
        turns = itertools.cycle([True, False, True, True, False])
        monkeypatch.setattr(relay._streams, "crowded", lambda: next(turns))
    return request.param


async def test_relay_copies_and_hashes(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()
    source = SocketSource(up_ours, BLOB[:1000], len(BLOB), timeout=10)
    feeder = feed(up_theirs, BLOB[1000:])
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    await relay.relay(source, sink, DIGEST)
    assert await reading == BLOB
    feeder.join()


async def test_relay_withholds_the_last_piece_of_a_mismatch(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()
    feeder = feed(up_theirs, BLOB[:-1] + b"?")
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    with pytest.raises(RegistryError) as exc_info:
        await relay.relay(SocketSource(up_ours, b"", len(BLOB), timeout=10), sink, DIGEST)
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert len(await reading) < len(BLOB)
    feeder.join()


async def test_relay_without_digest_moves_the_body_exactly(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()
    source = SocketSource(up_ours, BLOB[:1000], len(BLOB), timeout=10)
    feeder = feed(up_theirs, BLOB[1000:] + b"next response")  # bytes past the body stay put
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    await relay.relay(source, sink, None)
    assert await reading == BLOB
    feeder.join()


async def test_concurrent_relays_count_as_company(monkeypatch) -> None:
    seen: list[bool] = []
    real_crowded = relay._streams.crowded
    monkeypatch.setattr(relay._streams, "crowded", lambda: seen.append(real_crowded()) or seen[-1])
    pairs = [(pair(), pair()) for _ in range(2)]
    relays = [asyncio.create_task(relay.relay(SocketSource(up_ours, b"", len(BLOB), timeout=10), sink, None))
              for (up_ours, _), (sink, _) in pairs]
    for _ in range(100):  # both threads wait for upstream bytes before any arrive
        if relay._streams.count == 2:
            break
        await asyncio.sleep(0.01)
    readers = [asyncio.create_task(asyncio.to_thread(_read_all, client)) for _, (_, client) in pairs]
    feeders = [feed(up_theirs, BLOB) for (_, up_theirs), _ in pairs]
    await asyncio.gather(*relays)
    assert [await reader for reader in readers] == [BLOB, BLOB]
    for feeder in feeders:
        feeder.join()
    # Each piece is decided before waiting for its bytes: only the first thread's first
    # look can come before the second thread started.
    assert len(seen) > 2 and seen.count(False) <= 1
    assert relay._streams.count == 0


async def test_relay_reports_an_upstream_that_ends_early(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()
    feed(up_theirs, b"x" * 100).join()
    with pytest.raises(RegistryError) as exc_info:
        await relay.relay(SocketSource(up_ours, b"", 1000, timeout=10), sink, None)
    assert exc_info.value.error is Errors.UNAVAILABLE
    client.close()


async def test_relay_reports_a_client_that_went_away(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()
    client.close()
    feeder = feed(up_theirs, b"x" * 100_000)
    with pytest.raises(ConnectionResetError):
        await relay.relay(SocketSource(up_ours, b"", 100_000, timeout=10), sink, None)
    feeder.join()


async def test_relay_gives_up_on_a_silent_upstream(company) -> None:
    up_ours, up_theirs = pair()  # sends nothing, keeps the connection open
    sink, client = pair()
    with pytest.raises(RegistryError) as exc_info:
        await relay.relay(SocketSource(up_ours, b"", 1000, timeout=0.3), sink, None)
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert "sent nothing" in exc_info.value.message
    up_theirs.close()
    client.close()


async def test_relay_gives_up_on_a_client_that_stops_reading(company) -> None:
    up_ours, up_theirs = pair()
    sink, client = pair()  # the client never reads: its buffers fill up
    data = b"x" * (32 * 1024 * 1024)

    def send() -> None:
        with up_theirs, contextlib.suppress(OSError):  # the relay hangs up on us
            up_theirs.sendall(data)

    feeder = threading.Thread(target=send)
    feeder.start()
    with pytest.raises(ConnectionResetError, match="read nothing"):
        await relay.relay(SocketSource(up_ours, b"", len(data), timeout=0.3), sink, None)
    feeder.join()
    client.close()


@pytest.mark.parametrize("digest", [None, DIGEST])
async def test_the_client_has_its_own_timeout(company, digest) -> None:
    # The backend may be given a minute between reads while a client that stops reading
    # is cut off after the server's body timeout, and the other way round.
    up_ours, up_theirs = pair()
    sink, client = pair()  # the client never reads
    data = b"x" * (32 * 1024 * 1024)

    def send() -> None:
        with up_theirs, contextlib.suppress(OSError):
            up_theirs.sendall(data)

    feeder = threading.Thread(target=send)
    feeder.start()
    with pytest.raises(ConnectionResetError, match="read nothing"):
        await relay.relay(SocketSource(up_ours, b"", len(data), timeout=60), sink, digest, 0.3)
    feeder.join()
    client.close()
    up_ours, up_theirs = pair()  # a silent upstream is still judged by its own timeout
    sink, client = pair()
    with pytest.raises(RegistryError, match="sent nothing"):
        await relay.relay(SocketSource(up_ours, b"", 1000, timeout=0.3), sink, digest, 60)
    up_theirs.close()
    client.close()


async def test_cancelling_a_relay_stops_its_thread(company) -> None:
    up_ours, up_theirs = pair()  # the upstream never sends: the thread waits in recv
    sink, client = pair()
    task = asyncio.create_task(relay.relay(SocketSource(up_ours, b"", 1000, timeout=60), sink, None))
    for _ in range(100):
        if relay_threads():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_relay_threads_left()
    up_theirs.close()
    client.close()


async def test_send_file_sends_the_range(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(BLOB)
    sink, client = pair()
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    await relay.send_file(path, 10, len(BLOB) - 20, sink, timeout=10)
    assert await reading == BLOB[10:-10]


async def test_send_file_never_ends_a_short_file_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(BLOB[:1000])
    sink, client = pair()
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    with pytest.raises(RegistryError) as exc_info:
        await relay.send_file(path, 0, len(BLOB), sink, timeout=10)
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert await reading == BLOB[:1000]


async def test_send_file_with_digest_withholds_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(BLOB[:-1] + b"?")
    sink, client = pair()
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    with pytest.raises(RegistryError) as exc_info:
        await relay.send_file(path, 0, len(BLOB), sink, timeout=10, digest=DIGEST)
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert len(await reading) < len(BLOB)
    good = tmp_path / "good"
    good.write_bytes(BLOB)
    sink, client = pair()
    reading = asyncio.create_task(asyncio.to_thread(_read_all, client))
    await relay.send_file(good, 0, len(BLOB), sink, timeout=10, digest=DIGEST)
    assert await reading == BLOB


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    with sock:
        while piece := sock.recv(1 << 20):
            data += piece
    return bytes(data)


# -- through the app -----------------------------------------------------------------------
@pytest.fixture
async def proxied(aiohttp_client, upstream, tmp_path: Path):
    fake, backend = upstream
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem"), backend=backend))
    return fake, client


@pytest.fixture
def relayed(monkeypatch) -> list[str | None]:
    """The digest each relay through the app was asked to verify (``None``: trusted)."""
    seen: list[str | None] = []
    real_relay = relay.relay

    async def spy(source: SocketSource, sink: socket.socket, digest: str | None, *rest: float | None) -> None:
        seen.append(digest)
        await real_relay(source, sink, digest, *rest)

    monkeypatch.setattr(relay, "relay", spy)
    return seen


async def test_whole_blob_through_the_app(proxied, relayed) -> None:
    _, client = proxied
    for _ in range(2):  # the second request reuses the client's keep-alive connection
        resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(BLOB))
        assert await resp.read() == BLOB
    ranged = await client.get(f"/v2/a/b/blobs/{DIGEST}", headers={"Range": "bytes=5-"})
    assert ranged.status == 206 and await ranged.read() == BLOB[5:]
    # A registry backend is not our store: every whole read is verified by default.
    assert relayed[:2] == [DIGEST, DIGEST]
    assert await no_relay_threads_left()


async def test_verify_reads_once_trusts_a_verified_blob(aiohttp_client, upstream, tmp_path: Path, relayed) -> None:
    # The operator's opt-in: the first whole read is verified; the match is recorded,
    # so the second is trusted (its length still checked).
    backend = RegistryBackend(str(upstream[1]._origin), verify_reads="once")
    await backend.start()
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem"), backend=backend))
    for _ in range(2):
        resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
        assert await resp.read() == BLOB
    assert relayed == [DIGEST, None]
    await backend.close()


async def test_a_failed_verification_is_not_recorded(proxied) -> None:
    fake, client = proxied
    fake.corrupt = True
    resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    # Still unverified: a second read is hashed again and fails again.
    resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    fake.corrupt = False
    resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
    assert await resp.read() == BLOB


@pytest.mark.parametrize("failure", ["corrupt", "short"])
async def test_bad_upstream_body_breaks_the_connection(proxied, failure: str) -> None:
    fake, client = proxied
    setattr(fake, failure, True)
    resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
    assert resp.status == 200  # headers were out before the body could be checked
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
