"""A small synchronous client for the management API (the CLI needs no event loop)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

__all__ = ["AdminClient", "AdminError"]


class AdminError(Exception):
    """A refused or failed request; ``status`` 0 means no server answered (or the CLI
    refused on its own), so the message carries no status."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message, self.detail = status, code, message, detail


class AdminClient:
    def __init__(self, url: str, *, token: str | None = None, user: str | None = None, password: str | None = None,
                 timeout: float = 60) -> None:
        self.url = url
        self.base = url.rstrip("/") + "/api/v1"
        self.timeout = timeout
        self.headers = {"Accept": "application/json", "User-Agent": "algomint-cli"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user:
            basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Checked before any request (offline commands never get here): urllib would
            # read "host:port" as a scheme, and speak FTP or read files for others.
            raise AdminError(0, "url", f"the server URL must be http(s)://HOST[:PORT], not {self.url!r} "
                             "(--url or ALGOMINT_URL)")
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)["error"]
                raise AdminError(exc.code, error.get("code", "error"), error.get("message", ""), error.get("detail")) from None
            except (ValueError, KeyError, TypeError):
                raise AdminError(exc.code, "error", raw[:500].decode(errors="replace")) from None
        except urllib.error.URLError as exc:
            raise AdminError(0, "unreachable", f"{self.base}: {exc.reason}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def paginate(self, path: str, **query: Any) -> Iterator[Any]:
        """Every item of a cursor-paginated listing."""
        cursor = None
        while True:
            page = self.get(path, **query, cursor=cursor)
            yield from page["items"]
            cursor = page.get("next")
            if not cursor:
                return
