"""Sealing a package's own model files: streamed chunk by chunk, checked against the
source digest, nothing published on a bad read; copies in the clear are refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from packer.fullbuild.names import BuildError
from packer.fullbuild.package_files import check_no_clear_copies, model_layers, seal_blob
from packer.licensing.envelope import Decryptor, encrypted_size
from packer.tarstream import compile_globs
from proxy.backend.filesystem import FilesystemBackend
from proxy.oci import mediatypes as mt
from proxy.oci.errors import RegistryError

KEY, KEY_ID = os.urandom(32), os.urandom(16)
PIECE = 64 * 1024  # the storage's read size in these tests


class Watching:
    """The real backend, recording the largest piece written to an upload and which
    uploads were cancelled; ``flip`` corrupts one byte of what a blob read returns."""

    def __init__(self, backend: FilesystemBackend, flip: int | None = None) -> None:
        self.backend, self.flip = backend, flip
        self.largest = 0
        self.cancelled: list[str] = []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    async def open_blob(self, repo, digest, start=0, length=None):
        reader = await self.backend.open_blob(repo, digest, start, length)
        if self.flip is None:
            return reader
        flip, inner = self.flip, reader

        class Flipped:
            size = inner.size

            async def __aiter__(self):
                seen = 0
                async for piece in inner:
                    if seen <= flip < seen + len(piece):
                        piece = piece[: flip - seen] + bytes([piece[flip - seen] ^ 1]) + piece[flip - seen + 1:]
                    seen += len(piece)
                    yield piece

            def confirm(self):
                pass

            async def close(self):
                await inner.close()

        return Flipped()

    async def write_upload(self, repo, upload_id, chunks, start=None):
        async def watched():
            async for piece in chunks:
                self.largest = max(self.largest, len(piece))
                yield piece

        return await self.backend.write_upload(repo, upload_id, watched(), start)

    async def cancel_upload(self, repo, upload_id):
        self.cancelled.append(upload_id)
        await self.backend.cancel_upload(repo, upload_id)


@pytest.fixture
async def backend(tmp_path):
    b = FilesystemBackend(tmp_path / "store", chunk_size=PIECE)
    await b.start()
    yield b
    await b.close()


async def put(backend, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up = await backend.start_upload(repo)

    async def one():
        yield data

    await backend.finish_upload(repo, up.upload_id, digest, one())
    return digest


async def read(backend, repo: str, digest: str) -> bytes:
    reader = await backend.open_blob(repo, digest)
    try:
        return b"".join([piece async for piece in reader])
    finally:
        await reader.close()


async def test_seal_streams_piece_by_piece(backend):
    model = os.urandom(3 * 1024 * 1024 + 17)
    digest = await put(backend, "business/d/a", model)
    watching = Watching(backend)
    new, size = await seal_blob(watching, "business/d/a", digest, len(model), KEY, KEY_ID, 4096)
    assert size == encrypted_size(len(model), 4096)
    # Never more than one storage read (plus its chunks' tags) in flight: not the file.
    assert 0 < watching.largest <= PIECE + 4096 + 16 * (PIECE // 4096 + 2)
    sealed = await read(backend, "business/d/a", new)
    assert "sha256:" + hashlib.sha256(sealed).hexdigest() == new
    opened = Decryptor(KEY, KEY_ID)
    plain = opened.update(sealed)
    opened.finish()
    assert plain == model


@pytest.mark.parametrize("flip, size_delta", [(100_000, 0), (None, -1)])
async def test_a_bad_source_publishes_nothing(backend, flip, size_delta):
    model = os.urandom(300_000)
    digest = await put(backend, "business/d/b", model)
    watching = Watching(backend, flip)
    with pytest.raises(BuildError) as refused:
        await seal_blob(watching, "business/d/b", digest, len(model) + size_delta, KEY, KEY_ID, 4096)
    assert digest in str(refused.value)
    assert len(watching.cancelled) == 1
    with pytest.raises(RegistryError):
        await backend.upload_status("business/d/b", watching.cancelled[0])


def layer(title: str, data: bytes, **annotations: str) -> dict:
    return {"mediaType": "application/octet-stream", "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data), "annotations": {mt.ANNOTATION_TITLE: title, **annotations}}


def test_models_are_picked_by_path_and_copies_refused():
    layers = [layer("bin/run", b"elf"), layer("model/a.rknn", b"weights"), layer("model/b.rknn", b"more")]
    select = compile_globs(["model/*.rknn"])
    assert model_layers(layers, select) == [1, 2]
    check_no_clear_copies(layers, [1, 2])
    copied = [*layers, layer("conf/blob.bin", b"weights")]
    with pytest.raises(BuildError, match="conf/blob.bin"):
        check_no_clear_copies(copied, model_layers(copied, select))
    packed = [layer("model/x.rknn", b"tgz", **{"io.deis.oras.content.unpack": "true"})]
    with pytest.raises(BuildError, match="packed directory"):
        model_layers(packed, compile_globs(["model/*"]))
    traversal = [layer("model/../../etc/x.rknn", b"x")]
    with pytest.raises(BuildError):
        model_layers(traversal, compile_globs(["model/**"]))
