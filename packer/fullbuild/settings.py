"""``[full_builds]``: the build queue and the limits applied to every layer.

Imports nothing heavy, so ``proxy.config`` can include it cheaply."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["FullBuildConfig"]

_REPOSITORY_GLOB = re.compile(r"^[a-z0-9._\-/*?]{1,255}$")  # as a chain's match globs
MiB = 1024 * 1024
GiB = 1024 * MiB


class FullBuildConfig(BaseModel):
    """The build queue and the tar-bomb and recompression settings of every layer."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1, le=16)
    images_prefix: str = "images/"
    # Tar-bomb limits, per layer: decompressed bytes and tar entries.
    max_layer_bytes: int = Field(64 * GiB, gt=0)
    max_entries: int = Field(1_000_000, gt=0)
    # Decompression bombs: a layer may decompress to this many times its compressed size
    # (but always to expansion_floor bytes); all rewritten layers of one build together
    # to max_build_bytes (what a build stores: sealed models no longer compress).
    max_expansion: int = Field(200, ge=1)
    expansion_floor: int = Field(64 * MiB, ge=0)
    max_build_bytes: int = Field(256 * GiB, gt=0)
    # PAX records and GNU long names of one entry.
    max_header_bytes: int = Field(1 * MiB, ge=4096, le=64 * MiB)
    # Recompression: isal gzip level (0-3) and zstd level; threads for compressors.
    gzip_level: int = Field(1, ge=0, le=3)
    zstd_level: int = Field(3, ge=1, le=19)
    threads: int = Field(2, ge=1, le=64)
    # The codec of rewritten layers. "auto": uncompressed when the sealed (encrypted,
    # incompressible) files are at least half of the source layer's compressed size,
    # else the source's own codec; "none" always uncompressed; "gzip" / "zstd" always that.
    layer_compression: Literal["auto", "gzip", "zstd", "none"] = "auto"
    # An uncompressed sealed layer (``layer_compression`` "auto" or "none"): "synthesise"
    # records how to make it and makes it again on every pull, storing nothing, where the
    # storage keeps a secret of its own (the embedded storage; a registry backend stores
    # it whatever this says); "store" writes it at build time. max_syntheses: how many
    # pulls make one at once (the rest wait).
    sealed_layers: Literal["synthesise", "store"] = "synthesise"
    max_syntheses: int = Field(4, ge=1, le=256)
    poll_interval: float = Field(5.0, gt=0)
    # A build request whose package still has assembly jobs queued or running waits this
    # many seconds for them (so the build freezes what they write), then answers 409
    # naming them; 0 refuses at once.
    assembly_wait: float = Field(30.0, ge=0, le=600)
    # Model globs always encrypted, by image repository glob ("images/team-b/**"), on top
    # of what the generic package's descriptor names: an owner's floor no package can lower.
    models: dict[str, list[str]] = {}

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern, globs in value.items():
            if not _REPOSITORY_GLOB.match(pattern):
                raise ValueError(f"{pattern!r} is not a repository glob (lowercase name characters, /, *, ?)")
            if not globs or any(not g or g.startswith("/") for g in globs):
                raise ValueError(f"{pattern!r}: give one or more relative model globs (opt/models/**)")
        return value

    @field_validator("images_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if not value:
            raise ValueError("must name a namespace")
        return value + "/"
