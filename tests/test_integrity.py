"""Integrity of what is read from a store algomint does not own.

A tampering backend on loopback (an aiohttp proxy in front of the real docker-registry)
serves each blob correctly once, then flips a byte, truncates, extends or stalls it. With
the default settings no client may ever receive a complete 2xx with wrong bytes, on /v2
or in archives. Also: the zero-length blob, and failures after the headers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import zstandard
from aiohttp import web

from proxy.api import streaming
from proxy.app import create_app
from tests.conftest import make_config
from tests.support.oci import push_blob, push_image

LAYER = os.urandom(3 * 1024 * 1024 + 77)
LAYER_DIGEST = "sha256:" + hashlib.sha256(LAYER).hexdigest()
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_BLOB_GET = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")


class Tamper:
    """A pass-through proxy to ``target`` that spoils blob GET bodies after the first."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode: str | None = None
        self.only: set[str] | None = None  # spoil these digests only (default: every blob)
        self.served: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
        body = await request.read()
        async with self.session.request(request.method, self.target + request.path_qs, headers=headers,
                                        data=body or None, allow_redirects=False) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")}
            blob = _BLOB_GET.match(request.path)
            if request.method == "GET" and blob and upstream.status in (200, 206):
                self.served[blob.group(1)] += 1
                spoiled = self.only is None or blob.group(1) in self.only
                if self.served[blob.group(1)] > 1 and self.mode is not None and spoiled:
                    return await self.spoil(request, upstream.status, out, data)
            if request.method == "HEAD":
                out["Content-Length"] = upstream.headers.get("Content-Length", "0")
                return web.Response(status=upstream.status, headers=out)
            return web.Response(status=upstream.status, headers=out, body=data)

    async def spoil(self, request: web.Request, status: int, headers: dict, data: bytes) -> web.StreamResponse:
        if self.mode in ("flip", "flip mtime"):
            body = bytearray(data)
            # "flip mtime": a byte of a gzip header's MTIME, which decompression never checks.
            body[5 if self.mode == "flip mtime" else len(body) // 2] ^= 0x01
            return web.Response(status=status, headers=headers, body=bytes(body))
        if self.mode == "truncate":  # a clean, honest-looking shorter answer
            return web.Response(status=status, headers=headers, body=data[:-1])
        if self.mode == "extend":
            return web.Response(status=status, headers=headers, body=data + b"!")
        assert self.mode == "stall"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await asyncio.sleep(3600)  # cancelled when the test ends
        return response

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


@pytest.fixture
async def tampered(aiohttp_client, aiohttp_server, distribution, tmp_path: Path):
    tamper = Tamper(distribution.url)
    server = await aiohttp_server(tamper.app())
    fake = SimpleNamespace(url=str(server.make_url("/")).rstrip("/"))
    # Defaults throughout, except a short idle read timeout for the stalled backend.
    config = make_config(tmp_path, "registry", fake, storage__read_timeout=1)  # type: ignore[arg-type]
    client = await aiohttp_client(create_app(config))
    yield tamper, client
    await tamper.close()


async def _outcome(resp: aiohttp.ClientResponse) -> tuple[int, bytes | None]:
    """The status and the whole body, or ``None`` when the body did not arrive complete."""
    try:
        return resp.status, await resp.read()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError):
        return resp.status, None


def _assert_no_wrong_complete(status: int, body: bytes | None, expected: bytes) -> None:
    if 200 <= status < 300 and body is not None:
        assert body == expected, f"a complete {status} with wrong bytes reached the client"


@pytest.mark.parametrize("mode", ["flip", "truncate", "extend", "stall"])
async def test_a_blob_changed_by_the_backend_never_reaches_a_client_complete(tampered, repo, mode) -> None:
    tamper, client = tampered
    await push_image(client, repo, "v1", [LAYER])
    first = await client.get(f"/v2/{repo}/blobs/{LAYER_DIGEST}")
    assert first.status == 200 and await first.read() == LAYER  # served right once
    tamper.mode = mode
    for _ in range(2):
        status, body = await _outcome(await client.get(f"/v2/{repo}/blobs/{LAYER_DIGEST}"))
        _assert_no_wrong_complete(status, body, LAYER)
        assert body is None or not 200 <= status < 300  # and the failure is visible
    tamper.mode = None
    resp = await client.get(f"/v2/{repo}/blobs/{LAYER_DIGEST}")
    assert await resp.read() == LAYER


@pytest.mark.parametrize("mode", ["flip", "truncate", "extend", "stall"])
async def test_an_archive_never_carries_a_blob_changed_by_the_backend(tampered, repo, mode) -> None:
    tamper, client = tampered
    await push_image(client, repo, "v1", [LAYER])
    whole = await client.get(f"/api/v1/archive/{repo}:v1")
    assert whole.status == 200
    archive = await whole.read()
    where = archive.index(LAYER)
    tamper.mode = mode
    # The whole archive, one ending exactly where the layer ends, and a zstd stream.
    end = where + len(LAYER)
    for headers, params, expected in (
        ({}, {}, archive),
        ({"Range": f"bytes=0-{end - 1}"}, {}, archive[:end]),
        ({}, {"compress": "zstd"}, archive),
    ):
        resp = await client.get(f"/api/v1/archive/{repo}:v1", headers=headers, params=params)
        status, body = await _outcome(resp)
        if body is not None and params:
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        _assert_no_wrong_complete(status, body, expected)
        if mode != "extend":  # bytes past the blob's length are never read: the rest is right
            assert body is None, f"{mode}: archive {headers or params} ended cleanly ({status})"


