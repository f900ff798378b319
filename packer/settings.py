"""Configuration sections owned by the packer: assembly, chains, plugin kinds, webhooks.

``proxy.config.Config`` includes these as fields; this module imports nothing from
``proxy`` so the config stays importable on its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator

from .outbound import DEFAULT_DENY_HOSTS, DEFAULT_DENY_NETWORKS, parse_rules

__all__ = [
    "AssemblyConfig",
    "ChainsConfig",
    "DEFAULT_CHAINS_FILE",
    "FunctionPluginConfig",
    "JobPluginConfig",
    "OutboundConfig",
    "PluginsConfig",
    "SandboxConfig",
    "ServicePluginConfig",
    "ServiceSecret",
    "WebhooksConfig",
]

MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _prefix(value: str) -> str:
    value = value.strip("/")
    if not value:
        raise ValueError("must name a namespace")
    return value + "/"


class AssemblyConfig(_Section):
    """``[assembly]``: the job queue and the package model's limits."""

    workers: int = Field(2, ge=1, le=64)
    # Largest thin package (descriptor + files) read, produced by a plugin, or written.
    package_cap: int = Field(64 * MiB, gt=0, le=1024 * MiB)
    # A whole job (all plugins) is failed after this many seconds.
    job_timeout: float = Field(900.0, gt=0)
    # Workers are woken on every enqueue; this is only the fallback poll.
    poll_interval: float = Field(5.0, gt=0)
    # Log bytes kept per job.
    log_limit: int = Field(64 * 1024, ge=1024, le=16 * MiB)
    generic_prefix: str = "generic/"
    business_prefix: str = "business/"
    plugins_prefix: str = "plugins/"
    # Where job and function plugins get their fresh work directories
    # (default: a "work" directory beside the metadata database).
    workdir: Path | None = None

    @field_validator("generic_prefix", "business_prefix", "plugins_prefix")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _prefix(value)


DEFAULT_CHAINS_FILE = Path("config/chains.toml")


class ChainsConfig(_Section):
    """``[chains]``: the human-edited chains file (reloaded on SIGHUP and by API)."""

    # Unset: config/chains.toml (from the working directory, like config/algomint.toml),
    # read when it exists. A file named here must exist; "" means no chains file.
    file: Path | None = DEFAULT_CHAINS_FILE

    @field_validator("file", mode="before")
    @classmethod
    def _none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def optional(self) -> bool:
        """The default file, which may be absent (then there are no file chains)."""
        return "file" not in self.model_fields_set


def _allow_rules(value: list[str]) -> list[str]:
    parse_rules(value)  # ValueError names the entry and what is wrong with it
    return value


_PLUGIN_PATTERN = re.compile(r"^[a-z0-9*?][a-z0-9._/*?-]{0,254}$")


class ServiceSecret(_Section):
    """``[plugins.service.secrets.<name>]``: a header value and who may send it where."""

    value: SecretStr
    # Plugin repositories that may name this secret, as globs ("plugins/door-*").
    plugins: list[str] = Field(min_length=1)
    # URL prefixes (allow-rule syntax) the value may be sent to; each must also be allowed.
    urls: list[str] = Field(min_length=1)

    @field_validator("plugins")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not _PLUGIN_PATTERN.match(pattern):
                raise ValueError(f"{pattern!r} is not a plugin repository glob (e.g. \"plugins/door-*\")")
        return value

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return _allow_rules(value)


class ServicePluginConfig(_Section):
    """``[plugins.service]``: where service plugins may call, and with which secrets."""

    # URL prefixes service plugins may POST to ("http://127.0.0.1:8080/", "https://*.corp:*/api/"); empty: none.
    allow: list[str] = []
    # Secret name -> value and scope; a plugin names a secret, never carries one.
    secrets: dict[str, ServiceSecret] = {}
    timeout: float = Field(30.0, gt=0)
    max_timeout: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff: float = Field(0.2, ge=0)
    # Response cache, keyed by (plugin digest, input package digest).
    cache_bytes: int = Field(64 * MiB, ge=0)

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _allow_rules(value)


class JobPluginConfig(_Section):
    """``[plugins.job]``: the runner and its limits."""

    runner: Literal["local"] = "local"
    timeout: float = Field(600.0, gt=0)
    max_timeout: float = Field(3600.0, gt=0)
    # Combined stdout+stderr kept and allowed; a job printing more is failed.
    output_limit: int = Field(1 * MiB, ge=1024)


class FunctionPluginConfig(_Section):
    """``[plugins.function]``: the isolated interpreter and its limits."""

    python: str = sys.executable
    timeout: float = Field(30.0, gt=0)
    max_timeout: float = Field(300.0, gt=0)
    cpu_seconds: int = Field(30, ge=1)
    memory_mb: int = Field(1024, ge=64)
    output_limit: int = Field(1 * MiB, ge=1024)


class SandboxConfig(_Section):
    """``[plugins.sandbox]``: the bubblewrap sandbox every function and job plugin runs in."""

    # The bubblewrap program (a path, or a name looked up on PATH); probed once at start-up.
    bwrap: str = "bwrap"
    # If the sandbox cannot be set up: false refuses function and job plugins; true runs them
    # unsandboxed as the service user (logged and reported by /readyz). Never with untrusted authors.
    unsafe: bool = False
    # The unprivileged uid/gid plugin processes run as.
    uid: int = Field(65534, ge=1)
    gid: int = Field(65534, ge=1)
    # Host paths shown read-only inside the sandbox (besides the service's Python); missing ones
    # are skipped. Never list a directory holding the service's data, keys or config.
    ro_paths: list[Path] = [Path("/usr"), Path("/etc/alternatives"), Path("/etc/ld.so.cache")]
    # Plugin repositories (globs, e.g. "plugins/geo-*") that may have network access when they
    # declare ``network = true``; every other plugin runs without any network.
    network: list[str] = []
    # Most processes the sandbox uid may run at once (RLIMIT_NPROC, shared by concurrent jobs).
    processes: int = Field(256, ge=8)

    @field_validator("ro_paths")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        if any(not p.is_absolute() for p in value):
            raise ValueError("ro_paths must be absolute")
        return value


class PluginsConfig(_Section):
    """``[plugins.*]``: one table per plugin kind that needs settings."""

    sandbox: SandboxConfig = SandboxConfig()

    service: ServicePluginConfig = ServicePluginConfig()
    job: JobPluginConfig = JobPluginConfig()
    function: FunctionPluginConfig = FunctionPluginConfig()


class WebhooksConfig(_Section):
    """``[webhooks]``: delivery of subscribed events from the outbox."""

    # URL prefixes subscriptions may deliver to (allow-rule syntax); empty: none.
    allow: list[str] = []
    timeout: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1, le=100)
    # Attempt n waits a random time up to min(max_backoff, backoff * 2**(n-1)).
    backoff: float = Field(1.0, ge=0)
    max_backoff: float = Field(600.0, ge=0)
    poll_interval: float = Field(1.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64)

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        return _allow_rules(value)


class OutboundConfig(_Section):
    """``[outbound]``: what no service plugin or webhook may reach, whatever an allow-list says."""

    # Checked on literal addresses and on every address a host resolves to (at creation and per connection).
    deny_networks: list[IPvAnyNetwork] = [IPvAnyNetwork(n) for n in DEFAULT_DENY_NETWORKS]  # type: ignore[misc]
    # Host names refused before resolution (cloud metadata services).
    deny_hosts: list[str] = list(DEFAULT_DENY_HOSTS)
