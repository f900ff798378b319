"""RegistryBackend against a real CNCF distribution 2.8 and against small fake registries."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import warnings
from typing import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from aiohttp import web

from proxy.backend.base import BlobReader
from proxy.backend.remote import RegistryBackend
from proxy.backend.remote_auth import parse_challenges
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from tests.support.distribution import Distribution, free_port, run_distribution


# -- helpers -------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(reader: BlobReader) -> bytes:
    async with reader:
        return b"".join([chunk async for chunk in reader])


def unique_repo(prefix: str = "t") -> str:
    return f"{prefix}/{uuid4().hex[:12]}"


async def push_blob(backend: RegistryBackend, repo: str, data: bytes) -> str:
    status = await backend.start_upload(repo)
    info = await backend.finish_upload(repo, status.upload_id, sha256(data), stream(data))
    assert info.size == len(data)
    return info.digest


async def push_image(backend: RegistryBackend, repo: str, tag: str | None = "v1") -> tuple[bytes, str]:
    """An OCI manifest (odd formatting on purpose: bytes must pass through untouched)."""
    config = b"{}"
    layer = b"layer-" + repo.encode()
    await push_blob(backend, repo, config)
    await push_blob(backend, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.ALGORITHM,
            "config": {"mediaType": mt.OCI_EMPTY, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": sha256(layer), "size": len(layer)}],
            "annotations": {"z": "last", "a": "first"},
        },
        indent=3,
    ).encode() + b"\n"
    digest = sha256(manifest)
    await backend.put_manifest(repo, tag or digest, manifest, mt.OCI_MANIFEST, digest)
    return manifest, digest


def expect(error, exc_info: pytest.ExceptionInfo[RegistryError]) -> None:
    assert exc_info.value.error is error, exc_info.value


@pytest.fixture
async def backend(distribution: Distribution) -> AsyncIterator[RegistryBackend]:
    b = RegistryBackend(distribution.url, read_chunk=64 * 1024)
    await b.start()
    yield b
    await b.close()


# -- basics --------------------------------------------------------------------------
async def test_ping(backend: RegistryBackend) -> None:
    await backend.ping()


async def test_backend_down_is_unavailable() -> None:
    b = RegistryBackend(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    await b.start()
    try:
        for call in (
            lambda: b.ping(),
            lambda: b.stat_blob("a/b", sha256(b"x")),
            lambda: b.get_manifest("a/b", "v1"),
            lambda: b.list_tags("a/b"),
            lambda: b.write_upload("a/b", _id("/v2/a/b/blobs/uploads/x"), stream(b"x")),
        ):
            with pytest.raises(RegistryError) as exc_info:
                await call()
            expect(Errors.UNAVAILABLE, exc_info)
            assert exc_info.value.message.startswith("backend registry unreachable")
            assert "127.0.0.1" not in exc_info.value.message
    finally:
        await b.close()


# -- uploads -------------------------------------------------------------------------
async def test_monolithic_upload(backend: RegistryBackend) -> None:
    repo = unique_repo()
    data = b"hello monolithic" * 1000
    status = await backend.start_upload(repo)
    assert status.offset == 0
    # The id carries the backend path, never its host.
    decoded = base64.urlsafe_b64decode(status.upload_id + "=" * (-len(status.upload_id) % 4)).decode()
    assert decoded.startswith(f"/v2/{repo}/blobs/uploads/") and "127.0.0.1" not in decoded
    info = await backend.finish_upload(repo, status.upload_id, sha256(data), stream(data[:5000], data[5000:]))
    assert (info.digest, info.size) == (sha256(data), len(data))
    assert (await backend.stat_blob(repo, info.digest)).size == len(data)
    assert await read_all(await backend.open_blob(repo, info.digest)) == data


async def test_chunked_upload_ids_change(backend: RegistryBackend) -> None:
    repo = unique_repo()
    first = await backend.start_upload(repo)
    assert (await backend.upload_status(repo, first.upload_id)).offset == 0
    # One byte: distribution answers "Range: 0-0" for 0 and 1 byte alike.
    second = await backend.write_upload(repo, first.upload_id, stream(b"a"))
    assert second.offset == 1 and second.upload_id != first.upload_id
    assert (await backend.upload_status(repo, second.upload_id)).offset == 1
    third = await backend.write_upload(repo, second.upload_id, stream(b"bcd", b"ef"), start=1)
    assert third.offset == 6 and third.upload_id not in (first.upload_id, second.upload_id)
    status = await backend.upload_status(repo, third.upload_id)
    assert status.offset == 6
    fourth = await backend.write_upload(repo, status.upload_id, stream(b"gh"), start=6)
    assert fourth.offset == 8
    info = await backend.finish_upload(repo, fourth.upload_id, sha256(b"abcdefghij"), stream(b"ij"))
    assert info.size == 10
    assert await read_all(await backend.open_blob(repo, info.digest)) == b"abcdefghij"


async def test_out_of_order_start_is_range_invalid(backend: RegistryBackend) -> None:
    repo = unique_repo()
    status = await backend.start_upload(repo)
    status = await backend.write_upload(repo, status.upload_id, stream(b"12345"))
    for start in (0, 3, 6):
        with pytest.raises(RegistryError) as exc_info:
            await backend.write_upload(repo, status.upload_id, stream(b"x"), start=start)
        expect(Errors.RANGE_INVALID, exc_info)
    assert (await backend.upload_status(repo, status.upload_id)).offset == 5


async def test_cancel_upload(backend: RegistryBackend) -> None:
    repo = unique_repo()
    status = await backend.start_upload(repo)
    status = await backend.write_upload(repo, status.upload_id, stream(b"doomed"))
    await backend.cancel_upload(repo, status.upload_id)
    for call in (backend.upload_status(repo, status.upload_id), backend.cancel_upload(repo, status.upload_id)):
        with pytest.raises(RegistryError) as exc_info:
            await call
        expect(Errors.BLOB_UPLOAD_UNKNOWN, exc_info)


async def test_digest_mismatch_publishes_nothing(backend: RegistryBackend) -> None:
    repo = unique_repo()
    status = await backend.start_upload(repo)
    claimed = sha256(b"what the client promised")
    with pytest.raises(RegistryError) as exc_info:
        await backend.finish_upload(repo, status.upload_id, claimed, stream(b"what it sent"))
    expect(Errors.DIGEST_INVALID, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.stat_blob(repo, claimed)
    expect(Errors.BLOB_UNKNOWN, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.upload_status(repo, status.upload_id)
    expect(Errors.BLOB_UPLOAD_UNKNOWN, exc_info)


def _id(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def test_forged_upload_ids(backend: RegistryBackend) -> None:
    repo, other = unique_repo(), unique_repo()
    real = await backend.start_upload(other)
    real_path = base64.urlsafe_b64decode(real.upload_id + "=" * (-len(real.upload_id) % 4)).decode()
    session = real_path.split("/blobs/uploads/", 1)[1]
    forged = [
        "",
        "not base64 !",
        "////",
        _id("garbage"),
        real.upload_id,  # a real session of another repository
        _id(f"/v2/{repo}/blobs/uploads/"),
        _id(f"/v2/{repo}/blobs/uploads/../../{other}/blobs/uploads/{session}"),
        _id(f"/v2/{repo}/blobs/uploads/a%2F..%2Fb"),
        _id(f"/v2/{repo}/blobs/uploads/%2e%2e"),
        _id(f"/v2/{repo}/blobs/uploads/{session}".replace("?", "\\?")),
        _id(f"http://evil.example/v2/{repo}/blobs/uploads/{session}"),
        _id(f"/v2/{repo}/blobs/uploads/{session} #x"),
        _id(f"/v2/{repo}/blobs/uploads/nope-{uuid4()}"),  # well-formed, unknown to the backend
        "A" * 10000,
    ]
    for upload_id in forged:
        for call in (
            backend.upload_status(repo, upload_id),
            backend.write_upload(repo, upload_id, stream(b"x")),
            backend.finish_upload(repo, upload_id, sha256(b"x"), stream(b"x")),
            backend.cancel_upload(repo, upload_id),
        ):
            with pytest.raises(RegistryError) as exc_info:
                await call
            expect(Errors.BLOB_UPLOAD_UNKNOWN, exc_info)
    # The real session is untouched.
    assert (await backend.upload_status(other, real.upload_id)).offset == 0


# -- blobs -------------------------------------------------------------------------------
async def test_ranged_reads(distribution: Distribution) -> None:
    b = RegistryBackend(distribution.url, read_chunk=7)  # small chunks: ranges cross them
    await b.start()
    try:
        repo = unique_repo()
        data = bytes(range(256)) * 4
        digest = await push_blob(b, repo, data)
        for start, length in [(0, None), (0, 10), (5, 100), (1000, None), (1000, 24), (1023, 1), (100, 5000)]:
            reader = await b.open_blob(repo, digest, start, length)
            expected = data[start:] if length is None else data[start : start + length]
            assert (reader.size, reader.start, reader.length) == (len(data), start, len(expected))
            assert await read_all(reader) == expected
        empty = await b.open_blob(repo, digest, len(data))  # the empty tail is not an error
        assert (empty.length, await read_all(empty)) == (0, b"")
        assert await read_all(await b.open_blob(repo, digest, 10, 0)) == b""
        for start in (len(data) + 1, 5000):
            with pytest.raises(RegistryError) as exc_info:
                await b.open_blob(repo, digest, start)
            expect(Errors.RANGE_INVALID, exc_info)
        # A consumer that stops early releases the stream; the backend stays usable.
        reader = await b.open_blob(repo, digest)
        async for chunk in reader:
            assert chunk == data[:7]
            break
        await reader.close()
        await reader.close()  # twice is fine
        assert await read_all(await b.open_blob(repo, digest, 3, 3)) == data[3:6]
        with pytest.raises(RegistryError) as exc_info:
            await b.open_blob(repo, sha256(b"absent"))
        expect(Errors.BLOB_UNKNOWN, exc_info)
    finally:
        await b.close()


async def test_no_mount_attempt_for_a_blob_the_source_lacks(backend: RegistryBackend, distribution: Distribution) -> None:
    """Distribution answers such a mount by opening an upload, and leaks the session's
    directory even when it is cancelled: never ask."""
    source, target = unique_repo(), unique_repo()
    await push_blob(backend, source, b"something else")
    await push_blob(backend, target, b"target exists")
    assert await backend.mount_blob(target, sha256(b"not in the source"), source) is None
    uploads = distribution.root.rglob(f"repositories/{target}/_uploads/*")
    assert [p for p in uploads] == []


async def test_mount_and_delete_blob(backend: RegistryBackend) -> None:
    source, target = unique_repo(), unique_repo()
    data = b"mount me"
    digest = await push_blob(backend, source, data)
    info = await backend.mount_blob(target, digest, source)
    assert info is not None and (info.digest, info.size) == (digest, len(data))
    assert await read_all(await backend.open_blob(target, digest)) == data
    assert await backend.mount_blob(target, sha256(b"nowhere"), source) is None
    assert await backend.mount_blob(unique_repo(), digest, unique_repo()) is None
    await backend.delete_blob(target, digest)
    with pytest.raises(RegistryError) as exc_info:
        await backend.stat_blob(target, digest)
    expect(Errors.BLOB_UNKNOWN, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.delete_blob(target, digest)
    expect(Errors.BLOB_UNKNOWN, exc_info)
    assert (await backend.stat_blob(source, digest)).size == len(data)


# -- manifests -----------------------------------------------------------------------------
async def test_manifest_round_trip(backend: RegistryBackend) -> None:
    repo = unique_repo()
    manifest, digest = await push_image(backend, repo, "v1")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "artifactType": mt.FULL,
            "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(manifest)}],
        },
        separators=(",", ":"),
    ).encode()
    index_digest = sha256(index)
    await backend.put_manifest(repo, "v1-full", index, mt.OCI_INDEX, index_digest)

    for ref, body, media_type, dgst in [
        ("v1", manifest, mt.OCI_MANIFEST, digest),
        (digest, manifest, mt.OCI_MANIFEST, digest),
        ("v1-full", index, mt.OCI_INDEX, index_digest),
        (index_digest, index, mt.OCI_INDEX, index_digest),
    ]:
        got = await backend.get_manifest(repo, ref)
        assert (got.data, got.media_type, got.digest) == (body, media_type, dgst)
        info = await backend.stat_manifest(repo, ref)
        assert (info.digest, info.media_type, info.size) == (dgst, media_type, len(body))

    assert await backend.list_tags(repo) == ["v1", "v1-full"]
    with pytest.raises(RegistryError) as exc_info:
        await backend.delete_manifest(repo, "v1")
    expect(Errors.UNSUPPORTED, exc_info)
    assert "digest" in exc_info.value.message

    await backend.delete_manifest(repo, index_digest)
    for call in (backend.get_manifest(repo, index_digest), backend.stat_manifest(repo, "v1-full")):
        with pytest.raises(RegistryError) as exc_info:
            await call
        expect(Errors.MANIFEST_UNKNOWN, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.delete_manifest(repo, index_digest)
    expect(Errors.MANIFEST_UNKNOWN, exc_info)
    assert (await backend.get_manifest(repo, "v1")).data == manifest


async def test_manifest_errors_pass_through(backend: RegistryBackend) -> None:
    repo = unique_repo()
    missing = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_EMPTY, "digest": sha256(b"nope"), "size": 4},
            "layers": [],
        }
    ).encode()
    with pytest.raises(RegistryError) as exc_info:
        await backend.put_manifest(repo, "v1", missing, mt.OCI_MANIFEST, sha256(missing))
    expect(Errors.MANIFEST_BLOB_UNKNOWN, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.put_manifest(repo, "v1", b"not json", mt.OCI_MANIFEST, sha256(b"not json"))
    expect(Errors.MANIFEST_INVALID, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.get_manifest(repo, "v1")
    expect(Errors.MANIFEST_UNKNOWN, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.list_tags(repo)
    expect(Errors.NAME_UNKNOWN, exc_info)


# -- listings --------------------------------------------------------------------------------
async def test_tags_pagination(backend: RegistryBackend) -> None:
    repo = unique_repo()
    manifest, digest = await push_image(backend, repo, None)
    tags = [f"v{i:03d}" for i in range(120)]
    for tag in tags:
        await backend.put_manifest(repo, tag, manifest, mt.OCI_MANIFEST, digest)
    assert await backend.list_tags(repo) == tags
    backend.page_size = 25
    assert await backend.list_tags(repo) == tags


async def test_catalog_pagination(backend: RegistryBackend) -> None:
    prefix = f"cat{uuid4().hex[:8]}"
    repos = sorted(f"{prefix}/r{i}" for i in range(5))
    for repo in repos:
        await push_blob(backend, repo, repo.encode())
    backend.page_size = 2  # distribution paginates the catalog: 2 per page, Link to the next
    listed = await backend.list_repositories()
    assert listed == sorted(listed) and set(repos) <= set(listed)
    backend.page_size = None
    assert set(repos) <= set(await backend.list_repositories())


# -- htpasswd basic auth against a real registry ---------------------------------------------------
def _bcrypt_hash(password: str) -> str | None:
    """A bcrypt hash (docker-registry's htpasswd accepts nothing else) from whatever exists."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    except ImportError:
        pass
    try:
        from passlib.hash import bcrypt as passlib_bcrypt  # type: ignore[import-not-found]

        return passlib_bcrypt.using(rounds=4).hash(password)
    except ImportError:
        pass
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run([htpasswd, "-nbB", "-C", "4", "u", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().split(":", 1)[1]
    try:  # the stdlib's crypt (libxcrypt) does bcrypt on Debian; gone in Python 3.13
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        if crypt.METHOD_BLOWFISH in crypt.methods:
            hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
            if hashed and hashed.startswith("$2"):
                return hashed
    except ImportError:
        pass
    return None


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    hashed = _bcrypt_hash("s3cret")
    if hashed is None:
        pytest.skip("no bcrypt generator: neither bcrypt, passlib, htpasswd nor a bcrypt-capable crypt")
    workdir = tmp_path_factory.mktemp("distribution-basic")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"alice:{hashed}\n")
    with run_distribution(workdir, htpasswd=htpasswd) as registry:
        yield registry


async def test_basic_auth(basic_registry: Distribution) -> None:
    b = RegistryBackend(basic_registry.url, username="alice", password="s3cret")
    await b.start()
    try:
        repo = unique_repo()
        # A streamed body first, on a fresh backend: credentials must be known up front.
        status = await b.start_upload(repo)
        fresh = RegistryBackend(basic_registry.url, username="alice", password="s3cret")
        await fresh.start()
        try:
            status = await fresh.write_upload(repo, status.upload_id, stream(b"basic"))
        finally:
            await fresh.close()
        info = await b.finish_upload(repo, status.upload_id, sha256(b"basic"))
        assert info.size == 5
        await b.ping()
        await push_image(b, repo)
        assert await b.list_tags(repo) == ["v1"]
    finally:
        await b.close()

    for username, password, hint in [("alice", "wrong", "refused"), (None, None, "none are configured")]:
        bad = RegistryBackend(basic_registry.url, username=username, password=password)
        await bad.start()
        try:
            for call in (bad.ping(), bad.list_tags(repo), bad.write_upload(repo, status.upload_id, stream(b"x"))):
                with pytest.raises(RegistryError) as exc_info:
                    await call
                expect(Errors.UNAVAILABLE, exc_info)
                assert hint in exc_info.value.message
        finally:
            await bad.close()


# -- challenge parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="basic-realm"', [("basic", {"realm": "basic-realm"})]),
        (
            'Bearer realm="https://auth.example/token",service="registry, example",'
            'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "registry, example",
                        "scope": "repository:a/b:pull,push repository:c:pull",
                        "error": "insufficient_scope",
                    },
                )
            ],
        ),
        (
            'Bearer realm=https://auth.example/token, service=reg , Basic realm="x \\"y\\""',
            [("bearer", {"realm": "https://auth.example/token", "service": "reg"}), ("basic", {"realm": 'x "y"'})],
        ),
        ("", []),
        ("Negotiate", [("negotiate", {})]),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, c.params) for c in parse_challenges(header)] == expected


