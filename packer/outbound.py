"""Outbound HTTP calls that users choose the URL of (service plugins, webhooks): which may go.

A URL is checked from its raw text, not after a normalising parser rewrote it, so what is
checked is what is sent:

* ``http``/``https`` with a host, printable ASCII only, no credentials, no fragment, no
  backslash anywhere;
* its path carries no encoded separator (``%2f``, ``%5c``), no encoded percent (``%25``,
  the double-encoding trick) and no dot segment (``.``/``..``, also encoded or followed by
  ``;params``), so an upstream that decodes the path cannot route outside the prefix;
* an allow-list rule covers it: same scheme, the rule's host (or a subdomain of
  ``*.suffix``), the rule's port (``*`` for any), and a path at or below the rule's path,
  compared segment by segment on the decoded path;
* its host is not a refused name, is not an IP address in a refused network, and (checked
  when the URL is created, and again by the resolver of every connection, so DNS
  rebinding cannot swap the address afterwards) resolves to no refused address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

__all__ = [
    "DEFAULT_DENY_HOSTS",
    "DEFAULT_DENY_NETWORKS",
    "Denylist",
    "GuardedResolver",
    "OutboundRefused",
    "Rule",
    "Target",
    "check_target",
    "guarded_session",
    "parse_rules",
    "parse_target",
    "refusal_of",
    "refused_cause",
    "resolve_checked",
]

# Link-local (cloud metadata lives there), the AWS IPv6 and Alibaba metadata addresses, and
# "this host" addresses that connect to the local machine.
DEFAULT_DENY_NETWORKS = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "0.0.0.0/8",
    "::/128",
)
# Metadata service names, refused before any resolution.
DEFAULT_DENY_HOSTS = (
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_BAD_ESCAPES = re.compile(r"%(2f|5c|25)", re.IGNORECASE)
_BAD_ESCAPE_NAMES = {"2f": "an encoded '/' (%2F)", "5c": "an encoded '\\' (%5C)", "25": "an encoded '%' (%25)"}
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class OutboundRefused(OSError):
    """A URL or an address outbound calls may not reach; ``reason`` says why in one line.

    An ``OSError`` so that the resolver can raise it inside aiohttp's connector."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _segments(path: str, what: str) -> tuple[str, ...]:
    """The decoded segments of a raw path, refusing what a decoding upstream would re-route."""
    bad = _BAD_ESCAPES.search(path)
    if bad:
        raise OutboundRefused(f"{what} path contains {_BAD_ESCAPE_NAMES[bad.group(1).lower()]}")
    raw = path[1:].split("/") if path.startswith("/") else ([path] if path else [])
    decoded = []
    for segment in raw:
        text = unquote(segment)
        if text.split(";", 1)[0] in (".", ".."):
            raise OutboundRefused(f"{what} path contains a dot segment ({segment!r})")
        decoded.append(text)
    return tuple(decoded)


def _split(raw: str, what: str) -> SplitResult:
    if not _PRINTABLE.fullmatch(raw):
        raise OutboundRefused(f"{what} must be printable ASCII without spaces (percent-encode the rest, "
                              "punycode for host names)")
    if "\\" in raw:
        raise OutboundRefused(f"{what} must not contain a backslash")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise OutboundRefused(f"{what} is not a URL: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise OutboundRefused(f"{what} must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise OutboundRefused(f"{what} must not carry credentials")
    if not parts.hostname:
        raise OutboundRefused(f"{what} has no host")
    return parts


def _host(parts: SplitResult, what: str) -> str:
    host = (parts.hostname or "").rstrip(".")
    if not host or "%" in host:
        raise OutboundRefused(f"{what} has an invalid host")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]) and ":" not in host:
        # A name whose last label is a number is an IPv4 address in some notation
        # (2130706433, 0x7f.1, 127.1): only the canonical dotted quad is accepted.
        try:
            if str(ipaddress.IPv4Address(host)) == host:
                return host
        except ValueError:
            pass
        raise OutboundRefused(f"{what} host {host!r} is not a canonical IPv4 address")
    return host


@dataclass(frozen=True)
class Target:
    """A URL that passed the syntax rules; ``url`` is exactly what will be sent."""

    url: URL
    scheme: str
    host: str  # lower case, no trailing dot, IPv6 without brackets
    port: int
    segments: tuple[str, ...]

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments)

    def __str__(self) -> str:
        return str(self.url)


def parse_target(raw: str, what: str = "url") -> Target:
    """Parse a URL outbound calls would use, or raise ``OutboundRefused`` saying why."""
    parts = _split(raw, what)
    if parts.fragment or raw.endswith("#"):
        raise OutboundRefused(f"{what} must not have a fragment")
    host = _host(parts, what)
    segments = _segments(parts.path, what)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    # encoded=True: the path goes out byte for byte as checked above.
    return Target(URL(raw, encoded=True), parts.scheme, host, port, segments)


