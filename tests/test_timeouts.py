"""Timeouts: a backend that accepts requests and never answers, and clients that send
their headers or bodies too slowly (or stop reading), against a real ``algomint serve``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from proxy.app import create_app
from tests.conftest import make_config
from tests.support.oci import error_code
from tests.support.server import run_server

DIGEST = "sha256:" + hashlib.sha256(b"never served").hexdigest()


class Hung:
    """A backend that answers its version check until told to hang, and never answers
    a blob request."""

    def __init__(self) -> None:
        self.hang_ping = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self.ping)
        app.router.add_route("*", "/v2/{tail:.+}", self.hang)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        if self.hang_ping:
            await asyncio.sleep(3600)
        return web.json_response({})

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()


async def test_a_backend_that_never_answers_is_reported_and_makes_readyz_unready(aiohttp_client, aiohttp_server, tmp_path):
    hung = Hung()
    server = await aiohttp_server(hung.app())
    fake = SimpleNamespace(url=str(server.make_url("/")).rstrip("/"))
    config = make_config(tmp_path, "registry", fake, storage__first_byte_timeout=1,  # type: ignore[arg-type]
                         storage__connect_timeout=1)
    client = await aiohttp_client(create_app(config))
    assert (await client.get("/readyz")).status == 200
    async with asyncio.timeout(30):  # the test's own bound, far above the configured 2 s
        for method in ("GET", "HEAD"):
            resp = await client.request(method, f"/v2/a/b/blobs/{DIGEST}")
            assert resp.status == 503
        resp = await client.get(f"/v2/a/b/blobs/{DIGEST}")
        assert await error_code(resp) == "UNAVAILABLE"
        body = await (await client.get("/v2/a/b/manifests/v1")).json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
        assert "did not answer within 2 s" in body["errors"][0]["message"]
        hung.hang_ping = True
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert "did not answer" in (await resp.json())["checks"]["backend"]


def test_backend_timeouts_are_configurable(tmp_path: Path) -> None:
    config = make_config(tmp_path, "registry", SimpleNamespace(url="http://127.0.0.1:9"),  # type: ignore[arg-type]
                         storage__connect_timeout=2, storage__first_byte_timeout=3, storage__read_timeout=4)
    assert (config.storage.connect_timeout, config.storage.first_byte_timeout, config.storage.read_timeout) == (2, 3, 4)
    assert config.storage.reads_verified == "always"
    assert make_config(tmp_path, "filesystem").storage.reads_verified == "once"


# -- slow clients, against the real server ---------------------------------------------------
@pytest.fixture
def slow_limits_server(tmp_path: Path):
    config = (
        "[server]\nheader_timeout = 1\nbody_timeout = 1\n"
        f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'
    )
    with run_server(tmp_path / "srv", config) as server:
        yield server


def _address(server) -> tuple[str, int]:
    host, port = server.host.rsplit(":", 1)
    return host, int(port)


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except ConnectionResetError:
        return True
    except (BlockingIOError, socket.timeout):
        return False


def test_slow_headers_do_not_hold_connections(slow_limits_server) -> None:
    address = _address(slow_limits_server)
    sockets = [socket.create_connection(address, timeout=5) for _ in range(100)]
    selector = selectors.DefaultSelector()
    try:
        for sock in sockets:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\n")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ = set(sockets)
        deadline = time.monotonic() + 20
        while open_ and time.monotonic() < deadline:
            for sock in list(open_):  # a header line now and then: never a complete head
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    open_.discard(sock)
            for key, _ in selector.select(timeout=0.3):
                if _closed_by_server(key.fileobj):  # type: ignore[arg-type]
                    open_.discard(key.fileobj)  # type: ignore[arg-type]
                    selector.unregister(key.fileobj)
        assert not open_, f"{len(open_)} slow-header connections are still open"
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    # The server still serves everyone else.
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_a_stalled_request_body_is_cut_off(slow_limits_server) -> None:
    with socket.create_connection(_address(slow_limits_server), timeout=20) as sock:
        sock.sendall(
            f"POST /v2/slow/body/blobs/uploads/?digest={DIGEST} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode() + b"x" * 1000
        )
        started = time.monotonic()
        data = bytearray()
        try:
            while piece := sock.recv(65536):
                data += piece
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 15  # closed by the server, not by our own timeout
        assert b" 201 " not in data


def test_a_client_that_stops_reading_is_cut_off(slow_limits_server) -> None:
    import urllib.request

    blob = os.urandom(48 * 1024 * 1024)  # far more than the two sockets' buffers hold
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    url = f"{slow_limits_server.url}/v2/slow/read/blobs/uploads/?digest={digest}"
    urllib.request.urlopen(urllib.request.Request(url, data=blob, method="POST"), timeout=20)
    with socket.create_connection(_address(slow_limits_server), timeout=20) as sock:
        sock.sendall(f"GET /v2/slow/read/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(4)  # read nothing for longer than body_timeout
        received = 0
        try:
            while piece := sock.recv(1 << 20):
                received += len(piece)
        except ConnectionResetError:
            pass
        assert received < len(blob)  # the server gave up on us: the body never completed
