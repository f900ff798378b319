"""What a full build may read, write and overwrite: the rights that follow derivation.

A business package records what it was made from (its generic source repository and
digest, its plugins). ``BuildRights`` turns that into the build's inputs, with the model
globs taken from the generic package as its owner pushed it plus the operator's floor
(``[full_builds.models]``); checks that a principal may pull every source and write
every target, through the same policy as ``/v2``; decides whether a licensed tag may be
created, must be reused or is ``DENIED``; claims the tags a build creates; and lists the
digests a frozen manifest references, so freezing covers them too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.backend import ManifestData
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import ParsedManifest, parse_manifest
from proxy.service.policy import Action, PolicyChain, Principal, Request as PolicyRequest
from proxy.service.registry import BlobContentError, RegistryService

from ..chains import glob_match
from ..licensing.licenser import Licenser
from ..package import ANNOTATION_PLUGINS as PKG_PLUGINS
from ..package import ANNOTATION_SOURCE as PKG_SOURCE
from ..package import ANNOTATION_SOURCE_REPOSITORY as PKG_SOURCE_REPOSITORY
from .names import (LABEL_BUILD, BuildError, BuildInputError, Namespaces, PackageName, RuntimeImageRef, load_descriptor,
                    package_models, runtime_images)
from .settings import FullBuildConfig
from .store import BuildStore

__all__ = ["BuildInputs", "BuildRights", "IMAGE_CONFIGS", "MAX_SMALL_BLOB", "refused"]

MAX_SMALL_BLOB = 4 * 1024 * 1024
IMAGE_CONFIGS = (mt.OCI_CONFIG, mt.DOCKER_CONFIG)


@dataclass
class BuildInputs:
    """What a business package was derived from, as its manifest records it."""

    package: ParsedManifest
    descriptor: dict[str, Any]
    source_repo: str  # the generic repository, whole path
    source_digest: str
    plugins: list[str]  # plugin repositories
    refs: list[RuntimeImageRef]  # models: the generic descriptor's plus the configured minimum
    # The package's own model files (embedded algorithms): the generic descriptor's
    # package-level ``models`` plus the configured minimum for the generic repository.
    models: tuple[str, ...] = ()
    models_declared: bool = False  # the generic descriptor names package models itself


def refused(exc: RegistryError) -> BuildInputError:
    """A policy refusal as the request's answer: 401 to ask for credentials, else 403."""
    status = 401 if exc.error is Errors.UNAUTHORIZED else 403
    return BuildInputError(status, f"{exc.code}: {exc.message}", exc.detail)


