"""Any OCI distribution registry at a URL as the storage (``RegistryBackend``).

Every ``Backend`` call becomes one or a few requests of the distribution API
(distribution-spec v1.1) against the backing registry (CNCF distribution, zot, Harbor):

- **Blobs** pass through as streams: ``open_blob`` is a GET (with ``Range`` for a
  range) whose body is iterated in ``read_chunk`` pieces straight to the caller;
  redirects (distribution on S3 answers 307 to a presigned URL) are followed here, so
  no backend URL ever reaches our clients, and our ``Authorization`` is never sent to
  another host.
- **Manifests** pass through byte for byte, with the backend's ``Content-Type`` and
  digest; bodies are capped at 4 MiB.
- **Safe reads** (GET/HEAD) that meet a 5xx or a reset connection before the answer's
  headers are retried once after a short jittered pause (``_open``); writes and failures
  inside a body (bytes may already be on their way to the client) never are.
- **Errors**: the backend's spec error bodies are mapped onto our error table by code;
  transport failures, 5xx and garbage answers become ``UNAVAILABLE``. Nothing from
  ``aiohttp`` or the OS escapes.
- **Credentials** toward the backend (Basic or the Bearer token flow) are handled by
  ``remote_auth.Authenticator``.

**Upload ids.** We keep no upload state. The backend's upload ``Location`` (for
distribution an absolute URL built from the request ``Host`` with a signed ``_state``
query, renewed by every PATCH) *is* the session: its path and query — never its host —
encoded as URL-safe base64 without padding become our opaque ``upload_id``. Every call
that gets a new ``Location`` back returns a new id, which the API layer hands to the
client in its own ``Location``. Decoding checks that the id names an upload of the same
repository on the configured backend, so a forged id can neither reach another
repository nor another host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import random
import re
import socket
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Literal, Mapping, Sequence
from urllib.parse import quote, unquote

import aiohttp
from yarl import URL

from .. import safejson
from ..oci.errors import ErrorCode, Errors, RegistryError
from ..oci.mediatypes import MANIFEST_TYPES
from ..oci.reference import is_digest
from .base import Backend, BlobInfo, BlobReader, ManifestData, ManifestInfo, SocketSource, UploadStatus
from .ledger import VerifiedBlobs
from .remote_auth import Authenticator, invalid_response, is_reset, parse_challenges, unreachable

__all__ = ["RegistryBackend"]

log = logging.getLogger(__name__)

_MANIFEST_LIMIT = 4 * 1024 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_LIST_BODY_LIMIT = 64 * 1024 * 1024  # one page of tags/catalog
_MAX_PAGES = 100_000
_UPSTREAM_MAX_N = 1000  # distribution's default catalog cap
_MAX_REDIRECTS = 5
_MAX_UPLOAD_ID = 8192
_POOL_LIMIT = 256  # concurrent backend connections; blob streams hold one each
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT_MANIFESTS = ", ".join(sorted(MANIFEST_TYPES))
_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_PATH_QS_RE = re.compile(r"[A-Za-z0-9._~=+:@!$&'()*,;/?%-]+")  # RFC 3986 pchar, '/', '?'
_SESSION_RE = re.compile(r"(?:[A-Za-z0-9._~=+:@!$&'()*,;-]|%[0-9A-Fa-f]{2})+")  # one path segment
_RANGE_RE = re.compile(r"\s*(?:bytes=)?0-(-?\d+)\s*")
_CONTENT_RANGE_RE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*")
_UNSATISFIED_RANGE_RE = re.compile(r"\s*bytes\s+\*/(\d+)\s*")
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_RETRY_PAUSE = (0.05, 0.25)  # seconds before a safe read's one retry, drawn uniformly

# Backend error codes (distribution-spec §Error Codes) onto our table. ``SIZE_INVALID``
# is registered twice in ours (400 and 413); the status decides (``_error``).
_BY_CODE: Mapping[str, ErrorCode] = MappingProxyType(
    {
        "BLOB_UNKNOWN": Errors.BLOB_UNKNOWN,
        "BLOB_UPLOAD_INVALID": Errors.BLOB_UPLOAD_INVALID,
        "BLOB_UPLOAD_UNKNOWN": Errors.BLOB_UPLOAD_UNKNOWN,
        "DIGEST_INVALID": Errors.DIGEST_INVALID,
        "MANIFEST_BLOB_UNKNOWN": Errors.MANIFEST_BLOB_UNKNOWN,
        "MANIFEST_INVALID": Errors.MANIFEST_INVALID,
        "MANIFEST_UNVERIFIED": Errors.MANIFEST_INVALID,
        "MANIFEST_UNKNOWN": Errors.MANIFEST_UNKNOWN,
        "NAME_INVALID": Errors.NAME_INVALID,
        "NAME_UNKNOWN": Errors.NAME_UNKNOWN,
        "SIZE_INVALID": Errors.SIZE_INVALID,
        "TAG_INVALID": Errors.TAG_INVALID,
        "RANGE_INVALID": Errors.RANGE_INVALID,
        "PAGINATION_NUMBER_INVALID": Errors.PAGINATION_INVALID,
        "DENIED": Errors.DENIED,
        "UNSUPPORTED": Errors.UNSUPPORTED,
        "TOOMANYREQUESTS": Errors.TOOMANYREQUESTS,
        "UNAVAILABLE": Errors.UNAVAILABLE,
    }
)
# Without a usable body (HEAD, proxies' HTML pages) the status alone decides.
_BY_STATUS: Mapping[int, ErrorCode] = MappingProxyType(
    {
        403: Errors.DENIED,
        405: Errors.UNSUPPORTED,
        413: Errors.MANIFEST_TOO_LARGE,
        416: Errors.RANGE_INVALID,
        429: Errors.TOOMANYREQUESTS,
    }
)


class _ResetConnection(Exception):
    """A bodiless request's connection was reset or closed before its answer (the cause
    is the transport error)."""


# -- scopes (token.md §Requesting a Token; actions as distribution's app.go derives them) --
def _repo_scopes(repo: str, method: str) -> tuple[str, ...]:
    if method in ("GET", "HEAD"):
        return (f"repository:{repo}:pull",)
    if method == "DELETE":
        return (f"repository:{repo}:delete",)
    return (f"repository:{repo}:pull,push",)


_CATALOG_SCOPES = ("registry:catalog:*",)


# -- upload ids -------------------------------------------------------------
def _encode_upload_id(path_qs: str) -> str:
    return base64.urlsafe_b64encode(path_qs.encode()).rstrip(b"=").decode("ascii")


def _decode_upload_id(upload_id: str) -> str | None:
    """The backend ``path?query`` an id encodes, if it is well-formed URL text."""
    if not isinstance(upload_id, str) or not 0 < len(upload_id) <= _MAX_UPLOAD_ID:
        return None
    if not _UPLOAD_ID_RE.fullmatch(upload_id):
        return None
    try:
        text = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    # Already-encoded URL characters only: no spaces, fragments, backslashes or controls.
    return text if _PATH_QS_RE.fullmatch(text) else None


def _distribution_state_offset(location: URL) -> int | None:
    """The offset in distribution's signed ``_state`` (32-byte HMAC + JSON), if any.

    Distribution answers ``Range: 0-0`` for both 0 and 1 bytes received; its state
    says which. Other registries have no ``_state``: ``None``.
    """
    state = location.query.get("_state")
    if not state:
        return None
    try:
        raw = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
        doc = safejson.loads(raw[32:])
    except (binascii.Error, ValueError):
        return None
    offset = doc.get("Offset") if isinstance(doc, dict) else None
    return offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else None


def _same_digest(reported: str | None, digest: str) -> bool:
    """Whether a backend's ``Docker-Content-Digest`` agrees with ``digest``.

    The header carries the backend's canonical digest, which may be of another
    algorithm (distribution names a blob pushed as sha512 by its sha256): a digest of
    another domain says nothing either way, and the caller checks the blob under
    ``digest`` itself (spec §Pulling manifests, "MAY differ")."""
    if reported is None or reported.partition(":")[0] != digest.partition(":")[0]:
        return True
    return reported == digest


# -- request bodies -----------------------------------------------------------
class _BodySource:
    """A streamed request body that remembers what it sent and how its source failed.

    If the caller's iterable raises (the client went away, the API layer refused the
    chunk), aiohttp reports a transport error; the source's own exception is the
    truth and is re-raised instead of a misleading ``UNAVAILABLE``.
    """

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks
        self.sent = 0
        self.error: BaseException | None = None

    async def iterate(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                if chunk:
                    self.sent += len(chunk)
                    yield chunk
        except Exception as exc:
            self.error = exc
            raise


# -- blob reader --------------------------------------------------------------
class _RemoteBlobReader(BlobReader):
    """Streams a backend GET response; skips bytes if the backend ignored ``Range``.

    ``verified`` when ``ledger`` records the blob as verified in full before;
    ``confirm()`` records it."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse | None,
        digest: str,
        size: int,
        start: int,
        length: int,
        *,
        skip: int = 0,
        chunk_size: int,
        timeout: float = 60.0,
        ledger: VerifiedBlobs | None = None,
    ) -> None:
        self.digest = digest
        self.size = size
        self.start = start
        self.length = length
        self._vouch_from(ledger)
        self._resp = resp
        self._skip = skip
        self._chunk_size = chunk_size
        self._timeout = timeout
        self._iterated = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._iterated or self._resp is None:
            return
        self._iterated = True
        resp, remaining, skip = self._resp, self.length, self._skip
        try:
            if remaining:
                async for chunk in resp.content.iter_chunked(self._chunk_size):
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    if len(chunk) > remaining:
                        chunk = chunk[:remaining]
                    remaining -= len(chunk)
                    yield chunk
                    if not remaining:
                        break
            if remaining:
                raise RegistryError(Errors.UNAVAILABLE, message="backend registry ended the blob early")
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from None
        finally:
            # Runs on exhaustion, on error and when the consumer stops early (aclose).
            await self.close()

    def detach(self) -> SocketSource | None:
        """The upstream socket, when the body is plain TCP and exactly our range."""
        resp = self._resp
        if self._iterated or resp is None or self._skip or resp.content_length != self.length:
            return None
        transport = resp.connection.transport if resp.connection is not None else None
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None or transport.get_extra_info("ssl_object") is not None:
            return None
        try:
            # What aiohttp already buffered goes first; pausing (in the same loop step,
            # after the read: reading may resume the transport) keeps the rest in the socket.
            head = resp.content.read_nowait()
        except (aiohttp.ClientError, OSError, RuntimeError):
            return None  # the stream already failed: iterating reports it
        transport.pause_reading()
        self._iterated = True
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.settimeout(self._timeout)
        return SocketSource(sock, head, self.length, self._timeout)

    async def close(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            if resp.content.at_eof():
                resp.release()  # fully read: the connection goes back to the pool
            else:
                resp.close()  # half-read: the connection can't be reused


# -- the backend -----------------------------------------------------------------
class RegistryBackend(Backend):
    """Content storage in a remote OCI distribution registry."""

    name = "registry"
    #: ``n`` for tags/catalog pages; ``None`` lets the backend choose its page size.
    page_size: int | None = None

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        read_chunk: int = 1024 * 1024,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        first_byte_timeout: float = 60.0,
        verify_reads: Literal["once", "always"] = "always",
    ) -> None:
        base = URL(url.rstrip("/"))
        if not base.is_absolute() or base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"backend registry URL must be http(s)://host[:port][/path], got {url!r}")
        if read_chunk <= 0 or min(timeout, connect_timeout, first_byte_timeout) <= 0:
            raise ValueError("read_chunk and the timeouts must be positive")
        self._origin = base.origin()
        self._base_path = base.raw_path.rstrip("/")  # "" or a path prefix such as "/registry"
        self._username = username
        self._password = password
        self._insecure = insecure
        self._read_chunk = read_chunk
        self._timeout = timeout  # idle: the longest wait between two reads of a body
        self._connect_timeout = connect_timeout
        self._first_byte_timeout = first_byte_timeout
        # "always" (the default): every whole read is hashed, since the backend is a
        # store we do not control and may serve other bytes under a digest it served
        # right before. "once" (an operator's opt-in): a blob hashed in full by a reader
        # is trusted on later reads (length still checked).
        self._verified = VerifiedBlobs() if verify_reads == "once" else None
        self._session: aiohttp.ClientSession | None = None
        self._auth: Authenticator | None = None
        # Told of each retried safe read (method, "5xx" | "reset"): the app counts them.
        self.on_retry: Callable[[str, str], None] = lambda method, reason: None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, ssl=False if self._insecure else True)
        # No total timeout: a multi-GB blob stream may take long; a stalled socket may not.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_connect=self._connect_timeout, sock_read=self._timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            # Big reads measured >2x pass-through throughput over the 64 KiB default.
            read_bufsize=self._read_chunk,
            # Blob and manifest bytes must arrive exactly as stored: no content coding.
            headers={"Accept-Encoding": "identity", "User-Agent": "algomint"},
        )
        if hasattr(self._session, "_retry_connection"):
            # aiohttp re-sends any idempotent request (PUT and DELETE too) at once when its
            # connection drops; the retry policy is ours alone (``_open``): reads once, with
            # a pause, and writes never.
            self._session._retry_connection = False
        self._auth = Authenticator(self._session, self._api("/"), self._username, self._password)

    async def close(self) -> None:
        session, self._session, self._auth = self._session, None, None
        if session is not None:
            await session.close()

    # -- URLs ----------------------------------------------------------------
    def _url(self, path_qs: str) -> URL:
        """``path_qs`` (already percent-encoded, base path included) on our backend."""
        return URL(str(self._origin) + path_qs, encoded=True)

    def _api(self, path: str) -> URL:
        return self._url(f"{self._base_path}/v2{path}")

    def _uploads_prefix(self, repo: str) -> str:
        return f"{self._base_path}/v2/{repo}/blobs/uploads/"

    def _upload_url(self, repo: str, upload_id: str) -> URL:
        """The backend session an id names; ``BLOB_UPLOAD_UNKNOWN`` unless it is ours."""
        path_qs = _decode_upload_id(upload_id)
        prefix = self._uploads_prefix(repo)
        if path_qs is None or not path_qs.startswith(prefix):
            raise RegistryError(Errors.BLOB_UPLOAD_UNKNOWN, {"upload": str(upload_id)[:100]})
        session = path_qs[len(prefix) :].split("?", 1)[0]
        decoded = unquote(session)
        # Exactly one segment, which no server may read as a step elsewhere ("..", "%2F").
        if not _SESSION_RE.fullmatch(session) or decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise RegistryError(Errors.BLOB_UPLOAD_UNKNOWN, {"upload": str(upload_id)[:100]})
        return self._url(path_qs)

    def _location_id(self, resp: aiohttp.ClientResponse, repo: str) -> str:
        """Our upload id for the backend's ``Location`` (host dropped, checked)."""
        location = resp.headers.get("Location")
        if not location:
            raise invalid_response(f"{resp.method} of an upload answered without Location")
        try:
            target = resp.url.join(URL(location, encoded=True))
        except ValueError:
            raise invalid_response("unparseable upload Location") from None
        upload_id = _encode_upload_id(target.raw_path_qs)
        try:
            self._upload_url(repo, upload_id)
        except RegistryError:
            raise invalid_response("upload Location outside the repository's upload path") from None
        return upload_id

    # -- requests ---------------------------------------------------------------
    def _ready(self) -> tuple[aiohttp.ClientSession, Authenticator]:
        if self._session is None or self._auth is None:
            raise RegistryError(Errors.UNAVAILABLE, message="remote backend is not started")
        return self._session, self._auth

    async def _open(
        self,
        method: str,
        url: URL,
        scopes: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | _BodySource | None = None,
        follow_redirects: bool = False,
    ) -> aiohttp.ClientResponse:
        """``_send``, and a safe read (GET/HEAD without a body) that meets a 5xx or a reset
        connection before its answer's headers is sent once more after a jittered pause.
        Nothing of the answer has been read then, let alone sent on; a failure inside a
        body is never retried here, and writes never are (they may have taken effect)."""
        if method not in _SAFE_METHODS or body is not None:
            return await self._send(method, url, scopes, headers=headers, body=body, follow_redirects=follow_redirects)
        try:
            resp = await self._send(method, url, scopes, headers=headers, follow_redirects=follow_redirects,
                                    retryable=True)
            if resp.status < 500:
                return resp
            resp.release()
            reason = "5xx"
        except _ResetConnection:
            reason = "reset"
        self.on_retry(method, reason)
        log.info("backend registry %s %s: %s, retrying once", method, url.path, reason)
        await asyncio.sleep(random.uniform(*_RETRY_PAUSE))  # retries of one burst don't land at once
        return await self._send(method, url, scopes, headers=headers, follow_redirects=follow_redirects)

    async def _send(
        self,
        method: str,
        url: URL,
        scopes: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | _BodySource | None = None,
        follow_redirects: bool = False,
        retryable: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send a request with credentials; the caller releases the response.

        A 401 is answered once (new token or basic credentials) and retried, unless the
        body is a stream: then credentials are obtained beforehand. A 401 that
        survives becomes ``UNAVAILABLE`` (our credentials) or ``DENIED`` (scope).
        """
        session, auth = self._ready()
        streamed = isinstance(body, _BodySource)
        try:
            if streamed:
                await auth.prepare(scopes)
            for attempt in range(2):
                auth_headers = auth.headers(scopes)
                data: Any = body.iterate() if isinstance(body, _BodySource) else body
                resp = await self._answer(
                    session.request(
                        method, url, headers={**(headers or {}), **auth_headers}, data=data, allow_redirects=False
                    ),
                    streamed,
                )
                if resp.status != 401:
                    break
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                if attempt or not await auth.answer(challenge, scopes, sent=bool(auth_headers)):
                    raise self._refused(challenge)
                if streamed:
                    # The backend let the anonymous probe through but wants credentials
                    # here; the body is gone, but what we learnt serves the client's retry.
                    raise RegistryError(
                        Errors.UNAVAILABLE, message="backend registry asked for credentials mid-upload; retry"
                    )
            if follow_redirects and resp.status in _REDIRECT_STATUSES:
                resp = await self._follow(session, resp, method, headers or {}, auth_headers)
            return resp
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(body, _BodySource) and body.error is not None:
                raise body.error from None
            if retryable and is_reset(exc):
                raise _ResetConnection() from exc  # ``_open`` decides: retry or report
            raise unreachable(exc) from None

    async def _answer(self, request: Awaitable[aiohttp.ClientResponse], streamed: bool = False) -> aiohttp.ClientResponse:
        """Await a response's headers: a backend that accepts a request and never answers
        must not hold our client. A streamed body is the client's pace, so only the idle
        read timeout bounds those requests."""
        if streamed:
            return await request
        # aiohttp's idle read timeout also runs while the headers are awaited.
        limit = self._connect_timeout + min(self._first_byte_timeout, self._timeout)
        try:
            async with asyncio.timeout(limit):
                return await request
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise RegistryError(
                    Errors.UNAVAILABLE, message=f"backend registry: no connection within {self._connect_timeout:g} s"
                ) from None
            raise RegistryError(
                Errors.UNAVAILABLE, message=f"backend registry did not answer within {limit:g} s"
            ) from None

    def _refused(self, challenge: str) -> RegistryError:
        bearer = next((c for c in parse_challenges(challenge) if c.scheme == "bearer"), None)
        if bearer is not None and bearer.params.get("error") == "insufficient_scope":
            return RegistryError(Errors.DENIED, message="backend registry denied access to this resource")
        if self._username is None:
            return RegistryError(
                Errors.UNAVAILABLE, message="backend registry requires credentials; none are configured"
            )
        return RegistryError(Errors.UNAVAILABLE, message="backend registry refused the configured credentials")

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        resp: aiohttp.ClientResponse,
        method: str,
        headers: Mapping[str, str],
        auth_headers: Mapping[str, str],
    ) -> aiohttp.ClientResponse:
        """Follow redirects here so the client never sees (or needs) a backend URL."""
        for _ in range(_MAX_REDIRECTS):
            location = resp.headers.get("Location")
            current = resp.url
            resp.release()
            if not location:
                raise invalid_response(f"redirect {resp.status} without Location")
            try:
                target = current.join(URL(location, encoded=True))
            except ValueError:
                raise invalid_response("unparseable redirect Location") from None
            if target.scheme not in ("http", "https"):
                raise invalid_response("redirect to a non-http URL")
            sent = dict(headers)
            if target.origin() == self._origin:
                sent.update(auth_headers)  # never hand our credentials to another host
            if resp.status == 303:
                method = "GET"
            resp = await self._answer(session.request(method, target, headers=sent, allow_redirects=False))
            if resp.status not in _REDIRECT_STATUSES:
                return resp
        resp.release()
        raise invalid_response("too many redirects")

    @asynccontextmanager
    async def _call(
        self,
        method: str,
        url: URL,
        scopes: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | _BodySource | None = None,
        follow_redirects: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``_open`` for responses read inside the block; errors while reading translated."""
        resp = await self._open(method, url, scopes, headers=headers, body=body, follow_redirects=follow_redirects)
        try:
            yield resp
        except (aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from None
        finally:
            resp.release()

    async def _error(self, resp: aiohttp.ClientResponse, not_found: ErrorCode | None = None) -> RegistryError:
        """The ``RegistryError`` for an unexpected answer (the body is read if it is JSON)."""
        if resp.status >= 500:
            return RegistryError(Errors.UNAVAILABLE, message=f"backend registry answered {resp.status}")
        if resp.url.origin() != self._origin:
            # A redirect target (presigned storage URL) failing is the backend's trouble.
            return RegistryError(Errors.UNAVAILABLE, message=f"backend storage answered {resp.status}")
        first: Mapping[str, Any] | None = None
        if resp.method != "HEAD" and "json" in resp.headers.get("Content-Type", ""):
            try:
                raw = await resp.content.read(_ERROR_BODY_LIMIT)
                doc = safejson.loads(raw)
                errors = doc.get("errors") if isinstance(doc, dict) else None
                if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                    first = errors[0]
            except (aiohttp.ClientError, OSError, ValueError):
                first = None  # an error body we can't read tells us nothing more
        code = first.get("code") if first else None
        error = _BY_CODE.get(code) if isinstance(code, str) else None
        if error is Errors.SIZE_INVALID and resp.status == 413:
            error = Errors.MANIFEST_TOO_LARGE
        if error is Errors.BLOB_UPLOAD_INVALID and resp.status == 404:
            # Distribution says BLOB_UPLOAD_INVALID (404) for a session that is gone.
            error = Errors.BLOB_UPLOAD_UNKNOWN
        if error is None:
            error = _BY_STATUS.get(resp.status) or (not_found if resp.status == 404 else None)
        if error is None:
            return RegistryError(Errors.UNAVAILABLE, message=f"backend registry answered {resp.status} unexpectedly")
        detail = first.get("detail") if first else None
        if error is Errors.UNAVAILABLE:
            detail = None
        return RegistryError(error, detail if isinstance(detail, (str, int, dict, list)) and detail != {} else None)

    async def _expect(
        self, resp: aiohttp.ClientResponse, ok: Sequence[int], not_found: ErrorCode | None = None
    ) -> None:
        if resp.status not in ok:
            raise await self._error(resp, not_found)

    @staticmethod
    async def _read_capped(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        if resp.content_length is not None and resp.content_length > limit:
            raise invalid_response(f"{what} exceeds {limit} bytes")
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                raise invalid_response(f"{what} exceeds {limit} bytes")
        return bytes(buf)

    @staticmethod
    def _content_length(resp: aiohttp.ClientResponse, what: str) -> int:
        length = resp.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            raise invalid_response(f"{what} without a valid Content-Length")
        return int(length)

    # -- health ------------------------------------------------------------------
    async def ping(self) -> None:
        try:
            async with self._call("GET", self._api("/"), ()) as resp:
                if resp.status != 200:
                    raise RegistryError(
                        Errors.UNAVAILABLE, message=f"backend registry answered {resp.status} to the version check"
                    )
        except RegistryError as exc:
            if exc.error is Errors.UNAVAILABLE:
                raise
            raise RegistryError(Errors.UNAVAILABLE, message=f"backend registry check failed: {exc.message}") from None

    # -- blobs ---------------------------------------------------------------------
    async def stat_blob(self, repo: str, digest: str) -> BlobInfo:
        async with self._call(
            "HEAD", self._api(f"/{repo}/blobs/{digest}"), _repo_scopes(repo, "GET"), follow_redirects=True
        ) as resp:
            await self._expect(resp, (200,), Errors.BLOB_UNKNOWN)
            return BlobInfo(digest, self._content_length(resp, "blob HEAD"))

    async def open_blob(self, repo: str, digest: str, start: int = 0, length: int | None = None) -> BlobReader:
        if start < 0 or (length is not None and length < 0):
            raise RegistryError(Errors.RANGE_INVALID, {"start": start, "length": length})
        if length == 0:
            # "bytes=N-(N-1)" is not a range; an empty read only needs the size.
            info = await self.stat_blob(repo, digest)
            if start > info.size:
                raise RegistryError(Errors.RANGE_INVALID, {"start": start, "size": info.size})
            return _RemoteBlobReader(None, digest, info.size, start, 0, chunk_size=self._read_chunk)
        headers: dict[str, str] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            headers["Range"] = f"bytes={start}-{end}"
        resp = await self._open(
            "GET", self._api(f"/{repo}/blobs/{digest}"), _repo_scopes(repo, "GET"),
            headers=headers, follow_redirects=True,
        )
        try:
            return await self._blob_reader(resp, repo, digest, start, length)
        except BaseException:
            resp.close()
            raise

    async def _blob_reader(
        self, resp: aiohttp.ClientResponse, repo: str, digest: str, start: int, length: int | None
    ) -> BlobReader:
        if resp.status == 206:
            match = _CONTENT_RANGE_RE.fullmatch(resp.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != start:
                raise invalid_response("206 without a matching Content-Range")
            first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
            size = int(total) if total != "*" else (await self.stat_blob(repo, digest)).size
            served = last - first + 1
            if length is not None:
                served = min(served, length)
            return _RemoteBlobReader(
                resp, digest, size, start, served, chunk_size=self._read_chunk, timeout=self._timeout,
                ledger=self._verified,
            )
        if resp.status == 200:
            # The backend (or a CDN in front) ignored Range: skip to ``start`` ourselves.
            if "Content-Length" in resp.headers:
                size = self._content_length(resp, "blob GET")
            else:
                size = (await self.stat_blob(repo, digest)).size
            if start > size:
                raise RegistryError(Errors.RANGE_INVALID, {"start": start, "size": size})
            available = size - start
            served = available if length is None else min(length, available)
            return _RemoteBlobReader(
                resp, digest, size, start, served, skip=start, chunk_size=self._read_chunk, timeout=self._timeout,
                ledger=self._verified,
            )
        if resp.status == 416:
            # Distribution answers 416 for "bytes=N-" on an N-byte blob: an empty tail.
            match = _UNSATISFIED_RANGE_RE.fullmatch(resp.headers.get("Content-Range", ""))
            if match is not None and int(match.group(1)) == start:
                resp.release()
                return _RemoteBlobReader(None, digest, start, start, 0, chunk_size=self._read_chunk)
            raise RegistryError(Errors.RANGE_INVALID, {"start": start, "length": length})
        raise await self._error(resp, Errors.BLOB_UNKNOWN)

    async def delete_blob(self, repo: str, digest: str) -> None:
        async with self._call("DELETE", self._api(f"/{repo}/blobs/{digest}"), _repo_scopes(repo, "DELETE")) as resp:
            await self._expect(resp, (200, 202, 204), Errors.BLOB_UNKNOWN)

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> BlobInfo | None:
        # Ask only when the source holds the blob: distribution answers any other mount
        # by opening an upload, whose directory it leaks even after we cancel it.
        try:
            await self.stat_blob(from_repo, digest)
        except RegistryError as exc:
            if exc.error in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN, Errors.NAME_INVALID, Errors.DENIED):
                return None
            raise
        url = self._api(f"/{repo}/blobs/uploads/?mount={quote(digest, safe=':')}&from={quote(from_repo, safe='/')}")
        scopes = (*_repo_scopes(repo, "POST"), f"repository:{from_repo}:pull")
        try:
            async with self._call("POST", url, scopes) as resp:
                if resp.status == 202:
                    # The backend opened a plain upload instead; we don't want it.
                    upload_id = self._location_id(resp, repo)
                elif resp.status == 201:
                    upload_id = None
                    if not _same_digest(resp.headers.get("Docker-Content-Digest"), digest):
                        raise invalid_response("mount answered a different digest")
                else:
                    raise await self._error(resp, Errors.BLOB_UNKNOWN)
        except RegistryError as exc:
            if exc.error in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN, Errors.DENIED, Errors.UNSUPPORTED):
                return None  # the client falls back to a plain upload
            raise
        if upload_id is not None:
            try:
                await self.cancel_upload(repo, upload_id)
            except RegistryError:
                pass  # best effort: the backend expires abandoned sessions itself
            return None
        try:
            return await self.stat_blob(repo, digest)
        except RegistryError:
            if digest.startswith("sha256:"):
                raise
            # distribution 2.8 mounts a sha512 blob under its sha256 name only, so it is
            # not readable by the digest asked for: the client uploads it instead.
            return None

    # -- uploads -----------------------------------------------------------------
    async def start_upload(self, repo: str, *, resumable: bool = False) -> UploadStatus:
        # We keep no session state: the backend expires what it holds (``resumable``
        # changes nothing here).
        async with self._call("POST", self._api(f"/{repo}/blobs/uploads/"), _repo_scopes(repo, "POST")) as resp:
            await self._expect(resp, (202,), Errors.NAME_UNKNOWN)
            return UploadStatus(self._location_id(resp, repo), 0)

    def _offset(self, resp: aiohttp.ClientResponse, sent: int = 0) -> int:
        """Bytes received, from ``Range: 0-<last>`` (spec §Pushing a blob in chunks)."""
        value = resp.headers.get("Range")
        if value is None:
            return 0
        match = _RANGE_RE.fullmatch(value)
        if match is None:
            raise invalid_response("unparseable upload Range")
        last = int(match.group(1))
        if last > 0:
            return last + 1
        if last < 0:  # "0--1": some registries' way of saying "nothing yet"
            return 0
        location = resp.headers.get("Location")
        hint = _distribution_state_offset(resp.url.join(URL(location, encoded=True))) if location else None
        if hint is not None and hint <= 1:
            return hint
        # "0-0" is 0 or 1 byte; if this very request sent bytes, it must be 1.
        return 1 if sent else 0

    async def upload_status(self, repo: str, upload_id: str) -> UploadStatus:
        url = self._upload_url(repo, upload_id)
        async with self._call("GET", url, _repo_scopes(repo, "GET")) as resp:
            await self._expect(resp, (200, 204), Errors.BLOB_UPLOAD_UNKNOWN)
            new_id = self._location_id(resp, repo) if resp.headers.get("Location") else upload_id
            return UploadStatus(new_id, self._offset(resp))

    async def write_upload(
        self, repo: str, upload_id: str, chunks: AsyncIterable[bytes], start: int | None = None
    ) -> UploadStatus:
        url = self._upload_url(repo, upload_id)
        if start is not None:
            # The body is a stream of unknown length, so no Content-Range can be sent;
            # check the client's start against the backend's offset instead.
            status = await self.upload_status(repo, upload_id)
            if start != status.offset:
                raise RegistryError(Errors.RANGE_INVALID, {"offset": status.offset, "start": start})
            url = self._upload_url(repo, status.upload_id)
        source = _BodySource(chunks)
        async with self._call(
            "PATCH", url, _repo_scopes(repo, "PATCH"),
            headers={"Content-Type": "application/octet-stream"}, body=source,
        ) as resp:
            await self._expect(resp, (202, 204), Errors.BLOB_UPLOAD_UNKNOWN)
            return UploadStatus(self._location_id(resp, repo), self._offset(resp, source.sent))

    async def finish_upload(
        self, repo: str, upload_id: str, digest: str, chunks: AsyncIterable[bytes] | None = None
    ) -> BlobInfo:
        session_url = self._upload_url(repo, upload_id)
        joiner = "&" if session_url.raw_query_string else "?"
        url = URL(f"{session_url}{joiner}digest={quote(digest, safe=':')}", encoded=True)
        body: bytes | _BodySource = _BodySource(chunks) if chunks is not None else b""
        try:
            async with self._call(
                "PUT", url, _repo_scopes(repo, "PUT"),
                headers={"Content-Type": "application/octet-stream"}, body=body,
            ) as resp:
                await self._expect(resp, (200, 201, 204), Errors.BLOB_UPLOAD_UNKNOWN)
                if not _same_digest(resp.headers.get("Docker-Content-Digest"), digest):
                    raise invalid_response("upload completed under a different digest")
        except RegistryError as exc:
            if exc.error is Errors.DIGEST_INVALID:
                # The contract discards the session on mismatch; distribution already
                # does, others may not.
                try:
                    await self.cancel_upload(repo, upload_id)
                except RegistryError:
                    pass
            raise
        # The PUT answer carries no blob size; a HEAD is the cheapest way to learn it.
        return await self.stat_blob(repo, digest)

    async def cancel_upload(self, repo: str, upload_id: str) -> None:
        url = self._upload_url(repo, upload_id)
        async with self._call("DELETE", url, _repo_scopes(repo, "DELETE")) as resp:
            await self._expect(resp, (200, 202, 204), Errors.BLOB_UPLOAD_UNKNOWN)

    # -- manifests -----------------------------------------------------------
    @staticmethod
    def _media_type(resp: aiohttp.ClientResponse, data: bytes | None = None) -> str:
        media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if media_type:
            return media_type
        if data is not None:
            try:
                doc = safejson.loads(data)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
                return doc["mediaType"]
        raise invalid_response("manifest without Content-Type")

    async def get_manifest(self, repo: str, reference: str) -> ManifestData:
        async with self._call(
            "GET", self._api(f"/{repo}/manifests/{reference}"), _repo_scopes(repo, "GET"),
            headers={"Accept": _ACCEPT_MANIFESTS},
        ) as resp:
            await self._expect(resp, (200,), Errors.MANIFEST_UNKNOWN)
            data = await self._read_capped(resp, _MANIFEST_LIMIT, "manifest")
            reported = resp.headers.get("Docker-Content-Digest")
            media_type = self._media_type(resp, data)
        expected = reference if is_digest(reference) else reported
        if expected is None:
            return ManifestData("sha256:" + hashlib.sha256(data).hexdigest(), media_type, data)
        # Content addressing is the whole point: bytes that don't hash to the digest
        # (a corrupting proxy, a confused backend) must not be served under it.
        algorithm, _, encoded = expected.partition(":")
        try:
            actual = hashlib.new(algorithm, data).hexdigest()
        except (ValueError, TypeError):
            raise invalid_response(f"manifest digest algorithm {algorithm!r} unknown") from None
        if actual != encoded or not _same_digest(reported, expected):
            raise invalid_response("manifest bytes do not match their digest")
        return ManifestData(expected, media_type, data)

    async def stat_manifest(self, repo: str, reference: str) -> ManifestInfo:
        async with self._call(
            "HEAD", self._api(f"/{repo}/manifests/{reference}"), _repo_scopes(repo, "GET"),
            headers={"Accept": _ACCEPT_MANIFESTS},
        ) as resp:
            await self._expect(resp, (200,), Errors.MANIFEST_UNKNOWN)
            digest = resp.headers.get("Docker-Content-Digest") or (reference if is_digest(reference) else None)
            if is_digest(reference) and digest is not None and digest.partition(":")[0] != reference.partition(":")[0]:
                digest = reference  # the backend's canonical name, of another algorithm
            length = resp.headers.get("Content-Length", "")
            media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if digest is None or not (length.isascii() and length.isdigit()) or not media_type:
            # An incomplete HEAD answer: the body tells us all of it (≤ 4 MiB).
            return (await self.get_manifest(repo, reference)).info
        if is_digest(reference) and digest != reference:
            raise invalid_response("manifest HEAD answered a different digest")
        return ManifestInfo(digest, media_type, int(length))

    async def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str, digest: str) -> None:
        algorithm = digest.partition(":")[0]
        try:
            async with self._call(
                "PUT", self._api(f"/{repo}/manifests/{reference}"), _repo_scopes(repo, "PUT"),
                headers={"Content-Type": media_type}, body=data,
            ) as resp:
                await self._expect(resp, (200, 201, 202, 204), Errors.NAME_UNKNOWN)
                reported = resp.headers.get("Docker-Content-Digest")
        except RegistryError as exc:
            # The caller verified the digest, so a backend that calls it wrong only knows
            # its own algorithm (distribution 2.8 addresses manifests by sha256 alone).
            if exc.error is Errors.DIGEST_INVALID and is_digest(reference) and algorithm != "sha256":
                raise RegistryError(
                    Errors.DIGEST_INVALID,
                    {"digest": digest, "algorithm": algorithm, "supported": ["sha256"]},
                    message=f"the backend registry does not accept {algorithm} manifest digests; push by tag or by sha256 digest",
                ) from None
            raise
        if reported is not None and reported != digest:
            raise invalid_response(f"backend registry stored the manifest as {reported}, not {digest}")

    async def delete_manifest(self, repo: str, reference: str) -> None:
        try:
            async with self._call(
                "DELETE", self._api(f"/{repo}/manifests/{reference}"), _repo_scopes(repo, "DELETE")
            ) as resp:
                await self._expect(resp, (200, 202, 204), Errors.MANIFEST_UNKNOWN)
        except RegistryError as exc:
            # Distribution 2.8 can't untag: it answers 405, or DIGEST_INVALID because it
            # reads every reference as a digest.
            if not is_digest(reference) and exc.error in (Errors.UNSUPPORTED, Errors.DIGEST_INVALID):
                raise RegistryError(
                    Errors.UNSUPPORTED,
                    {"tag": reference},
                    message="the backend registry cannot delete tags; delete the manifest by digest",
                ) from None
            raise

    # -- listings ------------------------------------------------------------
    async def _fetch_page(
        self, url: URL, key: str, scopes: Sequence[str], not_found: ErrorCode | None
    ) -> tuple[list[str], URL | None]:
        """One listing page and the URL of the next (``Link: <…>; rel="next"``), if any."""
        async with self._call("GET", url, scopes) as resp:
            await self._expect(resp, (200,), not_found)
            raw = await self._read_capped(resp, _LIST_BODY_LIMIT, "listing")
            link = resp.links.get("next")
        try:
            doc = safejson.loads(raw)
        except ValueError:
            raise invalid_response("listing is not JSON") from None
        values = doc.get(key) if isinstance(doc, dict) else None
        if values is None and isinstance(doc, dict):
            values = []  # distribution says "tags": null for a repository without tags
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise invalid_response(f"listing without a {key!r} list of strings")
        next_url = link.get("url") if link else None
        if not isinstance(next_url, URL):
            return values, None
        # Only the path and query are ours to follow: stay on the configured backend.
        path_qs = next_url.raw_path_qs
        if not path_qs.startswith(f"{self._base_path}/v2/") or path_qs == url.raw_path_qs:
            raise invalid_response("listing Link points outside the registry API or loops")
        return values, self._url(path_qs)

    async def _paginate(self, path: str, key: str, scopes: Sequence[str], not_found: ErrorCode | None) -> list[str]:
        """Gather every page, following ``Link: <…>; rel="next"`` (spec §Listing Tags)."""
        items: set[str] = set()
        async for values in self._pages(path, key, scopes, not_found):
            items.update(values)
        return sorted(items)

    async def _pages(
        self, path: str, key: str, scopes: Sequence[str], not_found: ErrorCode | None, n: int | None = None
    ) -> AsyncIterator[list[str]]:
        """Each upstream page in turn, following ``Link: <…>; rel="next"``."""
        n = n or self.page_size
        target = path + (f"?n={n}" if n else "")
        url: URL | None = self._api(target)
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            assert url is not None
            if url.raw_path_qs in seen:
                raise invalid_response("listing Link points outside the registry API or loops")
            seen.add(url.raw_path_qs)
            values, url = await self._fetch_page(url, key, scopes, not_found)
            yield values
            if url is None:
                return
        raise invalid_response("listing has too many pages")

    async def _page(
        self, path: str, key: str, scopes: Sequence[str], not_found: ErrorCode | None,
        n: int | None, last: str | None,
    ) -> tuple[list[str], bool]:
        """One client page of a tag listing from upstream pages asked with upstream's own
        ``n`` and ``last`` (tags have no path components, so upstream's order is ours):
        cost follows the page, not the listing.

        A registry that ignores ``n``/``last`` (or caps ``n``) still gives a correct
        page: answers are filtered to names after ``last`` and sorted here."""
        if n is None:
            everything = await self._paginate(path, key, scopes, not_found)
            return [v for v in everything if not last or v > last], False
        page: list[str] = []
        after = last
        for _ in range(_MAX_PAGES):
            # One more than the page tells whether more follow; registries cap ``n``.
            query = {"n": str(min(n - len(page) + 1, _UPSTREAM_MAX_N))}
            if after:
                query["last"] = after
            values, next_url = await self._fetch_page(
                self._api(path).with_query(query), key, scopes, not_found
            )
            fresh = sorted(v for v in set(values) if (not after or v > after) and v not in page)
            page += fresh
            if len(page) > n:
                return page[:n], True
            if next_url is None or not fresh:
                return page, False
            after = fresh[-1]
        raise invalid_response("listing has too many pages")

    async def list_tags(self, repo: str) -> list[str]:
        return await self._paginate(f"/{repo}/tags/list", "tags", _repo_scopes(repo, "GET"), Errors.NAME_UNKNOWN)

    async def tags_page(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        return await self._page(
            f"/{repo}/tags/list", "tags", _repo_scopes(repo, "GET"), Errors.NAME_UNKNOWN, n, last
        )

    async def list_repositories(self) -> list[str]:
        # A registry without a catalog (Docker Hub, some Harbor setups) answers 404.
        return await self._paginate("/_catalog", "repositories", _CATALOG_SCOPES, Errors.UNSUPPORTED)

    async def iter_repositories(self) -> AsyncIterator[list[str]]:
        # Big pages: distribution walks its tree from the start up to ``last`` for each
        # page, so a walk costs about (repositories / n) times the tree.
        async for values in self._pages("/_catalog", "repositories", _CATALOG_SCOPES, Errors.UNSUPPORTED,
                                        n=self.page_size or _UPSTREAM_MAX_N):
            yield values

    async def repositories_page(self, n: int | None, last: str | None, prefix: str = "") -> tuple[list[str], bool]:
        # Without algomint's own index (``service/repositories.py``): the whole listing, paged here: distribution orders its catalog by path component (a
        # directory walk), not by the names' string order, so its ``last`` cannot resume
        # a page in our order without skipping names (``a-b/x`` sorts before ``a/x`` as a
        # string, after it as a path).
        names = [name for name in await self.list_repositories()
                 if name.startswith(prefix) and (not last or name > last)]
        names.sort()
        if n is None:
            return names, False
        return names[:n], len(names) > n
