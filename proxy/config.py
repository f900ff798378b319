"""Configuration: one TOML file, validated by pydantic, overridden by environment.

Environment variables override file values: ``ALGOMINT_<SECTION>__<KEY>`` (double
underscore between levels), e.g. ``ALGOMINT_STORAGE__BACKEND=registry`` or
``ALGOMINT_SERVER__LISTEN=0.0.0.0:5000``. Values are parsed as TOML scalars when they
look like one (``true``, ``42``, ``["a"]``), else taken as strings.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from packer.fullbuild.settings import FullBuildConfig
from packer.settings import AssemblyConfig, ChainsConfig, PluginsConfig, WebhooksConfig
from packer.licensing.settings import Licenses, default_licenses

__all__ = ["Config", "ConfigError", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "ALGOMINT_"


class ConfigError(Exception):
    """A configuration file or override that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    listen: str = "127.0.0.1:5000"
    public_url: str | None = None
    max_manifest_bytes: int = Field(4 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)
    # How long SIGTERM waits for in-flight requests before closing them.
    shutdown_grace: float = Field(30.0, ge=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StorageConfig(_Section):
    backend: Literal["filesystem", "registry"] = "filesystem"
    path: Path = Path("./data/storage")
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    insecure: bool = False
    # Upload sessions idle longer than this are removed (filesystem backend).
    upload_expiry: float = Field(24 * 3600.0, gt=0)

    @model_validator(mode="after")
    def _registry_needs_url(self) -> "StorageConfig":
        if self.backend == "registry" and not self.url:
            raise ValueError("storage.url is required when storage.backend = 'registry'")
        return self


class MetadataConfig(_Section):
    path: Path = Path("./data/metadata.db")


class AuthConfig(_Section):
    enabled: bool = False


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    """The whole configuration; unknown keys are errors so typos never pass silently."""

    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    metadata: MetadataConfig = MetadataConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()
    # License kinds, [licenses.<kind>]; "full" (no encryption) always exists.
    licenses: Licenses = Field(default_factory=default_licenses)
    full_builds: FullBuildConfig = FullBuildConfig()
    # Assembly of business packages: [assembly], [chains], [plugins.<kind>], [webhooks].
    assembly: AssemblyConfig = AssemblyConfig()
    chains: ChainsConfig = ChainsConfig()
    plugins: PluginsConfig = PluginsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()


def _parse_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty key component")
        node = data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {key} is not a table")
            node = child
        node[path[-1]] = _parse_scalar(raw)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read ``path`` (optional), apply environment then keyword overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    _apply_env(data, os.environ if environ is None else environ)
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1)
        data.setdefault(section, {})[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid configuration: {problems}") from None
