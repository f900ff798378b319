"""Repository name, tag and digest grammar (distribution-spec §Pulling manifests)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import Errors, RegistryError

__all__ = [
    "MAX_NAME_LENGTH",
    "Digest",
    "Reference",
    "is_digest",
    "parse_digest",
    "parse_reference",
    "validate_name",
    "validate_tag",
    "sha256_digest",
]

MAX_NAME_LENGTH = 255
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

# Registered algorithms and their encoded forms (image-spec §Digests).
_ALGORITHMS = {
    "sha256": re.compile(r"^[a-f0-9]{64}$"),
    "sha512": re.compile(r"^[a-f0-9]{128}$"),
}


@dataclass(frozen=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise RegistryError(Errors.NAME_INVALID, {"name": name[:300]})
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise RegistryError(Errors.TAG_INVALID, {"tag": tag[:200]}, message="invalid tag")
    return tag


def is_digest(reference: str) -> bool:
    return ":" in reference


def parse_digest(value: str, error=Errors.DIGEST_INVALID) -> Digest:
    """Parse and validate a digest string; unknown algorithms are refused."""
    if not value or len(value) > 256 or not DIGEST_RE.match(value):
        raise RegistryError(error, {"digest": value[:300]}, message="invalid digest")
    algorithm, encoded = value.split(":", 1)
    pattern = _ALGORITHMS.get(algorithm)
    if pattern is None:
        raise RegistryError(error, {"digest": value}, message=f"unsupported digest algorithm {algorithm!r}")
    if not pattern.match(encoded):
        raise RegistryError(error, {"digest": value}, message="invalid digest")
    return Digest(algorithm, encoded)


@dataclass(frozen=True)
class Reference:
    """``<name>:<tag>`` or ``<name>@<digest>`` inside this registry."""

    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else f"{self.name}:{self.tag or 'latest'}"


def parse_reference(value: str, default_tag: str | None = "latest") -> Reference:
    """Parse ``name[:tag][@digest]`` (no registry host part)."""
    digest = None
    if "@" in value:
        value, digest = value.split("@", 1)
        parse_digest(digest)
    tag = None
    slash = value.rfind("/")
    colon = value.rfind(":")
    if colon > slash:
        value, tag = value[:colon], value[colon + 1 :]
        validate_tag(tag)
    validate_name(value)
    if tag is None and digest is None:
        tag = default_tag
    return Reference(value, tag, digest)
