"""Compute platforms by name: ``os/arch[/variant][+feature...]`` (``linux/arm64``,
``linux/arm64/v8``, ``linux/amd64+cuda12``), the form of the descriptor's ``platform``
(DESIGN §3), and how a name selects an entry of an image index.

An index entry's platform is its OCI ``platform`` object (``os``, ``architecture``,
``variant``, ``features``) plus the features listed, comma-separated, in its
``org.algomint.platform.features`` annotation: an accelerator build of ``linux/amd64``
is one more entry whose platform carries ``cuda12`` in either place.

A name selects an entry when os and architecture are equal, the variant is equal if the
name gives one (``linux/arm64`` selects ``linux/arm64/v8``), and the feature sets are equal
(``linux/amd64`` does not select the ``+cuda12`` entry; name it to get it). The same rule
is used by a descriptor's ``runtime.images[].platforms``, a chain's ``platforms`` filter
and the archive's ``?platform=``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ANNOTATION_FEATURES", "Platform", "PlatformError"]

ANNOTATION_FEATURES = "org.algomint.platform.features"
_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_FEATURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_FEATURES = 16


class PlatformError(ValueError):
    """A platform name that is not ``os/arch[/variant][+feature...]``."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    features: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, name: str) -> "Platform":
        if not isinstance(name, str) or len(name) > 300:
            raise PlatformError("a platform is a string os/arch[/variant][+feature...] (linux/amd64+cuda12)")
        base, *features = name.split("+")
        parts = base.split("/")
        if len(parts) not in (2, 3) or not all(_PART.fullmatch(p) for p in parts):
            raise PlatformError(f"{name[:100]!r} is not os/arch[/variant][+feature...] (linux/arm64, linux/amd64+cuda12)")
        if len(features) > MAX_FEATURES or not all(_FEATURE.fullmatch(f) for f in features):
            raise PlatformError(f"{name[:100]!r}: features are +name, letters, digits, '.', '_' or '-' "
                                f"(at most {MAX_FEATURES})")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "", frozenset(features))

    @classmethod
    def of_entry(cls, platform: Mapping[str, Any] | None,
                 annotations: Mapping[str, str] | None = None) -> "Platform | None":
        """An index entry's platform, or None when it names none (or not as strings)."""
        if not isinstance(platform, Mapping):
            return None
        os_, arch = platform.get("os"), platform.get("architecture")
        if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
            return None
        variant = platform.get("variant") if isinstance(platform.get("variant"), str) else ""
        listed = platform.get("features") if isinstance(platform.get("features"), list) else []
        noted = (annotations or {}).get(ANNOTATION_FEATURES) or ""
        features = {f for f in listed if isinstance(f, str) and f} | {f.strip() for f in noted.split(",") if f.strip()}
        return cls(os_, arch, variant, frozenset(features))

    def selects(self, other: "Platform") -> bool:
        """This name selects ``other`` (an entry's platform): see the module docstring."""
        return (self.os == other.os and self.architecture == other.architecture
                and (not self.variant or self.variant == other.variant) and self.features == other.features)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")
        return base + "".join(f"+{f}" for f in sorted(self.features))

    @property
    def slug(self) -> str:
        """The name as tag characters: ``linux-arm64-v8``, ``linux-amd64_cuda12``."""
        return str(self).replace("/", "-").replace("+", "_")