@dataclass(frozen=True)
class Rule:
    """One allow-list entry: ``scheme://host[:port|:*]/path-prefix``; ``*.suffix`` for subdomains."""

    text: str
    scheme: str
    host: str
    port: int | None  # None: any port
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Rule":
        wildcard_port = re.search(r"^[a-z]+://[^/]*:\*(?=/|$)", text) is not None
        probe = text.replace(":*", "", 1) if wildcard_port else text
        try:
            parts = _split(probe, "allow rule")
            if parts.query or parts.fragment:
                raise OutboundRefused("allow rule must not have a query or fragment")
            raw_host = (parts.hostname or "").rstrip(".")
            wildcard_host = raw_host.startswith("*.")
            host = raw_host if wildcard_host and "*" not in raw_host[2:] else _host(parts, "allow rule")
            if "*" in host[2 if wildcard_host else 0:]:
                raise OutboundRefused("allow rule host may only start with '*.'")
            segments = _segments(parts.path, "allow rule")
        except OutboundRefused as exc:
            raise ValueError(f"{text!r}: {exc.reason}") from None
        if segments and segments[-1] == "":
            segments = segments[:-1]
        port = None if wildcard_port else (parts.port or _DEFAULT_PORTS[parts.scheme])
        return cls(text, parts.scheme, host, port, segments)

    def covers(self, target: Target) -> bool:
        if target.scheme != self.scheme or (self.port is not None and target.port != self.port):
            return False
        if self.host.startswith("*."):
            if not target.host.endswith(self.host[1:]):
                return False
        elif target.host != self.host:
            return False
        return target.segments[: len(self.segments)] == self.segments


def parse_rules(entries: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(Rule.parse(entry) for entry in entries)


def _embedded_v4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class Denylist:
    """Networks and host names no outbound call may reach, whatever the allow-lists say."""

    def __init__(self, networks: Sequence[Any], hosts: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(str(n), strict=False) for n in networks)
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)

    def address_refusal(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        candidates = [ip] + [v4 for v4 in [_embedded_v4(ip)] if v4 is not None]
        for candidate in candidates:
            for network in self.networks:
                if candidate.version == network.version and candidate in network:
                    return f"{address} is in refused network {network} ([outbound] deny_networks)"
        return None

    def host_refusal(self, host: str) -> str | None:
        """Why ``host`` is refused without resolving it (a refused name or address), or None."""
        if host in self.hosts:
            return f"host {host!r} is a refused name ([outbound] deny_hosts)"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        return self.address_refusal(host)


def refusal_of(target: Target, rules: Sequence[Rule], deny: Denylist, where: str) -> str | None:
    """Why ``target`` may not be called without resolving anything (None: it may, so far)."""
    refused = deny.host_refusal(target.host)
    if refused:
        return refused
    if not any(rule.covers(target) for rule in rules):
        return f"{target} is not under a prefix in {where}"
    return None


async def resolve_checked(host: str, port: int, deny: Denylist) -> list[str]:
    """Resolve ``host`` and refuse it if any address it has is refused (rebinding answers mix)."""
    refused = deny.host_refusal(host)
    if refused:
        raise OutboundRefused(refused)
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OutboundRefused(f"host {host!r} does not resolve: {exc.strerror or exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        reason = deny.address_refusal(address)
        if reason:
            raise OutboundRefused(f"host {host!r} resolves to {reason}")
    return addresses


async def check_target(target: Target, rules: Sequence[Rule], deny: Denylist, where: str) -> None:
    """Everything ``refusal_of`` checks, then the host's addresses as resolved now."""
    reason = refusal_of(target, rules, deny, where)
    if reason:
        raise OutboundRefused(reason)
    await resolve_checked(target.host, target.port, deny)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts that resolve to a refused address.

    The connector connects to the addresses this returns, so the address checked is the
    address used: a DNS answer that changes after the URL was accepted cannot slip past.
    (IP literals never reach a resolver; ``refusal_of`` checks them before each call.)"""

    def __init__(self, deny: Denylist) -> None:
        self.deny = deny
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        reason = self.deny.host_refusal(name)
        if reason:
            raise OutboundRefused(reason)
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self.deny.address_refusal(result["host"])
            if reason:
                raise OutboundRefused(f"host {name!r} resolves to {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(deny: Denylist, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections only reach addresses ``deny`` allows; no proxies
    from the environment (a proxy would do the resolving instead of us)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(deny))
    return aiohttp.ClientSession(connector=connector, trust_env=False, **kwargs)


def refused_cause(exc: BaseException) -> OutboundRefused | None:
    """The refusal inside an aiohttp connection error, if that is what it was."""
    inner = getattr(exc, "os_error", None)
    return inner if isinstance(inner, OutboundRefused) else None
