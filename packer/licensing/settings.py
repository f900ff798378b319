"""Configuration of license kinds (``[licenses.<kind>]``).

Imports nothing heavy, so ``proxy.config`` can include these models cheaply."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["LicenseConfig", "Licenses", "default_licenses", "FULL", "KIND_RE"]

FULL = "full"
KIND_RE = re.compile(r"^[a-z0-9]{1,32}$")
MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LicenseConfig(_Section):
    """One license kind. ``scheme`` says how the data key is wrapped:

    - ``none``: no encryption (the ``full`` kind);
    - ``x25519``: to ``public_key`` (a software license key pair, ``algomint keygen``);
    - ``dongle``: to ``public_key`` and bound to ``dongle_id`` (a hardware dongle);
    - ``plugin``: ``factory = "module:callable"`` returns a licenser (a vendor SDK).
    """

    scheme: Literal["none", "x25519", "dongle", "plugin"] = "x25519"
    # PEM text, base64 of the 32 raw bytes, or the path of a PEM file.
    public_key: str | None = None
    dongle_id: str | None = None
    factory: str | None = None
    options: dict[str, Any] = {}
    # Plaintext bytes per authenticated chunk of an encrypted model file.
    chunk_size: int = Field(64 * 1024, ge=4096, le=16 * MiB)
    # Where the license file goes inside the licensed image's root filesystem.
    license_path: str = "etc/algomint/license.json"
    description: str = ""

    @field_validator("license_path")
    @classmethod
    def _relative(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("must be a relative path without '.' or '..' components")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "LicenseConfig":
        if self.scheme in ("x25519", "dongle") and not self.public_key:
            raise ValueError(f"scheme {self.scheme!r} needs public_key")
        if self.scheme == "dongle" and not self.dongle_id:
            raise ValueError("scheme 'dongle' needs dongle_id")
        if self.scheme == "plugin" and (not self.factory or ":" not in self.factory):
            raise ValueError("scheme 'plugin' needs factory = 'module:callable'")
        return self


def default_licenses() -> dict[str, LicenseConfig]:
    return {FULL: LicenseConfig(scheme="none")}


def _check_licenses(value: dict[str, LicenseConfig]) -> dict[str, LicenseConfig]:
    for kind in value:
        if not KIND_RE.match(kind):
            raise ValueError(f"license kind {kind!r} must be 1-32 lowercase letters or digits (it becomes a tag suffix)")
    if FULL in value and value[FULL].scheme != "none":
        raise ValueError("the 'full' license kind is the unencrypted one: its scheme must be 'none'")
    return {FULL: LicenseConfig(scheme="none"), **value}


Licenses = Annotated[dict[str, LicenseConfig], AfterValidator(_check_licenses)]
