"""A licensed image's uncompressed sealed layers are made on each pull, never stored
(``packer/fullbuild/sealed.py``): what a pull gets, whole or by range, after a restart,
from a changed source, after garbage collection, many at once; and where they are stored
after all (a registry backend, ``sealed_layers = "store"``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat

import aiohttp
import pytest

from packer.fullbuild.sealed import SECRET_NAME
from proxy.api.manage.fullbuilds import FULL_BUILDS
from proxy.api.state import REGISTRY
from proxy.app import create_app
from proxy.backend.filesystem import FilesystemBackend
from proxy.oci import mediatypes as mt
from proxy.oci.errors import Errors, RegistryError
from tests.conftest import make_config, metadata_database
from tests.test_gc import _gc
from tests.test_fullbuild_e2e import (  # noqa: F401 - keys is a fixture
    blob, keys, make_package, manifest, run_build,
)


def _config(tmp_path, keys, backend="filesystem", dist=None, **overrides):  # noqa: F811
    return make_config(tmp_path, backend, dist,
                       licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
                       **overrides)


def _content_path(tmp_path, digest: str):
    hexdigest = digest.split(":", 1)[1]
    return tmp_path / "storage" / "blobs" / "sha256" / hexdigest[:2] / hexdigest


async def _licensed(fb, tmp_path):
    """A built package and its licensed image's sealed (uncompressed) layer."""
    pkg = await make_package(fb, tmp_path)
    build = await run_build(fb, pkg.name)
    licensed, digest = await manifest(fb, pkg.image_repo, "v1-soft")
    sealed = [layer for layer in licensed["layers"] if layer["mediaType"] == mt.OCI_LAYER_TAR]
    assert sealed, licensed
    return pkg, build, licensed, digest, sealed[0]


@pytest.fixture
async def fb(aiohttp_client, tmp_path, keys):  # noqa: F811
    return await aiohttp_client(create_app(_config(tmp_path, keys)))


