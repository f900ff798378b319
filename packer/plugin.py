"""The plugin protocol: resolve a plugin reference, load its artifact, dispatch to its kind.

A plugin is an OCI artifact in ``plugins/<name>:<version>``: artifactType
``application/vnd.algomint.plugin.v1+json`` (or none, as ``oras`` pushes), config
``application/vnd.algomint.plugin.config.v1+json`` = ``{name, version, kind, …options}``,
and optional files (layers with a title). The kind names a folder under ``plugins/``
whose ``setup(artifact, env)`` validates the options and returns an object with

    async def apply(package: Package, context: PluginContext) -> Package

``apply`` returns the transformed package (it may change the one it got) or raises
``PluginError`` with a reason a person can act on. Plugins never tag anything: the chain
runner writes the result only after every plugin succeeded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.reference import parse_reference
from proxy.service.registry import RegistryService

from .cache import LruCache
from .outbound import DEFAULT_DENY_HOSTS, DEFAULT_DENY_NETWORKS, Denylist
from .package import Package, PackageError, PackageFile, WriteResult, read_package, write_package
from .settings import PluginsConfig

if TYPE_CHECKING:
    from plugins.sandbox import Sandbox

__all__ = [
    "KINDS",
    "Plugin",
    "PluginArtifact",
    "PluginConfig",
    "PluginContext",
    "PluginEnv",
    "PluginError",
    "PluginStore",
    "ResolvedPlugin",
    "options_model",
]

# Kind -> the module implementing it; the one place kinds are listed.
KINDS: dict[str, str] = {
    "file": "plugins.file",
    "service": "plugins.service",
    "job": "plugins.job",
    "function": "plugins.function",
}
_ARTIFACT_CACHE_BYTES = 16 * 1024 * 1024


class PluginError(Exception):
    """A plugin failed, or can't be used; ``reason`` says why in one line."""

    def __init__(self, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class PluginConfig(BaseModel):
    """The plugin's config blob; kind options are the extra fields."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=128)
    kind: Literal["file", "service", "job", "function"]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def options_model(model: type[BaseModel], artifact: "PluginArtifact") -> Any:
    """Validate ``artifact``'s kind options with ``model``; ``PluginError`` names the field."""
    try:
        return model.model_validate(artifact.config.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(options)"
        raise PluginError(f"{artifact.ref}: invalid {artifact.config.kind} options: {where}: {err['msg']}") from None


# The digest of a plugin checked before it is written (it has none yet).
_DRAFT = "sha256:" + "0" * 64


@dataclass(frozen=True)
class PluginArtifact:
    repository: str
    digest: str
    config: PluginConfig
    files: dict[str, PackageFile]

    @property
    def ref(self) -> str:
        # A draft is named by the version being pushed, never by a made-up digest.
        if self.digest == _DRAFT:
            return f"{self.repository}:{self.config.version}"
        return f"{self.repository}@{self.digest}"


@dataclass
class PluginContext:
    """What a plugin knows about the job besides the package."""

    chain: str
    params: dict[str, Any]
    system: str
    algorithm: str
    version: str
    source_repository: str
    source_digest: str
    plugin: str = ""  # repository@digest of the plugin being applied
    cap: int = 64 * 1024 * 1024
    log: Callable[[str], None] = field(default=lambda line: None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The deterministic part handed to out-of-process plugins (and cache keys)."""
        return {
            "chain": self.chain,
            "params": self.params,
            "system": self.system,
            "algorithm": self.algorithm,
            "version": self.version,
            "source": {"repository": self.source_repository, "digest": self.source_digest},
            "plugin": self.plugin,
        }


@dataclass
class PluginEnv:
    """Long-lived things plugin kinds may use: settings, an HTTP session, a work area, a cache,
    and the sandbox (probed at start-up) that function and job plugins run in."""

    settings: PluginsConfig
    workdir: Path
    sandbox: "Sandbox"
    http: aiohttp.ClientSession | None = None
    cache: LruCache[Package] = field(default_factory=lambda: LruCache(0))
    # Addresses no outbound call may reach ([outbound]).
    deny: Denylist = field(default_factory=lambda: Denylist(DEFAULT_DENY_NETWORKS, DEFAULT_DENY_HOSTS))


class Plugin(Protocol):
    async def apply(self, package: Package, context: PluginContext) -> Package: ...


async def _verify(plugin: Any) -> None:
    """Checks a kind can only make asynchronously (a service URL's host as it resolves now)."""
    verify = getattr(plugin, "verify", None)
    if verify is not None:
        await verify()


@dataclass(frozen=True)
class ResolvedPlugin:
    ref: str  # as written in the chain
    repository: str
    digest: str


class PluginStore:
    """Plugin artifacts in the registry: resolve references, load and set up plugins."""

    def __init__(self, service: RegistryService, prefix: str = "plugins/", cap: int = 64 * 1024 * 1024) -> None:
        self.service = service
        self.prefix = prefix
        self.cap = cap
        self._artifacts: LruCache[PluginArtifact] = LruCache(_ARTIFACT_CACHE_BYTES)

    def parse(self, ref: str) -> tuple[str, str]:
        """``plugins/x:1.0`` or ``plugins/x@sha256:…`` -> (repository, tag or digest)."""
        try:
            parsed = parse_reference(ref, default_tag=None)
        except RegistryError as exc:
            raise PluginError(f"invalid plugin reference {ref!r}: {exc.message}") from None
        if not parsed.name.startswith(self.prefix):
            raise PluginError(f"plugin reference {ref!r} is not in the {self.prefix.rstrip('/')} namespace")
        if parsed.tag is None and parsed.digest is None:
            raise PluginError(f"plugin reference {ref!r} needs a tag or a digest")
        return parsed.name, parsed.digest or parsed.tag or ""

    async def resolve(self, ref: str) -> ResolvedPlugin:
        """Pin a reference to the digest it names now."""
        repository, reference = self.parse(ref)
        try:
            info = await self.service.stat_manifest(repository, reference)
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                raise PluginError(f"plugin {ref} not found") from None
            raise
        return ResolvedPlugin(ref, repository, info.digest)

    async def load(self, repository: str, digest: str) -> PluginArtifact:
        cached = self._artifacts.get(digest)
        if cached is not None and cached.repository == repository:
            return cached
        try:
            loaded = await read_package(self.service, repository, digest, self.cap)
        except PackageError as exc:
            raise PluginError(f"plugin {repository}@{digest}: {exc.reason}") from None
        package = loaded.package
        artifact_type = loaded.manifest.document.get("artifactType")
        if package.config_media_type != mt.PLUGIN_CONFIG or artifact_type not in (None, mt.PLUGIN):
            raise PluginError(
                f"{repository}@{digest} is not a plugin (config {package.config_media_type}, "
                f"artifactType {artifact_type}); expected config {mt.PLUGIN_CONFIG}"
            )
        try:
            config = PluginConfig.model_validate(package.descriptor)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(config)"
            raise PluginError(f"plugin {repository}@{digest}: config {where}: {err['msg']}") from None
        artifact = PluginArtifact(repository, digest, config, package.files)
        self._artifacts.put(digest, artifact, package.size)
        return artifact

    async def setup(self, resolved: ResolvedPlugin, env: PluginEnv) -> tuple[PluginArtifact, Plugin]:
        """Load a resolved plugin and build it for its kind (validating its options)."""
        artifact = await self.load(resolved.repository, resolved.digest)
        module = importlib.import_module(KINDS[artifact.config.kind])
        return artifact, module.setup(artifact, env)

    async def check(self, ref: str, env: PluginEnv) -> ResolvedPlugin:
        """Resolve, load and set up ``ref`` without running it: is it usable?"""
        resolved = await self.resolve(ref)
        _, plugin = await self.setup(resolved, env)
        await _verify(plugin)
        return resolved

    # -- publishing and listing -----------------------------------------------------
    async def push(self, name: str, config: PluginConfig, files: dict[str, PackageFile], env: PluginEnv) -> WriteResult:
        """Write ``plugins/<name>:<version>`` after checking that its kind accepts the options."""
        repository = self.prefix + name
        package = Package(config.model_dump(mode="json"), dict(files), {}, mt.PLUGIN, mt.PLUGIN_CONFIG)
        draft = PluginArtifact(repository, _DRAFT, config, package.files)
        await _verify(importlib.import_module(KINDS[config.kind]).setup(draft, env))
        try:
            return await write_package(self.service, repository, config.version, package, cap=self.cap, actor=None)
        except PackageError as exc:
            raise PluginError(exc.reason, exc.detail) from None

    async def repositories(self, n: int | None = None, after: str | None = None) -> tuple[list[str], bool]:
        """Plugin repositories after ``after``, at most ``n``, and whether more follow: a
        range of the backend's sorted listing, not a filter over every repository."""
        return await self.service.repositories_page(n, after, prefix=self.prefix)

    async def versions(self, repository: str) -> list[dict[str, Any]]:
        """Every tag of a plugin repository with its digest, config and files."""
        out = []
        for tag in await self.service.backend.list_tags(repository):
            entry: dict[str, Any] = {"tag": tag}
            try:
                resolved = await self.resolve(f"{repository}:{tag}")
                artifact = await self.load(repository, resolved.digest)
                entry.update(
                    digest=resolved.digest,
                    config=artifact.config.model_dump(mode="json"),
                    files=[{"path": f.path, "size": len(f.data), "digest": f.digest, "mediaType": f.media_type}
                           for f in sorted(artifact.files.values(), key=lambda f: f.path)],
                )
            except PluginError as exc:
                entry["error"] = exc.reason
            out.append(entry)
        return out
