"""Multi-platform runtime images in a full build: which platforms, and how they are listed.

A runtime image may be one manifest or an index (OCI image index or Docker manifest
list) of per-platform manifests. A full build licenses every platform of an index, or
only those the descriptor's ``runtime.images[].platforms`` names (``packer.platform``
names; a name the index does not have is a 422 before anything is queued). The licensed
image is an index of the licensed platforms, each entry keeping its ``platform`` and
annotations.

The full package index lists the licensed index (named by the archive, so
``skopeo --override-arch`` picks from it) and then each licensed platform manifest with
its ``platform`` and ``org.algomint.image.platform-of`` (the licensed tag it belongs to):
``podman pull --platform linux/arm64`` of the full package picks the arm64 image, since
a client prefers an entry whose platform matches over the thin package's, which has none.

A licensed platform manifest is reused by (image repository, source manifest digest,
license key, models): the ledger (``BuildStore.licensed_platform``) records each one a
succeeded build made, so adding a platform to an image, or choosing another subset,
rewrites only the platforms never licensed before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.backend import ManifestData
from proxy.oci import mediatypes as mt
from proxy.oci.manifest import Descriptor, ParsedManifest, parse_manifest

from ..platform import Platform
from .names import ANNOTATION_IMAGE_SOURCE, RuntimeImageRef

__all__ = ["ANNOTATION_PLATFORM_OF", "PlatformChoice", "PlatformMismatch", "check_single", "choose", "config_platform",
           "platform_entries", "ledger_key"]

# On the full index's per-platform entries: the licensed tag (``images/x:v1-soft``) whose
# index holds this platform; the archive does not name these entries, it names that index.
ANNOTATION_PLATFORM_OF = "org.algomint.image.platform-of"


class PlatformMismatch(ValueError):
    """The descriptor names a platform the runtime image does not have."""


@dataclass(frozen=True)
class PlatformChoice:
    """The manifests of an index to license, each with its platform as named."""

    children: list[Descriptor]
    names: list[str]  # str(Platform) of each child, "" when it declares none


def _images(parsed: ParsedManifest) -> list[Descriptor]:
    """The index's image manifests, without attestations (buildkit marks them
    ``unknown/unknown``: they describe the source image, not a platform of it)."""
    return [c for c in parsed.manifests
            if c.media_type in mt.IMAGE_MANIFESTS and (c.platform or {}).get("os") != "unknown"]


def choose(ref: RuntimeImageRef, parsed: ParsedManifest) -> PlatformChoice:
    """The children of the index ``parsed`` that ``ref`` asks for (all when it names none)."""
    children = _images(parsed)
    platforms = [Platform.of_entry(c.platform, c.annotations) for c in children]
    if ref.platforms:
        wanted = [Platform.parse(name) for name in ref.platforms]
        missing = [str(w) for w in wanted if not any(p is not None and w.selects(p) for p in platforms)]
        if missing:
            have = sorted({str(p) for p in platforms if p is not None})
            raise PlatformMismatch(f"runtime image {ref.ref} has no platform {', '.join(missing)} "
                                   f"(it has {', '.join(have) or 'none'})")
        keep = [i for i, p in enumerate(platforms) if p is not None and any(w.selects(p) for w in wanted)]
        children, platforms = [children[i] for i in keep], [platforms[i] for i in keep]
    return PlatformChoice(children, [str(p) if p else "" for p in platforms])


def config_platform(config: dict[str, Any]) -> dict[str, Any] | None:
    """The OCI platform an image config declares (``os``, ``architecture``, ``variant``)."""
    platform = {k: config[k] for k in ("architecture", "os", "variant") if isinstance(config.get(k), str)}
    return platform if {"architecture", "os"} <= platform.keys() else None


def check_single(ref: RuntimeImageRef, config: dict[str, Any]) -> str:
    """A one-manifest image named with platforms must be one of them; its platform's name."""
    platform = Platform.of_entry(config_platform(config))
    if ref.platforms and (platform is None or not any(Platform.parse(n).selects(platform) for n in ref.platforms)):
        raise PlatformMismatch(f"runtime image {ref.ref} is one image for {platform or 'no declared platform'}, "
                               f"not {', '.join(ref.platforms)}")
    return str(platform) if platform else ""


def platform_entries(licensed: ManifestData, licensed_tag: str, repo: str,
                     sources: dict[str, str]) -> list[dict[str, Any]]:
    """The full index's entries for each platform of a licensed index (none for one
    manifest: its own entry carries the platform). ``sources`` maps a licensed
    platform manifest's digest to its source manifest's."""
    parsed = parse_manifest(licensed.data, licensed.media_type)
    if not parsed.is_index:
        return []
    entries = []
    for child in parsed.manifests:
        notes = {k: v for k, v in (child.annotations or {}).items() if k.startswith("org.algomint.platform.")}
        notes[ANNOTATION_PLATFORM_OF] = licensed_tag
        if child.digest in sources:
            notes[ANNOTATION_IMAGE_SOURCE] = f"{repo}@{sources[child.digest]}"
        entry: dict[str, Any] = {"mediaType": child.media_type, "digest": child.digest, "size": child.size,
                                 "annotations": notes}
        if child.platform:
            entry["platform"] = child.platform
        entries.append(entry)
    return entries


def ledger_key(license_key: dict[str, Any], models: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """What a reused platform manifest must have been licensed with, as stored text."""
    return (json.dumps(license_key, sort_keys=True, separators=(",", ":")),
            json.dumps(list(models), separators=(",", ":")))
