"""The freeze policy (DESIGN §5): what a successful full build makes immutable.

From the moment a full build is accepted until it ends, the business tag and the same
version of its generic source are held: pushing or deleting them is refused (``DENIED``
naming the build), so a build always freezes the content it read; a failed build
releases them. After a full build, the business tag it was made from, the same version of the generic
algorithm, the full package tag and the licensed image tags can no longer be
overwritten or deleted through the registry API (``DENIED`` naming the build), and no
manifest or blob they reference (child manifests, configs, layers) can be deleted by
digest, so a frozen package stays pullable whole. Tags of
thin packages that end in a license suffix are refused outright (``TAG_INVALID``): that
name space belongs to full packages. A full build writes through the service, not this
policy; other internal writers (assembly) ask it as ``SYSTEM`` and are refused frozen tags
like anyone else."""

from __future__ import annotations

from typing import Callable

from proxy.oci.errors import Errors, RegistryError
from proxy.oci.reference import is_digest
from proxy.service.policy import Action, Request

from .names import Namespaces
from .runnable import reserved_runnable
from .store import BuildStore

__all__ = ["FreezePolicy"]


class FreezePolicy:
    def __init__(self, store: BuildStore, suffixes: Callable[[], tuple[str, ...]], namespaces: Namespaces) -> None:
        self.store = store
        self.suffixes = suffixes
        self.thin_namespaces = (namespaces.generic, namespaces.business)

    async def check(self, request: Request) -> None:
        if request.action not in (Action.PUSH, Action.DELETE):
            return
        repo, reference = request.repository, request.reference
        if not repo or not reference:
            return  # blob uploads and registry-wide requests
        if is_digest(reference):
            if request.action is Action.DELETE:
                frozen = await self.store.frozen_digest(repo, reference)
                if frozen is not None:
                    raise self._denied(frozen.repository, frozen.tag, frozen.build_id, frozen.package)
                part = await self.store.frozen_content(repo, reference)
                if part is not None:
                    raise RegistryError(
                        Errors.DENIED, {"repository": repo, "digest": reference, "frozen": f"{repo}:{part.tag}",
                                        "full_build": part.build_id, "package": part.package},
                        message=f"{repo}@{reference} is part of frozen {repo}:{part.tag} "
                                f"(full build {part.build_id} of {part.package}) and cannot be deleted",
                    )
            return
        frozen = await self.store.frozen_tag(repo, reference)
        if frozen is not None:
            raise self._denied(repo, reference, frozen.build_id, frozen.package)
        held = await self.store.held_tag(repo, reference)
        if held is not None:
            # Held from the build's acceptance, so the package it freezes is the one it read.
            raise RegistryError(
                Errors.DENIED, {"repository": repo, "tag": reference, "full_build": held.id,
                                "package": held.package, "state": held.state},
                message=f"{repo}:{reference} is held by full build {held.id} of {held.package} ({held.state}): "
                        "it is frozen if the build succeeds and can be pushed again if it fails",
            )
        # algomint itself writes the -<license> tags; frozen tags refuse it too (assembly
        # asks before re-writing a business tag).
        if request.action is Action.PUSH and request.principal.kind != "system" and repo.startswith(self.thin_namespaces):
            suffix = next((s for s in self.suffixes() if reference.endswith(s)), None) \
                or reserved_runnable(reference, self.suffixes())
            if suffix is not None:
                raise RegistryError(
                    Errors.TAG_INVALID, {"tag": reference, "reserved_suffix": suffix},
                    message=f"tags ending in {suffix} are reserved for full packages",
                )

    @staticmethod
    def _denied(repo: str, tag: str, build_id: str, package: str) -> RegistryError:
        return RegistryError(
            Errors.DENIED, {"repository": repo, "tag": tag, "full_build": build_id, "package": package},
            message=f"{repo}:{tag} is frozen: full build {build_id} of {package} was made from it",
        )
