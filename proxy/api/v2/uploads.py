"""Blob uploads (distribution-spec §Pushing blobs): sessions, chunks, mounts.

Each response carries the session's ``Location``; a backend may change the upload id at
every step (the remote backend does), so clients always follow the latest Location."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import AsyncIterator

from aiohttp import web

from ...backend import Backend, BlobInfo, UploadStatus
from ...oci.errors import Errors, RegistryError
from ...oci.reference import validate_name
from ...service.policy import ANONYMOUS, Action, Request as PolicyRequest
from ..state import POLICY, PRINCIPAL, REGISTRY
from ..streaming import request_chunks
from .common import digest_param, location, repo_name

# The spec's ``<first>-<last>``; the HTTP forms some clients send (``bytes 0-9/10``,
# ``bytes=0-9``) mean the same and are accepted too.
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _session_response(request: web.Request, repo: str, status: UploadStatus, code: int) -> web.Response:
    end = max(status.offset - 1, 0)
    return web.Response(
        status=code,
        headers={
            "Location": location(request, f"/v2/{repo}/blobs/uploads/{status.upload_id}"),
            "Range": f"0-{end}",
            "Docker-Upload-UUID": status.upload_id,
            "Content-Length": "0",
        },
    )


def _blob_created(request: web.Request, repo: str, blob: BlobInfo) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": location(request, f"/v2/{repo}/blobs/{blob.digest}"),
            "Docker-Content-Digest": blob.digest,
            "Content-Length": "0",
        },
    )


def _declared_length(request: web.Request) -> int | None:
    length = request.content_length
    if length is not None and length < 0:
        raise RegistryError(Errors.SIZE_INVALID, {"Content-Length": length})
    return length


async def start_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    backend = request.app[REGISTRY].backend
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount is not None:
        digest = digest_param(mount)
        if source and await _may_pull(request, validate_name(source)):
            blob = await backend.mount_blob(repo, digest, source)
            if blob is not None:
                return _blob_created(request, repo, blob)
        # Spec: a mount that can't be made (or from a repository the caller can't read)
        # falls back to an ordinary session (202).
    digest_arg = request.query.get("digest")
    if digest_arg is not None:  # monolithic: POST ?digest= with the whole body
        digest = digest_param(digest_arg)
        status = await backend.start_upload(repo)
        try:
            blob = await backend.finish_upload(repo, status.upload_id, digest, _body(request))
        except BaseException:
            # The client never learned this session's id: nobody can resume it, so it
            # goes at once, whatever failed (a disconnect, a short body, a bad digest).
            await asyncio.shield(_discard(backend, repo, status.upload_id))
            raise
        return _blob_created(request, repo, blob)
    status = await backend.start_upload(repo, resumable=True)
    return _session_response(request, repo, status, 202)


async def _may_pull(request: web.Request, source: str) -> bool:
    """A mount reads ``source``: only callers allowed to pull it may mount from it."""
    try:
        await request.app[POLICY].check(PolicyRequest(request.get(PRINCIPAL, ANONYMOUS), Action.PULL, source))
    except RegistryError:
        return False
    return True


async def upload_status(request: web.Request) -> web.Response:
    repo = repo_name(request)
    status = await request.app[REGISTRY].backend.upload_status(repo, request.match_info["upload_id"])
    return _session_response(request, repo, status, 204)


async def _chunk_range(request: web.Request, repo: str, upload_id: str) -> tuple[int | None, int | None]:
    """``(start, length)`` of a chunk from ``Content-Range``/``Content-Length``.

    A malformed range is ``BLOB_UPLOAD_INVALID`` (400); one that does not start at the
    session's offset is 416 with the session's ``Location`` and ``Range``, so the client
    can resume (spec §Pushing a blob in chunks)."""
    limit = _declared_length(request)
    content_range = request.headers.get("Content-Range")
    if content_range is None:
        return None, limit
    match = _CONTENT_RANGE_RE.match(content_range.strip())
    if not match:
        raise RegistryError(Errors.BLOB_UPLOAD_INVALID, {"Content-Range": content_range[:100]},
                            message="Content-Range must be <first>-<last>")
    start, end = int(match.group(1)), int(match.group(2))
    if end >= start and limit is not None and limit != end - start + 1:
        raise RegistryError(Errors.SIZE_INVALID, {"Content-Range": content_range, "Content-Length": limit})
    current = await request.app[REGISTRY].backend.upload_status(repo, upload_id)
    if end < start or start != current.offset:
        raise RegistryError(
            Errors.RANGE_INVALID,
            {"expected_start": current.offset, "Content-Range": content_range[:100]},
            headers={"Location": location(request, f"/v2/{repo}/blobs/uploads/{current.upload_id}"),
                     "Range": f"0-{max(current.offset - 1, 0)}",
                     "Docker-Upload-UUID": current.upload_id},
        )
    return start, end - start + 1


async def patch_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    upload_id = request.match_info["upload_id"]
    backend = request.app[REGISTRY].backend
    start, limit = await _chunk_range(request, repo, upload_id)
    status = await backend.write_upload(repo, upload_id, request_chunks(request, limit), start)
    return _session_response(request, repo, status, 202)


async def finish_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    upload_id = request.match_info["upload_id"]
    digest = digest_param(request.query.get("digest"))
    # The closing PUT may carry the last chunk with its Content-Range: same rules as PATCH.
    await _chunk_range(request, repo, upload_id)
    blob = await _finish(request, repo, upload_id, digest)
    return _blob_created(request, repo, blob)


def _body(request: web.Request) -> AsyncIterator[bytes] | None:
    length = _declared_length(request)
    has_body = bool(length) or request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    return request_chunks(request, length) if has_body else None


async def _discard(backend: Backend, repo: str, upload_id: str) -> None:
    with contextlib.suppress(RegistryError):
        await backend.cancel_upload(repo, upload_id)


async def _finish(request: web.Request, repo: str, upload_id: str, digest: str) -> BlobInfo:
    backend = request.app[REGISTRY].backend
    try:
        return await backend.finish_upload(repo, upload_id, digest, _body(request))
    except RegistryError as exc:
        if exc.error in (Errors.SIZE_INVALID, Errors.UNAVAILABLE):
            # A failed close must not leave a half-written session behind.
            await _discard(backend, repo, upload_id)
        raise


async def cancel_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    await request.app[REGISTRY].backend.cancel_upload(repo, request.match_info["upload_id"])
    return web.Response(status=204)
