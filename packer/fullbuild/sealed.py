"""Sealed layers made on request: a licensed image's uncompressed model layers are never stored.

Sealed model bytes do not compress, so a licensed image's rewritten layer is mostly new
ciphertext the size of its models. Storing it cost a durable write of that size per
license key (a 1 GiB model delivered under twenty keys was twenty GiB on disk, and the
build waited on the disk). Instead, where the storage can keep a secret of its own
(``Backend.secret``: the embedded storage; an upstream registry refuses a manifest whose
layers it does not hold, so there they are stored as before), a build writes an
uncompressed sealed layer nowhere: it measures it (``packer.layers.measure_rewrite``: one
SHA-256 pass gives both digest and ``diff_id``) and records how to make it again
(``sealed_layers``: source repository, digest and size, the model globs, the envelope
chunk size, the key id, the tar limits). A pull lays it out again from the source layer
(``packer.layers.synthesise_layer``), byte for byte, ``Range`` included; what is made is
checked against the recorded digest and size before its last byte leaves, so a changed
source ends the response with an error instead of a wrong blob.

Being made again requires the same bytes every time:

- the data key: ``HKDF-SHA256(storage secret, info = "algomint-sealed-layer-key/1" ||
  key id)``, with the key id fresh per licensed image. The secret lives with the source
  layers (``_secrets/`` of the storage), so whoever can read it could already read the
  plaintext models it protects; the metadata store holds no key material;
- the nonces: derived per file from the data key, the source layer's digest and the
  file's ordinal (``envelope.derived_nonce_prefix``), so a key and nonce only ever seal
  the same plaintext;
- the tar walk and the envelope format, which are deterministic (fixed header rules).

Liveness: the source image a licensed image was made from is frozen content of the build
that made it (``frozen_blobs``), which can't be deleted through the API and which garbage
collection keeps. A business repository serves the same layer under its own row (the
build links it there as it mounts the image's stored blobs).

Each synthesis runs a decompressor, the tar walk and a hash in threads with bounded
queues; ``[full_builds] max_syntheses`` bounds how many run at once (the rest wait), so
concurrent pulls can't exhaust threads or memory.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import Any, AsyncGenerator, Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.backend import Backend
from proxy.oci.errors import Errors, RegistryError

from ..layers import LayerError, LayerOutcome, measure_rewrite, synthesise_layer
from ..licensing.envelope import Encryptor, deterministic_sealer
from ..tarstream import TarLimits, compile_globs
from .store import BuildStore

__all__ = ["SECRET_NAME", "SealedLayer", "SealedLayers", "SealedRecipe"]

SECRET_NAME = "sealed-layers"
_KEY_INFO = b"algomint-sealed-layer-key/1"
_LIMIT_REASON = "the size recorded when it was built"


@dataclass(frozen=True)
class SealedRecipe:
    """How to make a sealed layer again (a ``sealed_layers`` row)."""

    digest: str
    size: int
    source_repository: str
    source_digest: str
    source_size: int
    key_id: bytes
    models: tuple[str, ...]
    chunk_size: int
    tar_bytes: int
    max_entries: int
    max_header_bytes: int

    def limits(self) -> TarLimits:
        # Exactly the bytes it had when built: a changed source can't make it bigger.
        return TarLimits(self.tar_bytes, self.max_entries, self.max_header_bytes, _LIMIT_REASON)


@dataclass(frozen=True)
class SealedLayer:
    """A ``VirtualBlob``: the sealed layer of a licensed image, made on each read."""

    repository: str
    recipe: SealedRecipe
    layers: "SealedLayers"

    @property
    def size(self) -> int:
        return self.recipe.size

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        recipe = self.recipe
        async with self.layers.slots:
            seal = await self.layers.sealer(recipe.key_id, recipe.chunk_size, recipe.source_digest)
            stream = synthesise_layer(
                self.layers.backend, recipe.source_repository, recipe.source_digest, recipe.source_size,
                compile_globs(recipe.models), seal, recipe.limits(), recipe.digest, recipe.size, start, end)
            try:
                async for piece in stream:
                    yield piece
            except LayerError as exc:
                raise RegistryError(Errors.UNAVAILABLE, message=f"sealed layer {recipe.digest} of "
                                    f"{self.repository}: {exc}") from None
            finally:
                await stream.aclose()


class SealedLayers:
    """Records sealed layers at build time and makes them again on request."""

    def __init__(self, backend: Backend, store: BuildStore, max_syntheses: int) -> None:
        self.backend = backend
        self.store = store
        self.slots = asyncio.Semaphore(max_syntheses)
        self._secret: bytes | None = None

    async def enabled(self) -> bool:
        """Whether the storage can keep the secret that makes sealed layers reproducible."""
        return await self._storage_secret() is not None

    async def _storage_secret(self) -> bytes | None:
        if self._secret is None:
            self._secret = await self.backend.secret(SECRET_NAME)
        return self._secret

    async def data_key(self, key_id: bytes) -> bytes:
        secret = await self._storage_secret()
        if secret is None:
            raise RuntimeError("the storage keeps no secret: sealed layers are stored, not made")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO + key_id).derive(secret)

    async def sealer(self, key_id: bytes, chunk_size: int, source_digest: str) -> Callable[[str, int], Encryptor]:
        """A fresh sealer for one pass over the source layer ``source_digest``."""
        return deterministic_sealer(await self.data_key(key_id), key_id, chunk_size, source_digest.encode())

    async def measure(self, repo: str, source_digest: str, source_size: int, models: tuple[str, ...],
                      key_id: bytes, chunk_size: int, limits: TarLimits,
                      progress: Callable[[int], None] | None = None) -> LayerOutcome:
        """The sealed layer's digest, size and ``diff_id``, made and dropped (not stored)."""
        seal = await self.sealer(key_id, chunk_size, source_digest)
        return await measure_rewrite(self.backend, repo, source_digest, source_size, compile_globs(models), seal,
                                     limits, progress)

    async def record(self, repo: str, recipe: SealedRecipe, build_id: str) -> None:
        await self.store.record_sealed(repo, _row(recipe), build_id)

    async def link(self, from_repo: str, repo: str, digest: str, build_id: str) -> bool:
        """Serve ``from_repo``'s sealed layer ``digest`` from ``repo`` too; False when it
        is not one (a stored blob, to be mounted)."""
        return await self.store.link_sealed(from_repo, repo, digest, build_id)

    async def find(self, repo: str, digest: str) -> SealedLayer | None:
        """The sealed layer ``digest`` of ``repo`` while its source layer is there to make
        it from (a storage that lost it answers "unknown", not a layer that can't be made)."""
        row = await self.store.sealed_layer(repo, digest)
        if row is None:
            return None
        recipe = _recipe(digest, row)
        try:
            await self.backend.stat_blob(recipe.source_repository, recipe.source_digest)
        except RegistryError as exc:
            if exc.error in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        return SealedLayer(repo, recipe, self)


def _row(recipe: SealedRecipe) -> dict[str, Any]:
    """A recipe as its ``sealed_layers`` columns (bytes as hex, globs as JSON)."""
    return {**asdict(recipe), "key_id": recipe.key_id.hex(), "models": json.dumps(list(recipe.models))}


def _recipe(digest: str, row: dict[str, Any]) -> SealedRecipe:
    return SealedRecipe(**{**row, "digest": digest, "key_id": bytes.fromhex(row["key_id"]),
                           "models": tuple(json.loads(row["models"]))})
