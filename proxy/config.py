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
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .auth.patterns import compile_pattern, validate_pattern

from packer.fullbuild.settings import FullBuildConfig
from packer.settings import AssemblyConfig, ChainsConfig, OutboundConfig, PluginsConfig, WebhooksConfig
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
    # Memory for manifests served by digest from memory (immutable, so always current);
    # 0 turns the cache off.
    manifest_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # How long SIGTERM waits for in-flight requests before closing them.
    shutdown_grace: float = Field(30.0, ge=0)
    # Slow clients: the longest wait for a request's headers (from the connection's
    # first byte, or its previous request), and for the next byte of a request body or
    # for a client to take the next bytes of a response.
    header_timeout: float = Field(30.0, gt=0)
    body_timeout: float = Field(300.0, gt=0)
    # TLS: PEM certificate (chain) and private key; both or neither. Re-read on SIGHUP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # This replica's name in logs, metrics (algomint_replica_info) and job leases; unset:
    # <hostname>-<pid>. Unique per running replica (two live replicas must not share one).
    replica_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key go together")
        if self.tls_cert is not None and self.public_url and not self.public_url.startswith("https://"):
            raise ValueError("server.public_url must be https:// when algomint serves TLS itself")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

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
    # Hash a blob when it is uploaded or first read whole ("once": later reads check the
    # length and rely on content addressing), or on every whole read ("always"). Unset:
    # "once" for the embedded storage (algomint wrote every byte of it), "always" for a
    # registry backend (a store algomint does not control may change under a digest).
    verify_reads: Literal["once", "always"] | None = None
    # registry: the longest wait to connect, for an answer's first byte, and between
    # two reads of a body; a backend that exceeds one is reported UNAVAILABLE.
    connect_timeout: float = Field(10.0, gt=0)
    first_byte_timeout: float = Field(60.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    # Upload sessions idle longer than this are removed (filesystem backend).
    upload_expiry: float = Field(24 * 3600.0, gt=0)
    # Most bytes the open upload sessions of one repository may hold (filesystem
    # backend); None: no limit.
    upload_quota: int | None = Field(None, gt=0)
    # registry: seconds between walks of the backend's catalog that reconcile algomint's
    # own repository index (pushed through algomint: listed at once; pushed straight to
    # the backend: listed after the next walk). Walked at start too; 0 = at start only.
    catalog_reconcile_interval: float = Field(3600.0, ge=0)

    @model_validator(mode="after")
    def _registry_needs_url(self) -> "StorageConfig":
        if self.backend == "registry" and not self.url:
            raise ValueError("storage.url is required when storage.backend = 'registry'")
        if self.backend == "registry" and self.upload_quota is not None:
            # Silently unenforced would be worse than refused: the backing registry holds
            # the sessions and enforces its own limits.
            raise ValueError("storage.upload_quota applies to the filesystem backend only")
        return self

    @property
    def reads_verified(self) -> Literal["once", "always"]:
        """``verify_reads`` as it applies to the configured backend."""
        if self.verify_reads is not None:
            return self.verify_reads
        return "always" if self.backend == "registry" else "once"


class MetadataConfig(_Section):
    path: Path = Path("./data/metadata.db")
    # PostgreSQL shared by replicas (postgresql://user@host:port/db, or ?host=/socket/dir);
    # unset: the SQLite file at `path`. The password comes from `password` (env
    # ALGOMINT_METADATA__PASSWORD), else `password_file`, else PGPASSWORD.
    url: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    pool_size: int = Field(10, ge=1, le=200)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError("must be a postgresql:// URL")
            if parts.password is not None:
                raise ValueError("must not hold the password; set metadata.password_file or ALGOMINT_METADATA__PASSWORD")
        return value

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"metadata.password_file {self.password_file}: {exc.strerror}") from None
        return None  # asyncpg falls back to PGPASSWORD and ~/.pgpass


# Repository-name patterns (`*` within one segment, `**` any depth), checked on load.
PatternList = Annotated[list[str], AfterValidator(lambda value: [validate_pattern(p) for p in value])]


class AuthConfig(_Section):
    enabled: bool = False
    # The `service` named in Bearer challenges and the `aud` of registry tokens.
    service: str = Field("algomint", min_length=1, max_length=128)
    # Lifetime of registry bearer tokens (seconds): short, so a disabled user stops quickly.
    token_ttl: int = Field(300, ge=10, le=3600)
    # Lifetime of OAuth2 refresh tokens (seconds); every refresh re-checks the user.
    refresh_token_ttl: int = Field(7 * 86400, ge=60, le=90 * 86400)
    # Directory of ES256 keys signing registry tokens (0700; keys 0600); the first key is
    # created on first start (default: auth-keys beside the metadata DB). Rotate with
    # `algomint admin signing-keys rotate`; replicas share it.
    signing_keys_dir: Path | None = None
    # File holding the first admin's password (else env ALGOMINT_ADMIN_PASSWORD).
    admin_password_file: Path | None = None
    # Repository patterns anyone may pull without credentials (`*` one segment, `**` any depth).
    anonymous_pull: PatternList = []
    # Namespaces only algomint itself writes: no user, admin included, may push there.
    system_namespaces: PatternList = ["business/**"]
    # API tokens: default and longest lifetime (seconds).
    api_token_ttl: int = Field(90 * 86400, gt=0)
    api_token_max_ttl: int = Field(366 * 86400, gt=0)
    password_min_length: int = Field(12, ge=8, le=128)
    # Failed password logins slow down per (user, client address): free_failures pass
    # unhindered, then each attempt waits failure_delay seconds, doubling per failure up to
    # max_failure_delay; failures are forgotten failure_window seconds after the last.
    free_failures: int = Field(5, ge=1)
    failure_delay: float = Field(1.0, gt=0, le=60)
    max_failure_delay: float = Field(30.0, gt=0, le=600)
    failure_window: float = Field(300.0, gt=0)
    # How long users, grants and API tokens read from the store are reused (seconds);
    # changes take effect at once regardless: on this replica directly, on the others
    # within [cluster] poll_interval (they watch the shared auth version).
    cache_ttl: float = Field(5.0, ge=0, le=60)
    # Password (scrypt) checks running at once; each holds 16 MiB while it runs. More
    # wait their turn; concurrent identical credentials share one check.
    password_checks: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _token_ttls(self) -> "AuthConfig":
        if self.api_token_ttl > self.api_token_max_ttl:
            raise ValueError("auth.api_token_ttl must not exceed auth.api_token_max_ttl")
        return self