async def test_the_trusting_mode_stays_an_explicit_choice(aiohttp_client, aiohttp_server, distribution, tmp_path, repo):
    """``verify_reads = "once"`` on a registry backend trusts a verified blob: the risk the
    documentation names. The default does not."""
    tamper = Tamper(distribution.url)
    server = await aiohttp_server(tamper.app())
    fake = SimpleNamespace(url=str(server.make_url("/")).rstrip("/"))
    client = await aiohttp_client(create_app(make_config(tmp_path, "registry", fake, storage_verify_reads="once")))  # type: ignore[arg-type]
    await push_image(client, repo, "v1", [LAYER])
    assert await (await client.get(f"/v2/{repo}/blobs/{LAYER_DIGEST}")).read() == LAYER
    tamper.mode = "flip"
    status, body = await _outcome(await client.get(f"/v2/{repo}/blobs/{LAYER_DIGEST}"))
    assert status == 200 and body is not None and body != LAYER
    await tamper.close()


async def test_a_full_build_never_uses_a_source_layer_changed_by_the_backend(aiohttp_client, aiohttp_server,
                                                                            distribution, tmp_path, repo):
    from proxy.cli import main as cli_main
    from tests.test_fullbuild_e2e import make_package, run_build

    prefix = tmp_path / "keys" / "soft"
    assert cli_main(["keygen", "--out", str(prefix)]) == 0
    tamper = Tamper(distribution.url)
    server = await aiohttp_server(tamper.app())
    fake = SimpleNamespace(url=str(server.make_url("/")).rstrip("/"))
    config = make_config(tmp_path, "registry", fake,  # type: ignore[arg-type]
                         licenses__soft={"scheme": "x25519", "public_key": str(prefix.with_suffix(".pub"))})
    client = await aiohttp_client(create_app(config))
    pkg = await make_package(client, tmp_path)
    tamper.only = set()
    for layer in pkg.image.layers:  # each layer served right once, through algomint
        digest = "sha256:" + hashlib.sha256(layer.blob).hexdigest()
        assert await (await client.get(f"/v2/{pkg.image_repo}/blobs/{digest}")).read() == layer.blob
        if layer.blob[:2] == b"\x1f\x8b":
            tamper.only.add(digest)
    # Changed bytes that still decompress: only the digest can tell.
    tamper.mode = "flip mtime"
    build = await run_build(client, pkg.name, expect="failed")
    assert "failed digest verification" in build["error"], build["error"]
    assert (await client.get(f"/v2/{pkg.business}/manifests/1.0-soft")).status == 404
    await tamper.close()


# -- the zero-length blob -----------------------------------------------------------------
async def test_the_empty_blob(client, repo) -> None:
    assert await push_blob(client, repo, b"") == EMPTY_DIGEST
    for _ in range(2):  # twice: the second read is trusted on the embedded storage
        resp = await client.get(f"/v2/{repo}/blobs/{EMPTY_DIGEST}")
        assert resp.status == 200 and resp.headers["Content-Length"] == "0"
        assert await resp.read() == b""
    head = await client.head(f"/v2/{repo}/blobs/{EMPTY_DIGEST}")
    assert head.status == 200 and head.headers["Content-Length"] == "0"
    # The keep-alive connection is still in step: the next answer is this request's.
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert (await client.delete(f"/v2/{repo}/blobs/{EMPTY_DIGEST}")).status == 202
    assert (await client.head(f"/v2/{repo}/blobs/{EMPTY_DIGEST}")).status == 404


# -- failures once the headers are out -----------------------------------------------------
def _raw_get(port: int, path: str) -> bytes:
    """One keep-alive GET then a second request on the same connection; everything the
    server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        try:
            while piece := sock.recv(1 << 20):
                data += piece
        except (ConnectionResetError, socket.timeout):
            pass
        return bytes(data)


async def test_a_failure_mid_body_breaks_the_connection_and_sends_nothing_more(aiohttp_client, tmp_path, repo, monkeypatch):
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    await push_blob(client, repo, LAYER)

    async def half_then_fail(request, reader, digest):
        transport = request.transport
        transport.write(LAYER[:1000])
        raise ValueError("a bug in the middle of a body")

    monkeypatch.setattr(streaming, "send_direct", half_then_fail)
    data = await asyncio.to_thread(_raw_get, client.port, f"/v2/{repo}/blobs/{LAYER_DIGEST}")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(LAYER)}".encode() in head
    assert len(body) < len(LAYER)
    assert b"HTTP/1.1" not in body  # no second response, neither an error nor the next answer
    assert b"errors" not in body


async def test_a_failure_mid_archive_breaks_the_connection(aiohttp_client, tmp_path, repo, monkeypatch):
    from proxy.api.manage import archive as archive_api

    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    await push_image(client, repo, "v1", [LAYER])

    async def fail(self, request, response):
        raise KeyError("a bug in the middle of an archive")

    monkeypatch.setattr(archive_api._Blob, "send", fail)
    data = await asyncio.to_thread(_raw_get, client.port, f"/api/v1/archive/{repo}:v1")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1" not in body and b"internal error" not in body
