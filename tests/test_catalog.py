"""``GET /api/v1/catalog`` and ``algomint admin catalog``: per algorithm its versions,
frozen state, business packages per system (digest, plugin versions) and full builds with
their licensed images; paginated and filtered by what the caller may pull; both backends."""

from __future__ import annotations

import asyncio
import re
import uuid

from proxy.cli import main as cli_main
from proxy.oci import mediatypes as mt
from tests.support.auth import auth_env, basic, password_of, seed_image  # noqa: F401 - fixture
from tests.support.oci import push_blob
from tests.support.packer import create_chain, push_plugin, wait_jobs_done
from tests.support.tarlayers import build_image
from tests.test_fullbuild_e2e import (descriptor, fb, fb_config, keys, push_image, run_build,  # noqa: F401
                                      thin_manifest)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def _entry(client, repository: str, **headers) -> dict | None:
    """Page through the catalog one algorithm at a time until ``repository`` shows up."""
    cursor, pages = None, 0
    while True:
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/api/v1/catalog", params=params, headers=headers)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        pages += 1
        assert len(page["items"]) <= 1 and pages < 1000
        for item in page["items"]:
            if item["repository"] == repository:
                return item
        cursor = page["next"]
        if cursor is None:
            return None


async def test_catalog_shows_what_each_version_became(fb, tmp_path):
    uid = uuid.uuid4().hex[:8]
    image_repo, generic, chain = f"images/face{uid}", f"generic/face{uid}", f"door{uid}"
    business = f"business/{chain}/face{uid}"
    await push_image(fb, image_repo, build_image(tmp_path / "img"))
    plugin_digest = await push_plugin(fb, f"form{uid}", "1.0", "file", {}, {"form.json": b'{"door": true}'})
    await create_chain(fb, chain, [generic], [f"plugins/form{uid}:1.0"])
    config = descriptor(f"{image_repo}:v1")
    files = {"README.md": b"readme\n"}
    for blob in [config, *files.values()]:
        await push_blob(fb, generic, blob)
    for version in ("1.0", "2.0"):
        resp = await fb.put(f"/v2/{generic}/manifests/{version}", data=thin_manifest(config, files, mt.ALGORITHM),
                            headers={"Content-Type": mt.OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
    jobs = await wait_jobs_done(fb, count=2, chain=chain)
    assert {j["status"] for j in jobs} == {"succeeded"}
    build = await run_build(fb, f"{business}:1.0", "full")

    entry = await _entry(fb, generic)
    assert entry is not None and entry["algorithm"] == f"face{uid}"
    versions = {v["version"]: v for v in entry["versions"]}
    assert set(versions) == {"1.0", "2.0"}
    one, two = versions["1.0"], versions["2.0"]
    assert one["frozen"] is True and one["frozen_by"] == build["id"] and two["frozen"] is False
    assert one["digest"].startswith("sha256:")
    assert (one["platform"], one["kind"]) == ("linux/amd64", "server")  # from the descriptor
    [pkg] = one["packages"]
    job = next(j for j in jobs if j["source"]["tag"] == "1.0")
    assert (pkg["system"], pkg["repository"], pkg["tag"]) == (chain, business, "1.0")
    assert pkg["digest"] == job["target"]["digest"] and pkg["assembly"]["status"] == "succeeded"
    assert ISO.fullmatch(pkg["assembly"]["finished"])
    assert pkg["plugins"] == [{"ref": f"plugins/form{uid}:1.0", "name": f"form{uid}", "version": "1.0",
                               "digest": plugin_digest}]
    [full] = pkg["full_builds"]
    assert (full["license"], full["state"], full["tag"]) == ("full", "succeeded", f"{business}:1.0-full")
    assert full["digest"] == build["result"]["digest"]
    assert [i["licensed"] for i in full["images"]] == [f"{image_repo}:v1-full"]
    assert two["packages"][0]["full_builds"] == []

    url = f"http://127.0.0.1:{fb.server.port}"
    out = tmp_path / "out.txt"

    def run_cli() -> tuple[int, str]:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = cli_main(["admin", "--url", url, "catalog"])
        return code, buffer.getvalue()

    code, text = await asyncio.to_thread(run_cli)
    out.write_text(text)
    assert code == 0
    block = text[text.index(generic):].split("\n\n", 1)[0]
    assert f"frozen by build {build['id']}" in block and "not frozen" in block
    assert f"form{uid}@1.0" in block and f"{business}:1.0-full" in block and f"{image_repo}:v1-full" in block


async def test_catalog_is_filtered_by_pull_rights(auth_env):
    uid = uuid.uuid4().hex[:8]
    generic = f"generic/x{uid}"
    digest = await seed_image(auth_env.app, generic, "1.0")
    client = auth_env.client
    assert (await client.get("/api/v1/catalog")).status == 401
    mine = await _entry(client, generic, **basic("alg", password_of("alg")))
    assert mine is not None and mine["versions"][0]["digest"] == digest
    # A consumer pulls only business/**: an algorithm with no business package is not theirs to see.
    assert await _entry(client, generic, **basic("cons", password_of("cons"))) is None
    resp = await client.get("/api/v1/catalog", params={"limit": "0"}, headers=basic("alg", password_of("alg")))
    assert resp.status == 400
