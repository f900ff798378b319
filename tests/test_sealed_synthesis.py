"""Sealed layers measured at build time and synthesised again, byte for byte, on pull:
deterministic envelopes, ``measure_rewrite`` and ``synthesise_layer`` (windows,
verification before the last byte, early close, bounded memory, both storage kinds)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import tarfile
import threading
import tracemalloc
import uuid

import pytest
from isal import igzip

from packer.layers import CHUNK, LayerError, measure_rewrite, rewrite_layer, synthesise_layer
from packer.licensing.envelope import (
    Decryptor, Encryptor, EnvelopeHeader, decrypt_stream, derived_nonce_prefix, deterministic_sealer,
)
from packer.tarstream import TarLimits, compile_globs
from proxy.backend.filesystem import FilesystemBackend
from proxy.backend.remote import RegistryBackend
from tests.support.tarlayers import MODELS, layer_with_models, plain_layer
from tests.test_layers import Codec, _blob_file, _StreamingOnly, backend, fetch, put_blob  # noqa: F401 - backend is a fixture

KEY, KEY_ID = os.urandom(32), os.urandom(16)
SELECT = compile_globs([MODELS])


def sealer(digest: str, key: bytes = KEY):
    """A fresh deterministic factory: one per pass over a layer."""
    return deterministic_sealer(key, KEY_ID, 4096, digest.encode())


# -- deterministic envelopes ---------------------------------------------------------
def _seal(plain: bytes, **kwargs) -> bytes:
    enc = Encryptor(KEY, KEY_ID, len(plain), 4096, **kwargs)
    return bytes(enc.update(plain)) + enc.finish()


def test_derived_prefix_gives_identical_envelopes_that_still_open():
    plain = os.urandom(20_000)
    prefix = derived_nonce_prefix(KEY, b"sha256:abc", 0)
    assert len(prefix) == 8 and prefix == derived_nonce_prefix(KEY, b"sha256:abc", 0)
    a, b = _seal(plain, nonce_prefix=prefix), _seal(plain, nonce_prefix=prefix)
    assert a == b and EnvelopeHeader.unpack(a).nonce_prefix == prefix
    dec = Decryptor(KEY)
    assert dec.update(a) == plain
    dec.finish()
    # Without a prefix: random, as before.
    assert _seal(plain) != _seal(plain)


def test_derived_prefix_depends_on_every_input():
    base = derived_nonce_prefix(KEY, b"sha256:abc", 0)
    others = {derived_nonce_prefix(KEY, b"sha256:abc", 1), derived_nonce_prefix(KEY, b"sha256:abd", 0),
              derived_nonce_prefix(os.urandom(32), b"sha256:abc", 0)}
    assert base not in others and len(others) == 3
    # Length-prefixed context: moving bytes between context and ordinal changes the prefix.
    assert derived_nonce_prefix(KEY, b"", 0) != derived_nonce_prefix(KEY, b"\0" * 8, 0)


@pytest.mark.parametrize("prefix", [b"", b"1234567", b"123456789", "12345678"])
def test_bad_nonce_prefix_rejected(prefix):
    with pytest.raises(ValueError, match="nonce prefix"):
        Encryptor(KEY, KEY_ID, 10, nonce_prefix=prefix)


def test_deterministic_sealer_numbers_files_in_call_order():
    def run(factory) -> list[bytes]:
        out = []
        for name, data in [("a.onnx", b"x" * 5000), ("b.onnx", b"x" * 5000), ("a.onnx", b"x" * 5000)]:
            enc = factory(name, len(data))
            out.append(bytes(enc.update(data)) + enc.finish())
        return out

    first, again = run(sealer("sha256:l1")), run(sealer("sha256:l1"))
    assert first == again  # a fresh factory per pass: the same bytes
    prefixes = [EnvelopeHeader.unpack(e).nonce_prefix for e in first]
    assert len(set(prefixes)) == 3  # the same name and content later in the walk: another nonce
    assert run(sealer("sha256:l2"))[0] != first[0]
    assert run(sealer("sha256:l1", os.urandom(32)))[0] != first[0]


# -- measuring and synthesising --------------------------------------------------------
def big_layer(model_size: int) -> bytes:
    """A gzip layer that is mostly one model, and a small file after it."""
    tar = plain_layer({"opt/models/big.onnx": os.urandom(model_size), "etc/after": b"after\n"})
    return igzip.compress(tar, 1)


async def collect(gen) -> list[bytes]:
    return [piece async for piece in gen]


async def stored_and_measured(store, repo: str, blob: bytes):
    """The layer rewritten and stored (uncompressed), and measured only; both sealed
    deterministically."""
    digest = await put_blob(store, repo, blob)
    stored = await rewrite_layer(store, repo, repo, digest, len(blob), SELECT, sealer(digest), TarLimits(), Codec(),
                                 output="tar")
    measured = await measure_rewrite(store, repo, digest, len(blob), SELECT, sealer(digest), TarLimits())
    return digest, stored, measured, await fetch(store, repo, stored.digest)


def synth(store, repo, digest, blob, measured, start=0, end=None, expect_digest=None):
    return synthesise_layer(store, repo, digest, len(blob), SELECT, sealer(digest), TarLimits(),
                            expect_digest or measured.digest, measured.size, start, end)


async def test_measure_matches_the_stored_rewrite_and_synthesis_reproduces_it(backend, tmp_path):
    tar, models = layer_with_models(tmp_path)
    blob = gzip.compress(tar, mtime=0)
    digest, stored, measured, data = await stored_and_measured(backend, "images/m", blob)
    assert (measured.digest, measured.size, measured.diff_id, measured.codec) == \
        (stored.digest, stored.size, stored.diff_id, "tar")
    assert measured.digest == measured.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert measured.size == len(data) and measured.tar_size == len(tar)
    assert sorted(measured.encrypted) == sorted(stored.encrypted) == sorted(models)
    assert b"".join(await collect(synth(backend, "images/m", digest, blob, measured))) == data
    # The synthesised layer's models open with the key.
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        for name, plain in models.items():
            out = io.BytesIO()
            decrypt_stream(layer.extractfile(name), out, KEY)
            assert out.getvalue() == plain


async def test_windows_equal_the_slices(backend):
    blob = big_layer(3 * CHUNK + 12345)
    digest, _, measured, data = await stored_and_measured(backend, "images/w", blob)
    n = len(data)
    assert measured.size == n > 3 * CHUNK
    windows = [(0, 0), (0, None), (100, 200), (CHUNK - 10, CHUNK + 10), (CHUNK - 1, 3 * CHUNK + 1),
               (CHUNK, 2 * CHUNK - 1), (5, n - 2), (n - 1, None), (n - 1, n - 1), (n - CHUNK - 3, None)]
    for start, end in windows:
        pieces = await collect(synth(backend, "images/w", digest, blob, measured, start, end))
        assert b"".join(pieces) == data[start: n if end is None else end + 1], (start, end)
        assert all(0 < len(p) <= CHUNK for p in pieces)
    for start, end in [(-1, 5), (10, 9), (0, n), (n, None)]:
        with pytest.raises(ValueError, match="bad window"):  # at the call: before any response is started
            synth(backend, "images/w", digest, blob, measured, start, end)


async def test_wrong_expected_digest_withholds_the_last_piece(backend):
    blob = big_layer(2 * CHUNK + 777)
    digest, _, measured, data = await stored_and_measured(backend, "images/x", blob)
    got: list[bytes] = []
    with pytest.raises(LayerError, match="synthesised as"):
        async for piece in synth(backend, "images/x", digest, blob, measured, expect_digest="sha256:" + "0" * 64):
            got.append(piece)
    received = b"".join(got)
    assert len(received) < len(data) and data.startswith(received)


@pytest.mark.parametrize("case", ["gzip-verified-reads", "tar-model-byte"])
async def test_corrupt_source_fails_before_the_window_completes(tmp_path, case):
    store = FilesystemBackend(tmp_path / "store", verify_reads="always" if case == "gzip-verified-reads" else "once")
    tar = plain_layer({"opt/models/big.onnx": os.urandom(2 * CHUNK + 99), "etc/after": b"after\n"})
    blob = gzip.compress(tar, mtime=0) if case == "gzip-verified-reads" else tar
    digest, _, measured, data = await stored_and_measured(store, "images/c", blob)
    path = _blob_file(store, digest)
    raw = bytearray(path.read_bytes())
    # gzip: the member's mtime (still decompresses; only the source digest can tell);
    # tar: a byte of the model (the storage vouches for the blob: the output digest tells).
    raw[4 if case == "gzip-verified-reads" else 1024 + 1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    for start, end in [(0, None), (10, CHUNK + 10)]:
        got: list[bytes] = []
        with pytest.raises(LayerError, match="failed digest verification|synthesised as"):
            async for piece in synth(store, "images/c", digest, blob, measured, start, end):
                got.append(piece)
        window = data[start: len(data) if end is None else end + 1]
        received = b"".join(got)
        # Pieces before the last may have gone out (a changed model byte changes them);
        # the window is never complete.
        assert len(received) < len(window)
        assert window.startswith(received) == (case == "gzip-verified-reads")


@pytest.mark.parametrize("mangle,match", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:], "not a valid|truncated|corrupt|checksum"),
])
async def test_bad_source_fails_measure_and_synthesis(tmp_path, mangle, match):
    store = FilesystemBackend(tmp_path / "store")
    await store.start()
    good = big_layer(2 * CHUNK)
    digest, _, measured, data = await stored_and_measured(store, "images/g", good)
    bad = mangle(good)
    bad_digest = await put_blob(store, "images/b", bad)
    with pytest.raises(LayerError, match=match):
        await measure_rewrite(store, "images/b", bad_digest, len(bad), SELECT, sealer(bad_digest), TarLimits())
    # Served under the good layer's expectations: fails, the window never completes.
    got: list[bytes] = []
    with pytest.raises(LayerError, match=match):
        async for piece in synthesise_layer(store, "images/b", bad_digest, len(bad), SELECT, sealer(bad_digest),
                                            TarLimits(), measured.digest, measured.size):
            got.append(piece)
    assert len(b"".join(got)) < len(data)
    await store.close()


async def test_limits_apply_to_measure_and_synthesis(backend):
    blob = big_layer(2 * CHUNK)
    digest, _, measured, _ = await stored_and_measured(backend, "images/l", blob)
    small = TarLimits(max_bytes=CHUNK)
    with pytest.raises(LayerError, match="size limit"):
        await measure_rewrite(backend, "images/l", digest, len(blob), SELECT, sealer(digest), small)
    with pytest.raises(LayerError, match="size limit"):
        await collect(synthesise_layer(backend, "images/l", digest, len(blob), SELECT, sealer(digest), small,
                                       measured.digest, measured.size))


class _TrackedReaders(FilesystemBackend):
    """Records every blob reader opened and whether it was closed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.closed: list[bool] = []

    async def open_blob(self, repo: str, digest: str, start: int = 0, length: int | None = None):
        reader = await super().open_blob(repo, digest, start, length)
        index = len(self.closed)
        self.closed.append(False)
        close = reader.close

        async def tracked() -> None:
            self.closed[index] = True
            await close()

        reader.close = tracked
        return reader


