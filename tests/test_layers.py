"""The layer pipeline against a real filesystem backend: rewrite, digests, bad layers."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os

import pytest
import zstandard

from packer.layers import Codec, LayerError, rewrite_layer, scan_layer
from packer.licensing.envelope import Encryptor
from packer.tarstream import TarLimits, compile_globs
from proxy.backend.filesystem import FilesystemBackend
from tests.support.tarlayers import MODELS, layer_with_models, plain_layer

KEY, KEY_ID = os.urandom(32), os.urandom(16)
SELECT = compile_globs([MODELS])


def seal(name: str, size: int) -> Encryptor:
    return Encryptor(KEY, KEY_ID, size)


@pytest.fixture
async def backend(tmp_path):
    b = FilesystemBackend(tmp_path / "store")
    await b.start()
    yield b
    await b.close()


async def put_blob(backend, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up = await backend.start_upload(repo)

    async def one():
        yield data

    await backend.finish_upload(repo, up.upload_id, digest, one())
    return digest


async def fetch(backend, repo, digest) -> bytes:
    reader = await backend.open_blob(repo, digest)
    return b"".join([c async for c in reader])


@pytest.mark.parametrize("codec", ["gzip", "zstd", "tar"])
async def test_rewrite_each_codec(backend, tmp_path, codec):
    tar, models = layer_with_models(tmp_path)
    blob = {"gzip": lambda t: gzip.compress(t, mtime=0), "zstd": zstandard.ZstdCompressor().compress,
            "tar": lambda t: t}[codec](tar)
    digest = await put_blob(backend, "images/a", blob)
    assert await scan_layer(backend, "images/a", digest, len(blob), SELECT, TarLimits())
    seen = []
    out = await rewrite_layer(backend, "images/a", "images/a", digest, len(blob), SELECT, seal, TarLimits(),
                              Codec(), seen.append)
    assert sum(seen) == len(blob)
    new = await fetch(backend, "images/a", out.digest)
    assert out.size == len(new) and out.digest == "sha256:" + hashlib.sha256(new).hexdigest()
    plain = {"gzip": gzip.decompress, "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
             "tar": lambda b: b}[codec](new)
    assert out.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert sorted(out.encrypted) == sorted(models)
    assert new[:2] == blob[:2]  # same codec


async def test_scan_without_models_reads_everything(backend):
    blob = gzip.compress(plain_layer({"usr/lib/x.so": os.urandom(5000)}))
    digest = await put_blob(backend, "images/b", blob)
    assert not await scan_layer(backend, "images/b", digest, len(blob), SELECT, TarLimits())


@pytest.mark.parametrize(
    "mangle,match",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:30] + bytes([b[30] ^ 0xFF]) + b[31:], "not a valid|truncated|corrupt"),
        (lambda b: b"not a tar at all" * 100, "truncated|corrupt|checksum"),
    ],
)
async def test_bad_layers_fail_clearly_and_upload_nothing(backend, tmp_path, mangle, match):
    tar, _ = layer_with_models(tmp_path)
    blob = mangle(gzip.compress(tar, mtime=0))
    digest = await put_blob(backend, "images/c", blob)
    with pytest.raises(LayerError, match=match):
        await rewrite_layer(backend, "images/c", "images/c", digest, len(blob), SELECT, seal, TarLimits(), Codec())
    uploads = backend._repo_dir("images/c") / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


async def test_tar_bomb_limits(backend):
    blob = gzip.compress(plain_layer({"opt/models/a.onnx": b"\0" * 2_000_000}))
    digest = await put_blob(backend, "images/d", blob)
    with pytest.raises(LayerError, match="size limit"):
        await rewrite_layer(backend, "images/d", "images/d", digest, len(blob), SELECT, seal,
                            TarLimits(max_bytes=1_000_000), Codec())


async def test_source_digest_is_verified(backend, tmp_path):
    blob = gzip.compress(plain_layer({"opt/models/a.onnx": b"model"}))
    digest = await put_blob(backend, "images/e", blob)
    # The descriptor's size disagrees with the blob: refused, not silently accepted.
    with pytest.raises(LayerError, match="descriptor says"):
        await rewrite_layer(backend, "images/e", "images/e", digest, len(blob) + 1, SELECT, seal, TarLimits(), Codec())


@pytest.mark.parametrize("output", [None, "tar"])  # "tar": uncompressed, the diff_id hashed by the writer
async def test_cancelling_a_rewrite_stops_its_threads_and_upload(backend, tmp_path, output):
    import threading

    blob = gzip.compress(plain_layer({"opt/models/a.onnx": os.urandom(24_000_000)}), 1)
    digest = await put_blob(backend, "images/f", blob)
    before = set(threading.enumerate())
    started = asyncio.Event()

    def progress(n: int) -> None:
        started.set()

    task = asyncio.ensure_future(rewrite_layer(backend, "images/f", "images/f", digest, len(blob), SELECT, seal,
                                               TarLimits(), Codec(), progress, output))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    def leftover() -> list[str]:
        # The event loop's default executor may have grown meanwhile: that is not ours.
        return [t.name for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio_")]

    for _ in range(100):
        if not leftover():
            break
        await asyncio.sleep(0.05)
    assert leftover() == []
    # The upload session was cancelled: nothing is left behind.
    uploads = backend._repo_dir("images/f") / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def _blob_file(backend: FilesystemBackend, digest: str):
    algorithm, encoded = digest.split(":", 1)
    return backend.root / "blobs" / algorithm / encoded[:2] / encoded


async def test_unverified_source_is_hashed_and_confirmed(tmp_path):
    blob = gzip.compress(plain_layer({"usr/lib/x.so": os.urandom(5000)}))
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    await put_blob(FilesystemBackend(tmp_path / "store"), "images/g", blob)
    # A restarted process has verified nothing: the first whole read hashes the source,
    # and its match lets later reads trust the blob.
    fresh = FilesystemBackend(tmp_path / "store")
    assert not fresh.verified_blobs.holds(digest, len(blob))
    assert not await scan_layer(fresh, "images/g", digest, len(blob), SELECT, TarLimits())
    assert fresh.verified_blobs.holds(digest, len(blob))


async def test_corrupt_source_at_rest_is_caught_when_reads_are_always_verified(tmp_path):
    store = FilesystemBackend(tmp_path / "store", verify_reads="always")
    tar, _ = layer_with_models(tmp_path)
    blob = gzip.compress(tar, mtime=0)
    digest = await put_blob(store, "images/h", blob)
    # Bit rot that still decompresses: the gzip member's mtime field.
    path = _blob_file(store, digest)
    data = bytearray(path.read_bytes())
    data[4] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LayerError, match="failed digest verification"):
        await rewrite_layer(store, "images/h", "images/h", digest, len(blob), SELECT, seal, TarLimits(), Codec())
    uploads = store._repo_dir("images/h") / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


class _StreamingOnly(FilesystemBackend):
    """Storage without local files for the pipeline: every byte goes through the event loop."""

    async def upload_path(self, repo: str, upload_id: str):
        return None

    async def open_blob(self, repo: str, digest: str, start: int = 0, length: int | None = None):
        reader = await super().open_blob(repo, digest, start, length)
        reader.path = None
        return reader


async def test_rewrite_through_the_event_loop(tmp_path):
    store = _StreamingOnly(tmp_path / "store", verify_reads="always")
    tar, models = layer_with_models(tmp_path)
    blob = gzip.compress(tar, mtime=0)
    digest = await put_blob(store, "images/i", blob)
    out = await rewrite_layer(store, "images/i", "images/i", digest, len(blob), SELECT, seal, TarLimits(), Codec())
    new = await fetch(store, "images/i", out.digest)
    assert out.size == len(new) and out.digest == "sha256:" + hashlib.sha256(new).hexdigest()
    assert out.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(new)).hexdigest()
    assert sorted(out.encrypted) == sorted(models)


def _refuse_direct_writes(monkeypatch):
    """A filesystem that accepts O_DIRECT at open but refuses direct writes."""
    import errno
    import fcntl

    import packer.layers as layers

    write_all = layers._write_all

    def refusing(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "direct I/O refused")
        write_all(fd, data)

    monkeypatch.setattr(layers, "_write_all", refusing)


@pytest.mark.parametrize("disk", ["direct", "no-direct-io", "direct-writes-refused"])
async def test_new_layer_written_to_the_session_file(backend, monkeypatch, disk):
    if disk == "no-direct-io":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    elif disk == "direct-writes-refused":
        if not hasattr(os, "O_DIRECT"):
            pytest.skip("no O_DIRECT here")
        _refuse_direct_writes(monkeypatch)
    # Random content: the new layer spans several staging buffers and ends unaligned.
    blob = gzip.compress(plain_layer({"opt/models/a.onnx": os.urandom(20_000_001), "etc/x": b"x"}), 1)
    digest = await put_blob(backend, "images/j", blob)
    out = await rewrite_layer(backend, "images/j", "images/j", digest, len(blob), SELECT, seal, TarLimits(), Codec())
    new = await fetch(backend, "images/j", out.digest)
    assert out.size == len(new) > 20_000_000
    assert out.digest == "sha256:" + hashlib.sha256(new).hexdigest()
    assert out.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(new)).hexdigest()


async def test_disk_full_while_writing_the_new_layer(backend, monkeypatch):
    import errno

    import packer.layers as layers

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(layers, "_write_all", full)
    blob = gzip.compress(plain_layer({"opt/models/a.onnx": os.urandom(12_000_000)}), 1)
    digest = await put_blob(backend, "images/k", blob)
    with pytest.raises(LayerError, match="storage failed: cannot write the new layer: No space left"):
        await rewrite_layer(backend, "images/k", "images/k", digest, len(blob), SELECT, seal, TarLimits(), Codec())
    uploads = backend._repo_dir("images/k") / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
