"""The management API under ``/api/v1``: JSON in and out, one error shape, OpenAPI 3.1.

Each resource module declares an ``ApiRouter`` with its routes; ``mount`` registers them
all, and ``/api/v1/openapi.json`` is generated from the same declarations, so the
document can't drift from what is served."""

from .errors import ApiError
from .router import Access, ApiRoute, ApiRouter, Page, authorize, mount, page_params, parse_body

__all__ = ["Access", "ApiError", "ApiRoute", "ApiRouter", "Page", "authorize", "mount", "page_params", "parse_body"]
