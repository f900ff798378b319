"""Unit tests of the embedded filesystem backend (``proxy/backend/filesystem.py``)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator

import pytest

from proxy.backend.filesystem import FilesystemBackend
from proxy.oci.errors import ErrorCode, Errors, RegistryError

REPO = "generic/face-recog"
OTHER = "images/face-recog"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CHUNK = 7  # small, so reads and writes cross chunk boundaries


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def read_all(reader) -> bytes:
    async with reader:
        return b"".join([piece async for piece in reader])


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def raises(error: ErrorCode, awaitable) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        await awaitable
    assert info.value.error is error, info.value
    return info.value


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def backend(root: Path) -> FilesystemBackend:
    fs = FilesystemBackend(root, chunk_size=CHUNK)
    await fs.start()
    return fs


async def push_blob(fs: FilesystemBackend, repo: str, data: bytes) -> str:
    status = await fs.start_upload(repo)
    digest = sha256(data)
    await fs.finish_upload(repo, status.upload_id, digest, chunks(data))
    return digest


async def push_manifest(
    fs: FilesystemBackend, repo: str, reference: str, body: dict, media_type: str = MANIFEST_TYPE
) -> tuple[str, bytes]:
    data = json.dumps(body).encode()
    digest = sha256(data)
    await fs.put_manifest(repo, reference, data, media_type, digest)
    return digest, data


# -- health ------------------------------------------------------------------
async def test_ping_ok(backend: FilesystemBackend) -> None:
    await backend.ping()


@pytest.mark.parametrize("kind", ["missing", "file"])
async def test_ping_unavailable(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "store"
    if kind == "file":
        root.write_text("not a directory")
    await raises(Errors.UNAVAILABLE, FilesystemBackend(root).ping())


async def test_start_creates_layout(backend: FilesystemBackend, root: Path) -> None:
    assert {p.name for p in root.iterdir()} == {"_tmp", "blobs", "repositories", "_index"}


# -- uploads and blobs ---------------------------------------------------------
async def test_monolithic_upload_publishes_content_addressed_blob(backend: FilesystemBackend, root: Path) -> None:
    data = b"hello, content-addressed world"
    status = await backend.start_upload(REPO)
    assert status.offset == 0
    uuid.UUID(status.upload_id)
    session = root / "repositories" / "generic" / "face-recog" / "_uploads" / status.upload_id
    assert (session / "data").is_file() and (session / "startedat").is_file()

    info = await backend.finish_upload(REPO, status.upload_id, sha256(data), chunks(data))

    hexdigest = hashlib.sha256(data).hexdigest()
    assert info.digest == sha256(data) and info.size == len(data)
    assert (root / "blobs" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == data
    link = root / "repositories" / "generic" / "face-recog" / "_layers" / "sha256" / hexdigest
    assert link.is_file() and link.stat().st_size == 0
    assert not session.exists()
    assert files_under(root / "_tmp") == []
    assert await backend.stat_blob(REPO, info.digest) == info
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_status(REPO, status.upload_id))


async def test_chunked_upload_with_ranges(backend: FilesystemBackend) -> None:
    parts = [b"first-part-", b"x" * 20, b"", b"tail"]
    data = b"".join(parts)
    upload_id = (await backend.start_upload(REPO)).upload_id
    offset = 0
    for part in parts[:-1]:
        status = await backend.write_upload(REPO, upload_id, chunks(part[:3], part[3:]), start=offset)
        offset += len(part)
        assert status.offset == offset
        assert (await backend.upload_status(REPO, upload_id)).offset == offset
    # start=None appends (streamed upload); the final chunk comes with the PUT.
    info = await backend.finish_upload(REPO, upload_id, sha256(data), chunks(parts[-1]))
    assert info.size == len(data)
    assert await read_all(await backend.open_blob(REPO, info.digest)) == data


async def test_write_without_start_appends(backend: FilesystemBackend) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"abc"))
    status = await backend.write_upload(REPO, upload_id, chunks(b"defgh"))
    assert status.offset == 8
    info = await backend.finish_upload(REPO, upload_id, sha256(b"abcdefgh"))
    assert info.size == 8


@pytest.mark.parametrize("start", [0, 3, 100, -1])
async def test_out_of_order_start_is_range_invalid(backend: FilesystemBackend, start: int) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"0123456789"), start=0)
    err = await raises(Errors.RANGE_INVALID, backend.write_upload(REPO, upload_id, chunks(b"zz"), start=start))
    assert err.detail["offset"] == 10
    assert (await backend.upload_status(REPO, upload_id)).offset == 10
    # The session is still usable from the right offset.
    await backend.write_upload(REPO, upload_id, chunks(b"ab"), start=10)
    await backend.finish_upload(REPO, upload_id, sha256(b"0123456789ab"))


async def test_empty_blob(backend: FilesystemBackend) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    info = await backend.finish_upload(REPO, upload_id, sha256(b""))
    assert info.size == 0
    assert await read_all(await backend.open_blob(REPO, info.digest)) == b""


async def test_sha512_digest(backend: FilesystemBackend, root: Path) -> None:
    data = b"sha512 content " * 5
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(data))
    info = await backend.finish_upload(REPO, upload_id, sha512(data))
    assert info.digest == sha512(data)
    hexdigest = hashlib.sha512(data).hexdigest()
    assert (root / "blobs" / "sha512" / hexdigest[:2] / hexdigest).read_bytes() == data
    assert await read_all(await backend.open_blob(REPO, info.digest)) == data


async def test_digest_mismatch_leaves_nothing(backend: FilesystemBackend, root: Path) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"actual content"))
    wrong = sha256(b"something else")
    await raises(Errors.DIGEST_INVALID, backend.finish_upload(REPO, upload_id, wrong, chunks(b"!")))
    assert files_under(root / "blobs") == []
    assert files_under(root / "_tmp") == []
    assert files_under(root / "repositories") == []
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_status(REPO, upload_id))
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, wrong))
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, sha256(b"actual content!")))
    assert upload_id not in backend._hashes


@pytest.mark.parametrize("digest", ["sha256:nothex", "md5:" + "a" * 32, "", "sha256:" + "A" * 64])
async def test_malformed_digest_keeps_session(backend: FilesystemBackend, digest: str) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"abc"))
    await raises(Errors.DIGEST_INVALID, backend.finish_upload(REPO, upload_id, digest))
    assert (await backend.upload_status(REPO, upload_id)).offset == 3


async def test_upload_session_survives_restart(root: Path) -> None:
    first = FilesystemBackend(root, chunk_size=CHUNK)
    await first.start()
    upload_id = (await first.start_upload(REPO, resumable=True)).upload_id
    await first.write_upload(REPO, upload_id, chunks(b"before restart, "), start=0)
    await first.close()

    second = FilesystemBackend(root, chunk_size=CHUNK)
    await second.start()
    status = await second.upload_status(REPO, upload_id)
    assert status.offset == 16
    assert upload_id not in second._hashes  # no hash state: finish must re-hash from disk
    await second.write_upload(REPO, upload_id, chunks(b"after restart"), start=16)
    data = b"before restart, after restart"
    info = await second.finish_upload(REPO, upload_id, sha256(data))
    assert info.size == len(data)
    assert await read_all(await second.open_blob(REPO, info.digest)) == data
    # The first instance sees the published blob too: it is all on disk.
    assert await first.stat_blob(REPO, info.digest) == info


async def test_session_started_before_restart_and_never_written(root: Path) -> None:
    upload_id = (await FilesystemBackend(root).start_upload(REPO)).upload_id
    fresh = FilesystemBackend(root)
    await fresh.write_upload(REPO, upload_id, chunks(b"abc"), start=0)
    assert (await fresh.finish_upload(REPO, upload_id, sha256(b"abc"))).size == 3


async def test_stale_hash_state_falls_back_to_rehash(backend: FilesystemBackend, root: Path) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"abc"))
    # Someone else (another process) appended behind our back: the offset no longer
    # matches the in-memory hash, so the final digest must come from the file.
    data_file = root / "repositories" / "generic" / "face-recog" / "_uploads" / upload_id / "data"
    with open(data_file, "ab") as f:
        f.write(b"def")
    assert (await backend.finish_upload(REPO, upload_id, sha256(b"abcdef"))).size == 6


async def test_running_hash_avoids_reread(backend: FilesystemBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rehash(*args: object) -> str:
        raise AssertionError("re-hashed from disk")

    monkeypatch.setattr(backend, "_hash_file", no_rehash)
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"a" * 30, b"b" * 3))
    assert (await backend.finish_upload(REPO, upload_id, sha256(b"a" * 30 + b"b" * 3 + b"c"), chunks(b"c"))).size == 34


async def test_producer_writes_the_session_file_and_is_trusted(
    backend: FilesystemBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rehash(*args: object) -> str:
        raise AssertionError("re-hashed from disk")

    monkeypatch.setattr(backend, "_hash_file", no_rehash)
    upload_id = (await backend.start_upload(REPO)).upload_id
    path = await backend.upload_path(REPO, upload_id)
    assert path is not None
    data = b"written by an in-process producer"
    with open(path, "ab") as f:
        f.write(data)
    assert (await backend.upload_status(REPO, upload_id)).offset == len(data)
    info = await backend.finish_upload(REPO, upload_id, sha256(data))
    assert await read_all(await backend.open_blob(REPO, info.digest)) == data
    assert backend.verified_blobs is not None and backend.verified_blobs.holds(info.digest, len(data))


async def test_no_session_file_once_bytes_arrived(backend: FilesystemBackend) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"abc"))
    assert await backend.upload_path(REPO, upload_id) is None
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_path(REPO, str(uuid.uuid4())))


async def test_client_bytes_into_a_producer_session_are_verified(backend: FilesystemBackend, root: Path) -> None:
    # A write_upload to a session whose file a producer took withdraws the trust: the
    # digest is checked against the content, and a mismatch publishes nothing.
    upload_id = (await backend.start_upload(REPO)).upload_id
    path = await backend.upload_path(REPO, upload_id)
    assert path is not None
    with open(path, "ab") as f:
        f.write(b"producer ")
    await backend.write_upload(REPO, upload_id, chunks(b"and a client"))
    claimed = sha256(b"producer")
    await raises(Errors.DIGEST_INVALID, backend.finish_upload(REPO, upload_id, claimed))
    assert files_under(root / "blobs") == []
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, claimed))
    # The same sequence with the digest of what the file really holds succeeds.
    upload_id = (await backend.start_upload(REPO)).upload_id
    path = await backend.upload_path(REPO, upload_id)
    assert path is not None
    with open(path, "ab") as f:
        f.write(b"producer ")
    await backend.write_upload(REPO, upload_id, chunks(b"and a client"))
    assert (await backend.finish_upload(REPO, upload_id, sha256(b"producer and a client"))).size == 21


async def test_producer_session_after_restart_is_hashed(root: Path) -> None:
    first = FilesystemBackend(root)
    upload_id = (await first.start_upload(REPO)).upload_id
    path = await first.upload_path(REPO, upload_id)
    assert path is not None
    path.write_bytes(b"abc")
    second = FilesystemBackend(root)  # the promise was the first process's: hash again
    await raises(Errors.DIGEST_INVALID, second.finish_upload(REPO, upload_id, sha256(b"abd")))


async def test_concurrent_finish_of_same_content(backend: FilesystemBackend, root: Path) -> None:
    data = b"shared layer bytes " * 10
    digest = sha256(data)
    ids = [(await backend.start_upload(repo)).upload_id for repo in (REPO, REPO, OTHER)]
    for repo, upload_id in zip((REPO, REPO, OTHER), ids):
        await backend.write_upload(repo, upload_id, chunks(data))
    infos = await asyncio.gather(
        *(backend.finish_upload(repo, upload_id, digest) for repo, upload_id in zip((REPO, REPO, OTHER), ids))
    )
    assert {info.digest for info in infos} == {digest}
    blobs = files_under(root / "blobs")
    assert len(blobs) == 1 and blobs[0].read_bytes() == data
    for repo in (REPO, OTHER):
        assert await read_all(await backend.open_blob(repo, digest)) == data
    assert files_under(root / "_tmp") == []
    assert not any(p.name == "data" for p in files_under(root / "repositories"))


async def test_concurrent_writes_to_one_session_are_serialised(backend: FilesystemBackend) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await asyncio.gather(*(backend.write_upload(REPO, upload_id, chunks(b"x" * 10, b"y" * 10)) for _ in range(5)))
    assert (await backend.upload_status(REPO, upload_id)).offset == 100
    assert (await backend.finish_upload(REPO, upload_id, sha256((b"x" * 10 + b"y" * 10) * 5))).size == 100


async def test_cancel_upload(backend: FilesystemBackend, root: Path) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(b"abc"))
    await backend.cancel_upload(REPO, upload_id)
    assert files_under(root / "repositories") == []
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_status(REPO, upload_id))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.cancel_upload(REPO, upload_id))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.write_upload(REPO, upload_id, chunks(b"x")))
    assert files_under(root / "repositories") == []  # a write must not resurrect it


BAD_IDS = [
    "nope",
    "",
    "../../../etc/passwd",
    "..",
    str(uuid.uuid4()),  # well-formed but never started
    str(uuid.uuid4()).upper(),
    "{" + str(uuid.uuid4()) + "}",
    str(uuid.uuid4()).replace("-", ""),
]


@pytest.mark.parametrize("upload_id", BAD_IDS)
@pytest.mark.parametrize("operation", ["status", "write", "finish", "cancel"])
async def test_unknown_upload_ids(backend: FilesystemBackend, upload_id: str, operation: str) -> None:
    calls = {
        "status": lambda: backend.upload_status(REPO, upload_id),
        "write": lambda: backend.write_upload(REPO, upload_id, chunks(b"x"), start=0),
        "finish": lambda: backend.finish_upload(REPO, upload_id, sha256(b"x"), chunks(b"x")),
        "cancel": lambda: backend.cancel_upload(REPO, upload_id),
    }
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, calls[operation]())


async def test_traversal_into_another_session(backend: FilesystemBackend) -> None:
    real = (await backend.start_upload(OTHER)).upload_id
    for upload_id in (f"../../../{OTHER}/_uploads/{real}", f"{real}/../{real}", f"{real}/data"):
        await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_status(REPO, upload_id))
    assert (await backend.upload_status(OTHER, real)).offset == 0


async def test_upload_id_belongs_to_its_repo(backend: FilesystemBackend) -> None:
    upload_id = (await backend.start_upload(OTHER)).upload_id
    await backend.write_upload(OTHER, upload_id, chunks(b"abc"))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.upload_status(REPO, upload_id))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.write_upload(REPO, upload_id, chunks(b"x")))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.finish_upload(REPO, upload_id, sha256(b"abc")))
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, backend.cancel_upload(REPO, upload_id))
    assert (await backend.upload_status(OTHER, upload_id)).offset == 3


@pytest.mark.parametrize("repo", ["../etc", "Generic/x", "a//b", "_uploads", "a/_layers"])
async def test_invalid_repository_names(backend: FilesystemBackend, repo: str) -> None:
    await raises(Errors.NAME_INVALID, backend.start_upload(repo))
    await raises(Errors.NAME_INVALID, backend.stat_blob(repo, sha256(b"x")))


async def test_purge_expired_uploads(root: Path) -> None:
    fs = FilesystemBackend(root, upload_expiry=3600)
    await fs.start()
    old = (await fs.start_upload(REPO)).upload_id
    await fs.write_upload(REPO, old, chunks(b"old"))
    fresh = (await fs.start_upload(OTHER)).upload_id
    stamp = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    old_dir = root / "repositories" / "generic" / "face-recog" / "_uploads" / old
    (old_dir / "startedat").write_text(stamp)
    two_hours_ago = time.time() - 7200
    os.utime(old_dir / "data", (two_hours_ago, two_hours_ago))  # idle since then
    stale_tmp = root / "_tmp" / "w-crashed.tmp"
    stale_tmp.write_bytes(b"leftover")
    os.utime(stale_tmp, (0, 0))

    assert await fs.purge_expired_uploads() == 1
    await raises(Errors.BLOB_UPLOAD_UNKNOWN, fs.upload_status(REPO, old))
    assert old not in fs._hashes
    assert (await fs.upload_status(OTHER, fresh)).offset == 0
    assert not stale_tmp.exists()
    assert await fs.purge_expired_uploads() == 0


async def test_purge_with_zero_expiry_and_restart(root: Path) -> None:
    await FilesystemBackend(root).start_upload(REPO)
    await FilesystemBackend(root).start_upload(OTHER)
    await asyncio.sleep(0.01)
    assert await FilesystemBackend(root, upload_expiry=0).purge_expired_uploads() == 2
    assert not any(p.name == "data" for p in files_under(root / "repositories"))


async def test_purge_on_empty_root(tmp_path: Path) -> None:
    assert await FilesystemBackend(tmp_path / "absent").purge_expired_uploads() == 0


# -- reading blobs -------------------------------------------------------------
BLOB = bytes(range(256)) * 4  # 1024 bytes


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, None, BLOB),
        (0, 10, BLOB[:10]),
        (5, 20, BLOB[5:25]),
        (1000, None, BLOB[1000:]),
        (1000, 100, BLOB[1000:]),  # clamped to the end
        (1023, 1, BLOB[1023:]),
        (1024, None, b""),
        (7, 0, b""),
    ],
)
async def test_ranged_reads(backend: FilesystemBackend, root: Path, start: int, length: int | None, expected: bytes) -> None:
    digest = await push_blob(backend, REPO, BLOB)
    reader = await backend.open_blob(REPO, digest, start, length)
    assert (reader.digest, reader.size, reader.start, reader.length) == (digest, len(BLOB), start, len(expected))
    hexdigest = digest.split(":")[1]
    assert reader.path == root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    async with reader:
        pieces = [piece async for piece in reader]
    assert b"".join(pieces) == expected
    assert all(0 < len(piece) <= CHUNK for piece in pieces)


@pytest.mark.parametrize(("start", "length"), [(1025, None), (5000, 1), (-1, None), (0, -5)])
async def test_open_blob_bad_range(backend: FilesystemBackend, start: int, length: int | None) -> None:
    digest = await push_blob(backend, REPO, BLOB)
    await raises(Errors.RANGE_INVALID, backend.open_blob(REPO, digest, start, length))


async def test_reader_close_is_idempotent_and_early(backend: FilesystemBackend) -> None:
    digest = await push_blob(backend, REPO, BLOB)
    reader = await backend.open_blob(REPO, digest)
    iterator = reader.__aiter__()
    assert await iterator.__anext__() == BLOB[:CHUNK]
    await reader.close()
    await reader.close()
    with pytest.raises(StopAsyncIteration):
        await iterator.__anext__()
    with pytest.raises(RuntimeError):
        reader.__aiter__()


async def test_truncated_blob_on_disk_is_unavailable(backend: FilesystemBackend) -> None:
    digest = await push_blob(backend, REPO, BLOB)
    reader = await backend.open_blob(REPO, digest)
    os.truncate(reader.path, 100)
    with pytest.raises(RegistryError) as info:
        await read_all(reader)
    assert info.value.error is Errors.UNAVAILABLE


async def test_missing_blob(backend: FilesystemBackend) -> None:
    digest = sha256(b"never pushed")
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, digest))
    await raises(Errors.BLOB_UNKNOWN, backend.open_blob(REPO, digest))
    await raises(Errors.BLOB_UNKNOWN, backend.delete_blob(REPO, digest))
    await raises(Errors.BLOB_UNKNOWN, backend.open_blob("never/seen", digest))


async def test_blob_visible_only_in_linked_repos(backend: FilesystemBackend) -> None:
    digest = await push_blob(backend, REPO, b"private to generic")
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(OTHER, digest))
    await raises(Errors.BLOB_UNKNOWN, backend.open_blob(OTHER, digest))


async def test_mount_blob(backend: FilesystemBackend) -> None:
    data = b"mount me"
    digest = await push_blob(backend, REPO, data)
    info = await backend.mount_blob(OTHER, digest, from_repo=REPO)
    assert info is not None and info.digest == digest and info.size == len(data)
    assert await backend.stat_blob(OTHER, digest) == info
    assert await read_all(await backend.open_blob(OTHER, digest)) == data
    # Not in the source repository, unknown source, invalid source name: no mount.
    missing = sha256(b"absent")
    assert await backend.mount_blob(OTHER, missing, from_repo=REPO) is None
    assert await backend.mount_blob("plugins/x", digest, from_repo="never/seen") is None
    assert await backend.mount_blob("plugins/x", digest, from_repo="../etc") is None
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob("plugins/x", digest))


async def test_delete_blob_unlinks_only(backend: FilesystemBackend, root: Path) -> None:
    data = b"linked twice"
    digest = await push_blob(backend, REPO, data)
    await backend.mount_blob(OTHER, digest, REPO)
    await backend.delete_blob(REPO, digest)
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, digest))
    await raises(Errors.BLOB_UNKNOWN, backend.delete_blob(REPO, digest))
    assert await read_all(await backend.open_blob(OTHER, digest)) == data
    assert len(files_under(root / "blobs")) == 1  # content stays; GC is out of scope
    # Re-uploading links it again.
    assert await push_blob(backend, REPO, data) == digest
    assert (await backend.stat_blob(REPO, digest)).size == len(data)


# -- manifests -----------------------------------------------------------------
async def test_put_get_manifest_by_tag_and_digest(backend: FilesystemBackend, root: Path) -> None:
    # Non-canonical JSON: bytes must come back exactly as pushed.
    data = b'{ "schemaVersion" : 2,\n  "layers": [] }'
    digest = sha256(data)
    await backend.put_manifest(REPO, "v1", data, MANIFEST_TYPE, digest)
    for reference in ("v1", digest):
        got = await backend.get_manifest(REPO, reference)
        assert (got.digest, got.media_type, got.data) == (digest, MANIFEST_TYPE, data)
        assert await backend.stat_manifest(REPO, reference) == got.info
    hexdigest = digest.split(":")[1]
    assert (root / "blobs" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == data
    repo_dir = root / "repositories" / "generic" / "face-recog" / "_manifests"
    assert json.loads((repo_dir / "revisions" / "sha256" / hexdigest).read_text()) == {"mediaType": MANIFEST_TYPE}
    assert (repo_dir / "tags" / "v1").read_text() == digest
    assert files_under(root / "_tmp") == []


async def test_put_manifest_by_digest_does_not_tag(backend: FilesystemBackend) -> None:
    data = b'{"manifests":[]}'
    digest = sha256(data)
    await backend.put_manifest(REPO, digest, data, INDEX_TYPE, digest)
    assert (await backend.get_manifest(REPO, digest)).media_type == INDEX_TYPE
    assert await backend.list_tags(REPO) == []
    assert await backend.list_repositories() == [REPO]


async def test_put_manifest_sha512(backend: FilesystemBackend) -> None:
    data = b'{"schemaVersion":2}'
    await backend.put_manifest(REPO, "v1", data, MANIFEST_TYPE, sha512(data))
    assert (await backend.get_manifest(REPO, "v1")).digest == sha512(data)


async def test_put_manifest_rejects_bad_input(backend: FilesystemBackend, root: Path) -> None:
    data = b'{"schemaVersion":2}'
    await raises(Errors.DIGEST_INVALID, backend.put_manifest(REPO, "v1", data, MANIFEST_TYPE, sha256(b"other")))
    await raises(Errors.DIGEST_INVALID, backend.put_manifest(REPO, sha256(b"other"), data, MANIFEST_TYPE, sha256(data)))
    await raises(Errors.TAG_INVALID, backend.put_manifest(REPO, "../v1", data, MANIFEST_TYPE, sha256(data)))
    await raises(Errors.NAME_INVALID, backend.put_manifest("../x", "v1", data, MANIFEST_TYPE, sha256(data)))
    assert files_under(root / "blobs") == [] and files_under(root / "repositories") == []


async def test_retag_points_at_new_manifest(backend: FilesystemBackend) -> None:
    first, _ = await push_manifest(backend, REPO, "latest", {"n": 1})
    second, data = await push_manifest(backend, REPO, "latest", {"n": 2})
    got = await backend.get_manifest(REPO, "latest")
    assert (got.digest, got.data) == (second, data)
    assert (await backend.get_manifest(REPO, first)).digest == first  # the old revision stays


@pytest.mark.parametrize("reference", ["v9", "sha256:" + "0" * 64, "not/a/tag", "sha256:bad", ".."])
async def test_manifest_unknown(backend: FilesystemBackend, reference: str) -> None:
    await push_manifest(backend, REPO, "v1", {"n": 1})
    for repo in (REPO, "never/seen"):
        await raises(Errors.MANIFEST_UNKNOWN, backend.get_manifest(repo, reference))
        await raises(Errors.MANIFEST_UNKNOWN, backend.stat_manifest(repo, reference))
        await raises(Errors.MANIFEST_UNKNOWN, backend.delete_manifest(repo, reference))


async def test_manifest_not_visible_in_other_repo(backend: FilesystemBackend) -> None:
    digest, _ = await push_manifest(backend, REPO, "v1", {"n": 1})
    await raises(Errors.MANIFEST_UNKNOWN, backend.get_manifest(OTHER, digest))
    await raises(Errors.MANIFEST_UNKNOWN, backend.get_manifest(OTHER, "v1"))


async def test_delete_manifest_by_tag_keeps_revision(backend: FilesystemBackend) -> None:
    digest, data = await push_manifest(backend, REPO, "v1", {"n": 1})
    await backend.put_manifest(REPO, "stable", data, MANIFEST_TYPE, digest)
    await backend.delete_manifest(REPO, "v1")
    await raises(Errors.MANIFEST_UNKNOWN, backend.get_manifest(REPO, "v1"))
    assert (await backend.get_manifest(REPO, "stable")).digest == digest
    assert (await backend.get_manifest(REPO, digest)).digest == digest
    assert await backend.list_tags(REPO) == ["stable"]


async def test_delete_manifest_by_digest_removes_its_tags(backend: FilesystemBackend) -> None:
    digest, data = await push_manifest(backend, REPO, "v1", {"n": 1})
    await backend.put_manifest(REPO, "latest", data, MANIFEST_TYPE, digest)
    other, _ = await push_manifest(backend, REPO, "v2", {"n": 2})
    await backend.delete_manifest(REPO, digest)
    for reference in (digest, "v1", "latest"):
        await raises(Errors.MANIFEST_UNKNOWN, backend.get_manifest(REPO, reference))
    assert await backend.list_tags(REPO) == ["v2"]
    assert (await backend.get_manifest(REPO, "v2")).digest == other
    await raises(Errors.MANIFEST_UNKNOWN, backend.delete_manifest(REPO, digest))


async def test_list_tags_sorted(backend: FilesystemBackend) -> None:
    digest, data = await push_manifest(backend, REPO, "v2", {"n": 1})
    for tag in ("v10", "latest", "1.0", "v1", "V3", "_internal"):
        await backend.put_manifest(REPO, tag, data, MANIFEST_TYPE, digest)
    assert await backend.list_tags(REPO) == sorted(["v2", "v10", "latest", "1.0", "v1", "V3", "_internal"])


async def test_list_tags_unknown_repo(backend: FilesystemBackend) -> None:
    await raises(Errors.NAME_UNKNOWN, backend.list_tags("never/seen"))
    await push_blob(backend, OTHER, b"blobs alone do not make a repository")
    await raises(Errors.NAME_UNKNOWN, backend.list_tags(OTHER))


async def test_list_repositories(backend: FilesystemBackend) -> None:
    assert await backend.list_repositories() == []
    await push_manifest(backend, "generic/face-recog", "v1", {"n": 1})
    await push_manifest(backend, "generic/face", "v1", {"n": 2})
    await push_manifest(backend, "business/door/face-recog", "v1", {"n": 3})
    await push_manifest(backend, "business/door/face-recog/nested", "v1", {"n": 4})
    await push_manifest(backend, "toplevel", "v1", {"n": 5})
    await push_blob(backend, "images/only-blobs", b"no manifest")
    await backend.start_upload("images/only-upload")
    assert await backend.list_repositories() == sorted(
        ["generic/face-recog", "generic/face", "business/door/face-recog", "business/door/face-recog/nested", "toplevel"]
    )
    # Deleting a repository's last manifest keeps it known, as distribution does: it
    # stays in the catalog and its tag list is empty.
    digest = (await backend.stat_manifest("toplevel", "v1")).digest
    await backend.delete_manifest("toplevel", digest)
    assert "toplevel" in await backend.list_repositories()
    assert await backend.list_tags("toplevel") == []


async def test_list_repositories_on_fresh_root(tmp_path: Path) -> None:
    assert await FilesystemBackend(tmp_path / "absent").list_repositories() == []


# -- disk errors ---------------------------------------------------------------
async def test_disk_full_becomes_unavailable(backend: FilesystemBackend, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    err = await raises(Errors.UNAVAILABLE, backend.put_manifest(REPO, "v1", b"{}", MANIFEST_TYPE, sha256(b"{}")))
    assert "full" in err.message and str(root) not in str(err.body())
    assert files_under(root / "_tmp") == []  # the staged temp file is removed


async def test_write_error_becomes_unavailable(backend: FilesystemBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_id = (await backend.start_upload(REPO)).upload_id

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(backend, "_append_sync", broken)
    await raises(Errors.UNAVAILABLE, backend.write_upload(REPO, upload_id, chunks(b"abc")))
    monkeypatch.undo()
    # The session is intact and can continue.
    await backend.write_upload(REPO, upload_id, chunks(b"abc"), start=0)
    assert (await backend.finish_upload(REPO, upload_id, sha256(b"abc"))).size == 3


async def test_errors_from_the_body_pass_through(backend: FilesystemBackend) -> None:
    """A client disconnect (raised by the caller's iterable) is not a storage error."""
    upload_id = (await backend.start_upload(REPO)).upload_id

    async def disconnecting() -> AsyncIterator[bytes]:
        yield b"x" * 20
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await backend.write_upload(REPO, upload_id, disconnecting())
    # What reached the disk is kept; the client resumes from the reported offset.
    offset = (await backend.upload_status(REPO, upload_id)).offset
    await backend.write_upload(REPO, upload_id, chunks((b"x" * 20)[offset:]), start=offset)
    assert (await backend.finish_upload(REPO, upload_id, sha256(b"x" * 20))).size == 20


async def test_failed_publish_keeps_session_for_retry(backend: FilesystemBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"publish me eventually"
    upload_id = (await backend.start_upload(REPO)).upload_id
    await backend.write_upload(REPO, upload_id, chunks(data))

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    await raises(Errors.UNAVAILABLE, backend.finish_upload(REPO, upload_id, sha256(data)))
    monkeypatch.undo()
    await raises(Errors.BLOB_UNKNOWN, backend.stat_blob(REPO, sha256(data)))
    assert (await backend.upload_status(REPO, upload_id)).offset == len(data)
    info = await backend.finish_upload(REPO, upload_id, sha256(data))
    assert await read_all(await backend.open_blob(REPO, info.digest)) == data


# -- the ledger of verified blobs -------------------------------------------------------
def test_verified_blobs_is_a_bounded_lru_keyed_by_digest_and_size() -> None:
    from proxy.backend.ledger import VerifiedBlobs

    ledger = VerifiedBlobs(max_entries=2)
    ledger.add("sha256:a", 1)
    ledger.add("sha256:b", 2)
    assert ledger.holds("sha256:a", 1)  # now the most recently used
    assert not ledger.holds("sha256:a", 2)  # another size is another claim
    ledger.add("sha256:c", 3)  # evicts b, the least recently used
    assert not ledger.holds("sha256:b", 2)
    assert ledger.holds("sha256:a", 1) and ledger.holds("sha256:c", 3)
    assert len(ledger) == 2


async def test_uploaded_blobs_read_as_verified_until_a_restart(tmp_path) -> None:
    data = b"verified on the way in"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks():
        yield data

    backend = FilesystemBackend(tmp_path)
    await backend.start()
    session = await backend.start_upload("a/b")
    await backend.finish_upload("a/b", session.upload_id, digest, chunks())
    async with await backend.open_blob("a/b", digest) as reader:
        assert reader.verified
    restarted = FilesystemBackend(tmp_path)
    await restarted.start()
    async with await restarted.open_blob("a/b", digest) as reader:
        assert not reader.verified  # bit rot at rest is caught by the next whole read
        reader.confirm()
    async with await restarted.open_blob("a/b", digest) as reader:
        assert reader.verified
    strict = FilesystemBackend(tmp_path, verify_reads="always")
    await strict.start()
    async with await strict.open_blob("a/b", digest) as reader:
        reader.confirm()
    async with await strict.open_blob("a/b", digest) as reader:
        assert not reader.verified
