"""The algorithm descriptor: the JSON config blob of generic and business packages.

Contract (DESIGN §3): an object with at least ``name``, ``version``, ``platform`` (a
``packer.platform`` name, ``linux/amd64+cuda12``, checked when given),
``inputs``/``outputs`` (lists of ``{name, type, description}``), ``parameters`` (object)
and ``runtime.images`` (list of ``{ref, models}``: an image reference in this registry and
glob patterns of model files inside that image's root filesystem). An embedded (device)
algorithm carries its model files in the package itself: the package-level ``models``
globs name them by file path (``model/*.rknn``). Every model here keeps
unknown fields (``extra="allow"``), so reading and writing a descriptor never drops what
another tool put there.

Stable API for other packer modules (assembly, full builds):

- ``AlgorithmDescriptor.parse(data)`` validates bytes or a dict, raising
  ``DescriptorError`` whose ``field`` names the offending path (``runtime.images.0.ref``);
- ``descriptor.to_dict()`` returns the JSON object, unknown fields included, without
  adding defaults the original did not have;
- ``RuntimeImage.ref`` / ``.models`` are the fields a full build rewrites;
  ``RuntimeImage.platforms`` (optional) names the platforms of a multi-platform image
  a full build licenses (``packer.platform`` names; omitted: all of them);
  ``AlgorithmDescriptor.models`` are the package's own model files a full build seals.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy import safejson

from .platform import Platform, PlatformError

__all__ = ["AlgorithmDescriptor", "DescriptorError", "IOField", "Runtime", "RuntimeImage"]


class DescriptorError(ValueError):
    """A descriptor that is not valid JSON or breaks the contract; ``field`` says where."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class IOField(_Open):
    """One input or output of the algorithm."""

    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    description: str = ""


class RuntimeImage(_Open):
    """A runtime image (``images/face-recog:v1`` or ``…@sha256:…``) and its model globs."""

    ref: str = Field(min_length=1)
    models: list[str] = []
    # The platforms of a multi-platform image to build licensed images of (names as in
    # ``packer.platform``); omitted: every platform the image index has.
    platforms: list[str] | None = None

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one platform, or leave platforms out for every platform")
        if len(value) > 64:
            raise ValueError("at most 64 platforms")
        for name in value:
            try:
                Platform.parse(name)
            except PlatformError as exc:
                raise ValueError(str(exc)) from None
        if len({str(Platform.parse(n)) for n in value}) != len(value):
            raise ValueError("a platform is named twice")
        return value


class Runtime(_Open):
    images: list[RuntimeImage] = []


class AlgorithmDescriptor(_Open):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    platform: str = ""
    inputs: list[IOField] = []
    outputs: list[IOField] = []
    parameters: dict[str, Any] = {}
    runtime: Runtime = Runtime()
    # Globs of model files inside the package (file paths, ``model/*.rknn``).
    models: list[str] = []

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str) -> str:
        """The compute platform the package is for (chains may filter on it)."""
        if value:
            try:
                Platform.parse(value)
            except PlatformError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not glob.strip() or glob.startswith("/"):
                raise ValueError(f"{glob!r} is not a relative file glob (model/*.rknn)")
        return value

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> "AlgorithmDescriptor":
        """Validate raw JSON (or an already decoded object)."""
        if isinstance(data, (bytes, str)):
            try:
                data = safejson.loads(data)
            except safejson.JsonError as exc:
                raise DescriptorError(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DescriptorError("must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or None
            more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
            raise DescriptorError(err["msg"] + more, where) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: set and unknown fields, no defaults that were never there."""
        return self.model_dump(mode="json", exclude_unset=True)
