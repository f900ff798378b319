"""The ``service`` plugin kind: POST the package to a REST endpoint, use what it answers.

Only URLs that pass ``packer.outbound`` are called: under a prefix listed in
``[plugins.service] allow``, normalised (no encoded separators, no dot segments), never to
a refused address (checked when pushed, when set up, and by the resolver of every
connection); redirects are not followed. An auth header comes from a named secret in
``[plugins.service.secrets]`` (the artifact names the secret, never holds it), usable only
by the plugins and URL prefixes that secret lists. Connection errors and 5xx answers are
retried a bounded number of times with backoff; a timeout is not retried. The answer is
validated like any input, and cached by (plugin digest, input package digest, context)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from packer.chains import glob_match
from packer.exchange import document_limit, package_from_document, package_to_document
from packer.outbound import (OutboundRefused, Target, parse_rules, parse_target, refusal_of, refused_cause,
                             resolve_checked)
from packer.package import Package, PackageError, canonical_json
from packer.plugin import PluginArtifact, PluginContext, PluginEnv, PluginError, options_model

__all__ = ["ServiceOptions", "ServicePlugin", "setup"]

_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# Headers that would change where or how the request goes, or what algomint says it is.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type", "upgrade",
                               "te", "trailer", "expect", "x-algomint-plugin", "proxy-authorization"})
_ALLOW = "[plugins.service] allow"
_EXCERPT = 300


class ServiceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    timeout: float | None = Field(None, gt=0)
    retries: int | None = Field(None, ge=0, le=10)
    secret: str | None = None  # a name in [plugins.service.secrets]
    header: str = Field("Authorization", pattern=_HEADER_RE.pattern)
    cache: bool = True

    @field_validator("header")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() in _RESERVED_HEADERS:
            raise ValueError(f"{value!r} is set by algomint, not by a secret")
        return value


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise PluginError(f"service answer is {resp.content_length} bytes, over the {limit}-byte limit")
    body = bytearray()
    while chunk := await resp.content.read(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise PluginError(f"service answer is over the {limit}-byte limit")
    return bytes(body)


class _Retry(Exception):
    pass


class ServicePlugin:
    def __init__(self, artifact: PluginArtifact, target: Target, options: ServiceOptions, headers: dict[str, str],
                 env: PluginEnv) -> None:
        settings = env.settings.service
        self.artifact = artifact
        self.target = target
        self.url = target.url
        self.options = options
        self.headers = headers
        self.env = env
        self.timeout = min(options.timeout or settings.timeout, settings.max_timeout)
        self.retries = settings.retries if options.retries is None else options.retries
        self.backoff = settings.retry_backoff

    async def verify(self) -> None:
        """Resolve the host now: a name pointing at a refused address is refused at push."""
        try:
            await resolve_checked(self.target.host, self.target.port, self.env.deny)
        except OutboundRefused as exc:
            raise PluginError(f"{self.artifact.ref}: url: {exc.reason}") from None

    def _cache_key(self, package: Package, context: PluginContext) -> tuple[str, str, str]:
        return (self.artifact.digest, package.digest(), hashlib.sha256(canonical_json(context.to_json())).hexdigest())

    async def apply(self, package: Package, context: PluginContext) -> Package:
        key = self._cache_key(package, context) if self.options.cache else None
        if key is not None:
            cached = self.env.cache.get(key)
            if cached is not None:
                context.log(f"cached answer for input {key[1]}")
                return cached.copy()
        body = await asyncio.to_thread(
            lambda: canonical_json({"package": package_to_document(package), "context": context.to_json()})
        )
        raw = await self._call(body, document_limit(context.cap), context)
        result = await asyncio.to_thread(self._parse, raw, package, context)
        if key is not None:
            self.env.cache.put(key, result.copy(), result.size)
        return result

    async def _call(self, body: bytes, limit: int, context: PluginContext) -> bytes:
        if self.env.http is None:
            raise PluginError("no HTTP client available for service plugins")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "X-Algomint-Plugin": self.artifact.ref, **self.headers}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                context.log(f"retry {attempt}/{self.retries} after: {last}")
            try:
                return await self._post(body, headers, limit)
            except _Retry as exc:
                last = str(exc)
        raise PluginError(f"service {self.url} failed after {self.retries + 1} attempts: {last}")

    async def _post(self, body: bytes, headers: dict[str, str], limit: int) -> bytes:
        assert self.env.http is not None
        try:
            async with self.env.http.post(self.url, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status >= 500:
                    excerpt = (await resp.content.read(_EXCERPT)).decode(errors="replace")
                    raise _Retry(f"HTTP {resp.status}: {excerpt}")
                if resp.status != 200:
                    excerpt = (await resp.content.read(_EXCERPT)).decode(errors="replace")
                    raise PluginError(f"service {self.url} answered HTTP {resp.status}: {excerpt}")
                if resp.content_type != "application/json":
                    raise PluginError(f"service {self.url} answered {resp.content_type or 'no content type'}, "
                                      "not application/json")
                return await _read_capped(resp, limit)
        except asyncio.TimeoutError:
            raise PluginError(f"service {self.url} timed out after {self.timeout:g}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            refused = refused_cause(exc)
            if refused is not None:
                raise PluginError(f"service {self.url} refused: {refused.reason}") from None
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise PluginError(f"service {self.url}: {type(exc).__name__}: {exc}") from None

    def _parse(self, raw: bytes, base: Package, context: PluginContext) -> Package:
        try:
            document: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PluginError(f"service returned invalid JSON: {exc}") from None
        if not isinstance(document, dict) or "package" not in document:
            raise PluginError("service answer has no 'package'")
        if isinstance(document.get("log"), str):
            context.log(document["log"][:10_000])
        try:
            return package_from_document(document["package"], base, context.cap)
        except PackageError as exc:
            raise PluginError(f"service returned an invalid package: {exc.reason}") from None


def _secret_header(artifact: PluginArtifact, options: ServiceOptions, target: Target, env: PluginEnv) -> dict[str, str]:
    """The secret's header, if this plugin may send it to this URL; the same refusal for a
    secret that does not exist and one that is not this plugin's (names stay private)."""
    if options.secret is None:
        return {}
    secret = env.settings.service.secrets.get(options.secret)
    if (secret is None or not any(glob_match(p, artifact.repository) for p in secret.plugins)
            or not any(rule.covers(target) for rule in parse_rules(secret.urls))):
        raise PluginError(f"{artifact.ref}: secret: {options.secret[:100]!r} is not available to this plugin "
                          "at this URL")
    return {options.header: secret.value.get_secret_value()}


def setup(artifact: PluginArtifact, env: PluginEnv) -> ServicePlugin:
    options: ServiceOptions = options_model(ServiceOptions, artifact)
    try:
        target = parse_target(options.url)
    except OutboundRefused as exc:
        raise PluginError(f"{artifact.ref}: url: {exc.reason}") from None
    reason = refusal_of(target, parse_rules(env.settings.service.allow), env.deny, _ALLOW)
    if reason is not None:
        raise PluginError(f"{artifact.ref}: url: {reason}")
    return ServicePlugin(artifact, target, options, _secret_header(artifact, options, target, env), env)
