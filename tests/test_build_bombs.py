"""Decompression bombs in full builds: a layer that expands past ``[full_builds]
max_expansion`` times its compressed size, and a build whose rewritten layers together
pass ``max_build_bytes``, fail with an error naming the limit, the layer and the file,
and leave no licensed tag behind."""

from __future__ import annotations

import gzip
import os

import pytest

from proxy.app import create_app
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.tarlayers import Layer, _assemble, plain_layer
from tests.test_fullbuild_e2e import keys, make_package, run_build  # noqa: F401 - keys is a fixture


def _app(tmp_path, backend_kind, request, keys, **limits):  # noqa: F811
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    config = make_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
        **{f"full_builds__{k}": v for k, v in limits.items()},
    )
    return create_app(config)


def _image(*tars: bytes):
    return _assemble([Layer(t, gzip.compress(t, mtime=0), mt.OCI_LAYER_GZIP, {}) for t in tars])


async def test_a_layer_that_expands_too_far_fails_the_build(aiohttp_client, tmp_path, backend_kind, request,
                                                           keys):  # noqa: F811
    fb = await aiohttp_client(_app(tmp_path, backend_kind, request, keys, max_expansion=20, expansion_floor=0))
    base = plain_layer({"etc/os-release": b"ID=test\n"})
    bomb = plain_layer({"opt/app/readme": b"hello\n", "opt/models/zeros.onnx": bytes(4 << 20)})
    image = _image(base, bomb)
    assert len(image.layers[1].blob) * 20 < len(bomb)  # 4 MiB of zeros in a few KB
    pkg = await make_package(fb, tmp_path, image=image)
    build = await run_build(fb, pkg.name, expect="failed")
    error = build["error"]
    assert "max_expansion" in error and image.layers[1].digest in error and "layer 1" in error
    assert "opt/models/zeros.onnx" in error
    assert (await fb.get(f"/v2/{pkg.image_repo}/manifests/v1-soft")).status == 404
    assert (await fb.get(f"/v2/{pkg.business}/manifests/1.0-soft")).status == 404


async def test_a_build_stores_at_most_max_build_bytes(aiohttp_client, tmp_path, backend_kind, request,
                                                     keys):  # noqa: F811
    fb = await aiohttp_client(_app(tmp_path, backend_kind, request, keys, max_build_bytes=500_000))
    first = plain_layer({"opt/models/a.onnx": os.urandom(300_000)})
    second = plain_layer({"opt/models/b.onnx": os.urandom(300_000)})
    pkg = await make_package(fb, tmp_path, image=_image(first, second))
    build = await run_build(fb, pkg.name, expect="failed")
    error = build["error"]
    assert "max_build_bytes" in error and "layer 1" in error and "opt/models/b.onnx" in error
    assert (await fb.get(f"/v2/{pkg.image_repo}/manifests/v1-soft")).status == 404
    # Within the limits the same image builds.
    fb2 = await aiohttp_client(_app(tmp_path / "again", backend_kind, request, keys, max_build_bytes=700_000))
    pkg2 = await make_package(fb2, tmp_path, image=_image(first, second))
    await run_build(fb2, pkg2.name)


@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(tmp_path, value):
    from packer.fullbuild.settings import FullBuildConfig

    with pytest.raises(ValueError):
        FullBuildConfig(max_expansion=value)
    with pytest.raises(ValueError):
        FullBuildConfig(max_build_bytes=value)
