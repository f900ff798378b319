"""Safe reads toward the backend registry are retried once; nothing else is.

A raw-socket fake upstream answers from a script of faults: ``500`` (an error status),
``reset`` (the connection is reset before an answer: RST, via SO_LINGER 0) or ``cut``
(headers and half the body, then a reset). A GET/HEAD that meets a 5xx or a reset is
sent once more; a second failure is reported; a write, and a failure inside a body, are
never retried. Against a real distribution registry the normal paths retry nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
from typing import AsyncIterator
from uuid import uuid4

import pytest

from proxy.app import create_app
from proxy.backend.remote import RegistryBackend
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from tests.conftest import make_config
from tests.support.distribution import Distribution

BLOB = b"blob bytes " * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
                       "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Upstream:
    """A minimal HTTP/1.1 registry on a raw socket: every fault is exactly what it says."""

    def __init__(self) -> None:
        self.faults: list[str] = []  # consumed one per request ("" for none)
        self.requests: list[tuple[str, str]] = []
        self.bearer: str | None = None  # a token realm: requests without its token get 401

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, target))
                fault = self.faults.pop(0) if self.faults else None
                if fault == "reset":
                    return _reset(writer)
                status, body, extra = self._answer(method, target)
                if self.bearer and target.startswith("/token"):
                    status, body, extra = 200, b'{"token": "t", "expires_in": 300}', {}
                elif self.bearer and headers.get("authorization") != "Bearer t":
                    status, body, extra = 401, b"{}", {"WWW-Authenticate": f'Bearer realm="{self.bearer}"'}
                if fault == "500":
                    status, body, extra = 500, b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}', {}
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n"
                writer.write(head.encode())
                if fault == "cut":
                    writer.write(body[: len(body) // 2])
                    await writer.drain()
                    return _reset(writer)
                if method != "HEAD":
                    writer.write(body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(method: str, target: str) -> tuple[int, bytes, dict[str, str]]:
        if "/manifests/" in target:
            if method == "PUT":
                return 201, b"", {"Docker-Content-Digest": MANIFEST_DIGEST, "Location": target}
            return 200, MANIFEST, {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}
        if "/blobs/" in target:
            return 200, BLOB, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": BLOB_DIGEST}
        return 200, b"{}", {"Content-Type": "application/json"}


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    writer.transport.abort()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    fake = Upstream()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield fake, f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def backend(upstream) -> AsyncIterator[tuple[Upstream, RegistryBackend, list[tuple[str, str]]]]:
    fake, url = upstream
    b = RegistryBackend(url)
    retried: list[tuple[str, str]] = []
    b.on_retry = lambda method, reason: retried.append((method, reason))
    await b.start()
    yield fake, b, retried
    await b.close()


READS = {
    "get_manifest": lambda b: b.get_manifest("a/b", "v1"),
    "stat_manifest": lambda b: b.stat_manifest("a/b", "v1"),
    "stat_blob": lambda b: b.stat_blob("a/b", BLOB_DIGEST),
    "open_blob": lambda b: b.open_blob("a/b", BLOB_DIGEST),
}


@pytest.mark.parametrize("fault", ["500", "reset"])
@pytest.mark.parametrize("call", sorted(READS))
async def test_safe_read_is_retried_once(backend, call, fault) -> None:
    fake, b, retried = backend
    fake.faults = [fault]
    result = await READS[call](b)
    if call == "open_blob":
        assert b"".join([chunk async for chunk in result]) == BLOB
    assert len(fake.requests) == 2 and fake.requests[0] == fake.requests[1]
    method = fake.requests[0][0]
    assert retried == [(method, "5xx" if fault == "500" else "reset")]


@pytest.mark.parametrize("fault", ["500", "reset"])
async def test_a_second_failure_is_reported(backend, fault) -> None:
    fake, b, retried = backend
    fake.faults = [fault, fault]
    with pytest.raises(RegistryError) as exc_info:
        await b.get_manifest("a/b", "v1")
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert len(fake.requests) == 2 and len(retried) == 1  # once, not a loop


async def test_failure_inside_a_body_is_not_retried(backend) -> None:
    fake, b, retried = backend
    fake.faults = ["cut"]
    reader = await b.open_blob("a/b", BLOB_DIGEST)  # headers arrived: the body may already flow on
    with pytest.raises(RegistryError) as exc_info:
        async for _ in reader:
            pass
    assert exc_info.value.error is Errors.UNAVAILABLE
    assert len(fake.requests) == 1 and retried == []


@pytest.mark.parametrize("fault", ["500", "reset"])
async def test_writes_are_never_retried(backend, fault) -> None:
    fake, b, retried = backend
    fake.faults = [fault]
    with pytest.raises(RegistryError):
        await b.put_manifest("a/b", "v1", MANIFEST, mt.OCI_MANIFEST, MANIFEST_DIGEST)
    assert [m for m, _ in fake.requests] == ["PUT"] and retried == []
    fake.faults = [fault]
    with pytest.raises(RegistryError):
        await b.delete_manifest("a/b", MANIFEST_DIGEST)
    assert [m for m, _ in fake.requests] == ["PUT", "DELETE"] and retried == []


async def test_token_request_on_a_reset_connection_is_sent_again(upstream, backend) -> None:
    fake, url = upstream
    _, b, retried = backend
    fake.bearer = url + "/token"
    fake.faults = ["", "reset"]  # the anonymous try is answered 401; the token GET is reset
    assert (await b.get_manifest("a/b", "v1")).data == MANIFEST
    assert [t.split("?")[0] for _, t in fake.requests] == ["/v2/a/b/manifests/v1", "/token", "/token",
                                                            "/v2/a/b/manifests/v1"]
    assert retried == []  # the read itself met no failure


async def test_client_gets_the_manifest_and_the_retry_is_counted(upstream, aiohttp_client, tmp_path) -> None:
    fake, url = upstream
    config = make_config(tmp_path, "registry", Distribution(url=url, process=None, root=tmp_path))
    client = await aiohttp_client(create_app(config))
    fake.faults = ["500"]
    resp = await client.get("/v2/a/b/manifests/v1", headers={"Accept": mt.OCI_MANIFEST})
    assert resp.status == 200 and await resp.read() == MANIFEST
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'algomint_backend_retries_total{method="GET",reason="5xx"} 1.0' in metrics


async def test_real_registry_normal_paths_retry_nothing(distribution: Distribution) -> None:
    b = RegistryBackend(distribution.url)
    retried: list[tuple[str, str]] = []
    b.on_retry = lambda method, reason: retried.append((method, reason))
    await b.start()
    try:
        repo = f"retry/{uuid4().hex[:10]}"
        session = await b.start_upload(repo)

        async def one() -> AsyncIterator[bytes]:
            yield BLOB

        await b.finish_upload(repo, session.upload_id, BLOB_DIGEST, one())
        config = b"{}"
        session = await b.start_upload(repo)

        async def two() -> AsyncIterator[bytes]:
            yield config

        await b.finish_upload(repo, session.upload_id, "sha256:" + hashlib.sha256(config).hexdigest(), two())
        await b.put_manifest(repo, "v1", MANIFEST, mt.OCI_MANIFEST, MANIFEST_DIGEST)
        assert (await b.get_manifest(repo, "v1")).data == MANIFEST
        assert (await b.stat_blob(repo, BLOB_DIGEST)).size == len(BLOB)
        assert b"".join([c async for c in await b.open_blob(repo, BLOB_DIGEST)]) == BLOB
        with pytest.raises(RegistryError) as exc_info:
            await b.get_manifest(repo, "missing")  # a 404 is an answer, not a failure
        assert exc_info.value.error is Errors.MANIFEST_UNKNOWN
        assert retried == []
    finally:
        await b.close()
