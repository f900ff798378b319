"""Parsing and validating manifests (image-spec §Manifest, §Image Index; Docker schema2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from .. import safejson
from . import mediatypes as mt
from .errors import Errors, RegistryError
from .reference import parse_digest

__all__ = ["Descriptor", "ParsedManifest", "parse_manifest", "accepts"]


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()

    @property
    def external(self) -> bool:
        """A non-distributable layer with ``urls``: its blob is never pushed here."""
        return self.media_type in mt.NON_DISTRIBUTABLE_LAYERS and bool(self.urls)

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Descriptor":
        if not isinstance(value, dict):
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": where, "reason": "descriptor must be an object"})
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.mediaType", "reason": "required string"})
        if not isinstance(digest, str):
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.digest", "reason": "required string"})
        parse_digest(digest, Errors.MANIFEST_INVALID)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.size", "reason": "non-negative integer"})
        annotations = value.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
        ):
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.annotations", "reason": "string map"})
        artifact_type = value.get("artifactType")
        return cls(media_type, digest, size, artifact_type if isinstance(artifact_type, str) else None,
                   annotations, value.get("platform"), _urls(value.get("urls"), where))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        if self.urls:
            out["urls"] = list(self.urls)
        return out


def _urls(value: Any, where: str) -> tuple[str, ...]:
    """``urls`` (image-spec §Descriptor): absolute http(s) URLs without fragment, as
    distribution checks them before it skips a foreign layer's presence check."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.urls", "reason": "list of strings"})
    for url in value:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": f"{where}.urls", "reason": "http(s) URL without fragment", "url": url[:200]})
    return tuple(value)


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    document: dict[str, Any]
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()  # children of an index
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_MANIFESTS

    @property
    def artifact_type(self) -> str | None:
        """``artifactType``, else the config media type (image-spec §Guidelines for Artifact Usage)."""
        value = self.document.get("artifactType")
        if isinstance(value, str):
            return value
        if self.config is not None and not self.is_index:
            return self.config.media_type
        return None

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Blobs this manifest needs present in its repository (non-distributable
        layers with ``urls`` live elsewhere)."""
        return ((self.config,) if self.config else ()) + tuple(d for d in self.layers if not d.external)


def parse_manifest(data: bytes, content_type: str | None) -> ParsedManifest:
    """Parse manifest bytes; ``MANIFEST_INVALID`` for anything malformed or inconsistent."""
    try:
        document = safejson.loads(data)
    except safejson.JsonError as exc:
        raise RegistryError(Errors.MANIFEST_INVALID, {"reason": f"malformed JSON: {exc}"}) from None
    if not isinstance(document, dict):
        raise RegistryError(Errors.MANIFEST_INVALID, {"reason": "manifest must be a JSON object"})
    if document.get("schemaVersion") != 2:
        raise RegistryError(Errors.MANIFEST_INVALID, {"field": "schemaVersion", "reason": "must be 2"})

    declared = document.get("mediaType")
    content_type = (content_type or "").split(";", 1)[0].strip() or None
    if declared is not None and not isinstance(declared, str):
        raise RegistryError(Errors.MANIFEST_INVALID, {"field": "mediaType", "reason": "must be a string"})
    if declared and content_type and declared != content_type:
        raise RegistryError(
            Errors.MANIFEST_INVALID,
            {"reason": "mediaType does not match Content-Type", "mediaType": declared, "contentType": content_type},
        )
    media_type = declared or content_type or _guess(document)
    if media_type not in mt.MANIFEST_TYPES:
        raise RegistryError(
            Errors.MANIFEST_INVALID, {"reason": "unsupported manifest media type", "mediaType": media_type}
        )

    annotations = document.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise RegistryError(Errors.MANIFEST_INVALID, {"field": "annotations", "reason": "string map"})
    subject = Descriptor.from_json(document["subject"], "subject") if document.get("subject") is not None else None

    if media_type in mt.INDEX_MANIFESTS:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise RegistryError(Errors.MANIFEST_INVALID, {"field": "manifests", "reason": "required list"})
        manifests = tuple(Descriptor.from_json(c, f"manifests[{i}]") for i, c in enumerate(children))
        return ParsedManifest(media_type, document, manifests=manifests, subject=subject, annotations=annotations)

    config = Descriptor.from_json(document.get("config"), "config")
    layers_json = document.get("layers")
    if not isinstance(layers_json, list):
        raise RegistryError(Errors.MANIFEST_INVALID, {"field": "layers", "reason": "required list"})
    layers = tuple(Descriptor.from_json(layer, f"layers[{i}]") for i, layer in enumerate(layers_json))
    return ParsedManifest(media_type, document, config=config, layers=layers, subject=subject, annotations=annotations)


def _guess(document: dict[str, Any]) -> str:
    # A manifest without mediaType (allowed by image-spec) is told apart by its shape.
    return mt.OCI_INDEX if "manifests" in document else mt.OCI_MANIFEST


def accepts(media_type: str, accept: Sequence[str]) -> bool:
    """Whether an ``Accept`` list admits ``media_type`` (no list or a wildcard: yes)."""
    if not accept:
        return True
    return any(a in ("*/*", "application/*", media_type) for a in accept)
