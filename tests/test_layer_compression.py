"""``[full_builds] layer_compression``: every form of a rewritten layer (uncompressed,
gzip, zstd, and ``auto`` choosing between them) pulled by skopeo and podman on both
backends; and a second business system reusing the licensed image without a rewrite."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
import zstandard

from packer.layers import Codec, LayerError, measure_layer, rewrite_layer
from packer.tarstream import TarLimits, compile_globs
from proxy.app import create_app
from proxy.backend.filesystem import FilesystemBackend
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.podman import PODMAN, Podman
from tests.test_layers import fetch, put_blob, seal
from tests.support.tarlayers import MODELS, BuiltImage, Layer, _assemble, plain_layer
from tests.test_fullbuild_e2e import (
    SKOPEO, blob, descriptor, make_package, manifest, push_generic, run, run_build, write_business,
)

# keys is used by the config fixture below
from tests.test_fullbuild_e2e import keys  # noqa: F401

pytestmark = pytest.mark.skipif(not Path(SKOPEO).exists(), reason="skopeo is not installed")


def _config(tmp_path, backend_kind, request, keys, mode: str):  # noqa: F811
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    return make_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
        full_builds__layer_compression=mode,
    )


def decompress(media_type: str, data: bytes) -> bytes:
    """A layer read by its media type, as a client does (not by sniffing its bytes)."""
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return gzip.decompress(data)
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert media_type in (mt.OCI_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar"), media_type
    return data


def image_with_small_model(tmp_path: Path) -> BuiltImage:
    """A base layer without models, two layers that are mostly a model (gzip, zstd) and
    one whose model is a small part of it (gzip): ``auto`` keeps gzip for that one.
    Plain tar features only (podman refuses old GNU sparse entries in any layer)."""
    base = plain_layer({"etc/os-release": b"ID=test\n", "usr/bin/run": b"#!/bin/sh\necho run\n"})
    big = plain_layer({"opt/models/face.onnx": os.urandom(300_000), "opt/app/config.yaml": b"threshold: 1"})
    extra = plain_layer({"opt/models/extra.onnx": os.urandom(50_000), "opt/app/readme.md": b"zstd layer\n"})
    small = plain_layer({"opt/models/tiny.onnx": os.urandom(1000), "opt/app/data.bin": os.urandom(100_000)})
    gz = lambda tar: Layer(tar, gzip.compress(tar, mtime=0), mt.OCI_LAYER_GZIP, {})  # noqa: E731
    return _assemble([gz(base), gz(big), Layer(extra, zstandard.ZstdCompressor().compress(extra), mt.OCI_LAYER_ZSTD, {}),
                      gz(small)])


# Expected media type of layers 1, 2 (rewritten: most of each is its model) and 3 (a
# small model beside 100 KB of other data); layer 0 has no model and keeps its digest.
EXPECTED = {
    "auto": [mt.OCI_LAYER_TAR, mt.OCI_LAYER_TAR, mt.OCI_LAYER_GZIP],
    "none": [mt.OCI_LAYER_TAR] * 3,
    "gzip": [mt.OCI_LAYER_GZIP] * 3,
    "zstd": [mt.OCI_LAYER_ZSTD] * 3,
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
async def test_every_layer_form_pulls(aiohttp_client, tmp_path, backend_kind, request, keys, mode):  # noqa: F811
    fb = await aiohttp_client(create_app(_config(tmp_path, backend_kind, request, keys, mode)))
    pkg = await make_package(fb, tmp_path, image=image_with_small_model(tmp_path))
    build = await run_build(fb, pkg.name)
    licensed, digest = await manifest(fb, pkg.image_repo, "v1-soft")
    source = pkg.image.layers
    assert licensed["layers"][0] == {"mediaType": source[0].media_type, "digest": source[0].digest,
                                     "size": len(source[0].blob)}
    assert [layer["mediaType"] for layer in licensed["layers"][1:4]] == EXPECTED[mode]
    config = json.loads(await blob(fb, pkg.image_repo, licensed["config"]["digest"]))
    for i, layer in enumerate(licensed["layers"]):
        data = await blob(fb, pkg.image_repo, layer["digest"])
        assert len(data) == layer["size"]
        tar = decompress(layer["mediaType"], data)
        assert config["rootfs"]["diff_ids"][i] == "sha256:" + hashlib.sha256(tar).hexdigest()
        if layer["mediaType"] == mt.OCI_LAYER_TAR:
            assert layer["digest"] == config["rootfs"]["diff_ids"][i]  # one hash for both
        if 1 <= i <= 3:
            assert build["layers"][i]["state"] == "rewritten"
            assert build["layers"][i]["result_digest"] == layer["digest"]

    host = f"127.0.0.1:{fb.server.port}"
    # skopeo's oci: transport gzips uncompressed layers unless told not to.
    copied = await run(SKOPEO, "copy", "--src-tls-verify=false", "--preserve-digests",
                       "--dest-oci-accept-uncompressed-layers", f"docker://{host}/{pkg.image_repo}:v1-soft",
                       f"oci:{tmp_path / 'skopeo'}:x")
    assert copied.returncode == 0, copied.stderr
    # The layers as they are (skopeo verifies each against its digest).
    layout = json.loads((tmp_path / "skopeo" / "index.json").read_text())
    copied_manifest = json.loads((tmp_path / "skopeo" / "blobs" / "sha256" /
                                  layout["manifests"][0]["digest"].split(":")[1]).read_text())
    assert [(l["mediaType"], l["digest"]) for l in copied_manifest["layers"]] == \
        [(l["mediaType"], l["digest"]) for l in licensed["layers"]]
    # ... and from the full package, through the business repository.
    part = await run(SKOPEO, "copy", "--src-tls-verify=false", f"docker://{host}/{pkg.business}@{digest}",
                     f"dir:{tmp_path / 'skopeo-dir'}")
    assert part.returncode == 0, part.stderr

    if PODMAN is None:
        pytest.skip("podman is not installed")
    podman = Podman(tmp_path / "podman")
    try:
        # podman decompresses every layer and checks it against the config's diff_ids.
        code, out = await podman("pull", "--tls-verify=false", f"{host}/{pkg.image_repo}:v1-soft")
        assert code == 0, out
        code, out = await podman("image", "inspect", f"{host}/{pkg.image_repo}:v1-soft")
        assert code == 0, out
        assert json.loads(out)[0]["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]
    finally:
        podman.close()


@pytest.fixture
async def fb_auto(aiohttp_client, tmp_path, backend_kind, request, keys):  # noqa: F811
    return await aiohttp_client(create_app(_config(tmp_path, backend_kind, request, keys, "auto")))


async def test_another_business_system_reuses_the_licensed_image(fb_auto, tmp_path):
    fb = fb_auto
    first = await make_package(fb, tmp_path)
    built = await run_build(fb, first.name)
    licensed_digest = built["result"]["images"][0]["digest"]

    # Another business system whose package runs the same image with the same models.
    uid = uuid.uuid4().hex[:8]
    generic, business = f"generic/lobby{uid}", f"business/lobby/face{uid}"
    config = descriptor(f"{first.image_repo}:v1", (MODELS,))
    await push_generic(fb, generic, "2.0", config, {"README.md": b"lobby\n"})
    await write_business(fb, business, "2.0", config, {"README.md": b"lobby\n"}, generic)
    second = await run_build(fb, f"{business}:2.0")
    assert second["id"] != built["id"]
    # Nothing was scanned or rewritten: the licensed image is the first build's.
    assert {layer["state"] for layer in second["layers"]} == {"reused"}
    assert not any(layer.get("result_digest") for layer in second["layers"])
    image = second["result"]["images"][0]
    assert image["digest"] == licensed_digest and image["key_id"] == built["result"]["images"][0]["key_id"]
    index, _ = await manifest(fb, business, "2.0-soft")
    assert index["manifests"][1]["digest"] == licensed_digest
    # Its parts are pullable from the second business repository.
    licensed, _ = await manifest(fb, business, licensed_digest)
    for layer in licensed["layers"]:
        await blob(fb, business, layer["digest"])


async def test_auto_counts_model_files_past_the_first(tmp_path):
    """Two model files of 40% each: neither alone is half the layer, together they are;
    a layer without enough model bytes is read to its end (and verified)."""

    backend = FilesystemBackend(tmp_path / "store")
    await backend.start()
    try:
        select = compile_globs([MODELS])
        tar = plain_layer({"opt/models/a.onnx": os.urandom(40_000), "opt/app/x": os.urandom(20_000),
                           "opt/models/b.onnx": os.urandom(40_000)})
        blob_ = gzip.compress(tar, mtime=0)
        digest = await put_blob(backend, "images/m", blob_)
        enough = (len(blob_) + 1) // 2
        assert await measure_layer(backend, "images/m", digest, len(blob_), select, TarLimits(), enough) == \
            (True, 80_000)
        assert await measure_layer(backend, "images/m", digest, len(blob_), select, TarLimits(), 0) == (True, 40_000)
        # Not enough model bytes: read to the end; the source's length is still checked.
        assert await measure_layer(backend, "images/m", digest, len(blob_), select, TarLimits(), 10**9) == \
            (True, 80_000)
        with pytest.raises(LayerError, match="descriptor says"):
            await measure_layer(backend, "images/m", digest, len(blob_) + 1, select, TarLimits(), 10**9)
    finally:
        await backend.close()


@pytest.mark.parametrize("output", ["tar", "gzip"])
async def test_large_layer_written_while_the_disk_thread_writes(tmp_path, output):
    """Several staging buffers: the first written in line, the rest by the disk thread
    while the next one fills; the bytes stored are the bytes hashed."""
    backend = FilesystemBackend(tmp_path / "store")
    await backend.start()
    try:
        tar = plain_layer({"opt/models/a.onnx": os.urandom(40_000_003), "etc/x": b"x"})
        blob_ = gzip.compress(tar, 1)
        digest = await put_blob(backend, "images/w", blob_)
        out = await rewrite_layer(backend, "images/w", "images/w", digest, len(blob_), compile_globs([MODELS]), seal,
                                  TarLimits(), Codec(), None, output)
        new = await fetch(backend, "images/w", out.digest)
        assert out.size == len(new) > 40_000_000 and out.codec == output
        assert out.digest == "sha256:" + hashlib.sha256(new).hexdigest()
        plain = new if output == "tar" else gzip.decompress(new)
        assert out.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
        assert (out.digest == out.diff_id) == (output == "tar")
    finally:
        await backend.close()


async def test_disk_failing_in_the_disk_thread(tmp_path, monkeypatch):
    import errno

    import packer.layers as layers

    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT here")
    calls = {"n": 0}
    write_all = layers._write_all

    def failing_later(fd, data):
        calls["n"] += 1
        if calls["n"] >= 3:  # the first stage is written in line, later ones in the disk thread
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        write_all(fd, data)

    monkeypatch.setattr(layers, "_write_all", failing_later)
    backend = FilesystemBackend(tmp_path / "store")
    await backend.start()
    try:
        blob_ = gzip.compress(plain_layer({"opt/models/a.onnx": os.urandom(40_000_000)}), 1)
        digest = await put_blob(backend, "images/e", blob_)
        with pytest.raises(LayerError, match="storage failed: cannot write the new layer: Input/output error"):
            await rewrite_layer(backend, "images/e", "images/e", digest, len(blob_), compile_globs([MODELS]),
                                seal, TarLimits(), Codec(), None, "tar")
        uploads = backend._repo_dir("images/e") / "_uploads"
        assert not uploads.exists() or not any(uploads.iterdir())
    finally:
        await backend.close()