# -- a fake registry: Bearer tokens, redirects, Range ignored, pagination, garbage ---------------------
class FakeRegistry:
    """A hand-written registry that challenges with Bearer and misbehaves on request."""

    def __init__(self) -> None:
        self.token_requests: list[dict[str, object]] = []
        self.tokens_issued = 0
        self.expires_in = 60
        self.realm = ""
        self.blob = bytes(range(256)) * 40
        self.blob_digest = sha256(self.blob)
        self.redirect_to = ""
        self.manifest_body = b"{}"
        self.manifest_status = 200
        self.manifest_headers: dict[str, str] = {}
        self.uploads: dict[str, bytearray] = {}
        self.redirect_auth: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_get("/v2/", self.version)
        app.router.add_route("*", "/v2/{repo:.+}/blobs/uploads/{id}", self.upload)
        app.router.add_post("/v2/{repo:.+}/blobs/uploads/", self.start_upload)
        app.router.add_route("*", "/v2/{repo:.+}/blobs/{digest}", self.blob_handler)
        app.router.add_get("/v2/{repo:.+}/tags/list", self.tags)
        app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", self.manifest)
        return app

    def authorized(self, request: web.Request, scope: str) -> None:
        header = request.headers.get("Authorization", "")
        if not (header.startswith("Bearer tok-") and int(header[11:]) <= self.tokens_issued):
            challenge = f'Bearer realm="{self.realm}",service="fake, registry"'
            if scope:
                challenge += f',scope="{scope}"'
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": challenge})

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append({"service": request.query.get("service"), "scope": request.query.getall("scope", [])})
        self.tokens_issued += 1
        return web.json_response({"token": f"tok-{self.tokens_issued}", "expires_in": self.expires_in})

    async def version(self, request: web.Request) -> web.Response:
        self.authorized(request, "")
        return web.json_response({})

    async def start_upload(self, request: web.Request) -> web.Response:
        repo = request.match_info["repo"]
        self.authorized(request, f"repository:{repo}:pull,push")
        session = uuid4().hex
        self.uploads[session] = bytearray()
        # An internal host name, as a registry behind a load balancer would answer.
        location = f"http://internal.invalid:5000/v2/{repo}/blobs/uploads/{session}?_state=x%3D0"
        return web.Response(status=202, headers={"Location": location, "Range": "0-0"})

    async def upload(self, request: web.Request) -> web.Response:
        repo, session = request.match_info["repo"], request.match_info["id"]
        self.authorized(request, f"repository:{repo}:pull,push")
        data = self.uploads[session]
        if request.method == "PATCH":
            data += await request.read()
        location = f"/v2/{repo}/blobs/uploads/{session}?_state=x%3D{len(data)}"  # relative this time
        return web.Response(status=202, headers={"Location": location, "Range": f"0-{len(data) - 1}"})

    async def blob_handler(self, request: web.Request) -> web.StreamResponse:
        self.authorized(request, f"repository:{request.match_info['repo']}:pull")
        if request.match_info["digest"] != self.blob_digest:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "no"}]}, status=404)
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        # Ignores Range on purpose: the backend must skip bytes itself.
        return web.Response(body=self.blob, headers={"Docker-Content-Digest": self.blob_digest})

    async def tags(self, request: web.Request) -> web.Response:
        repo = request.match_info["repo"]
        self.authorized(request, f"repository:{repo}:pull")
        all_tags = [f"t{i:02d}" for i in range(10)]
        last = request.query.get("last")
        start = all_tags.index(last) + 1 if last else 0
        page = all_tags[start : start + 3]
        headers = {}
        if start + 3 < len(all_tags):
            # An absolute link to another host: only its path and query may be followed.
            headers["Link"] = f'<http://internal.invalid/v2/{repo}/tags/list?last={page[-1]}&n=3>; rel="next"'
        return web.json_response({"name": repo, "tags": page}, headers=headers)

    async def manifest(self, request: web.Request) -> web.Response:
        self.authorized(request, f"repository:{request.match_info['repo']}:pull")
        return web.Response(status=self.manifest_status, body=self.manifest_body, headers=self.manifest_headers)


