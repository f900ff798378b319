"""Configuration sections owned by the packer: assembly, chains, plugin kinds, webhooks.

``proxy.config.Config`` includes these as fields; this module imports nothing from
``proxy`` so the config stays importable on its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "AssemblyConfig",
    "ChainsConfig",
    "FunctionPluginConfig",
    "JobPluginConfig",
    "PluginsConfig",
    "SandboxConfig",
    "ServicePluginConfig",
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


class ChainsConfig(_Section):
    """``[chains]``: the human-edited chains file (reloaded on SIGHUP and by API)."""

    file: Path | None = None


class ServicePluginConfig(_Section):
    """``[plugins.service]``: where service plugins may call, and with which secrets."""

    # URL prefixes service plugins may POST to, e.g. "http://127.0.0.1:8080/"; empty: none.
    allow: list[str] = []
    # Secret name -> header value; a plugin names a secret, never carries one.
    secrets: dict[str, SecretStr] = {}
    timeout: float = Field(30.0, gt=0)
    max_timeout: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff: float = Field(0.2, ge=0)
    # Response cache, keyed by (plugin digest, input package digest).
    cache_bytes: int = Field(64 * MiB, ge=0)


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

    timeout: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1, le=100)
    # Attempt n waits a random time up to min(max_backoff, backoff * 2**(n-1)).
    backoff: float = Field(1.0, ge=0)
    max_backoff: float = Field(600.0, ge=0)
    poll_interval: float = Field(1.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64)
