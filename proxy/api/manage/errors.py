"""The management API's one error shape: ``{"error": {"code", "message", "detail"}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...oci.errors import RegistryError

__all__ = ["ApiError", "from_registry_error", "STATUS_CODES"]

# Status -> the code clients see; every management error uses one of these.
STATUS_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_failed",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: Any = None, *, headers: dict[str, str] | None = None) -> None:
        if status not in STATUS_CODES:
            raise ValueError(f"unregistered management API status {status}")
        super().__init__(message)
        self.status = status
        self.code = STATUS_CODES[status]
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def response(self, request_id: str | None = None) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        return web.json_response({"error": body}, status=self.status, headers=headers)


def from_registry_error(exc: RegistryError) -> ApiError:
    """A storage or policy error surfacing in the management API keeps its status."""
    status = exc.status if exc.status in STATUS_CODES else 500
    detail = {"registry_code": exc.code, **({"detail": exc.detail} if exc.detail is not None else {})}
    return ApiError(status, exc.message, detail, headers=exc.headers)