@pytest.fixture
async def fake(aiohttp_server) -> AsyncIterator[tuple[FakeRegistry, RegistryBackend]]:
    registry = FakeRegistry()
    server = await aiohttp_server(registry.app())
    registry.realm = str(server.make_url("/token"))
    b = RegistryBackend(str(server.make_url("/")), read_chunk=100)
    await b.start()
    yield registry, b
    await b.close()


async def test_bearer_token_cache(fake: tuple[FakeRegistry, RegistryBackend]) -> None:
    registry, b = fake
    now = [1000.0]
    b._auth._clock = lambda: now[0]  # type: ignore[union-attr]
    await b.stat_blob("a/b", registry.blob_digest)
    assert registry.token_requests == [{"service": "fake, registry", "scope": ["repository:a/b:pull"]}]
    for _ in range(3):  # the cached token serves the same scope
        await b.stat_blob("a/b", registry.blob_digest)
    assert len(registry.token_requests) == 1
    await b.stat_blob("c/d", registry.blob_digest)  # another scope, another token
    assert len(registry.token_requests) == 2
    now[0] += 30  # still fresh
    await b.stat_blob("a/b", registry.blob_digest)
    assert len(registry.token_requests) == 2
    now[0] += 30  # near expiry (60 s): refreshed before the backend would refuse it
    await b.stat_blob("a/b", registry.blob_digest)
    assert len(registry.token_requests) == 3
    registry.tokens_issued = 0  # the backend forgets every token: one 401, one refresh, retry
    await b.stat_blob("a/b", registry.blob_digest)
    assert len(registry.token_requests) == 4