async def test_the_sealed_layer_is_made_on_each_pull_and_never_stored(fb, tmp_path):
    pkg, build, licensed, _, layer = await _licensed(fb, tmp_path)
    digest, size = layer["digest"], layer["size"]
    assert not _content_path(tmp_path, digest).exists()
    with pytest.raises(RegistryError) as caught:
        await fb.app[REGISTRY].backend.stat_blob(pkg.image_repo, digest)
    assert caught.value.error is Errors.BLOB_UNKNOWN
    head = await fb.head(f"/v2/{pkg.image_repo}/blobs/{digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == size
    whole = await blob(fb, pkg.image_repo, digest)  # checks the digest
    assert len(whole) == size and await blob(fb, pkg.image_repo, digest) == whole
    assert await blob(fb, pkg.business, digest) == whole  # linked into the business repository
    for start, end in [(0, 0), (1, 4096), (size // 2, size // 2 + 70_000), (size - 1, size - 1), (0, size - 1)]:
        resp = await fb.get(f"/v2/{pkg.image_repo}/blobs/{digest}", headers={"Range": f"bytes={start}-{end}"})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
        assert await resp.read() == whole[start : end + 1]
    # Still the layer the build measured: nothing under blobs/ has its bytes.
    assert not _content_path(tmp_path, digest).exists()
    assert digest in {layer.get("result_digest") for layer in build["layers"]}


async def test_the_same_bytes_after_a_restart(aiohttp_client, tmp_path, keys):  # noqa: F811
    config = _config(tmp_path, keys)
    first = await aiohttp_client(create_app(config))
    pkg, _, _, _, layer = await _licensed(first, tmp_path)
    await first.close()
    second = await aiohttp_client(create_app(config))
    assert len(await blob(second, pkg.image_repo, layer["digest"])) == layer["size"]


async def test_a_changed_source_layer_ends_the_pull_with_an_error(fb, tmp_path):
    pkg, _, _, _, layer = await _licensed(fb, tmp_path)
    recipe = await fb.app[FULL_BUILDS].store.sealed_layer(pkg.image_repo, layer["digest"])
    path = _content_path(tmp_path, recipe["source_digest"])  # the layer the sealed one is made from
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte flipped
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    for headers in ({}, {"Range": "bytes=0-99"}):  # a range is checked against the whole layer too
        resp = await fb.get(f"/v2/{pkg.image_repo}/blobs/{layer['digest']}", headers=headers)
        assert resp.status in (200, 206)  # the headers were out before the source was read
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # aborted before its last byte: never a complete wrong body


async def test_the_source_outlives_its_tag_through_garbage_collection(aiohttp_client, tmp_path, keys):  # noqa: F811
    fb = await aiohttp_client(create_app(_config(tmp_path, keys, gc__grace_period=0, gc__delete_untagged=True)))
    pkg, _, _, _, layer = await _licensed(fb, tmp_path)
    resp = await fb.delete(f"/v2/{pkg.image_repo}/manifests/v1")  # the developer drops the source tag
    assert resp.status == 202, await resp.text()
    await _gc(fb)
    recipe = await fb.app[FULL_BUILDS].store.sealed_layer(pkg.image_repo, layer["digest"])
    assert _content_path(tmp_path, recipe["source_digest"]).exists()
    assert len(await blob(fb, pkg.image_repo, layer["digest"])) == layer["size"]


async def test_pulls_past_max_syntheses_wait_their_turn(aiohttp_client, tmp_path, keys):  # noqa: F811
    fb = await aiohttp_client(create_app(_config(tmp_path, keys, full_builds__max_syntheses=1)))
    pkg, _, _, _, layer = await _licensed(fb, tmp_path)
    bodies = await asyncio.gather(*(blob(fb, pkg.image_repo, layer["digest"]) for _ in range(4)))
    assert len({hashlib.sha256(b).hexdigest() for b in bodies}) == 1


@pytest.mark.parametrize("backend", ["registry", "filesystem"])
async def test_where_sealed_layers_are_stored(aiohttp_client, tmp_path, keys, request, backend):  # noqa: F811
    """An upstream registry holds every layer a manifest names; "store" asks for that."""
    dist = request.getfixturevalue("distribution") if backend == "registry" else None
    overrides = {} if backend == "registry" else {"full_builds__sealed_layers": "store"}
    fb = await aiohttp_client(create_app(_config(tmp_path, keys, backend, dist, **overrides)))
    pkg, _, _, _, layer = await _licensed(fb, tmp_path)
    info = await fb.app[REGISTRY].backend.stat_blob(pkg.image_repo, layer["digest"])
    assert info.size == layer["size"]
    assert await fb.app[FULL_BUILDS].store.sealed_layer(pkg.image_repo, layer["digest"]) is None


async def test_the_storage_secret_is_private_and_shared(tmp_path):
    one, two = FilesystemBackend(tmp_path / "s"), FilesystemBackend(tmp_path / "s")
    await one.start()
    await two.start()
    try:
        secrets = await asyncio.gather(*(b.secret(SECRET_NAME) for b in (one, two, one, two)))
        assert len(set(secrets)) == 1 and len(secrets[0]) == 32
        path = tmp_path / "s" / "_secrets" / SECRET_NAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert not any((tmp_path / "s" / "_tmp").iterdir())
        with pytest.raises(ValueError):
            await one.secret("../escape")
        path.write_bytes(os.urandom(5))  # a damaged secret is an error, never a short key
        with pytest.raises(RegistryError, match="is 5 bytes, not 32"):
            await FilesystemBackend(tmp_path / "s").secret(SECRET_NAME)
    finally:
        await one.close()
        await two.close()


async def test_a_failed_build_takes_its_sealed_layers_with_it(tmp_path):
    from packer.fullbuild.store import BuildStore
    from proxy.service.policy import SYSTEM

    db = metadata_database(tmp_path / "m.db")
    await db.open()
    try:
        store = BuildStore(db)
        await store.migrate()
        kept = await store.create("business/x/y:1", "business/x/y", "1", "soft", "sha256:" + "a" * 64, SYSTEM)
        failed = await store.create("business/z/y:1", "business/z/y", "1", "soft", "sha256:" + "b" * 64, SYSTEM)
        row = {"digest": "sha256:" + "c" * 64, "size": 10, "source_repository": "images/y",
               "source_digest": "sha256:" + "d" * 64, "source_size": 5, "key_id": "00" * 16,
               "models": '["opt/*.onnx"]', "chunk_size": 4096, "tar_bytes": 3072, "max_entries": 10,
               "max_header_bytes": 4096}
        await store.record_sealed("images/y", row, kept.id)
        assert await store.link_sealed("images/y", "business/x/y", row["digest"], kept.id)
        # The failed build linked the kept build's layer into its own repository.
        assert await store.link_sealed("images/y", "business/z/y", row["digest"], failed.id)
        assert not await store.link_sealed("images/other", "business/z/y", row["digest"], failed.id)
        await store.fail(failed.id, "broken", [])
        assert await store.sealed_layer("images/y", row["digest"]) == row
        assert await store.sealed_layer("business/x/y", row["digest"]) == row
        assert await store.sealed_layer("business/z/y", row["digest"]) is None
    finally:
        await db.close()


async def test_a_lost_source_layer_makes_the_sealed_layer_unknown(fb, tmp_path):
    pkg, _, _, _, layer = await _licensed(fb, tmp_path)
    recipe = await fb.app[FULL_BUILDS].store.sealed_layer(pkg.image_repo, layer["digest"])
    link = (tmp_path / "storage" / "repositories" / pkg.image_repo / "_layers" / "sha256"
            / recipe["source_digest"].split(":", 1)[1])
    link.unlink()  # the storage lost it (the API refuses to delete frozen content)
    for method in ("HEAD", "GET"):
        resp = await fb.request(method, f"/v2/{pkg.image_repo}/blobs/{layer['digest']}")
        assert resp.status == 404
    resp = await fb.get(f"/v2/{pkg.image_repo}/blobs/{layer['digest']}")
    assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