class BuildRights:
    def __init__(self, service: RegistryService, store: BuildStore, policy: PolicyChain,
                 licensers: dict[str, Licenser], settings: FullBuildConfig, namespaces: Namespaces) -> None:
        self.service = service
        self.store = store
        self.policy = policy
        self.licensers = licensers
        self.settings = settings
        self.ns = namespaces

    async def inputs(self, name: PackageName, data: ManifestData) -> BuildInputs:
        """The package, its recorded generic source and plugins, and the runtime images with
        their model globs taken from the generic descriptor, not the business copy."""
        parsed, descriptor = await self.package(name.repository, data)
        notes = parsed.annotations or {}
        source_repo, source_digest = notes.get(PKG_SOURCE_REPOSITORY), notes.get(PKG_SOURCE)
        if not source_repo or not source_digest or not source_repo.startswith(self.ns.generic):
            raise BuildInputError(422, f"{name} records no generic source ({PKG_SOURCE_REPOSITORY}, {PKG_SOURCE}): "
                                  "only packages algomint assembled can be built", {"field": "package"})
        try:
            source = await self.service.get_manifest(source_repo, source_digest)
            current = await self.service.stat_manifest(source_repo, name.version)
        except RegistryError as exc:
            raise BuildInputError(422, f"the package's source {source_repo}:{name.version} ({source_digest}) "
                                  f"is not available: {exc.message}", {"field": "package"}) from None
        if current.digest != source_digest:
            raise BuildInputError(422, f"{source_repo}:{name.version} changed since {name} was assembled from "
                                  f"{source_digest}; build once it is assembled again", {"field": "package"})
        source_parsed = parse_manifest(source.data, source.media_type)
        if source_parsed.is_index or source_parsed.config is None:
            raise BuildInputError(422, f"the package's source {source_repo}@{source_digest} is not a generic package")
        generic = load_descriptor(await self.small_blob(source_repo, source_parsed.config.digest))
        owned = runtime_images(generic, self.ns)
        if [(r.ref, r.models, r.platforms) for r in owned] != \
                [(r.ref, r.models, r.platforms) for r in runtime_images(descriptor, self.ns)]:
            raise BuildInputError(422, f"{name}'s runtime.images (refs, models or platforms) differ from its generic source "
                                  f"{source_repo}@{source_digest}; only the generic package decides them",
                                  {"field": "runtime.images"})
        declared = package_models(generic)
        if declared != package_models(descriptor):
            raise BuildInputError(422, f"{name}'s package models differ from its generic source "
                                  f"{source_repo}@{source_digest}; only the generic package decides them",
                                  {"field": "models"})
        models = tuple(dict.fromkeys([*declared, *self.floor(source_repo)]))
        if not owned and not models:
            raise BuildInputError(422, "the package's descriptor has no runtime images (runtime.images is empty) "
                                  "and names no model files in the package (models is empty)",
                                  {"field": "runtime.images"})
        refs = [RuntimeImageRef(r.index, r.ref, r.reference, self.models(r), r.platforms) for r in owned]
        plugins = [ref.split("@", 1)[0] for ref in (notes.get(PKG_PLUGINS) or "").split(",") if ref]
        return BuildInputs(parsed, descriptor, source_repo, source_digest, plugins, refs, models, bool(declared))

    async def claim(self, repo: str, tag: str, build_id: str) -> None:
        """Make ``build_id`` the only build creating the licensed tag ``repo:tag``."""
        holder = await self.store.claim_tag(repo, tag, build_id)
        if holder is not None:
            raise RegistryError(Errors.DENIED, {"repository": repo, "tag": tag, "full_build": holder},
                                message=f"{repo}:{tag} is being created by full build {holder}; "
                                        "a build never moves a licensed tag (retry once it has finished)")

    async def made_by(self, repo: str, tag: str) -> str | None:
        """The full build whose label the licensed image at ``repo:tag`` carries, if any."""
        try:
            data = await self.service.get_manifest(repo, tag)
            parsed = parse_manifest(data.data, data.media_type)
            named = (parsed.annotations or {}).get(LABEL_BUILD) if parsed.is_index else None
            if named:
                return named  # a licensed OCI index names its build (its platforms may be reused ones)
            if parsed.is_index and parsed.manifests:
                data = await self.service.get_manifest(repo, parsed.manifests[0].digest)
                parsed = parse_manifest(data.data, data.media_type)
            if parsed.is_index or parsed.config is None or parsed.config.media_type not in IMAGE_CONFIGS:
                return None
            config = json.loads(await self.small_blob(repo, parsed.config.digest))
        except (RegistryError, BuildError, ValueError):
            return None
        labels = (config.get("config") or {}).get("Labels") if isinstance(config, dict) else None
        value = labels.get(LABEL_BUILD) if isinstance(labels, dict) else None
        return value if isinstance(value, str) else None

    def models(self, ref: RuntimeImageRef) -> tuple[str, ...]:
        """The descriptor's model globs plus the configured minimum for this image."""
        return tuple(dict.fromkeys([*ref.models, *self.floor(ref.repository)]))

    def floor(self, repository: str) -> list[str]:
        """``[full_builds.models]`` globs whose repository glob matches ``repository`` (an
        image repository, or a generic one for the package's own files)."""
        return [g for pattern, globs in self.settings.models.items() if glob_match(pattern, repository) for g in globs]

    async def authorize(self, principal: Principal, name: PackageName, inputs: BuildInputs, license: str,
                         reused: set[str]) -> None:
        """The requester may pull every source and write every target (``RegistryError`` if not)."""
        reads = [(name.repository, name.version), (inputs.source_repo, inputs.source_digest)]
        reads += [(repo, None) for repo in inputs.plugins]
        reads += [(ref.repository, ref.reference.reference) for ref in inputs.refs]
        for repo, reference in reads:
            await self.policy.check(PolicyRequest(principal, Action.PULL, repo, reference))
        await self.policy.check(PolicyRequest(principal, Action.MANAGE, name.repository))
        for ref in inputs.refs:
            if ref.ref not in reused:
                await self.policy.check(PolicyRequest(principal, Action.PUSH, ref.repository,
                                                      ref.licensed_tag(license)))

    async def existing(self, ref: RuntimeImageRef, license: str, root_digest: str) -> dict[str, Any] | None:
        """None when the licensed tag is free; the earlier build's image entry when it holds
        exactly this image, license, key and models; ``DENIED`` otherwise."""
        repo, tag = ref.repository, ref.licensed_tag(license)
        try:
            current = await self.service.stat_manifest(repo, tag)
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        frozen = await self.store.frozen_tag(repo, tag)
        if frozen is None:
            maker = await self.made_by(repo, tag)
            previous = await self.store.get(maker, layers=False) if maker else None
            if previous is not None and previous.state != "succeeded":
                return None  # written by a build that never finished (a crash, a refusal): not in use
            if await self.store.is_licensed(repo, current.digest):
                return None  # a licensed manifest reused per platform, tagged by a build that never finished
            raise RegistryError(Errors.DENIED, {"repository": repo, "tag": tag},
                                message=f"{repo}:{tag} already exists and was not made by a full build; "
                                        "a build never moves a licensed tag")
        record = await self.store.get(frozen.build_id, layers=False)
        entry = next((i for i in ((record.result or {}).get("images") or []) if i.get("licensed") == f"{repo}:{tag}"),
                     None) if record else None
        wanted = {"source_digest": root_digest, "license_key": self.licensers[license].describe(),
                  "models": list(ref.models)}
        if record is not None and entry is not None and record.license == license \
                and all(entry.get(k) == v for k, v in wanted.items()):
            return {**entry, "digest": frozen.digest}
        raise RegistryError(
            Errors.DENIED, {"repository": repo, "tag": tag, "full_build": frozen.build_id, "package": frozen.package},
            message=f"{repo}:{tag} is frozen (full build {frozen.build_id} of {frozen.package}) and was made from "
                    "another image, license key or set of models; a build never moves a licensed tag",
        )

    async def package(self, repo: str, data: ManifestData) -> tuple[ParsedManifest, dict[str, Any]]:
        parsed = parse_manifest(data.data, data.media_type)
        if parsed.is_index or parsed.artifact_type != mt.BUSINESS:
            raise BuildInputError(422, f"{repo}@{data.digest} is not a business package "
                                  f"(artifactType {parsed.artifact_type!r})", {"field": "package"})
        assert parsed.config is not None
        if parsed.config.media_type != mt.ALGORITHM_CONFIG:
            raise BuildInputError(422, f"the package's config is {parsed.config.media_type}, not an algorithm descriptor")
        raw = await self.small_blob(repo, parsed.config.digest)
        return parsed, load_descriptor(raw)

    async def small_blob(self, repo: str, digest: str, limit: int = MAX_SMALL_BLOB) -> bytes:
        """A config or descriptor, read whole and verified (up to ``limit`` bytes)."""
        try:
            return await self.service.read_small_blob(repo, digest, limit)
        except BlobContentError as exc:
            raise BuildError(exc.message) from None

    async def reachable(self, repo: str, data: ManifestData, depth: int = 0) -> set[str]:
        """Every digest in ``repo`` a manifest needs: itself, child manifests, configs, layers."""
        out = {data.digest}
        parsed = parse_manifest(data.data, data.media_type)
        if not parsed.is_index:
            return out | {blob.digest for blob in parsed.blobs}
        for child in parsed.manifests:
            if depth > 4:
                break
            try:
                out |= await self.reachable(repo, await self.service.get_manifest(repo, child.digest), depth + 1)
            except RegistryError as exc:
                if exc.error not in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                    raise
        return out