async def test_bearer_streamed_upload_gets_token_first(fake: tuple[FakeRegistry, RegistryBackend]) -> None:
    registry, b = fake
    status = await b.start_upload("a/b")
    decoded = base64.urlsafe_b64decode(status.upload_id + "=" * (-len(status.upload_id) % 4)).decode()
    assert decoded.startswith("/v2/a/b/blobs/uploads/") and "internal" not in decoded
    # A second proxy instance that has never talked to the backend: the PATCH body is
    # a stream, so the token must be fetched before it is sent.
    other = RegistryBackend(str(b._origin))  # type: ignore[attr-defined]
    await other.start()
    try:
        status = await other.write_upload("a/b", status.upload_id, stream(b"abc", b"de"))
    finally:
        await other.close()
    assert status.offset == 5
    assert registry.token_requests[-1]["scope"] == ["repository:a/b:pull,push"]
    assert bytes(next(iter(registry.uploads.values()))) == b"abcde"


async def test_range_ignored_and_redirect(fake: tuple[FakeRegistry, RegistryBackend], aiohttp_server) -> None:
    registry, b = fake
    reader = await b.open_blob("a/b", registry.blob_digest, 1000, 2345)
    assert (reader.size, reader.length) == (len(registry.blob), 2345)
    assert await read_all(reader) == registry.blob[1000:3345]
    assert await read_all(await b.open_blob("a/b", registry.blob_digest, 10000)) == registry.blob[10000:]

    async def storage(request: web.Request) -> web.Response:
        registry.redirect_auth.append(request.headers.get("Authorization"))
        if request.query.get("sig") != "abc":
            return web.Response(status=403, text="<Error>SignatureDoesNotMatch</Error>")
        return web.Response(body=registry.blob)

    other = web.Application()
    other.router.add_route("*", "/presigned", storage)
    storage_server = await aiohttp_server(other)
    registry.redirect_to = str(storage_server.make_url("/presigned").with_query(sig="abc"))
    assert await read_all(await b.open_blob("a/b", registry.blob_digest, 5, 10)) == registry.blob[5:15]
    assert (await b.stat_blob("a/b", registry.blob_digest)).size == len(registry.blob)
    assert registry.redirect_auth == [None, None]  # our token never left for the other host
    registry.redirect_to = str(storage_server.make_url("/presigned").with_query(sig="expired"))
    with pytest.raises(RegistryError) as exc_info:  # storage trouble is not the client's DENIED
        await b.open_blob("a/b", registry.blob_digest)
    expect(Errors.UNAVAILABLE, exc_info)
    assert "presigned" not in exc_info.value.message and "127.0.0.1" not in exc_info.value.message


