"""The storage contract every backend implements.

The registry API handlers and the packer talk to storage only through ``Backend``;
they cannot tell the embedded filesystem store from a remote registry. Backends raise
``RegistryError`` from the one error table (``BLOB_UNKNOWN``, ``MANIFEST_UNKNOWN``,
``BLOB_UPLOAD_UNKNOWN``, ``DIGEST_INVALID``, ``RANGE_INVALID``, ``UNAVAILABLE`` …) and
never leak foreign exceptions (``OSError``, ``aiohttp.ClientError``).

Blob content always moves as async iterables of ``bytes`` chunks of bounded size: a
backend never holds a whole blob in memory.
"""

from __future__ import annotations

import bisect
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Sequence

from .ledger import VerifiedBlobs

__all__ = ["Backend", "BlobInfo", "BlobReader", "ManifestData", "ManifestInfo", "SocketSource", "UploadStatus", "page_of"]


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class ManifestData:
    digest: str
    media_type: str
    data: bytes

    @property
    def info(self) -> ManifestInfo:
        return ManifestInfo(self.digest, self.media_type, len(self.data))


@dataclass(frozen=True)
class UploadStatus:
    upload_id: str
    offset: int  # bytes received so far


@dataclass(frozen=True)
class SocketSource:
    """A blob's bytes as the rest of a plain-TCP upstream body: ``head`` (already
    received) then the next ``length - len(head)`` bytes of ``sock``.

    ``sock`` is the reader's own duplicate of the connection, with ``timeout`` set as the
    longest wait for upstream data; whoever took it closes it."""

    sock: socket.socket
    head: bytes
    length: int
    timeout: float


