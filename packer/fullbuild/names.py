"""Where a full build reads and writes: package, generic and licensed-image names.

The descriptor is validated by ``packer.descriptor``; a full build reads
``runtime.images[].ref``/``models`` and the package-level ``models`` and keeps every
other field as it is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from proxy.oci.errors import RegistryError
from proxy.oci.reference import Reference, parse_reference

from ..descriptor import AlgorithmDescriptor, DescriptorError
from ..platform import Platform

__all__ = [
    "ANNOTATION_ENCRYPTED",
    "ANNOTATION_IMAGE_REF",
    "ANNOTATION_IMAGE_SOURCE",
    "ANNOTATION_LICENSE",
    "ANNOTATION_PACKAGE",
    "ANNOTATION_SOURCE",
    "LABEL_BUILD",
    "LABEL_LICENSE",
    "LABEL_SOURCE",
    "BuildError", "BuildInputError", "Namespaces", "PackageName", "RuntimeImageRef", "runtime_images", "load_descriptor",
    "package_models"]

# Annotations on what a full build writes, and labels on licensed image configs.
ANNOTATION_LICENSE = "org.algomint.license.kind"
ANNOTATION_SOURCE = "org.algomint.source.digest"
ANNOTATION_PACKAGE = "org.algomint.package"
# On the full index's image entries: the licensed tag (the archive names it in index.json).
ANNOTATION_IMAGE_REF = "org.algomint.image.ref"
ANNOTATION_IMAGE_SOURCE = "org.algomint.image.source"
LABEL_LICENSE = "org.algomint.license.kind"
# On a licensed package's sealed files (layers): the envelope format they are in.
ANNOTATION_ENCRYPTED = "org.algomint.encrypted"
ENVELOPE_FORMAT = "algomint-envelope/1"
LABEL_SOURCE = "org.algomint.source.image"
LABEL_BUILD = "org.algomint.full-build"


class BuildError(Exception):
    """A build that cannot complete; the message is recorded on the build."""


class BuildInputError(Exception):
    """A request a full build cannot start from: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclass(frozen=True)
class Namespaces:
    generic: str = "generic/"
    business: str = "business/"
    images: str = "images/"


@dataclass(frozen=True)
class PackageName:
    """``business/<system>/<algorithm>:<version>``; ``<algorithm>`` may have several
    segments (the whole path under ``generic/``)."""

    repository: str
    version: str
    system: str
    algorithm: str

    @classmethod
    def parse(cls, value: str, ns: Namespaces) -> "PackageName":
        try:
            ref = parse_reference(value, default_tag=None)
        except RegistryError as exc:
            raise BuildInputError(422, f"package {value[:200]!r} is not a valid reference: {exc.message}",
                                  {"field": "package"}) from None
        if ref.digest is not None or ref.tag is None:
            raise BuildInputError(422, "package must be named by tag: business/<system>/<algorithm>:<version>",
                                  {"field": "package"})
        rest = ref.name[len(ns.business):] if ref.name.startswith(ns.business) else ""
        system, _, algorithm = rest.partition("/")
        if not system or not algorithm:
            raise BuildInputError(422, f"package must be in {ns.business}<system>/<algorithm>", {"field": "package"})
        return cls(ref.name, ref.tag, system, algorithm)

    def __str__(self) -> str:
        return f"{self.repository}:{self.version}"

    def full_tag(self, license: str) -> str:
        return f"{self.version}-{license}"


@dataclass(frozen=True)
class RuntimeImageRef:
    index: int  # position in runtime.images
    ref: str
    reference: Reference
    models: tuple[str, ...]
    platforms: tuple[str, ...] = ()  # the descriptor's names; empty: every platform

    @property
    def repository(self) -> str:
        return self.reference.name

    def licensed_tag(self, license: str) -> str:
        """``<tag>-<license>``; with a chosen subset of platforms ``<tag>-<platforms>-<license>``
        (``v1-linux-arm64-soft``), so images licensed for different subsets never share a tag."""
        base = self.reference.tag if self.reference.tag else "sha256-" + self.reference.digest.split(":", 1)[1][:16]  # type: ignore[union-attr]
        subset = platform_slug(self.platforms)
        return f"{base}-{subset}-{license}" if subset else f"{base}-{license}"


def platform_slug(names: tuple[str, ...]) -> str:
    """Platform names as tag characters, sorted (``linux-amd64.linux-arm64``); a digest of
    them (``p`` + 12 hex) when that would make the tag long."""
    if not names:
        return ""
    canonical = sorted(str(Platform.parse(n)) for n in names)
    slug = ".".join(Platform.parse(n).slug for n in canonical)
    return slug if len(slug) <= 60 else "p" + hashlib.sha256("\n".join(canonical).encode()).hexdigest()[:12]


def load_descriptor(data: bytes) -> dict[str, Any]:
    """The descriptor checked against its contract (``packer.descriptor``), returned as
    the JSON object it is, unknown fields included, so a full build changes only what it
    means to change."""
    try:
        return AlgorithmDescriptor.parse(data).to_dict()
    except DescriptorError as exc:
        where = f" at {exc.field}" if exc.field else ""
        raise BuildInputError(422, f"the package's descriptor is invalid{where}: {exc.message}",
                              {"field": exc.field} if exc.field else None) from None


def runtime_images(descriptor: dict[str, Any], ns: Namespaces) -> list[RuntimeImageRef]:
    """``runtime.images`` as references into ``images/`` (possibly none: an embedded
    package); a precise 422 for anything else."""
    images = AlgorithmDescriptor.parse(descriptor).runtime.images
    out = []
    for i, image in enumerate(images):
        where = f"runtime.images.{i}"
        try:
            reference = parse_reference(image.ref)
        except RegistryError as exc:
            raise BuildInputError(422, f"{where}.ref {image.ref[:200]!r} is invalid: {exc.message}",
                                  {"field": f"{where}.ref"}) from None
        if not reference.name.startswith(ns.images):
            raise BuildInputError(422, f"{where}.ref {image.ref!r} is not in {ns.images}", {"field": f"{where}.ref"})
        out.append(RuntimeImageRef(i, image.ref, reference, tuple(image.models), tuple(image.platforms or ())))
    return out


def package_models(descriptor: dict[str, Any]) -> tuple[str, ...]:
    """The package-level ``models`` globs: model files carried in the package itself."""
    return tuple(AlgorithmDescriptor.parse(descriptor).models)