async def test_link_pagination_stays_on_backend(fake: tuple[FakeRegistry, RegistryBackend]) -> None:
    _, b = fake
    assert await b.list_tags("a/b") == [f"t{i:02d}" for i in range(10)]


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (500, b"oops", {}, Errors.UNAVAILABLE),
        (502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}, Errors.UNAVAILABLE),
        (200, b"x" * (4 * 1024 * 1024 + 1), {"Content-Type": mt.OCI_MANIFEST}, Errors.UNAVAILABLE),
        (200, b"{}", {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": sha256(b"other")}, Errors.UNAVAILABLE),
        (418, b"teapot", {}, Errors.UNAVAILABLE),
        (404, b"not json", {"Content-Type": "application/json"}, Errors.MANIFEST_UNKNOWN),
        (403, b'{"errors":[{"code":"DENIED","message":"no"}]}', {"Content-Type": "application/json"}, Errors.DENIED),
        (429, b"", {}, Errors.TOOMANYREQUESTS),
    ],
)
async def test_garbage_answers(
    fake: tuple[FakeRegistry, RegistryBackend], status: int, body: bytes, headers: dict[str, str], error
) -> None:
    registry, b = fake
    registry.manifest_status, registry.manifest_body, registry.manifest_headers = status, body, headers
    with pytest.raises(RegistryError) as exc_info:
        await b.get_manifest("a/b", "v1")
    expect(error, exc_info)


