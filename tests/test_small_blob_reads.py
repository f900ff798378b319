"""``RegistryService.read_small_blob``: the one whole read of a config or descriptor that
packages, full builds and the console share — size limit, stated size, digest, on both backends."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from packer.package import PackageError, read_blob
from proxy.api.state import REGISTRY
from proxy.oci.manifest import Descriptor
from proxy.service.registry import BlobContentError
from tests.support.oci import push_blob

DATA = b'{"name": "face", "version": "1.0"}'


async def test_a_blob_within_its_limit_and_size_is_returned(client, repo):
    digest = await push_blob(client, repo, DATA)
    service = client.app[REGISTRY]
    assert await service.read_small_blob(repo, digest, limit=len(DATA)) == DATA
    assert await service.read_small_blob(repo, digest, limit=1024, size=len(DATA)) == DATA
    assert await read_blob(service, repo, Descriptor("application/json", digest, len(DATA))) == DATA


@pytest.mark.parametrize("limit, size", [(len(DATA) - 1, None), (1024, len(DATA) - 1), (4, 1024)])
async def test_a_blob_over_its_limit_or_stated_size_is_refused(client, repo, limit, size):
    digest = await push_blob(client, repo, DATA)
    with pytest.raises(BlobContentError) as caught:
        await client.app[REGISTRY].read_small_blob(repo, digest, limit=limit, size=size)
    assert caught.value.detail == {"repository": repo, "digest": digest}


async def test_a_blob_shorter_than_its_descriptor_says_is_refused(client, repo):
    digest = await push_blob(client, repo, DATA)
    with pytest.raises(PackageError):
        await read_blob(client.app[REGISTRY], repo, Descriptor("application/json", digest, len(DATA) + 1))


@pytest.mark.parametrize("backend_kind", ["filesystem"])
async def test_a_blob_changed_on_disk_is_refused_even_after_it_was_verified(client, repo, config):
    digest = await push_blob(client, repo, DATA)
    service = client.app[REGISTRY]
    assert await service.read_small_blob(repo, digest, limit=1024) == DATA  # matched once: the ledger vouches
    hexdigest = digest.split(":", 1)[1]
    path = Path(config.storage.path) / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    path.write_bytes(DATA.replace(b"face", b"fake"))  # same length: only the hash tells
    assert hashlib.sha256(path.read_bytes()).hexdigest() != hexdigest
    with pytest.raises(BlobContentError, match="does not match"):
        await service.read_small_blob(repo, digest, limit=1024)
