"""Archives and runnable layers holding blobs made on request (``VirtualBlob``): their
bytes in whole downloads and ranges, only the window asked read, and a blob that fails
mid-stream aborting the response instead of ending it cleanly."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile

import aiohttp
import pytest
import zstandard

from packer.archive import (
    ArchiveError,
    ArchivePlan,
    Segment,
    VirtualPart,
    iter_parts,
    read_virtual,
    segment_parts,
    stream_archive,
)
from packer.fullbuild.runnable import LayerLayout, Runnable, stream_layer
from proxy.api.manage.fullbuilds import FULL_BUILDS
from proxy.app import BACKEND, create_app
from proxy.oci.errors import Errors, RegistryError
from proxy.oci.manifest import Descriptor
from tests.conftest import make_config
from tests.support.oci import push_image

_PATTERN = hashlib.sha256(b"virtual").digest() * 64  # 2 KiB, not a multiple of a tar block


def made(size: int) -> bytes:
    """The deterministic bytes a test virtual blob of ``size`` makes."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


class Generated:
    """A virtual blob that makes its bytes in 64 KiB pieces and records each window asked;
    with ``fail_at``, raises as the real ones do once it would make that byte."""

    def __init__(self, size: int, fail_at: int | None = None, short: int = 0) -> None:
        self.size, self.fail_at, self.short = size, fail_at, short
        self.data = made(size)
        self.asked: list[tuple[int, int]] = []

    async def read(self, start: int = 0, end: int | None = None):
        end = self.size - 1 if end is None else end
        self.asked.append((start, end))
        position, stop = start, end + 1 - self.short
        while position < stop:
            size = min(65536, stop - position)
            if self.fail_at is not None and position + size > self.fail_at:
                raise RegistryError(Errors.UNAVAILABLE, message="the blob can't be made right")
            yield self.data[position : position + size]
            position += size


# -- the layout and its parts, no server ----------------------------------------------
def _plan(blob: Generated) -> tuple[ArchivePlan, bytes]:
    head, tail = b"H" * 700, b"T" * 300
    segments = [Segment(0, len(head), data=head),
                Segment(len(head), blob.size, digest="sha256:" + "a" * 64, virtual=blob),
                Segment(len(head) + blob.size, len(tail), data=tail)]
    size = len(head) + blob.size + len(tail)
    root = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "b" * 64, 2)
    return ArchivePlan("test/virtual", "test/virtual:v1", root, segments, size, []), head + blob.data + tail