async def test_manifest_without_digest_header_is_hashed(fake: tuple[FakeRegistry, RegistryBackend]) -> None:
    registry, b = fake
    registry.manifest_body = b'{"schemaVersion":2}'
    registry.manifest_headers = {"Content-Type": mt.OCI_MANIFEST + "; charset=utf-8"}
    got = await b.get_manifest("a/b", "v1")
    assert (got.digest, got.media_type, got.data) == (sha256(registry.manifest_body), mt.OCI_MANIFEST, registry.manifest_body)
    info = await b.stat_manifest("a/b", "v1")  # HEAD lacks the digest: falls back to GET
    assert info.digest == got.digest
    with pytest.raises(RegistryError) as exc_info:
        await b.get_manifest("a/b", sha256(b"something else"))  # bytes must match the digest asked for
    expect(Errors.UNAVAILABLE, exc_info)


async def test_failing_body_source_keeps_its_error(backend: RegistryBackend) -> None:
    """If the client's stream fails mid-upload, that error surfaces, not UNAVAILABLE."""
    repo = unique_repo()
    status = await backend.start_upload(repo)

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RegistryError(Errors.SIZE_INVALID, "client sent too much")

    with pytest.raises(RegistryError) as exc_info:
        await backend.write_upload(repo, status.upload_id, broken())
    expect(Errors.SIZE_INVALID, exc_info)
    with pytest.raises(RegistryError) as exc_info:
        await backend.finish_upload(repo, status.upload_id, sha256(b"x"), broken())
    expect(Errors.SIZE_INVALID, exc_info)
    await backend.ping()  # the pool survived


async def test_canonical_digest_of_another_algorithm(fake: tuple[FakeRegistry, RegistryBackend]) -> None:
    """A backend may name content by its own (sha256) digest when asked by sha512: that is
    no mismatch, but a sha256 header that disagrees with a sha256 reference still is."""
    import hashlib

    registry, b = fake
    body = b'{"schemaVersion":2}'
    by512 = "sha512:" + hashlib.sha512(body).hexdigest()
    registry.manifest_body = body
    registry.manifest_headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": sha256(body),
                                 "Content-Length": str(len(body))}
    got = await b.get_manifest("a/b", by512)
    assert got.digest == by512 and got.data == body
    assert (await b.stat_manifest("a/b", by512)).digest == by512
    registry.manifest_headers["Docker-Content-Digest"] = sha256(b"other")
    with pytest.raises(RegistryError) as exc_info:
        await b.get_manifest("a/b", sha256(body))
    expect(Errors.UNAVAILABLE, exc_info)
