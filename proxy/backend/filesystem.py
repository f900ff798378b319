"""Embedded default storage: a content-addressed store on the local filesystem.

On-disk layout under ``root`` (modelled on distribution's ``storage/paths.go``)::

    _tmp/                                        staging for atomic writes (same filesystem)
    blobs/<algo>/<2 hex>/<hex>                   blob content, shared by every repository;
                                                 manifests are stored here too
    repositories/<repo>/                         <repo> may contain '/' (nested directories)
        _layers/<algo>/<hex>                     empty file: the blob is linked into <repo>
        _manifests/revisions/<algo>/<hex>        the manifest is linked into <repo>; the link
                                                 file is its sidecar: {"mediaType": "..."}
        _manifests/tags/<tag>                    the digest the tag points at (text)
        _uploads/<uuid>/startedat                ISO-8601 UTC start time of the session
        _uploads/<uuid>/owner                    only for a session no client knows: the
                                                 token of the process that holds it
        _uploads/<uuid>/data                     bytes received so far
    _owners/<token>                              flock()ed by a live backend instance
    _index/listing.sqlite, _index/lock           sorted repository and tag index for paged
                                                 listings (``listing_index.py``)
    _secrets/<name>                              32 random bytes, mode 0600 (``secret``)

Repository name components never start with ``_`` (``proxy.oci.reference.NAME_RE``), so the
``_layers``/``_manifests``/``_uploads`` directories cannot collide with nested repositories.

Every file that readers may see is published atomically: written to a temp file in
``_tmp`` (or, for uploads, the session's own ``data`` file), fsynced, then ``os.replace``d
into place. Publishing the same content twice is harmless (same bytes, same name).

Upload sessions a client holds (``resumable``) live on disk and survive a restart; they
are removed once idle (no byte written) for ``upload_expiry``. A session no client knows
(an in-process producer's, a monolithic upload's) belongs to the backend instance that
opened it: when that instance is gone (killed, crashed, closed), nobody can finish it, so
the next start or sweep removes it at once. An instance's liveness is the ``flock`` on its
``_owners`` file, which the kernel drops with the process.

An optional ``upload_quota`` caps the bytes all open sessions of one repository hold; a
write past it is refused with ``DENIED`` and leaves the session as it was.

A running sha256 is kept in memory per
session so finishing an upload needs no re-read in the common case; after a restart (or
if the in-memory state does not match the file) the data is re-hashed from disk in chunks.
A session whose file an in-process producer took (``upload_path``) keeps no running hash:
the producer's digest is trusted and its bytes are fsynced once, at finish.

All disk work runs in worker threads (``asyncio.to_thread``); ``OSError`` never escapes:
it becomes the matching ``RegistryError`` or ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Callable, Literal, TypeVar

from ..oci.errors import Errors, RegistryError
from ..oci.reference import TAG_RE, Digest, is_digest, parse_digest, validate_name, validate_tag
from .base import Backend, BlobInfo, BlobReader, ManifestData, ManifestInfo, UploadStatus
from .ledger import VerifiedBlobs
from .listing_index import ListingIndex

__all__ = ["FilesystemBackend"]

T = TypeVar("T")

# The running hash kept per upload session; other algorithms re-hash from disk at finish.
_RUNNING_ALGORITHM = "sha256"
_SECRET_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_SECRET_SIZE = 32


@dataclass
class _HashState:
    """Running hash of an upload session's first ``offset`` bytes; ``hasher`` is
    ``None`` while an in-process producer that took the session's file hashes them
    itself (``upload_path``)."""

    repo: str
    offset: int
    hasher: Any  # hashlib._Hash | None


def _disk_error(exc: OSError, action: str) -> RegistryError:
    """Translate an unexpected ``OSError`` into ``UNAVAILABLE`` without leaking paths."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = "storage is full"
    elif exc.errno == errno.EROFS:
        reason = "storage is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "storage permission denied"
    else:
        reason = "storage error"
    detail = {"action": action, "error": exc.strerror or type(exc).__name__}
    return RegistryError(Errors.UNAVAILABLE, detail, message=f"{reason} while trying to {action}")


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable; best effort (not every OS can open dirs)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FileBlobReader(BlobReader):
    """A byte range of a blob file, read in ``chunk_size`` pieces with ``pread``.

    ``verified`` when the backend's ledger holds the blob: published by this process
    after its digest matched, or read whole and matched since it started. The first
    whole read after a restart hashes again, so bit rot at rest is caught."""

    def __init__(
        self,
        backend: "FilesystemBackend",
        fd: int,
        path: Path,
        digest: str,
        size: int,
        start: int,
        length: int,
    ) -> None:
        self._backend = backend
        self._fd: int | None = fd
        self._iterated = False
        self.path = path
        self.digest = digest
        self.size = size
        self.start = start
        self.length = length
        self._vouch_from(backend.verified_blobs)

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterated:
            raise RuntimeError("a BlobReader can be consumed only once")
        self._iterated = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        position, end = self.start, self.start + self.length
        try:
            while position < end:
                fd = self._fd
                if fd is None:
                    return  # closed under us: stop quietly, the consumer asked for it
                want = min(self._backend.chunk_size, end - position)
                data = await self._backend._run(os.pread, fd, want, position, action="read a blob")
                if not data:
                    # The file is shorter than its stat said: never serve a short body silently.
                    raise RegistryError(
                        Errors.UNAVAILABLE, {"digest": self.digest}, message="blob is truncated on disk"
                    )
                position += len(data)
                yield data
        finally:
            await self.close()

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class FilesystemBackend(Backend):
    """Content-addressed blobs, manifests and durable upload sessions under ``root``.

    ``upload_expiry`` (seconds) is the age after which ``purge_expired_uploads`` removes a
    session; ``chunk_size`` bounds every read and write. Deleting a blob or a manifest only
    unlinks it from the repository: content files stay until the garbage collector
    (``proxy/service/gc.py``) removes unreferenced ones.
    """

    name = "filesystem"

    def __init__(
        self,
        root: Path,
        *,
        upload_expiry: float = 24 * 3600,
        chunk_size: int = 1024 * 1024,
        verify_reads: Literal["once", "always"] = "once",
        upload_quota: int | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if upload_quota is not None and upload_quota <= 0:
            raise ValueError("upload_quota must be positive")
        self.root = Path(root)
        self.upload_expiry = upload_expiry
        self.upload_quota = upload_quota
        self.chunk_size = chunk_size
        # "once": blobs verified on upload or on a whole read are trusted after (reads
        # check the length); "always": every whole read is hashed.
        self.verified_blobs = VerifiedBlobs() if verify_reads == "once" else None
        self._tmp = self.root / "_tmp"
        self._blobs = self.root / "blobs"
        self._repositories = self.root / "repositories"
        self._owners = self.root / "_owners"
        self._index = ListingIndex(self.root / "_index" / "listing.sqlite", self.root / "_index" / "lock")
        self._index_ready = False
        self._token = uuid.uuid4().hex  # names this instance in its private sessions
        self._owner_fd: int | None = None
        self._owner_lock = threading.Lock()  # claims run in worker threads
        # Keyed by upload id; the repo is checked too so an id never crosses repositories.
        self._hashes: dict[str, _HashState] = {}
        # One lock per live session serialises writes/finish/cancel/purge; weak values so
        # locks of sessions nobody is touching disappear by themselves.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- plumbing ------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any, action: str) -> T:
        """Run blocking disk work in a thread, translating ``OSError``.

        If the caller is cancelled the thread can't be stopped, so we wait for it: the
        session lock we may hold must keep covering the file until the work is done."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await task
            raise
        except OSError as exc:
            raise _disk_error(exc, action) from exc

    def _repo_dir(self, repo: str) -> Path:
        # The grammar forbids '..', empty and '_'-prefixed components: no traversal.
        validate_name(repo)
        return self._repositories.joinpath(*repo.split("/"))

    def _blob_path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.encoded[:2] / digest.encoded

    def _layer_link(self, repo: str, digest: Digest) -> Path:
        return self._repo_dir(repo) / "_layers" / digest.algorithm / digest.encoded

    def _revision_link(self, repo: str, digest: Digest) -> Path:
        return self._repo_dir(repo) / "_manifests" / "revisions" / digest.algorithm / digest.encoded

    def _tags_dir(self, repo: str) -> Path:
        return self._repo_dir(repo) / "_manifests" / "tags"

    def _session_dir(self, repo: str, upload_id: str) -> Path:
        """The session directory of a well-formed id; ``BLOB_UPLOAD_UNKNOWN`` otherwise."""
        repo_dir = self._repo_dir(repo)
        try:
            canonical = str(uuid.UUID(upload_id))
        except (ValueError, TypeError, AttributeError):
            canonical = None
        # Only the canonical lowercase form we hand out is accepted: no other spelling
        # (and no path fragment) can reach the filesystem.
        if canonical != upload_id:
            raise RegistryError(Errors.BLOB_UPLOAD_UNKNOWN, {"upload": str(upload_id)[:100]})
        return repo_dir / "_uploads" / canonical

    def _session_lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def _write_atomic(self, path: Path, data: bytes) -> None:
        """Publish ``data`` at ``path``: temp file in ``_tmp``, fsync, ``os.replace``."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="w-", suffix=".tmp")
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def _has_blob(self, path: Path, size: int | None = None) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    # -- health --------------------------------------------------------------
    async def start(self) -> None:
        def make_dirs() -> None:
            for path in (self._tmp, self._blobs, self._repositories):
                path.mkdir(parents=True, exist_ok=True)

        await self._run(make_dirs, action="create the storage directories")
        await self._run(self._ensure_index_sync, action="build the listing index")
        # Sessions of an instance that died (a killed build, a monolithic upload cut by a
        # crash) can never be finished: remove them before serving.
        await self._purge_sessions(orphans_only=True)

    async def close(self) -> None:
        self._index.close()
        with self._owner_lock:
            fd, self._owner_fd = self._owner_fd, None
        if fd is not None:
            # Sessions still naming us are orphans from now on; the next sweep removes them.
            with contextlib.suppress(OSError):
                os.unlink(self._owners / self._token)
            os.close(fd)

    # -- session ownership ---------------------------------------------------------
    def _claim_owner_sync(self) -> None:
        """Hold this instance's ``_owners`` lock (once); private sessions name it."""
        with self._owner_lock:
            if self._owner_fd is not None:
                return
            self._owners.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._owners / self._token, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            self._owner_fd = fd

    def _owner_alive_sync(self, token: str) -> bool:
        """Whether the instance ``token`` still runs: its lock file is locked. A dead
        owner's file is removed (we hold its lock while unlinking)."""
        if token == self._token:
            return True
        if not token.isalnum() or len(token) != 32:
            return False
        path = self._owners / token
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        finally:
            os.close(fd)

    async def ping(self) -> None:
        def check() -> str | None:
            if not self.root.is_dir():
                return "storage root does not exist or is not a directory"
            if not os.access(self.root, os.W_OK | os.X_OK):
                return "storage root is not writable"
            return None

        problem = await self._run(check, action="check the storage root")
        if problem is not None:
            raise RegistryError(Errors.UNAVAILABLE, {"backend": self.name}, message=problem)

    async def secret(self, name: str) -> bytes:
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError(f"bad secret name {name!r}")
        return await self._run(self._secret_sync, self.root / "_secrets" / name, action="read a storage secret")

    def _secret_sync(self, path: Path) -> bytes:
        # Made in _tmp and published with link(), which fails if another process (a
        # replica sharing the storage) published one first: every process gets that one.
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._tmp.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="s-")  # mode 0600
            try:
                try:
                    _write_all(fd, os.urandom(_SECRET_SIZE))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
                    _fsync_dir(path.parent)
            finally:
                os.unlink(tmp)
            data = path.read_bytes()
        if len(data) != _SECRET_SIZE:
            raise OSError(errno.EINVAL, f"storage secret {path} is {len(data)} bytes, not {_SECRET_SIZE}")
        return data

    # -- blobs ---------------------------------------------------------------
    def _stat_blob_sync(self, repo: str, digest: Digest) -> BlobInfo:
        if not self._layer_link(repo, digest).is_file():
            raise RegistryError(Errors.BLOB_UNKNOWN, {"digest": str(digest)})
        try:
            size = self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise RegistryError(Errors.BLOB_UNKNOWN, {"digest": str(digest)}) from None
        return BlobInfo(str(digest), size)

    async def stat_blob(self, repo: str, digest: str) -> BlobInfo:
        parsed = parse_digest(digest)
        return await self._run(self._stat_blob_sync, repo, parsed, action="stat a blob")

    async def open_blob(self, repo: str, digest: str, start: int = 0, length: int | None = None) -> BlobReader:
        parsed = parse_digest(digest)
        path = self._blob_path(parsed)

        def open_file() -> tuple[int, int]:
            self._stat_blob_sync(repo, parsed)  # checks the repository link
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise RegistryError(Errors.BLOB_UNKNOWN, {"digest": digest}) from None
            try:
                return fd, os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise

        fd, size = await self._run(open_file, action="open a blob")
        if start < 0 or start > size or (length is not None and length < 0):
            os.close(fd)
            raise RegistryError(Errors.RANGE_INVALID, {"start": start, "length": length, "size": size})
        available = size - start
        length = available if length is None else min(length, available)
        return _FileBlobReader(self, fd, path, str(parsed), size, start, length)

    async def delete_blob(self, repo: str, digest: str) -> None:
        parsed = parse_digest(digest)

        def unlink() -> None:
            try:
                self._layer_link(repo, parsed).unlink()
            except FileNotFoundError:
                raise RegistryError(Errors.BLOB_UNKNOWN, {"digest": digest}) from None

        await self._run(unlink, action="delete a blob")

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> BlobInfo | None:
        parsed = parse_digest(digest)
        self._repo_dir(repo)  # validate the target before touching anything

        def mount() -> BlobInfo | None:
            try:
                info = self._stat_blob_sync(from_repo, parsed)
            except RegistryError as exc:
                if exc.error in (Errors.BLOB_UNKNOWN, Errors.NAME_INVALID):
                    return None  # the client falls back to a plain upload
                raise
            self._write_atomic(self._layer_link(repo, parsed), b"")
            return info

        return await self._run(mount, action="mount a blob")

    # -- uploads -------------------------------------------------------------
    async def start_upload(self, repo: str, *, resumable: bool = False) -> UploadStatus:
        upload_id = str(uuid.uuid4())
        session = self._session_dir(repo, upload_id)

        def create() -> None:
            if not resumable:
                self._claim_owner_sync()
            session.mkdir(parents=True)
            started = datetime.now(timezone.utc).isoformat()
            (session / "startedat").write_text(started, encoding="ascii")
            if not resumable:
                (session / "owner").write_text(self._token, encoding="ascii")
            # ``data`` last: a session exists once its data file does.
            (session / "data").touch(exist_ok=False)
            _fsync_dir(session)
            _fsync_dir(session.parent)

        await self._run(create, action="start an upload")
        self._hashes[upload_id] = _HashState(repo, 0, hashlib.new(_RUNNING_ALGORITHM))
        return UploadStatus(upload_id, 0)

    def _offset_sync(self, session: Path, upload_id: str) -> int:
        try:
            return (session / "data").stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise RegistryError(Errors.BLOB_UPLOAD_UNKNOWN, {"upload": upload_id}) from None

    async def upload_status(self, repo: str, upload_id: str) -> UploadStatus:
        session = self._session_dir(repo, upload_id)
        offset = await self._run(self._offset_sync, session, upload_id, action="read an upload")
        return UploadStatus(upload_id, offset)

    @staticmethod
    def _append_sync(data_path: Path, data: bytes, state: _HashState | None) -> None:
        # No O_CREAT: a session cancelled or purged meanwhile must not be resurrected.
        fd = os.open(data_path, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        # Only after a complete write, so state.offset never runs ahead of the file.
        if state is not None:
            state.hasher.update(data)
            state.offset += len(data)

    @staticmethod
    def _fsync_file(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _append(
        self, repo: str, upload_id: str, session: Path, chunks: AsyncIterable[bytes], start: int | None
    ) -> int:
        """Append ``chunks`` to a session (caller holds its lock); returns the new offset."""
        offset = await self._run(self._offset_sync, session, upload_id, action="read an upload")
        if start is not None and start != offset:
            raise RegistryError(Errors.RANGE_INVALID, {"offset": offset, "start": start})
        state = self._hashes.get(upload_id)
        if state is not None and (state.hasher is None or state.repo != repo or state.offset != offset):
            # Stale (another process touched the file, or a write failed half-way), or
            # bytes joining a producer's own: finish hashes the file instead of trusting it.
            del self._hashes[upload_id]
            state = None
        if state is None and offset == 0:
            # Nothing to catch up on (e.g. session started before a restart): hash from here.
            state = self._hashes[upload_id] = _HashState(repo, 0, hashlib.new(_RUNNING_ALGORITHM))
        data_path = session / "data"
        buffer = bytearray()
        wrote = False
        first = offset
        try:
            # Coalesce small network chunks into bounded writes: one thread hop per chunk_size.
            async for chunk in chunks:
                if not chunk:
                    continue
                buffer += chunk
                if len(buffer) >= self.chunk_size:
                    piece = bytes(buffer)
                    buffer.clear()
                    await self._within_quota(repo, len(piece))
                    wrote = True
                    await self._run(self._append_sync, data_path, piece, state, action="write an upload")
                    offset += len(piece)
            if buffer:
                piece = bytes(buffer)
                await self._within_quota(repo, len(piece))
                wrote = True
                await self._run(self._append_sync, data_path, piece, state, action="write an upload")
                offset += len(piece)
        except RegistryError as exc:
            if exc.error is Errors.DENIED and wrote:
                # Over quota: the session stays as it was before this request.
                await self._run(os.truncate, data_path, first, action="write an upload")
                self._hashes.pop(upload_id, None)
            elif wrote:
                with contextlib.suppress(Exception):
                    await self._run(self._fsync_file, data_path, action="write an upload")
            raise
        except BaseException:
            # The body failed (e.g. client disconnect): keep what reached the disk durable,
            # the client resumes from upload_status. Never mask the original error.
            if wrote:
                with contextlib.suppress(Exception):
                    await self._run(self._fsync_file, data_path, action="write an upload")
            raise
        if wrote:
            # The offset we report must survive a crash: the client resumes from it.
            await self._run(self._fsync_file, data_path, action="write an upload")
        return offset

    async def _within_quota(self, repo: str, adding: int) -> None:
        """``DENIED`` unless the repository's open sessions can grow by ``adding`` bytes.

        Measured on disk right before each write, so concurrent writers overshoot by at
        most one chunk each."""
        if self.upload_quota is None:
            return
        used = await self._run(self._uploads_bytes_sync, repo, action="read upload sessions")
        if used + adding > self.upload_quota:
            raise RegistryError(
                Errors.DENIED,
                {"name": repo, "quota": self.upload_quota},
                message="the repository's upload quota is exhausted: finish or cancel open uploads",
            )

    async def write_upload(
        self, repo: str, upload_id: str, chunks: AsyncIterable[bytes], start: int | None = None
    ) -> UploadStatus:
        session = self._session_dir(repo, upload_id)
        async with self._session_lock(upload_id):
            offset = await self._append(repo, upload_id, session, chunks, start)
        return UploadStatus(upload_id, offset)

    async def upload_path(self, repo: str, upload_id: str) -> Path | None:
        session = self._session_dir(repo, upload_id)
        async with self._session_lock(upload_id):
            offset = await self._run(self._offset_sync, session, upload_id, action="read an upload")
            if offset:
                return None
            self._hashes[upload_id] = _HashState(repo, 0, None)
        return session / "data"

    def _hash_file(self, path: Path, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while block := f.read(self.chunk_size):
                hasher.update(block)
        return hasher.hexdigest()

    @staticmethod
    def _discard_sync(session: Path) -> None:
        # Best effort: a failure here must not hide the DIGEST_INVALID the client needs.
        shutil.rmtree(session, ignore_errors=True)

    def _publish_sync(self, repo: str, session: Path, digest: Digest, size: int) -> bool:
        """Link and, unless the blob is already stored, move the data in; returns
        whether the stored file is the one just verified."""
        blob = self._blob_path(digest)
        # Link first: a link without content reads as BLOB_UNKNOWN, and if moving the
        # content fails the session keeps its data so the client can retry the PUT. The
        # garbage collector relies on this order (it re-checks links after quarantining).
        self._write_atomic(self._layer_link(repo, digest), b"")
        moved = not self._has_blob(blob, size)
        if moved:
            blob.parent.mkdir(parents=True, exist_ok=True)
            # The data file was fsynced by _append; a racing finish of the same content
            # replaces identical bytes, which is harmless.
            os.replace(session / "data", blob)
            _fsync_dir(blob.parent)
        shutil.rmtree(session, ignore_errors=True)
        return moved

    async def finish_upload(
        self, repo: str, upload_id: str, digest: str, chunks: AsyncIterable[bytes] | None = None
    ) -> BlobInfo:
        session = self._session_dir(repo, upload_id)
        # A malformed digest is a client mistake: refuse it but keep the session.
        expected = parse_digest(digest)
        async with self._session_lock(upload_id):
            if chunks is not None:
                size = await self._append(repo, upload_id, session, chunks, None)
            else:
                size = await self._run(self._offset_sync, session, upload_id, action="read an upload")
            state = self._hashes.pop(upload_id, None)
            if state is not None and state.repo == repo and state.hasher is None:
                # The producer that took the session's file hashed what it appended
                # (upload_path); its bytes are made durable here, once.
                await self._run(self._fsync_file, session / "data", action="write an upload")
                actual = expected.encoded
            elif (
                state is not None
                and state.repo == repo
                and state.offset == size
                and expected.algorithm == _RUNNING_ALGORITHM
            ):
                actual = state.hasher.hexdigest()
            else:
                actual = await self._run(
                    self._hash_file, session / "data", expected.algorithm, action="verify an upload"
                )
            if actual != expected.encoded:
                await self._run(self._discard_sync, session, action="discard an upload")
                raise RegistryError(
                    Errors.DIGEST_INVALID, {"digest": digest, "actual": f"{expected.algorithm}:{actual}"}
                )
            moved = await self._run(self._publish_sync, repo, session, expected, size, action="publish a blob")
        if moved and self.verified_blobs is not None:
            self.verified_blobs.add(str(expected), size)
        return BlobInfo(str(expected), size)

    async def cancel_upload(self, repo: str, upload_id: str) -> None:
        session = self._session_dir(repo, upload_id)

        def cancel() -> None:
            self._offset_sync(session, upload_id)
            shutil.rmtree(session)

        async with self._session_lock(upload_id):
            await self._run(cancel, action="cancel an upload")
            self._hashes.pop(upload_id, None)

    def _session_idle_sync(self, session: Path) -> float:
        """Seconds since the session last changed: its start or its last write."""
        try:
            started = datetime.fromisoformat((session / "startedat").read_text(encoding="ascii").strip())
            if started.tzinfo is None:
                started = started.replace(tzinfo=timezone.utc)
            last = started.timestamp()
        except (OSError, ValueError):
            # Missing or unreadable start time (e.g. a crash during start_upload).
            last = session.stat().st_mtime
        with contextlib.suppress(FileNotFoundError):
            last = max(last, (session / "data").stat().st_mtime)
        return time.time() - last

    def _sessions_sync(self, uploads: Path) -> list[tuple[str, Path]]:
        try:
            entries = list(os.scandir(uploads))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            with contextlib.suppress(ValueError, FileNotFoundError):
                if str(uuid.UUID(entry.name)) == entry.name and entry.is_dir():
                    found.append((entry.name, Path(entry.path)))
        return found

    def _uploads_bytes_sync(self, repo: str) -> int:
        total = 0
        for _, session in self._sessions_sync(self._repo_dir(repo) / "_uploads"):
            with contextlib.suppress(FileNotFoundError):
                total += (session / "data").stat().st_size
        return total

    def _orphaned_sync(self, session: Path, alive: dict[str, bool]) -> bool:
        """A private session whose owning instance is gone."""
        try:
            token = (session / "owner").read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return False  # a client's session
        except (OSError, ValueError):
            return True
        if token not in alive:
            alive[token] = self._owner_alive_sync(token)
        return not alive[token]

    def _stale_sessions_sync(self, orphans_only: bool) -> list[tuple[str, Path]]:
        stale: list[tuple[str, Path]] = []
        alive: dict[str, bool] = {}
        for repo_dir in self._walk_repositories():
            for upload_id, session in self._sessions_sync(repo_dir / "_uploads"):
                try:
                    if self._orphaned_sync(session, alive) or (
                        not orphans_only and self._session_idle_sync(session) > self.upload_expiry
                    ):
                        stale.append((upload_id, session))
                except FileNotFoundError:
                    continue  # gone meanwhile
        return stale

    def _purge_tmp_sync(self) -> None:
        # Leftovers of writes interrupted by a crash; live temp files are seconds old.
        cutoff = time.time() - self.upload_expiry
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)

    async def purge_expired_uploads(self) -> int:
        """Delete sessions idle past ``upload_expiry`` and those whose owning instance is
        gone; returns how many."""
        purged = await self._purge_sessions(orphans_only=False)
        await self._run(self._purge_tmp_sync, action="purge temporary files")
        return purged

    async def _purge_sessions(self, *, orphans_only: bool) -> int:
        expired = await self._run(self._stale_sessions_sync, orphans_only, action="list upload sessions")
        purged = 0
        for upload_id, session in expired:
            lock = self._session_lock(upload_id)
            if lock.locked():
                continue  # being written right now; the next round will see it
            async with lock:
                # Re-check under the lock: it may have been finished or cancelled since listing.
                if not await self._run(session.is_dir, action="purge an upload"):
                    continue
                await self._run(shutil.rmtree, session, True, action="purge an upload")
                self._hashes.pop(upload_id, None)
                purged += 1
        return purged

    # -- manifests -----------------------------------------------------------
    def _resolve_sync(self, repo: str, reference: str) -> Digest:
        """The digest a tag or digest reference names in ``repo``; ``MANIFEST_UNKNOWN``."""
        unknown = RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference[:200]})
        if is_digest(reference):
            digest = parse_digest(reference, Errors.MANIFEST_UNKNOWN)
        else:
            if not TAG_RE.match(reference):
                raise unknown
            try:
                text = (self._tags_dir(repo) / reference).read_bytes().decode("ascii", "replace").strip()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise unknown from None
            digest = parse_digest(text, Errors.MANIFEST_UNKNOWN)
        if not self._revision_link(repo, digest).is_file():
            raise unknown
        return digest

    def _manifest_meta_sync(self, repo: str, reference: str) -> tuple[Digest, str, Path]:
        digest = self._resolve_sync(repo, reference)
        try:
            sidecar = json.loads(self._revision_link(repo, digest).read_bytes())
            media_type = sidecar["mediaType"]
        except FileNotFoundError:
            raise RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference}) from None
        except (ValueError, KeyError, TypeError):
            raise RegistryError(
                Errors.UNAVAILABLE, {"digest": str(digest)}, message="corrupt manifest metadata on disk"
            ) from None
        return digest, media_type, self._blob_path(digest)

    async def get_manifest(self, repo: str, reference: str) -> ManifestData:
        def read() -> ManifestData:
            digest, media_type, blob = self._manifest_meta_sync(repo, reference)
            try:
                data = blob.read_bytes()
            except FileNotFoundError:
                raise RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference}) from None
            return ManifestData(str(digest), media_type, data)

        return await self._run(read, action="read a manifest")

    async def stat_manifest(self, repo: str, reference: str) -> ManifestInfo:
        def stat() -> ManifestInfo:
            digest, media_type, blob = self._manifest_meta_sync(repo, reference)
            try:
                size = blob.stat().st_size
            except FileNotFoundError:
                raise RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference}) from None
            return ManifestInfo(str(digest), media_type, size)

        return await self._run(stat, action="stat a manifest")

    async def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str, digest: str) -> None:
        parsed = parse_digest(digest)
        self._repo_dir(repo)
        tag: str | None = None
        if is_digest(reference):
            if reference != digest:
                raise RegistryError(Errors.DIGEST_INVALID, {"reference": reference, "digest": digest})
        else:
            tag = validate_tag(reference)
        # Cheap for KB-sized manifests, and the store is content-addressed: never let a
        # wrong name in.
        actual = hashlib.new(parsed.algorithm, data).hexdigest()
        if actual != parsed.encoded:
            raise RegistryError(Errors.DIGEST_INVALID, {"digest": digest, "actual": f"{parsed.algorithm}:{actual}"})
        sidecar = json.dumps({"mediaType": media_type}, separators=(",", ":")).encode()

        def store() -> None:
            self._ensure_index_sync()
            blob = self._blob_path(parsed)
            if not self._has_blob(blob, len(data)):
                self._write_atomic(blob, data)
            # Content, then revision, then tag: a tag never points at a missing revision.
            # Index rows go in before the files they list (see listing_index.py).
            if not self._has_manifests(self._repo_dir(repo)):
                with self._index.writing():
                    self._index.add_repository(repo)
                    (self._repo_dir(repo) / "_manifests").mkdir(parents=True, exist_ok=True)
            self._write_atomic(self._revision_link(repo, parsed), sidecar)
            if tag is not None:
                with self._index.writing():
                    self._index.add_tag(repo, tag)
                    self._write_atomic(self._tags_dir(repo) / tag, digest.encode("ascii"))

        await self._run(store, action="store a manifest")

    async def delete_manifest(self, repo: str, reference: str) -> None:
        def delete() -> None:
            self._ensure_index_sync()
            unknown = RegistryError(Errors.MANIFEST_UNKNOWN, {"name": repo, "reference": reference[:200]})
            tags = self._tags_dir(repo)
            if not is_digest(reference):
                if not TAG_RE.match(reference):
                    raise unknown
                with self._index.writing():
                    try:
                        (tags / reference).unlink()
                    except (FileNotFoundError, NotADirectoryError):
                        raise unknown from None
                    self._index.remove_tags(repo, [reference])
                return
            digest = parse_digest(reference, Errors.MANIFEST_UNKNOWN)
            revision = self._revision_link(repo, digest)
            if not revision.is_file():
                raise unknown
            # Tags first, so no tag ever dangles; index rows after their files.
            with self._index.writing():
                removed = []
                for tag, target in self._read_tags(tags):
                    if target == str(digest):
                        with contextlib.suppress(FileNotFoundError):
                            (tags / tag).unlink()
                            removed.append(tag)
                self._index.remove_tags(repo, removed)
            try:
                revision.unlink()
            except FileNotFoundError:
                raise unknown from None

        await self._run(delete, action="delete a manifest")

    @staticmethod
    def _read_tags(tags: Path) -> list[tuple[str, str]]:
        result: list[tuple[str, str]] = []
        try:
            entries = list(os.scandir(tags))
        except (FileNotFoundError, NotADirectoryError):
            return result
        for entry in entries:
            if not TAG_RE.match(entry.name):
                continue
            try:
                result.append((entry.name, Path(entry.path).read_bytes().decode("ascii", "replace").strip()))
            except (FileNotFoundError, IsADirectoryError):
                continue
        return result

    @staticmethod
    def _has_manifests(repo_dir: Path) -> bool:
        """A repository is known once a manifest was stored in it, and stays known when
        its tags or manifests are deleted (as in distribution: ``tags/list`` then
        answers an empty list, not ``NAME_UNKNOWN``)."""
        return (repo_dir / "_manifests").is_dir()

    # -- listings (answered by the sorted index, checked against the files) ----------
    def _scan_sync(self) -> list[tuple[str, list[str]]]:
        """Every known repository and its tag names, from the files (index rebuilds)."""
        found = []
        for path in self._walk_repositories():
            if self._has_manifests(path):
                name = "/".join(path.relative_to(self._repositories).parts)
                tags = path / "_manifests" / "tags"
                try:
                    names = [e.name for e in os.scandir(tags) if TAG_RE.match(e.name) and e.is_file()]
                except (FileNotFoundError, NotADirectoryError):
                    names = []
                found.append((name, names))
        return found

    def _ensure_index_sync(self) -> None:
        if not self._index_ready:
            self._index.ensure(self._scan_sync)
            self._index_ready = True

    def _tags_page_sync(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        repo_dir = self._repo_dir(repo)
        self._ensure_index_sync()
        # "Known" means the same as for the catalog.
        if not self._has_manifests(repo_dir):
            raise RegistryError(Errors.NAME_UNKNOWN, {"name": repo})
        tags = repo_dir / "_manifests" / "tags"
        return self._index.tags_page(repo, n, last, lambda tag: (tags / tag).is_file())

    async def tags_page(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        return await self._run(self._tags_page_sync, repo, n, last, action="list tags")

    async def list_tags(self, repo: str) -> list[str]:
        return (await self.tags_page(repo, None, None))[0]

    def _walk_repositories(self) -> list[Path]:
        """Every directory under ``repositories`` that may be a repository."""
        found: list[Path] = []
        pending = [self._repositories]
        while pending:
            directory = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                # '_'-prefixed entries are a repository's own data, never a nested name.
                if entry.name.startswith("_") or not entry.is_dir(follow_symlinks=False):
                    continue
                found.append(Path(entry.path))
                pending.append(Path(entry.path))
        return found

    def _repositories_page_sync(self, n: int | None, last: str | None, prefix: str) -> tuple[list[str], bool]:
        self._ensure_index_sync()
        return self._index.repositories_page(
            n, last, lambda name: self._has_manifests(self._repositories.joinpath(*name.split("/"))), prefix
        )

    async def repositories_page(self, n: int | None, last: str | None, prefix: str = "") -> tuple[list[str], bool]:
        return await self._run(self._repositories_page_sync, n, last, prefix, action="list repositories")

    async def list_repositories(self) -> list[str]:
        return (await self.repositories_page(None, None))[0]
