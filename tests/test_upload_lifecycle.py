"""Upload sessions never outlive their use (issue 18, finding 12): a monolithic upload
cut off before the client learned its id, idle sessions, sessions of a killed process,
and the per-repository quota."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from proxy.app import create_app
from proxy.backend.filesystem import FilesystemBackend
from proxy.oci.errors import Errors, RegistryError
from tests.conftest import make_config
from tests.support.oci import digest_of, error_code

REPO = "generic/face-recog"
ROOT_DIR = Path(__file__).resolve().parent.parent


async def chunks(data: bytes):
    yield data


def sessions(root: Path) -> list[Path]:
    return [p for p in (root / "repositories").rglob("_uploads/*") if p.is_dir()]


# -- a monolithic upload cut off --------------------------------------------------------------
async def _post_then_hang_up(client, repo: str, sent: int, declared: int) -> None:
    """POST ?digest= declaring ``declared`` bytes, send ``sent``, close the connection."""
    digest = digest_of(b"x" * declared)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        f"POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
        f"Host: {client.server.host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode())
    block = os.urandom(64 * 1024)
    for _ in range(sent // len(block)):
        writer.write(block)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_cut_off_monolithic_upload_leaves_nothing(aiohttp_client, tmp_path, backend_kind, request, repo):
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    client = await aiohttp_client(create_app(make_config(tmp_path, backend_kind, dist)))
    await _post_then_hang_up(client, repo, sent=4 * 1024 * 1024, declared=16 * 1024 * 1024)
    if backend_kind == "filesystem":
        root = tmp_path / "storage"
        assert await _until(lambda: not sessions(root)), sessions(root)
    # The registry backend keeps no session; algomint asks the backend to drop its own,
    # but docker-registry 2.8 cannot drop a session whose write was cut off (its signed
    # offset is stale, and its cancel path fails): its upload purging removes it.
    # The service is fine afterwards.
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"ok")}, data=b"ok")
    assert resp.status == 201


async def test_monolithic_digest_mismatch_leaves_no_session(aiohttp_client, tmp_path, repo):
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"a")}, data=b"b")
    assert resp.status == 400
    assert not sessions(tmp_path / "storage")


async def test_resumable_session_is_kept_after_a_cut_off_patch(aiohttp_client, tmp_path, repo):
    """A client that holds its session id may resume: only id-less sessions go at once."""
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202
    resp = await client.patch(resp.headers["Location"], data=b"abc")
    assert resp.status == 202
    assert len(sessions(tmp_path / "storage")) == 1


# -- idle expiry --------------------------------------------------------------------------------
async def test_expiry_counts_from_the_last_write(tmp_path):
    fs = FilesystemBackend(tmp_path, upload_expiry=3600)
    await fs.start()
    busy = (await fs.start_upload(REPO, resumable=True)).upload_id
    idle = (await fs.start_upload(REPO, resumable=True)).upload_id
    long_ago = time.time() - 7200
    for upload_id in (busy, idle):
        session = tmp_path / "repositories" / "generic" / "face-recog" / "_uploads" / upload_id
        (session / "startedat").write_text("2000-01-01T00:00:00+00:00")
        os.utime(session / "data", (long_ago, long_ago))
    await fs.write_upload(REPO, busy, chunks(b"still going"))
    assert await fs.purge_expired_uploads() == 1
    assert (await fs.upload_status(REPO, busy)).offset == 11
    try:
        await fs.upload_status(REPO, idle)
        raise AssertionError("the idle session survived")
    except RegistryError as exc:
        assert exc.error is Errors.BLOB_UPLOAD_UNKNOWN
    await fs.close()


async def test_app_sweeps_idle_sessions(aiohttp_client, tmp_path, repo):
    config = make_config(tmp_path, "filesystem")
    config.storage.upload_expiry = 0.2
    client = await aiohttp_client(create_app(config))
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    location = resp.headers["Location"]
    assert await _until(lambda: not sessions(tmp_path / "storage"), timeout=5)
    resp = await client.get(location)
    assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


# -- sessions of a process that is gone ---------------------------------------------------------
_KILLED_BUILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from proxy.backend.filesystem import FilesystemBackend

    async def main():
        fs = FilesystemBackend(sys.argv[1])
        await fs.start()
        # What a full build does: a session of its own, half written, then the process dies.
        upload_id = (await fs.start_upload("images/face")).upload_id

        async def body():
            yield b"half a layer"

        await fs.write_upload("images/face", upload_id, body())
        client = (await fs.start_upload("images/face", resumable=True)).upload_id
        print(upload_id, client, flush=True)
        os._exit(9)

    asyncio.run(main())
    """
)


async def test_killed_process_sessions_removed_at_restart(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
    )
    assert out.returncode == 9, out.stderr
    private, resumable = out.stdout.split()
    assert len(sessions(tmp_path)) == 2
    restarted = FilesystemBackend(tmp_path)
    await restarted.start()
    names = {p.name for p in sessions(tmp_path)}
    assert names == {resumable}  # the build's session is gone, the client's stays
    assert private not in names
    assert not (tmp_path / "_owners").exists() or not any((tmp_path / "_owners").iterdir())
    await restarted.close()


async def test_live_instance_sessions_are_kept(tmp_path):
    first = FilesystemBackend(tmp_path)
    await first.start()
    upload_id = (await first.start_upload(REPO)).upload_id
    second = FilesystemBackend(tmp_path)
    await second.start()  # another live instance on the same root: hands off
    assert await second.purge_expired_uploads() == 0
    assert (await first.upload_status(REPO, upload_id)).offset == 0
    await first.close()  # closed without finishing: nobody can finish it now
    assert await second.purge_expired_uploads() == 1
    await second.close()