async def _all(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@pytest.mark.parametrize("start,end", [(0, None), (0, 699), (650, 900), (700, 700), (1000, 200_699),
                                       (200_699, 200_999), (123_456, 200_800), (200_700, 200_999)])
async def test_stream_archive_serves_the_virtual_bytes_of_any_range(start, end):
    blob = Generated(200_000)
    plan, expected = _plan(blob)
    got = await _all(stream_archive(None, plan, start, end))  # type: ignore[arg-type]: no stored blob is read
    assert got == expected[start : None if end is None else end + 1]
    last = plan.size - 1 if end is None else end
    inside = (max(start, 700) - 700, min(last, 200_699) - 700)
    # Only the window of the blob the range covers is made, once, and nothing when it covers none.
    assert blob.asked == ([inside] if inside[0] <= inside[1] else [])


def test_segment_parts_name_the_virtual_window():
    blob = Generated(200_000)
    plan, _ = _plan(blob)
    parts = list(iter_parts(plan, 600, 1_000))
    assert parts[0] == b"H" * 100
    assert parts[1] == VirtualPart(blob, "sha256:" + "a" * 64, 0, 301)
    assert list(segment_parts(plan.segments, "test/virtual", 200_000, 200_001)) == [
        VirtualPart(blob, "sha256:" + "a" * 64, 199_300, 2)]


@pytest.mark.parametrize("blob,message", [
    (Generated(200_000, fail_at=150_000), "can't be made right"),
    (Generated(200_000, short=10), "ended after"),
])
async def test_a_failing_virtual_blob_ends_the_stream_with_an_archive_error(blob, message):
    plan, expected = _plan(blob)
    got = []
    with pytest.raises(ArchiveError, match=message):
        async for chunk in stream_archive(None, plan):  # type: ignore[arg-type]
            got.append(chunk)
    assert len(b"".join(got)) < len(expected)


async def test_a_virtual_blob_making_too_much_is_refused():
    class Overlong(Generated):
        async def read(self, start=0, end=None):
            yield self.data  # the whole blob, whatever was asked

    part = VirtualPart(Overlong(1000), None, 100, 50)
    with pytest.raises(ArchiveError, match="more bytes"):
        await _all(read_virtual(part))


async def test_a_runnable_layer_holds_a_virtual_part():
    blob = Generated(5_000)
    literal = b"x" * 512
    layout = LayerLayout([Segment(0, 512, data=literal), Segment(512, 5_000, virtual=blob)], 5_512, ["a"])
    expected = literal + blob.data
    digest = "sha256:" + hashlib.sha256(expected).hexdigest()
    assert await _all(stream_layer(None, "test/v", layout, expected=digest)) == expected  # type: ignore[arg-type]
    assert await _all(stream_layer(None, "test/v", layout, 1_000, 1_099)) == expected[1_000:1_100]  # type: ignore[arg-type]
    assert blob.asked[-1] == (488, 587)
    broken = LayerLayout([Segment(0, 512, data=literal), Segment(512, 5_000, virtual=Generated(5_000, fail_at=10))],
                         5_512, ["a"])
    with pytest.raises(RegistryError) as caught:
        await _all(stream_layer(None, "test/v", broken, expected=digest))  # type: ignore[arg-type]
    assert caught.value.error is Errors.UNAVAILABLE


async def test_runnable_segments_give_any_other_virtual_blob_as_itself():
    blob, empty = Generated(3_000), Generated(0)
    runnable = Runnable(None, None, None)  # type: ignore[arg-type]: find is the only part used

    async def find(repo, digest):
        return {"sha256:" + "1" * 64: blob, "sha256:" + "2" * 64: empty}.get(digest)

    runnable.find = find  # type: ignore[method-assign]
    assert await runnable.segments("r", "sha256:" + "1" * 64) == (
        [Segment(0, 3_000, digest="sha256:" + "1" * 64, virtual=blob)], 3_000)
    assert await runnable.segments("r", "sha256:" + "2" * 64) == ([], 0)
    assert await runnable.segments("r", "sha256:" + "3" * 64) is None


# -- through the archive API ---------------------------------------------------------------
async def _virtualised(aiohttp_client, tmp_path, repo, blob: Generated):
    """An image whose second layer is no longer stored but served by ``blob`` (as the
    runnable images' virtual content serves what it makes)."""
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    stored, virtual = b"s" * 100_000, made(blob.size)
    await push_image(client, repo, "v1", [stored, virtual])
    digest = "sha256:" + hashlib.sha256(virtual).hexdigest()
    app = client.server.app
    await app[BACKEND].delete_blob(repo, digest)
    runnable = app[FULL_BUILDS].builder.runnable
    real = runnable.find

    async def find(name, wanted):
        return blob if (name, wanted) == (repo, digest) else await real(name, wanted)

    runnable.find = find
    return client, digest


def _member(archive: bytes, digest: str) -> tuple[int, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        info = tar.getmember("blobs/sha256/" + digest.split(":")[1])
        return info.offset_data, tar.extractfile(info).read()  # type: ignore[union-attr]


async def test_archive_download_holds_the_virtual_blob_whole_and_in_ranges(aiohttp_client, tmp_path, repo):
    blob = Generated(300_000)
    client, digest = await _virtualised(aiohttp_client, tmp_path, repo, blob)
    resp = await client.get(f"/api/v1/archive/{repo}:v1")
    assert resp.status == 200
    archive = await resp.read()
    assert len(archive) == int(resp.headers["Content-Length"])
    offset, data = _member(archive, digest)
    assert data == blob.data and blob.asked == [(0, 299_999)]
    compressed = await client.get(f"/api/v1/archive/{repo}:v1?compress=zstd")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(await compressed.read()) == archive
    # A range inside the blob makes only that window; one across its edge, the part it covers.
    blob.asked.clear()
    for start, end in [(offset + 1_000, offset + 71_000), (offset - 100, offset + 99), (offset + 299_990, offset + 300_100)]:
        part = await client.get(f"/api/v1/archive/{repo}:v1", headers={"Range": f"bytes={start}-{end}"})
        assert part.status == 206
        assert await part.read() == archive[start : end + 1]
    assert blob.asked == [(1_000, 71_000), (0, 99), (299_990, 299_999)]
    # The same archive is planned again byte for byte.
    again = await client.get(f"/api/v1/archive/{repo}:v1")
    assert await again.read() == archive


async def test_archive_download_aborts_when_the_virtual_blob_fails(aiohttp_client, tmp_path, repo):
    blob = Generated(300_000, fail_at=200_000)
    client, _ = await _virtualised(aiohttp_client, tmp_path, repo, blob)
    resp = await client.get(f"/api/v1/archive/{repo}:v1")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    zstd = await client.get(f"/api/v1/archive/{repo}:v1?compress=zstd")
    with pytest.raises(aiohttp.ClientPayloadError):
        await zstd.read()
    # A range the failing blob is not in never asks it for bytes.
    blob.asked.clear()
    head = await client.get(f"/api/v1/archive/{repo}:v1", headers={"Range": "bytes=0-1023"})
    assert head.status == 206 and len(await head.read()) == 1024
    assert blob.asked == []


async def test_a_client_leaving_mid_virtual_blob_closes_its_generator(aiohttp_client, tmp_path, repo):
    class Watched(Generated):
        closed = False

        async def read(self, start=0, end=None):
            try:
                async for chunk in super().read(start, end):
                    yield chunk
            finally:
                self.closed = True

    blob = Watched(8_000_000)
    client, _ = await _virtualised(aiohttp_client, tmp_path, repo, blob)
    resp = await client.get(f"/api/v1/archive/{repo}:v1")
    await resp.content.readexactly(400_000)  # past the stored layer, into the made one
    resp.close()
    for _ in range(200):
        if blob.closed:
            break
        await asyncio.sleep(0.02)
    assert blob.closed and blob.asked == [(0, 7_999_999)]
