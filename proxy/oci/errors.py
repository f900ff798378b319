"""The one table of client-visible registry errors (distribution-spec §Error Codes).

Every error the registry API can return is registered here once, with its spec code,
default message and HTTP status. Code anywhere below the HTTP layer raises
``RegistryError(Errors.X, detail=...)``; one middleware serialises it as
``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ErrorCode", "Errors", "RegistryError"]


@dataclass(frozen=True)
class ErrorCode:
    code: str
    message: str
    status: int


class Errors:
    """Registered error codes; the names are ours, ``code`` is what clients see."""

    BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", "blob unknown to registry", 404)
    BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", "blob upload invalid", 400)
    BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
    DIGEST_INVALID = ErrorCode("DIGEST_INVALID", "provided digest did not match uploaded content", 400)
    MANIFEST_BLOB_UNKNOWN = ErrorCode("MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to registry", 400)
    MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", "manifest invalid", 400)
    MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", "manifest unknown to registry", 404)
    MANIFEST_TOO_LARGE = ErrorCode("SIZE_INVALID", "manifest exceeds the size limit", 413)
    NAME_INVALID = ErrorCode("NAME_INVALID", "invalid repository name", 400)
    NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", "repository name not known to registry", 404)
    SIZE_INVALID = ErrorCode("SIZE_INVALID", "provided length did not match content length", 400)
    TAG_INVALID = ErrorCode("TAG_INVALID", "manifest tag did not match URI", 400)
    RANGE_INVALID = ErrorCode("RANGE_INVALID", "invalid content range", 416)
    PAGINATION_INVALID = ErrorCode("PAGINATION_NUMBER_INVALID", "invalid number of results requested", 400)
    UNAUTHORIZED = ErrorCode("UNAUTHORIZED", "authentication required", 401)
    DENIED = ErrorCode("DENIED", "requested access to the resource is denied", 403)
    UNSUPPORTED = ErrorCode("UNSUPPORTED", "the operation is unsupported", 405)
    TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", "too many requests", 429)
    UNAVAILABLE = ErrorCode("UNAVAILABLE", "service unavailable", 503)
    UNKNOWN = ErrorCode("UNKNOWN", "unknown error", 500)


class RegistryError(Exception):
    """A registry API error: one registered code plus request-specific detail."""

    def __init__(
        self,
        error: ErrorCode,
        detail: Any = None,
        *,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.error = error
        self.detail = detail
        self.message = message or error.message
        self.headers = dict(headers or {})
        super().__init__(f"{error.code}: {self.message}" + (f" ({detail})" if detail else ""))

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.error.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
