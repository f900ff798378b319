"""The manifest cache's cap bounds the memory its entries hold, not only manifest bytes:
with many small manifests (where bytes are a quarter of the memory) the accounted size
stays within 0.9x-1.25x of what ``tracemalloc`` measures, and a capped cache holds no
more than 1.25x its cap (the dict's table keeps room from its peak and grows in powers of
two, which no per-entry figure captures exactly)."""

from __future__ import annotations

import gc
import hashlib
import json
import tracemalloc

from proxy.backend import ManifestData
from proxy.oci import mediatypes as mt
from proxy.service.registry import _ManifestCache


def _manifest(i: int) -> tuple[str, ManifestData]:
    data = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": mt.OCI_CONFIG, "size": i,
                                  "digest": "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()},
                       "layers": []}).encode()
    # Fresh strings, as each backend answer and request path makes them.
    media_type = (mt.OCI_MANIFEST + " ").rstrip()
    return f"generic/algo-{i % 500}", ManifestData("sha256:" + hashlib.sha256(data).hexdigest(), media_type, data)


def _fill(cache: _ManifestCache, count: int) -> tuple[int, int]:
    """(bytes tracemalloc saw the filled cache keep, manifest bytes in it)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            cache.put(*_manifest(i))
        gc.collect()
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return measured, sum(len(item.data) for item, _ in cache._items.values())


def test_accounted_size_tracks_real_memory():
    cache = _ManifestCache(1 << 40)
    measured, data = _fill(cache, 10_000)
    assert measured > 2 * data  # what counting bytes alone missed
    assert 0.9 <= cache.bytes / measured <= 1.25, (cache.bytes, measured)


def test_a_capped_cache_holds_no_more_than_its_cap():
    cap = 1 << 20
    cache = _ManifestCache(cap)
    measured, _ = _fill(cache, 12_000)
    assert cache.bytes <= cap
    assert measured <= cap * 1.25, (measured, cap)
    assert len(cache._items) < 12_000  # it did evict


def test_drop_and_reput_keep_the_account():
    cache = _ManifestCache(1 << 30)
    repo, item = _manifest(1)
    cache.put(repo, item)
    cache.put(repo, item)  # present: not counted twice
    size = cache.bytes
    assert size > len(item.data)
    cache.drop(repo, item.digest)
    assert cache.bytes == 0 and cache.get(repo, item.digest) is None
    cache.put(repo, item)
    assert cache.bytes == size and cache.get(repo, item.digest) is item


def test_the_configured_size_reaches_the_cache(tmp_path):
    from proxy.app import REGISTRY, create_app
    from tests.conftest import make_config

    config = make_config(tmp_path, "filesystem")
    assert create_app(config)[REGISTRY]._cache.max_bytes == 64 * 1024 * 1024
    off = config.model_copy(update={"server": config.server.model_copy(update={"manifest_cache_bytes": 0})})
    cache = create_app(off)[REGISTRY]._cache
    cache.put(*_manifest(1))
    assert cache.max_bytes == 0 and not cache._items