class BlobReader(ABC):
    """An open blob (or a byte range of one), consumed once as an async iterator.

    ``size`` is the blob's full size; ``start``/``length`` describe the range served.
    ``path`` is set when the bytes live in a local file at ``start`` so the HTTP layer
    may use ``sendfile`` instead of iterating; ``detach()`` likewise offers an upstream
    socket for a socket-to-socket relay. ``close()`` releases the file or the upstream
    connection and is safe to call twice.

    ``verified`` means the storage vouches for the bytes: they were checked against
    ``digest`` when written, or on an earlier whole read (``confirm``), so a consumer
    need not hash them again. Consumers still check the length.
    """

    digest: str
    size: int
    start: int
    length: int
    path: Path | None = None
    verified: bool = False
    _ledger: VerifiedBlobs | None = None  # where confirm() records a match

    def _vouch_from(self, ledger: VerifiedBlobs | None) -> None:
        """Take ``verified`` from ``ledger`` (``None``: the storage keeps no record)."""
        self._ledger = ledger
        self.verified = ledger is not None and ledger.holds(self.digest, self.size)

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def close(self) -> None: ...

    def confirm(self) -> None:
        """The consumer hashed the whole blob and it matched ``digest``: later readers
        of it may be ``verified`` (where the storage keeps such a record)."""
        if self._ledger is not None:
            self._ledger.add(self.digest, self.size)

    def detach(self) -> SocketSource | None:
        """Take the upstream connection instead of iterating (``None``: iterate).

        After a ``SocketSource`` is returned the reader yields nothing more; ``close()``
        still must be called and drops the connection (it is never reused)."""
        return None

    async def __aenter__(self) -> "BlobReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Backend(ABC):
    """Content storage: blobs, upload sessions, manifests, tags, repositories."""

    name: str = "backend"

    async def start(self) -> None:
        """Open connections or directories; called once before serving."""

    async def close(self) -> None:
        """Release everything; called once on shutdown."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``RegistryError(UNAVAILABLE)`` if storage cannot serve requests."""

    async def secret(self, name: str) -> bytes | None:
        """32 random bytes named ``name``, made on first use and kept with the content
        (so whoever can read them could already read the content they protect); the
        same bytes for every process sharing the storage. None where the storage has no
        private place of its own (an upstream registry)."""
        return None

    # -- blobs ---------------------------------------------------------------
    @abstractmethod
    async def stat_blob(self, repo: str, digest: str) -> BlobInfo:
        """Size of a blob linked into ``repo``; ``BLOB_UNKNOWN`` if absent."""

    @abstractmethod
    async def open_blob(self, repo: str, digest: str, start: int = 0, length: int | None = None) -> BlobReader:
        """Open ``[start, start+length)`` of a blob (``length=None``: to the end).

        The caller has validated the range against ``stat_blob``; a backend still
        raises ``RANGE_INVALID`` for a start past the end."""

    @abstractmethod
    async def delete_blob(self, repo: str, digest: str) -> None:
        """Unlink a blob from ``repo``; ``BLOB_UNKNOWN`` if absent."""

    @abstractmethod
    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> BlobInfo | None:
        """Link an existing blob of ``from_repo`` into ``repo``; ``None`` if it can't."""

    # -- uploads -------------------------------------------------------------
    @abstractmethod
    async def start_upload(self, repo: str, *, resumable: bool = False) -> UploadStatus:
        """Open an upload session.

        ``resumable``: its id goes to a client, who may resume it later, even after a
        restart; it lives until finished, cancelled or idle past its expiry. Otherwise
        the session belongs to this process (an in-process producer, a monolithic
        upload): if the process dies before finishing it, nobody can, and a storage
        that keeps sessions removes it at its next start."""

    @abstractmethod
    async def upload_status(self, repo: str, upload_id: str) -> UploadStatus:
        """Offset of a session; ``BLOB_UPLOAD_UNKNOWN`` if there is none."""

    @abstractmethod
    async def write_upload(
        self, repo: str, upload_id: str, chunks: AsyncIterable[bytes], start: int | None = None
    ) -> UploadStatus:
        """Append a chunk. ``start`` (from ``Content-Range``) must equal the current
        offset, else ``RANGE_INVALID``; ``None`` means "append" (streamed upload)."""

    async def upload_path(self, repo: str, upload_id: str) -> Path | None:
        """The local file of a session that holds no bytes yet, for an in-process
        producer that appends to it itself (from any thread) instead of ``write_upload``;
        ``None`` when the storage keeps no such file or the session already holds bytes
        (then use ``write_upload``).

        Taking the file is a promise: the producer hashes exactly the bytes it appends
        and passes that digest to ``finish_upload``, which makes them durable and
        publishes them without hashing them again. Bytes from clients never take this
        path, and a ``write_upload`` to the session withdraws the promise: ``finish``
        then hashes the content as usual."""
        return None

    @abstractmethod
    async def finish_upload(
        self, repo: str, upload_id: str, digest: str, chunks: AsyncIterable[bytes] | None = None
    ) -> BlobInfo:
        """Append the optional final chunk, verify ``digest`` over all content and
        publish the blob atomically. On mismatch: ``DIGEST_INVALID``, nothing is
        published and the session is discarded."""

    async def purge_expired_uploads(self) -> int:
        """Remove sessions idle past their expiry; returns how many. Remote registries
        expire their own sessions, so the default does nothing."""
        return 0

    @abstractmethod
    async def cancel_upload(self, repo: str, upload_id: str) -> None:
        """Discard a session and its data; ``BLOB_UPLOAD_UNKNOWN`` if there is none."""

    # -- manifests -----------------------------------------------------------
    @abstractmethod
    async def get_manifest(self, repo: str, reference: str) -> ManifestData:
        """Manifest bytes exactly as pushed, by tag or digest; ``MANIFEST_UNKNOWN``."""

    @abstractmethod
    async def stat_manifest(self, repo: str, reference: str) -> ManifestInfo:
        """Digest, media type and size without the body; ``MANIFEST_UNKNOWN``."""

    @abstractmethod
    async def put_manifest(
        self, repo: str, reference: str, data: bytes, media_type: str, digest: str
    ) -> None:
        """Store manifest bytes under ``digest`` and, if ``reference`` is a tag, tag it.

        The caller has parsed and validated the manifest and computed ``digest``."""

    @abstractmethod
    async def delete_manifest(self, repo: str, reference: str) -> None:
        """Delete a manifest by digest (and every tag pointing at it) or untag a tag."""

    @abstractmethod
    async def list_tags(self, repo: str) -> list[str]:
        """All tags of ``repo``, sorted; ``NAME_UNKNOWN`` if the repository is unknown."""

    @abstractmethod
    async def list_repositories(self) -> list[str]:
        """All repository names, sorted."""

    async def iter_repositories(self) -> AsyncIterator[list[str]]:
        """Every repository name, a batch at a time, in the backend's own order."""
        yield await self.list_repositories()

    async def tags_page(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to ``n`` tags after ``last`` (all with ``n=None``), sorted, and whether more
        follow. Backends with an index override this so a page costs a page."""
        return page_of(await self.list_tags(repo), n, last)

    async def repositories_page(self, n: int | None, last: str | None, prefix: str = "") -> tuple[list[str], bool]:
        """Up to ``n`` repository names after ``last`` that start with ``prefix``, sorted,
        and whether more follow."""
        return page_of([r for r in await self.list_repositories() if r.startswith(prefix)], n, last)


def page_of(items: Sequence[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """The part of sorted ``items`` after ``last``, at most ``n``, and whether more follow."""
    start = bisect.bisect_right(items, last) if last else 0
    if n is None:
        return list(items[start:]), False
    return list(items[start : start + n]), start + n < len(items)