class AuditConfig(_Section):
    enabled: bool = True
    # Records are written in batches: every flush_interval seconds or batch_size records;
    # at once (with whatever else is pending) when a response waits for its record.
    flush_interval: float = Field(0.05, gt=0, le=5)
    batch_size: int = Field(256, ge=1, le=10_000)
    # A mutation is answered only once its record is on disk; if the store cannot write it
    # within this many seconds the answer is 503 instead of an acknowledgement.
    ack_timeout: float = Field(10, gt=0, le=300)
    # "full": each write is fsynced (a record survives a power cut, as stored manifests do);
    # "normal": it survives a killed process but a power cut may lose the last writes.
    sync: Literal["full", "normal"] = "full"
    # Pulls of manifests in these namespaces (and every archive download) are recorded.
    pull_patterns: PatternList = ["business/**"]


class GcConfig(_Section):
    """Garbage collection of the embedded storage (``proxy/backend/gc.py``)."""

    # Seconds between scheduled runs; 0 runs only on demand (POST /api/v1/gc).
    interval: float = Field(0.0, ge=0)
    # Links and content younger than this are never collected: a blob uploaded for a
    # manifest not pushed yet, a manifest pushed by digest before its index.
    grace_period: float = Field(3600.0, ge=0)
    # Also reclaim manifests that no tag, index, frozen build or live subject reaches
    # (distribution's --delete-untagged); off keeps every manifest still linked.
    delete_untagged: bool = False


class UiConfig(_Section):
    """The web console at ``/ui/`` (served by ``algomint serve``)."""

    enabled: bool = True
    # A console session ends after this many seconds without a request.
    session_idle: float = Field(1800.0, gt=0, le=7 * 86400)


def _seconds(value: Any) -> Any:
    """``30``, ``"30s"``, ``"500ms"``, ``"2m"``: a duration in seconds."""
    if isinstance(value, str):
        text = value.strip().lower()
        for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
                return float(text[: -len(suffix)]) * scale
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class ClusterConfig(_Section):
    """Several replicas on one metadata store (docs/deploy.md)."""

    # A replica holds each assembly, full build and webhook delivery it runs for this
    # long, renewed every `heartbeat`; a replica that dies loses its jobs to the others
    # once it has missed renewals for `lease`.
    lease: Seconds = Field(30.0, ge=0.5, le=3600)
    heartbeat: Seconds = Field(10.0, gt=0, le=600)
    # How often each replica reads the shared version counters: revoked tokens, disabled
    # users, changed grants and passwords, and chain changes reach it within this.
    poll_interval: Seconds = Field(0.25, gt=0, le=1)

    @model_validator(mode="after")
    def _beats_within_lease(self) -> "ClusterConfig":
        if self.heartbeat * 2 > self.lease:
            raise ValueError("cluster.heartbeat must be at most half of cluster.lease (a late beat must not lose it)")
        return self


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    """The whole configuration; unknown keys are errors so typos never pass silently."""

    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    metadata: MetadataConfig = MetadataConfig()
    auth: AuthConfig = AuthConfig()
    audit: AuditConfig = AuditConfig()
    gc: GcConfig = GcConfig()
    cluster: ClusterConfig = ClusterConfig()
    log: LogConfig = LogConfig()
    ui: UiConfig = UiConfig()
    # License kinds, [licenses.<kind>]; "full" (no encryption) always exists.
    licenses: Licenses = Field(default_factory=default_licenses)
    full_builds: FullBuildConfig = FullBuildConfig()
    # Assembly of business packages: [assembly], [chains], [plugins.<kind>], [webhooks].
    assembly: AssemblyConfig = AssemblyConfig()
    chains: ChainsConfig = ChainsConfig()
    plugins: PluginsConfig = PluginsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    # What service plugins and webhooks may never reach: [outbound].
    outbound: OutboundConfig = OutboundConfig()

    @model_validator(mode="after")
    def _business_is_a_system_namespace(self) -> "Config":
        # Business packages must stay algomint's alone: a moved prefix needs the rule moved too.
        probe = f"{self.assembly.business_prefix}system/algorithm"
        if not any(compile_pattern(p).fullmatch(probe) for p in self.auth.system_namespaces):
            raise ValueError(
                f"auth.system_namespaces must cover assembly.business_prefix: add "
                f"\"{self.assembly.business_prefix}**\""
            )
        return self


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