# -- per-repository quota --------------------------------------------------------------------
async def test_quota_refuses_and_keeps_the_session(tmp_path):
    fs = FilesystemBackend(tmp_path, upload_quota=10, chunk_size=4)
    await fs.start()
    a = (await fs.start_upload(REPO, resumable=True)).upload_id
    b = (await fs.start_upload(REPO, resumable=True)).upload_id
    other = (await fs.start_upload("generic/other", resumable=True)).upload_id
    await fs.write_upload(REPO, a, chunks(b"123456"))
    try:
        await fs.write_upload(REPO, b, chunks(b"abcdefgh"))
        raise AssertionError("quota not enforced")
    except RegistryError as exc:
        assert exc.error is Errors.DENIED
    assert (await fs.upload_status(REPO, b)).offset == 0  # as it was
    await fs.write_upload(REPO, b, chunks(b"abcd"))  # exactly up to the quota
    await fs.write_upload("generic/other", other, chunks(b"x" * 10))  # per repository
    # Finishing frees the room.
    await fs.finish_upload(REPO, a, "sha256:" + hashlib.sha256(b"123456").hexdigest())
    await fs.write_upload(REPO, b, chunks(b"efgh"))
    info = await fs.finish_upload(REPO, b, "sha256:" + hashlib.sha256(b"abcdefgh").hexdigest())
    assert info.size == 8
    await fs.close()


async def test_quota_over_http(aiohttp_client, tmp_path, repo):
    config = make_config(tmp_path, "filesystem")
    config.storage.upload_quota = 1000
    client = await aiohttp_client(create_app(config))
    resp = await client.post(f"/v2/{repo}/blobs/uploads/")
    resp = await client.patch(resp.headers["Location"], data=b"a" * 600, headers={"Content-Range": "0-599"})
    assert resp.status == 202
    location = resp.headers["Location"]
    resp = await client.patch(location, data=b"b" * 600, headers={"Content-Range": "600-1199"})
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    status = await client.get(location)
    assert status.status == 204 and status.headers["Range"] == "0-599"
    # A monolithic upload past the quota leaves nothing either.
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(b"c" * 800)}, data=b"c" * 800)
    assert resp.status == 403 and await error_code(resp) == "DENIED"
    assert len(sessions(tmp_path / "storage")) == 1


async def test_killed_server_leaves_no_monolithic_session_after_restart(tmp_path):
    """End to end: ``algomint serve`` killed mid-way through a single-POST upload; the
    restarted server removes the session nobody can finish, and keeps the client's."""
    import signal
    import urllib.request

    from tests.support.server import start_server

    workdir = tmp_path / "srv"
    server = start_server(workdir)
    storage = workdir / "storage"
    try:
        request = urllib.request.Request(f"{server.url}/v2/test/killed/blobs/uploads/", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202
            resumable = resp.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        host, port = server.host.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        digest = digest_of(b"never sent whole")
        writer.write(
            f"POST /v2/test/killed/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Length: {8 * 1024 * 1024}\r\n\r\n".encode() + os.urandom(2 * 1024 * 1024)
        )
        await writer.drain()

        def written() -> bool:
            return any((s / "data").exists() and (s / "data").stat().st_size > 0 for s in sessions(storage))

        assert await _until(written), server.logs()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        writer.close()
        assert len(sessions(storage)) == 2  # the kill left the half upload behind
    finally:
        if server.process.poll() is None:
            server.process.kill()
    restarted = start_server(workdir)
    try:
        assert [s.name for s in sessions(storage)] == [resumable]
    finally:
        restarted.process.terminate()
        restarted.process.wait(10)


def test_quota_is_refused_for_the_registry_backend(tmp_path):
    import pytest

    from proxy.config import ConfigError, load_config

    env = {"ALGOMINT_STORAGE__BACKEND": "registry", "ALGOMINT_STORAGE__URL": "http://127.0.0.1:1",
           "ALGOMINT_STORAGE__UPLOAD_QUOTA": "1000"}
    with pytest.raises(ConfigError, match="upload_quota"):
        load_config(None, environ=env)


async def test_quota_holds_for_concurrent_writers(tmp_path):
    fs = FilesystemBackend(tmp_path, upload_quota=10 * 4096, chunk_size=4096)
    await fs.start()
    ids = [(await fs.start_upload(REPO, resumable=True)).upload_id for _ in range(4)]

    async def slow(n: int):
        for _ in range(n):
            yield b"z" * 4096
            await asyncio.sleep(0)

    results = await asyncio.gather(*(fs.write_upload(REPO, i, slow(8)) for i in ids), return_exceptions=True)
    refused = [r for r in results if isinstance(r, RegistryError)]
    assert refused and all(r.error is Errors.DENIED for r in refused)
    held = sum([(await fs.upload_status(REPO, i)).offset for i in ids])
    assert held <= 10 * 4096 + 4 * 4096  # at most one chunk over per concurrent writer
    await fs.close()


async def test_concurrent_private_sessions_share_one_owner(tmp_path, monkeypatch):
    import fcntl

    from proxy.backend import filesystem

    real_flock = fcntl.flock

    def slow_flock(fd, op):  # widen the window in which a second thread could claim too
        time.sleep(0.05)
        return real_flock(fd, op)

    monkeypatch.setattr(filesystem.fcntl, "flock", slow_flock)
    fs = FilesystemBackend(tmp_path)
    await fs.start()
    started = await asyncio.gather(*(fs.start_upload(REPO) for _ in range(16)))
    assert len({s.upload_id for s in started}) == 16
    assert len(list((tmp_path / "_owners").iterdir())) == 1
    await fs.close()