def _leftover(before: set[threading.Thread]) -> list[str]:
    # The event loop's default executor may have grown meanwhile: that is not ours.
    return [t.name for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio_")]


@pytest.mark.parametrize("verify", ["always", "once"])
async def test_early_close_stops_threads_and_releases_the_source(tmp_path, verify):
    store = _TrackedReaders(tmp_path / "store", verify_reads=verify)
    blob = big_layer(24 * CHUNK)
    digest, _, measured, _ = await stored_and_measured(store, "images/e", blob)
    before = set(threading.enumerate())
    store.closed.clear()
    gen = synth(store, "images/e", digest, blob, measured)
    first = await gen.__anext__()
    assert len(first) == CHUNK
    assert _leftover(before)  # the pipeline is running
    await gen.aclose()
    assert store.closed == [True]
    for _ in range(100):
        if not _leftover(before):
            break
        await asyncio.sleep(0.05)
    assert _leftover(before) == []


async def test_synthesis_memory_does_not_grow_with_the_layer(backend):
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on in this process")
    blob = big_layer(64 * CHUNK)
    digest = await put_blob(backend, "images/big", blob)
    size = len(blob)
    measured = await measure_rewrite(backend, "images/big", digest, size, SELECT, sealer(digest), TarLimits())
    del blob  # only its size is needed now
    tracemalloc.start()
    try:
        hasher, total = hashlib.sha256(), 0
        async for piece in synthesise_layer(backend, "images/big", digest, size, SELECT, sealer(digest),
                                            TarLimits(), measured.digest, measured.size):
            hasher.update(piece)
            total += len(piece)
        del piece
        synth_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        again = await measure_rewrite(backend, "images/big", digest, size, SELECT, sealer(digest), TarLimits())
        measure_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == measured.size > 64 * CHUNK
    assert "sha256:" + hasher.hexdigest() == measured.digest == again.digest
    # A bounded number of 1 MiB pieces in flight between the threads (measured: about
    # 17 MiB when the reader lags, inflate queue included), whatever the layer's size.
    assert synth_peak < 24 * CHUNK and measure_peak < 24 * CHUNK, (synth_peak, measure_peak)


async def test_through_the_event_loop(tmp_path):
    store = _StreamingOnly(tmp_path / "store", verify_reads="always")
    blob = big_layer(2 * CHUNK + 5)
    digest, stored, measured, data = await stored_and_measured(store, "images/s", blob)
    assert measured.digest == stored.digest
    assert b"".join(await collect(synth(store, "images/s", digest, blob, measured, 7, CHUNK + 7))) == data[7:CHUNK + 8]


async def test_remote_storage(distribution):
    store = RegistryBackend(distribution.url, read_chunk=64 * 1024)
    await store.start()
    try:
        repo = f"test/synth{uuid.uuid4().hex[:12]}"
        blob = big_layer(2 * CHUNK + 5)
        digest, stored, measured, data = await stored_and_measured(store, repo, blob)
        assert (measured.digest, measured.size) == (stored.digest, stored.size)
        assert b"".join(await collect(synth(store, repo, digest, blob, measured))) == data
        assert b"".join(await collect(synth(store, repo, digest, blob, measured, CHUNK - 1, CHUNK))) == \
            data[CHUNK - 1: CHUNK + 1]
        with pytest.raises(LayerError, match="synthesised as"):
            await collect(synth(store, repo, digest, blob, measured, expect_digest="sha256:" + "1" * 64))
    finally:
        await store.close()


async def test_cancelling_a_measure_stops_its_threads(backend):
    blob = big_layer(24 * CHUNK)
    digest = await put_blob(backend, "images/q", blob)
    before = set(threading.enumerate())
    started = asyncio.Event()
    task = asyncio.ensure_future(measure_rewrite(backend, "images/q", digest, len(blob), SELECT, sealer(digest),
                                                 TarLimits(), lambda n: started.set()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not _leftover(before):
            break
        await asyncio.sleep(0.05)
    assert _leftover(before) == []


async def test_missing_source_is_a_layer_error(backend):
    missing = "sha256:" + "ab" * 32
    with pytest.raises(LayerError, match="cannot read layer"):
        await measure_rewrite(backend, "images/none", missing, 10, SELECT, sealer(missing), TarLimits())
    with pytest.raises(LayerError, match="cannot read layer"):
        await collect(synthesise_layer(backend, "images/none", missing, 10, SELECT, sealer(missing), TarLimits(),
                                       missing, 2048))
