"""Archive downloads as a user runs them, with the real curl: the file name from
``Content-Disposition`` (``curl -OJ``), resuming the tar, and the zstd form's documented
refusal of ranges; on both backends."""

from __future__ import annotations

import asyncio
import subprocess

import zstandard

from tests.test_fullbuild_e2e import fb, fb_config, keys, make_package  # noqa: F401 - fixtures

CURL = "/usr/bin/curl"


async def _curl(cwd, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [CURL, "-sS", *args], cwd=cwd, capture_output=True, text=True,
                                   timeout=60)


async def test_curl_saves_under_the_disposition_name_and_resumes(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    url = f"http://127.0.0.1:{fb.server.port}/api/v1/archive/{pkg.business}:1.0"
    whole = await (await fb.get(url.split(str(fb.server.port), 1)[1])).read()
    out = tmp_path / "dl"
    out.mkdir()
    result = await _curl(out, "-fLOJ", url)
    assert result.returncode == 0, result.stderr
    name = f"{pkg.business.rsplit('/', 1)[1]}_1.0.tar"
    assert [p.name for p in out.iterdir()] == [name]
    assert (out / name).read_bytes() == whole

    # Cut short, then resumed with -C -: the same bytes.
    (out / name).write_bytes(whole[: len(whole) // 2])
    result = await _curl(out, "-fL", "-C", "-", "-o", name, url)
    assert result.returncode == 0, result.stderr
    assert (out / name).read_bytes() == whole

    digest = (await fb.get(url.split(str(fb.server.port), 1)[1])).headers["X-Algomint-Root-Digest"]
    resp = await fb.head(f"/api/v1/archive/{pkg.business}@{digest}")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{name[:-len("1.0.tar")]}{digest.replace(":", "-")}.tar"'


async def test_zstd_form_refuses_ranges_clearly(fb, tmp_path):
    pkg = await make_package(fb, tmp_path)
    path = f"/api/v1/archive/{pkg.business}:1.0"
    whole = await (await fb.get(path)).read()
    resp = await fb.get(path + "?compress=zstd", headers={"Range": "bytes=10-"})
    compressed = await resp.read()
    assert resp.status == 200 and resp.headers["Accept-Ranges"] == "none" and "Content-Range" not in resp.headers
    assert resp.headers["Content-Disposition"].endswith('_1.0.tar.zst"')
    assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed) == whole

    out = tmp_path / "z"
    out.mkdir()
    (out / "pkg.tar.zst").write_bytes(compressed[:5])
    result = await _curl(out, "-fL", "-C", "-", "-o", "pkg.tar.zst", f"http://127.0.0.1:{fb.server.port}{path}?compress=zstd")
    assert result.returncode == 33 and "byte ranges" in result.stderr  # curl: cannot resume
