"""One full build: licensed runtime images, the license-specific descriptor, the full index.

An embedded package carries its model files itself (the descriptor's package-level
``models``): those files are sealed with their own data key into new blobs of the
business repository (``package_files``) and the license file is added beside them, so
the license-specific descriptor's manifest is itself the licensed package. A package may
have both kinds of models; one build licenses both.

For each runtime image in the business package's descriptor, every layer holding a
file that matches the image's model globs is rewritten with those files sealed under a
fresh data key (``packer.layers``); other layers are reused by digest. A license layer
carries the wrapped data key. The new config (``diff_ids``, labels) and manifest are
stored by digest; image indexes are licensed child by child. Then the descriptor with
runtime refs pinned to the licensed images, and the full package index listing it and
the images, are stored in the business repository, into which the images' blobs are
mounted (linked, not copied) so ``/v2`` clients can pull the index and its parts there.

Tags are written last, images first and the full package's tag at the very end, so an
interrupted build never leaves a tag pointing at something half-written.

The build runs with its requester's rights, checked when it is asked for and again when
it starts (``rights.BuildRights``: sources, targets, licensed tags, model globs); every
manifest is written through the same policy as ``/v2`` (permissions and freezes), never
around it. An encrypting license that would seal no file of an image fails the build.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from proxy.backend import Backend, ManifestData
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import ParsedManifest, parse_manifest
from proxy.oci.reference import sha256_digest
from proxy.service.policy import SYSTEM, Action, PolicyChain, Principal, Request as PolicyRequest
from proxy.service.registry import RegistryService

from ..layers import (
    OUTPUT_MEDIA_TYPES,
    TAR_LAYER_TYPES,
    Codec,
    LayerError,
    LayerOutcome,
    measure_layer,
    rewrite_layer,
)
from ..licensing.envelope import KEY_ID_SIZE, Encryptor
from ..licensing.licenser import Licenser
from ..licensing.settings import LicenseConfig
from ..tarstream import BLOCK, TarLimits, compile_globs, ustar_header
from .names import (
    ANNOTATION_IMAGE_REF,
    ANNOTATION_IMAGE_SOURCE,
    ANNOTATION_LICENSE,
    ANNOTATION_PACKAGE,
    ANNOTATION_SOURCE,
    LABEL_BUILD,
    LABEL_LICENSE,
    LABEL_SOURCE,
    BuildError,
    BuildInputError,
    Namespaces,
    PackageName,
    RuntimeImageRef,
)
from .package_files import check_no_clear_copies, model_layers, seal_files
from .platforms import PlatformMismatch, check_single, choose, ledger_key, platform_entries
from .rights import IMAGE_CONFIGS, BuildInputs, BuildRights, refused
from .runnable import Runnable, reserved_runnable, runnable_tag
from .sealed import SealedLayers, SealedRecipe
from .settings import FullBuildConfig
from .store import BuildRecord, BuildStore, Frozen, LayerProgress

__all__ = ["BuildError", "FullBuilder", "Tracker"]

class Tracker:
    """Per-layer progress of a running build, flushed to the store by the service."""

    def __init__(self) -> None:
        self.layers: dict[tuple[str, int], LayerProgress] = {}
        self.dirty = False
        self.expanded = 0  # decompressed bytes of the layers rewritten so far (max_build_bytes)

    def add(self, image: str, position: int, digest: str, size: int) -> LayerProgress:
        progress = LayerProgress(image, position, digest, size)
        self.layers[(image, position)] = progress
        return progress

    def set(self, layer: LayerProgress, state: str, done: int | None = None) -> None:
        layer.state = state
        if done is not None:
            layer.bytes_done = done
        self.dirty = True

    def advance(self, layer: LayerProgress) -> Callable[[int], None]:
        def step(n: int) -> None:
            layer.bytes_done = min(layer.size, layer.bytes_done + n)
            self.dirty = True

        return step

    @property
    def bytes_total(self) -> int:
        return sum(layer.size for layer in self.layers.values())

    @property
    def bytes_done(self) -> int:
        return sum(layer.bytes_done for layer in self.layers.values())


@dataclass
class _Image:
    """One image manifest to license (a runtime image, or one platform of its index)."""

    label: str
    repo: str
    data: ManifestData
    parsed: ParsedManifest
    layers: list[LayerProgress] = field(default_factory=list)
    platform: str = ""  # its platform's name (packer.platform), "" when it declares none


@dataclass
class _Runtime:
    ref: RuntimeImageRef
    root: ManifestData
    images: list[_Image]
    principal: Principal  # writes to the image repository are made as the requester
    licensed: ManifestData | None = None
    licensed_children: list[tuple[ManifestData, _Image | None]] = field(default_factory=list)
    key_id: bytes = b""
    synthesise: bool = False  # its uncompressed sealed layers are made on request (``sealed.py``)
    encrypted: int = 0
    reused: dict[str, Any] | None = None  # the earlier build's image entry when the tag is reused
    build_id: str = ""  # labelled on licensed configs: whose leftover a tag is after a crash
    platforms: list[dict[str, Any]] = field(default_factory=list)  # each licensed manifest, for the ledger
    sources: dict[str, str] = field(default_factory=dict)  # licensed manifest digest -> source digest


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class FullBuilder:
    def __init__(self, service: RegistryService, licensers: dict[str, Licenser], licenses: dict[str, LicenseConfig],
                 settings: FullBuildConfig, namespaces: Namespaces, store: BuildStore,
                 policy: PolicyChain | None = None) -> None:
        self.service = service
        self.store = store
        self.policy = policy or PolicyChain()
        self.rights = BuildRights(service, store, self.policy, licensers, settings, namespaces)
        self.backend: Backend = service.backend
        self.licensers = licensers
        self.licenses = licenses
        self.settings = settings
        self.ns = namespaces
        self.codec = Codec(settings.gzip_level, settings.zstd_level, settings.threads)
        self.sealed = SealedLayers(self.backend, store, settings.max_syntheses)
        self.runnable = Runnable(service, store, self.sealed)

    # -- request validation (before anything is queued) ------------------------------------
    async def check(self, package: str, license: str,
                    requester: Principal = SYSTEM) -> tuple[PackageName, str, str]:
        """Resolve a request to (package, source manifest digest, generic source repository)
        or raise ``BuildInputError`` (403 when ``requester`` may not read a source or write a target)."""
        name = await self.readable(package, license, requester)
        try:
            data = await self.service.get_manifest(name.repository, name.version)
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                raise BuildInputError(404, f"unknown package {package}", {"field": "package"}) from None
            raise refused(exc) from None
        inputs = await self.rights.inputs(name, data)
        roots: dict[str, str] = {}
        for image in inputs.refs:
            try:
                roots[image.ref] = (await self.service.stat_manifest(image.repository, image.reference.reference)).digest
            except RegistryError as exc:
                if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                    raise BuildInputError(422, f"runtime image {image.ref} does not exist",
                                          {"field": f"runtime.images.{image.index}.ref"}) from None
                raise
            if image.platforms:
                try:
                    await self._images(image, await self.service.get_manifest(image.repository, roots[image.ref]))
                except PlatformMismatch as exc:
                    raise BuildInputError(422, str(exc), {"field": f"runtime.images.{image.index}.platforms"}) from None
        try:
            reused = {ref.ref for ref in inputs.refs
                      if await self.rights.existing(ref, license, roots[ref.ref]) is not None}
            await self.rights.authorize(requester, name, inputs, license, reused)
        except RegistryError as exc:
            raise refused(exc) from None
        return name, data.digest, inputs.source_repo

    async def readable(self, package: str, license: str, requester: Principal = SYSTEM) -> PackageName:
        """The request's package name, once the license is known and ``requester`` may read it."""
        if license not in self.licensers:
            raise BuildInputError(422, f"unknown license kind {license!r}",
                                  {"field": "license", "known": sorted(self.licensers)})
        name = PackageName.parse(package, self.ns)
        for kind in self.licensers:
            if name.version.endswith(f"-{kind}"):
                raise BuildInputError(422, f"{package} is itself a full package (tag ends in -{kind})",
                                      {"field": "package"})
        if reserved_runnable(name.version, [f"-{kind}" for kind in self.licensers]):
            raise BuildInputError(422, f"{package} is itself a runnable full image", {"field": "package"})
        try:
            # Before anything is looked up: whether the package exists is for its readers.
            await self.policy.check(PolicyRequest(requester, Action.PULL, name.repository, name.version))
        except RegistryError as exc:
            raise refused(exc) from None
        return name

    async def _put_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        try:
            await self.backend.stat_blob(repo, digest)
            return digest
        except RegistryError as exc:
            if exc.error not in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN):
                raise
        session = await self.backend.start_upload(repo)
        await self.backend.finish_upload(repo, session.upload_id, digest, _one(data))
        return digest

    async def _put_manifest(self, repo: str, reference: str, data: bytes, media_type: str,
                            principal: Principal = SYSTEM) -> str:
        """Write through the registry's policy, like a ``/v2`` push (freezes refuse even
        algomint); image repositories are written as the requester."""
        await self.policy.check(PolicyRequest(principal, Action.PUSH, repo, reference))
        stored = await self.service.put_manifest(repo, reference, data, media_type, principal.name)
        return stored.digest

    # -- the build ---------------------------------------------------------------------------
    async def run(self, record: BuildRecord, tracker: Tracker, planned: Callable[[], Any],
                  warnings: list[str]) -> tuple[dict[str, Any], list[Frozen], list[Frozen]]:
        """Build ``record``; ``planned`` is awaited once the layer list is known."""
        licenser = self.licensers.get(record.license)
        if licenser is None:
            raise BuildError(f"license kind {record.license!r} is no longer configured")
        settings = self.licenses[record.license]
        name = PackageName.parse(record.package, self.ns)
        principal = await self.store.requester(record.id)
        try:
            source = await self.service.get_manifest(name.repository, record.source_digest)
            inputs = await self.rights.inputs(name, source)
        except BuildInputError as exc:
            raise BuildError(exc.message) from None
        package, descriptor, refs = inputs.package, inputs.descriptor, inputs.refs
        files = list(package.document.get("layers") or [])
        file_progress = self._plan_files(name, inputs, files, licenser, tracker)

        runtimes: dict[str, _Runtime] = {}
        for ref in refs:
            if ref.ref not in runtimes:
                runtimes[ref.ref] = await self._plan(ref, tracker, warnings, principal)
                runtimes[ref.ref].build_id = record.id
        try:
            for runtime in runtimes.values():
                runtime.reused = await self.rights.existing(runtime.ref, record.license, runtime.root.digest)
            # Rights of the moment: a grant revoked since the request stops the build here.
            await self.rights.authorize(principal, name, inputs, record.license,
                                  {r.ref.ref for r in runtimes.values() if r.reused is not None})
            for runtime in runtimes.values():
                if runtime.reused is None:
                    await self.rights.claim(runtime.ref.repository, runtime.ref.licensed_tag(record.license), record.id)
        except RegistryError as exc:
            raise BuildError(f"{exc.code}: {exc.message}") from None
        await planned()

        for runtime in runtimes.values():
            if runtime.reused is not None:
                await self._reuse(runtime, tracker)
                continue
            await self._license_runtime(runtime, licenser, settings, tracker, warnings)
            if licenser.encrypts and runtime.encrypted == 0:
                raise BuildError(
                    f"no file in {runtime.ref.ref} matches the model patterns {list(runtime.ref.models)}: a "
                    f"{record.license} image with nothing encrypted would deliver its models in the clear; "
                    "fix the generic package's runtime.images models (or [full_builds.models]), or build full")

        files, sealed_paths, package_key_id = await self._license_files(name, files, file_progress, licenser,
                                                                        settings, tracker)

        # The license-specific descriptor and the full index, in the business repository.
        descriptor = copy.deepcopy(descriptor)
        for ref in refs:
            runtime = runtimes[ref.ref]
            assert runtime.licensed is not None
            entry = descriptor["runtime"]["images"][ref.index]
            entry["ref"] = f"{ref.repository}@{runtime.licensed.digest}"
            entry["source"] = ref.ref
            entry["tag"] = f"{ref.repository}:{ref.licensed_tag(record.license)}"
        descriptor["license"] = {
            **licenser.describe(),
            **({"licensePath": settings.license_path} if licenser.encrypts else {}),
            "package": f"{name.repository}@{record.source_digest}",
            **({"encryptedFiles": sealed_paths} if sealed_paths else {}),
        }
        config = _json(descriptor)
        config_digest = await self._put_blob(name.repository, config)
        thin = copy.deepcopy(package.document)
        thin["config"] = {**thin["config"], "digest": config_digest, "size": len(config)}
        thin["layers"] = files
        thin.pop("subject", None)
        thin["annotations"] = {**(thin.get("annotations") or {}), ANNOTATION_LICENSE: record.license,
                               ANNOTATION_SOURCE: record.source_digest, ANNOTATION_PACKAGE: str(name)}
        thin_data = _json(thin)
        thin_digest = await self._put_manifest(name.repository, sha256_digest(thin_data), thin_data, package.media_type)

        entries: list[dict[str, Any]] = [{
            "mediaType": package.media_type, "digest": thin_digest, "size": len(thin_data),
            "artifactType": mt.BUSINESS,
        }]
        for runtime in runtimes.values():
            await self._link_into(name.repository, runtime)
            licensed = runtime.licensed
            assert licensed is not None
            entry = {"mediaType": licensed.media_type, "digest": licensed.digest, "size": len(licensed.data),
                     "annotations": {ANNOTATION_IMAGE_REF: f"{runtime.ref.repository}:{runtime.ref.licensed_tag(record.license)}",
                                     ANNOTATION_IMAGE_SOURCE: f"{runtime.ref.repository}@{runtime.root.digest}"}}
            platform = await self._platform(runtime)
            if platform:
                entry["platform"] = platform
            entries.append(entry)
            entries.extend(platform_entries(licensed, entry["annotations"][ANNOTATION_IMAGE_REF],
                                            runtime.ref.repository, runtime.sources))
        index = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "artifactType": mt.FULL,
            "manifests": entries,
            "subject": {"mediaType": source.media_type, "digest": source.digest, "size": len(source.data)},
            "annotations": {ANNOTATION_LICENSE: record.license, ANNOTATION_SOURCE: record.source_digest,
                            ANNOTATION_PACKAGE: str(name)},
        }
        index_data = _json(index)
        index_digest = await self._put_manifest(name.repository, sha256_digest(index_data), index_data, mt.OCI_INDEX)
        # The runnable form: each licensed image plus the package as one synthesised layer.
        layer, runnables = await self.runnable.build(
            name.repository, ManifestData(thin_digest, package.media_type, thin_data), record.id,
            [(r.licensed, [c for c, _ in r.licensed_children]) for r in runtimes.values() if r.licensed is not None],
            self.rights.small_blob)

        # Tags last: every image first, the full package at the very end. Frozen: the
        # business tag, the exact generic source version, the licensed tags, and every
        # digest their manifests (and the source runtime images) reference.
        label = str(name)
        freezes = [
            Frozen(name.repository, name.version, record.source_digest, record.id, label),
            Frozen(inputs.source_repo, name.version, inputs.source_digest, record.id, label),
        ]
        content: list[Frozen] = []

        async def hold(repo: str, tag: str, data: ManifestData) -> None:
            content.extend(Frozen(repo, tag, digest, record.id, label) for digest in await self.rights.reachable(repo, data))

        await hold(name.repository, name.version, source)
        source_generic = await self.service.get_manifest(inputs.source_repo, inputs.source_digest)
        await hold(inputs.source_repo, name.version, source_generic)
        images_out = []
        for runtime in runtimes.values():
            assert runtime.licensed is not None
            repo, tag = runtime.ref.repository, runtime.ref.licensed_tag(record.license)
            if runtime.reused is None:
                await self._put_manifest(repo, tag, runtime.licensed.data, runtime.licensed.media_type,
                                         runtime.principal)
            freezes.append(Frozen(repo, tag, runtime.licensed.digest, record.id, label))
            await hold(repo, tag, runtime.licensed)
            await hold(repo, tag, runtime.root)  # the source image the licensed one was made from
            images_out.append(runtime.reused or {
                "ref": runtime.ref.ref, "source_digest": runtime.root.digest,
                "licensed": f"{repo}:{tag}", "digest": runtime.licensed.digest,
                "key_id": runtime.key_id.hex() if runtime.key_id else None, "encrypted_files": runtime.encrypted,
                "license_key": licenser.describe(), "models": list(runtime.ref.models),
                **({"platforms_named": list(runtime.ref.platforms)} if runtime.ref.platforms else {}),
                "platforms": runtime.platforms,
            })
        runnable_out = []
        for position, runnable in enumerate(runnables):
            tag = runnable_tag(name.version, record.license, position)
            await self.policy.check(PolicyRequest(SYSTEM, Action.PUSH, name.repository, tag))  # freezes
            await self.runnable.tag(name.repository, tag, runnable.digest)
            freezes.append(Frozen(name.repository, tag, runnable.digest, record.id, label))
            await hold(name.repository, tag, runnable)
            runnable_out.append({"tag": f"{name.repository}:{tag}", "digest": runnable.digest})
        await self._unchanged(name, record.source_digest, inputs)
        full_tag = name.full_tag(record.license)
        await self._put_manifest(name.repository, full_tag, index_data, mt.OCI_INDEX)
        freezes.append(Frozen(name.repository, full_tag, index_digest, record.id, label))
        await hold(name.repository, full_tag, ManifestData(index_digest, mt.OCI_INDEX, index_data))
        result = {"tag": f"{name.repository}:{full_tag}", "digest": index_digest, "descriptor": thin_digest,
                  "images": images_out}
        if runnable_out:
            result["runnable"] = {"images": runnable_out, "layer": layer}
        if inputs.models:
            result["package"] = {"models": list(inputs.models), "encrypted_files": sealed_paths,
                                 "key_id": package_key_id.hex() if package_key_id else None}
        return result, freezes, content

    async def _unchanged(self, name: PackageName, digest: str, inputs: BuildInputs) -> None:
        """Just before the full tag: the package and its generic source still hold what the
        build was made from. Pushes to both are refused while the build is active; this
        catches one that passed its check before the build was accepted and landed since,
        so the build fails rather than freeze content the tags no longer hold."""
        for repo, expected in ((name.repository, digest), (inputs.source_repo, inputs.source_digest)):
            current = (await self.service.stat_manifest(repo, name.version)).digest
            if current != expected:
                raise BuildError(f"{repo}:{name.version} changed during the build (now {current}, built from "
                                 f"{expected}); nothing was frozen: request the build again")

    def _plan_files(self, name: PackageName, inputs: BuildInputs, files: list[dict[str, Any]], licenser: Licenser,
                    tracker: Tracker) -> dict[int, LayerProgress]:
        """The package's own model files (by layer position), each tracked like a layer."""
        positions = model_layers(files, compile_globs(inputs.models)) if inputs.models else []
        if licenser.encrypts:
            check_no_clear_copies(files, positions)
            if inputs.models and not positions and (inputs.models_declared or not inputs.refs):
                raise BuildError(
                    f"no file of {name} matches the package models {list(inputs.models)}: a {licenser.kind} "
                    "package with nothing encrypted would deliver its models in the clear; fix the generic "
                    "package's models (or [full_builds.models]), or build full")
        return {p: tracker.add(f"{name} (package)", p, files[p]["digest"], int(files[p]["size"])) for p in positions}

    async def _license_files(self, name: PackageName, files: list[dict[str, Any]],
                             progress: dict[int, LayerProgress], licenser: Licenser, settings: LicenseConfig,
                             tracker: Tracker) -> tuple[list[dict[str, Any]], list[str], bytes]:
        """Seal the package's model files under their own data key and add the license
        file; returns the licensed package's layers, the sealed paths and the key id."""
        if not progress or not licenser.encrypts:
            for layer in progress.values():
                tracker.set(layer, "reused", layer.size)
            return files, [], b""
        key, key_id = os.urandom(32), os.urandom(KEY_ID_SIZE)
        license_file = licenser.wrap(key, key_id)
        license_digest = await self._put_blob(name.repository, license_file)
        for layer in progress.values():
            tracker.set(layer, "rewriting", 0)
        sealed = await seal_files(self.backend, name.repository, files, sorted(progress), key, key_id,
                                  settings.chunk_size, settings.license_path, (license_digest, len(license_file)),
                                  lambda p, n: tracker.advance(progress[p])(n))
        for position, layer in progress.items():
            layer.encrypted, layer.result_digest = 1, sealed.digests[position]
            tracker.set(layer, "rewritten", layer.size)
        return sealed.layers, sealed.encrypted, key_id

    async def _reuse(self, runtime: _Runtime, tracker: Tracker) -> None:
        """Point the package at the licensed image an earlier build made from the same inputs."""
        entry = runtime.reused
        assert entry is not None
        repo = runtime.ref.repository
        runtime.licensed = await self.service.get_manifest(repo, entry["digest"])
        runtime.key_id = bytes.fromhex(entry["key_id"]) if entry.get("key_id") else b""
        runtime.encrypted = int(entry.get("encrypted_files") or 0)
        runtime.sources = {p["digest"]: p["source_digest"] for p in entry.get("platforms") or []}
        parsed = parse_manifest(runtime.licensed.data, runtime.licensed.media_type)
        if parsed.is_index:
            for child in parsed.manifests:
                runtime.licensed_children.append((await self.service.get_manifest(repo, child.digest), None))
        else:
            runtime.licensed_children.append((runtime.licensed, None))
        for image in runtime.images:
            for layer in image.layers:
                tracker.set(layer, "reused", layer.size)

    async def _plan(self, ref: RuntimeImageRef, tracker: Tracker, warnings: list[str], principal: Principal) -> _Runtime:
        try:
            root = await self.service.get_manifest(ref.repository, ref.reference.reference)
        except RegistryError as exc:
            raise BuildError(f"runtime image {ref.ref}: {exc.message}") from None
        try:
            images = await self._images(ref, root)
        except PlatformMismatch as exc:
            raise BuildError(str(exc)) from None
        for image in images:
            for position, layer in enumerate(image.parsed.layers):
                image.layers.append(tracker.add(image.label, position, layer.digest, layer.size))
        return _Runtime(ref, root, images, principal)

    async def _images(self, ref: RuntimeImageRef, root: ManifestData) -> list[_Image]:
        """The image manifests to license: the root, or the platforms of an index that
        the descriptor names (all of them when it names none)."""
        parsed = parse_manifest(root.data, root.media_type)
        if not parsed.is_index:
            image = _Image(ref.ref, ref.repository, root, parsed)
            if parsed.config is not None and parsed.config.media_type in IMAGE_CONFIGS:
                config = json.loads(await self.rights.small_blob(ref.repository, parsed.config.digest))
                image.platform = check_single(ref, config if isinstance(config, dict) else {})
            return [image]
        choice = choose(ref, parsed)
        if not choice.children:
            raise BuildError(f"runtime image {ref.ref} is an index without image manifests")
        images = []
        for child, name in zip(choice.children, choice.names):
            data = await self.service.get_manifest(ref.repository, child.digest)
            image = _Image(f"{ref.ref} [{name or '?'}]", ref.repository, data, parse_manifest(data.data, data.media_type))
            image.platform = name
            images.append(image)
        return images

    async def _licensed_before(self, image: _Image, runtime: _Runtime, licenser: Licenser,
                               tracker: Tracker) -> ManifestData | None:
        """The licensed manifest a succeeded build made of this very platform manifest
        with the same license key and models (the ledger), its layers marked reused."""
        row = await self.store.licensed_platform(image.repo, image.data.digest,
                                                 *ledger_key(licenser.describe(), runtime.ref.models))
        if row is None:
            return None
        try:
            licensed = await self.service.get_manifest(image.repo, row["digest"])
        except RegistryError as exc:
            if exc.error in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        for layer in image.layers:
            tracker.set(layer, "reused", layer.size)
        runtime.encrypted += int(row["encrypted"])
        runtime.platforms.append({"platform": image.platform, "source_digest": image.data.digest,
                                  "digest": licensed.digest, "key_id": row["key_id"],
                                  "encrypted_files": int(row["encrypted"]), "reused_from": row["build_id"]})
        return licensed

    async def _license_runtime(self, runtime: _Runtime, licenser: Licenser, settings: LicenseConfig,
                               tracker: Tracker, warnings: list[str]) -> None:
        ref = runtime.ref
        license_layer: bytes | None = None
        key = b""
        if licenser.encrypts:
            runtime.key_id = os.urandom(KEY_ID_SIZE)
            runtime.synthesise = self.settings.sealed_layers == "synthesise" and await self.sealed.enabled()
            # A layer made again on each pull needs its key again: derived, never kept.
            key = await self.sealed.data_key(runtime.key_id) if runtime.synthesise else os.urandom(32)
            license_file = licenser.wrap(key, runtime.key_id)
            tar = ustar_header(settings.license_path, len(license_file)) + license_file
            tar += b"\0" * (-len(tar) % BLOCK) + b"\0" * (2 * BLOCK)
            license_layer = gzip.compress(tar, compresslevel=9, mtime=0)
        for image in runtime.images:
            licensed = await self._licensed_before(image, runtime, licenser, tracker)
            if licensed is None:
                before = runtime.encrypted
                licensed = await self._license_image(image, ref, licenser, settings, key, runtime, license_layer, tracker)
                runtime.platforms.append({"platform": image.platform, "source_digest": image.data.digest,
                                          "digest": licensed.digest,
                                          "key_id": runtime.key_id.hex() if runtime.key_id else None,
                                          "encrypted_files": runtime.encrypted - before})
            runtime.sources[licensed.digest] = image.data.digest
            runtime.licensed_children.append((licensed, image))
        if all("reused_from" in p for p in runtime.platforms):
            runtime.key_id = b""  # every platform was licensed before, under its own key
        root = parse_manifest(runtime.root.data, runtime.root.media_type)
        if not root.is_index:
            runtime.licensed = runtime.licensed_children[0][0]
            return
        children = {image.data.digest: licensed for licensed, image in runtime.licensed_children}
        doc = copy.deepcopy(root.document)
        manifests = []
        for child in doc["manifests"]:
            new = children.get(child.get("digest"))
            if new is None:
                continue  # attestations and other non-image children are not carried over
            manifests.append({**child, "digest": new.digest, "size": len(new.data), "mediaType": new.media_type})
        doc["manifests"] = manifests
        if root.media_type == mt.OCI_INDEX:
            # The build is named here too: a platform reused from an earlier build carries that one's label.
            doc["annotations"] = {**(doc.get("annotations") or {}), ANNOTATION_LICENSE: licenser.kind,
                                  ANNOTATION_SOURCE: runtime.root.digest, LABEL_BUILD: runtime.build_id}
        data = _json(doc)
        digest = await self._put_manifest(ref.repository, sha256_digest(data), data, root.media_type, runtime.principal)
        runtime.licensed = ManifestData(digest, root.media_type, data)

    async def _license_image(self, image: _Image, ref: RuntimeImageRef, licenser: Licenser, settings: LicenseConfig,
                             key: bytes, runtime: _Runtime, license_layer: bytes | None,
                             tracker: Tracker) -> ManifestData:
        parsed, repo = image.parsed, image.repo
        assert parsed.config is not None
        if parsed.config.media_type not in IMAGE_CONFIGS:
            raise BuildError(f"{image.label} is not a runtime image (config {parsed.config.media_type})")
        config = json.loads(await self.rights.small_blob(repo, parsed.config.digest))
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = list(rootfs.get("diff_ids") or []) if isinstance(rootfs, dict) else None
        if diff_ids is None or len(diff_ids) != len(parsed.layers):
            raise BuildError(f"{image.label}: config rootfs.diff_ids does not match the manifest's layers")
        layers_json = copy.deepcopy(image.parsed.document["layers"])
        select = compile_globs(ref.models)

        def seal(path: str, size: int) -> Encryptor:
            return Encryptor(key, runtime.key_id, size, settings.chunk_size)

        for position, layer in enumerate(parsed.layers):
            progress = image.layers[position]
            if not licenser.encrypts or not ref.models:
                tracker.set(progress, "reused", layer.size)
                continue
            where = f"{image.label} layer {position} ({layer.digest})"
            if layer.media_type not in TAR_LAYER_TYPES:
                raise BuildError(f"{where}: media type {layer.media_type} is not a tar layer")
            limits = self._limits(layer.size, tracker.expanded)
            try:
                tracker.set(progress, "scanning", 0)
                found, output = await self._scan(repo, layer.digest, layer.size, select, limits,
                                                 tracker.advance(progress))
                if not found:
                    tracker.set(progress, "reused", layer.size)
                    continue
                tracker.set(progress, "rewriting", 0)
                if output == "tar" and runtime.synthesise:
                    out = await self._measure_sealed(repo, layer.digest, layer.size, ref.models, runtime, settings,
                                                     limits, tracker.advance(progress))
                else:
                    out = await rewrite_layer(self.backend, repo, repo, layer.digest, layer.size, select, seal,
                                              limits, self.codec, tracker.advance(progress), output)
                tracker.expanded += out.tar_size
            except LayerError as exc:
                tracker.set(progress, "failed")
                raise BuildError(f"{where}: {exc}") from None
            entry = {k: v for k, v in layers_json[position].items() if k != "urls"}
            entry.update(digest=out.digest, size=out.size,
                         mediaType=OUTPUT_MEDIA_TYPES[out.codec][0 if image.data.media_type == mt.OCI_MANIFEST else 1])
            layers_json[position] = entry
            diff_ids[position] = out.diff_id
            progress.result_digest, progress.diff_id, progress.encrypted = out.digest, out.diff_id, len(out.encrypted)
            tracker.set(progress, "rewritten", layer.size)
            runtime.encrypted += len(out.encrypted)

        oci = image.data.media_type == mt.OCI_MANIFEST
        if license_layer is not None:
            digest = await self._put_blob(repo, license_layer)
            layers_json.append({"mediaType": mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP,
                                "digest": digest, "size": len(license_layer)})
            diff_ids.append(sha256_digest(gzip.decompress(license_layer)))
            if isinstance(config.get("history"), list):
                config["history"].append({"created_by": f"algomint full build: {licenser.kind} license file",
                                          "comment": settings.license_path})
        config["rootfs"]["diff_ids"] = diff_ids
        inner = config.setdefault("config", {})
        if not isinstance(inner, dict):
            raise BuildError(f"{image.label}: config.config is not an object")
        labels = inner.get("Labels") or {}
        inner["Labels"] = {**labels, LABEL_LICENSE: licenser.kind, LABEL_SOURCE: f"{repo}@{image.data.digest}",
                           LABEL_BUILD: runtime.build_id}
        config_data = _json(config)
        config_digest = await self._put_blob(repo, config_data)

        doc = copy.deepcopy(image.parsed.document)
        doc["config"] = {**doc["config"], "digest": config_digest, "size": len(config_data)}
        doc["layers"] = layers_json
        if oci:
            doc["annotations"] = {**(doc.get("annotations") or {}), ANNOTATION_LICENSE: licenser.kind,
                                  ANNOTATION_SOURCE: image.data.digest}
        data = _json(doc)
        digest = await self._put_manifest(repo, sha256_digest(data), data, image.data.media_type, runtime.principal)
        return ManifestData(digest, image.data.media_type, data)

    async def _measure_sealed(self, repo: str, digest: str, size: int, models: tuple[str, ...], runtime: _Runtime,
                              settings: LicenseConfig, limits: TarLimits, progress: Callable[[int], None]) -> LayerOutcome:
        """An uncompressed sealed layer, measured and recorded instead of stored."""
        out = await self.sealed.measure(repo, digest, size, models, runtime.key_id, settings.chunk_size, limits,
                                        progress)
        recipe = SealedRecipe(out.digest, out.size, repo, digest, size, runtime.key_id, tuple(models),
                              settings.chunk_size, out.tar_size, limits.max_entries, limits.max_header_bytes)
        await self.sealed.record(repo, recipe, runtime.build_id)
        return out

    def _limits(self, size: int, expanded: int) -> TarLimits:
        """The tar limits of one layer of ``size`` compressed bytes, after the build has
        rewritten ``expanded`` decompressed bytes: the tightest of the per-layer size, the
        expansion ratio and what is left of the build's total, named for the error."""
        s = self.settings
        caps = [
            (s.max_layer_bytes, "[full_builds] max_layer_bytes"),
            (max(s.expansion_floor, s.max_expansion * size),
             f"[full_builds] max_expansion ({s.max_expansion} times its {size} compressed bytes)"),
            (s.max_build_bytes - expanded,
             f"[full_builds] max_build_bytes (all rewritten layers of the build, {expanded} bytes before this one)"),
        ]
        limit, reason = min(caps, key=lambda cap: cap[0])
        return TarLimits(max(limit, 0), s.max_entries, s.max_header_bytes, reason)

    async def _scan(self, repo: str, digest: str, size: int, select: Callable[[str], bool], limits: TarLimits,
                    progress: Callable[[int], None]) -> tuple[bool, str | None]:
        """Whether the layer has a model file, and the codec its rewrite is written in
        (None: the source's own). ``auto`` counts the model bytes up to half the layer's
        compressed size: past that, encrypted bytes, which no codec shrinks, are most of
        the new layer, so compressing it would cost CPU for next to nothing."""
        mode = self.settings.layer_compression
        enough = (size + 1) // 2 if mode == "auto" else 0
        found, matched = await measure_layer(self.backend, repo, digest, size, select, limits, enough, progress)
        if mode == "auto":
            return found, "tar" if matched >= enough else None
        return found, {"none": "tar", "gzip": "gzip", "zstd": "zstd"}[mode]

    async def _platform(self, runtime: _Runtime) -> dict[str, Any] | None:
        if len(runtime.licensed_children) != 1 or runtime.licensed is not runtime.licensed_children[0][0]:
            return None
        licensed = runtime.licensed
        parsed = parse_manifest(licensed.data, licensed.media_type)
        assert parsed.config is not None
        config = json.loads(await self.rights.small_blob(runtime.ref.repository, parsed.config.digest))
        platform = {k: config[k] for k in ("architecture", "os", "variant") if isinstance(config.get(k), str)}
        return platform if {"architecture", "os"} <= platform.keys() else None

    async def _link_into(self, repo: str, runtime: _Runtime) -> None:
        """Make the licensed image pullable from the business repository: mount its
        blobs (a link, no copy) and store its manifests there by digest."""
        source = runtime.ref.repository
        for licensed, _ in runtime.licensed_children:
            parsed = parse_manifest(licensed.data, licensed.media_type)
            for blob in parsed.blobs:
                if await self.sealed.link(source, repo, blob.digest, runtime.build_id):
                    continue  # made on request there too, from the same source layer
                if await self.backend.mount_blob(repo, blob.digest, source) is None:
                    await self._copy_blob(source, repo, blob.digest)
            await self._put_manifest(repo, licensed.digest, licensed.data, licensed.media_type)
        assert runtime.licensed is not None
        if runtime.licensed.digest != runtime.licensed_children[0][0].digest:
            await self._put_manifest(repo, runtime.licensed.digest, runtime.licensed.data, runtime.licensed.media_type)

    async def _copy_blob(self, source: str, repo: str, digest: str) -> None:
        """Fallback for backends that can't mount across repositories: stream the blob."""
        reader = await self.backend.open_blob(source, digest)
        session = await self.backend.start_upload(repo)
        try:
            await self.backend.finish_upload(repo, session.upload_id, digest, reader)
        finally:
            await reader.close()
