"""Rights follow derivation: chains, full builds, business names and freezes, tried by
users restricted to their own team's namespaces, on both backends, through real HTTP.

Users (besides the bootstrap admin):

- ``teama``/``teamb``: algorithm developers of ``generic/team-x/**`` + ``images/team-x/**``;
- ``door``: business developer of ``business/door`` + ``business/door/**`` + ``plugins/door-*``,
  who may also pull ``generic/team-a/**`` (its legitimate source);
- ``fugitive``: business developer of ``business/fugitive/**`` + ``plugins/fugitive-*``.

Every attempt across a boundary must fail with a clear 403/422/``DENIED`` and write
nothing; each user's legitimate path must still work."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import pytest

from proxy.oci import mediatypes as mt
from tests.support.auth import ADMIN, auth_env, basic  # noqa: F401 - auth_env is a fixture
from tests.support.oci import digest_of, push_blob
from tests.support.packer import wait_for
from tests.support.tarlayers import MODELS, BuiltImage, build_image

ACCEPT = {"Accept": f"{mt.OCI_MANIFEST}, {mt.OCI_INDEX}"}
# The door system's plugin: a name of this module's own, since plugin tags are immutable
# and the registry backend is shared by every test module.
FORM = f"door-form-{uuid.uuid4().hex[:8]}"
GRANTS = {
    "teama": [("algorithm-dev", "generic/team-a/**"), ("algorithm-dev", "images/team-a/**")],
    "teamb": [("algorithm-dev", "generic/team-b/**"), ("algorithm-dev", "images/team-b/**")],
    "door": [("business-dev", "business/door"), ("business-dev", "business/door/**"),
             ("business-dev", "plugins/door-*"), ("consumer", "generic/team-a/**")],
    "fugitive": [("business-dev", "business/fugitive/**"), ("business-dev", "plugins/fugitive-*")],
}


class Env:
    def __init__(self, base, tmp_path: Path) -> None:
        self.base, self.client, self.tmp = base, base.client, tmp_path
        self.grant_ids: dict[tuple[str, str], int] = {}
        # Repository names unique to the test: a backing registry is shared by the session.
        self.u = uuid.uuid4().hex[:6]

    async def users(self) -> None:
        for name, grants in GRANTS.items():
            await self.base.create_user(name, [])
            for role, pattern in grants:
                resp = await self.client.post("/api/v1/grants", json={"subject": name, "role": role, "pattern": pattern},
                                              headers=basic(ADMIN))
                assert resp.status == 201, await resp.text()
                self.grant_ids[(name, pattern)] = (await resp.json())["id"]

    async def revoke(self, user: str, pattern: str) -> None:
        resp = await self.client.delete(f"/api/v1/grants/{self.grant_ids[(user, pattern)]}", headers=basic(ADMIN))
        assert resp.status == 204, await resp.text()

    # -- content ------------------------------------------------------------------------
    async def image(self, repo: str, user: str, tag: str = "v1") -> BuiltImage:
        image = build_image(self.tmp / f"img-{uuid.uuid4().hex[:8]}", model_size=20_000)
        for blob in [image.config, *(layer.blob for layer in image.layers)]:
            await push_blob(self.client, repo, blob, headers=basic(user))
        resp = await self.client.put(f"/v2/{repo}/manifests/{tag}", data=image.manifest,
                                     headers={"Content-Type": mt.OCI_MANIFEST, **basic(user)})
        assert resp.status == 201, await resp.text()
        return image

    async def generic(self, repo: str, tag: str, user: str, images: list[dict] | None = None,
                      files: dict[str, bytes] | None = None, expect: int = 201,
                      models: list[str] | None = None) -> str | None:
        doc = {"name": repo.rsplit("/", 1)[-1], "version": tag, "platform": "linux/amd64",
               "runtime": {"images": images or []}, "marker": uuid.uuid4().hex}
        if models is not None:
            doc["models"] = models  # an embedded package: model files in the package itself
        config = json.dumps(doc).encode()
        files = files if files is not None else {"model.onnx": f"weights of {repo}".encode()}
        for blob in [config, *files.values()]:
            await push_blob(self.client, repo, blob, headers=basic(user))
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.ALGORITHM,
            "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": "application/octet-stream", "digest": digest_of(d), "size": len(d),
                        "annotations": {mt.ANNOTATION_TITLE: n}} for n, d in files.items()],
        })
        resp = await self.client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                                     headers={"Content-Type": mt.OCI_MANIFEST, **basic(user)})
        assert resp.status == expect, await resp.text()
        return resp.headers.get("Docker-Content-Digest")

    async def plugin(self, name: str, user: str, files: dict[str, bytes], options: dict | None = None) -> None:
        body = {"name": name, "version": "1.0", "kind": "file", "options": options or {},
                "files": [{"path": p, "data": base64.b64encode(d).decode()} for p, d in files.items()]}
        resp = await self.client.post("/api/v1/plugins", json=body, headers=basic(user))
        assert resp.status == 201, await resp.text()

    async def chain(self, user: str, name: str, match: list[str], plugins: list[str], expect: int = 201) -> dict:
        resp = await self.client.post("/api/v1/chains", json={"name": name, "match": match, "plugins": plugins},
                                      headers=basic(user))
        assert resp.status == expect, await resp.text()
        return await resp.json()

    async def job(self, chain: str, repo: str, tag: str) -> dict:
        async def done():
            resp = await self.client.get("/api/v1/assemblies", params={"chain": chain}, headers=basic(ADMIN))
            for job in (await resp.json())["items"]:
                if job["source"]["repository"] == repo and job["source"]["tag"] == tag \
                        and job["status"] in ("succeeded", "failed"):
                    return job
            return None

        return await wait_for(done, timeout=60)

    async def manifest_status(self, repo: str, ref: str) -> int:
        return (await self.client.get(f"/v2/{repo}/manifests/{ref}", headers={**ACCEPT, **basic(ADMIN)})).status

    async def manifest(self, repo: str, ref: str) -> tuple[dict, str]:
        resp = await self.client.get(f"/v2/{repo}/manifests/{ref}", headers={**ACCEPT, **basic(ADMIN)})
        assert resp.status == 200, await resp.text()
        return json.loads(await resp.read()), resp.headers["Docker-Content-Digest"]

    async def build(self, user: str, package: str, license: str, expect_status: int = 202) -> dict:
        resp = await self.client.post("/api/v1/full-builds", json={"package": package, "license": license},
                                      headers=basic(user))
        assert resp.status == expect_status, await resp.text()
        return await resp.json()

    async def finished(self, build: dict, expect: str = "succeeded") -> dict:
        for _ in range(1200):
            resp = await self.client.get(f"/api/v1/full-builds/{build['id']}", headers=basic(ADMIN))
            build = await resp.json()
            if build["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        assert build["state"] == expect, build
        return build


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    from proxy.cli import main as cli_main

    prefix = tmp_path / "keys" / "soft"
    assert cli_main(["keygen", "--out", str(prefix)]) == 0
    return {"private": prefix.with_suffix(".key"), "public": prefix.with_suffix(".pub")}


@pytest.fixture
def models_floor() -> dict[str, list[str]]:
    """``[full_builds.models]``; a test parametrizes it to set a floor."""
    return {}


@pytest.fixture
async def env(aiohttp_client, tmp_path: Path, backend_kind: str, request: pytest.FixtureRequest, keys,
              models_floor) -> Env:
    from proxy.app import create_app
    from tests.support.auth import AuthEnv, auth_config

    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    config = auth_config(
        tmp_path, backend_kind, dist,
        licenses__soft={"scheme": "x25519", "public_key": str(keys["public"]), "chunk_size": 4096},
        licenses__hard={"scheme": "dongle", "public_key": str(keys["public"]), "dongle_id": "D-42"},
        **({"full_builds__models": models_floor} if models_floor else {}),
    )
    client = await aiohttp_client(create_app(config))
    out = Env(AuthEnv(client, client.server.app), tmp_path)
    await out.users()
    return out


# -- chains ----------------------------------------------------------------------------------
async def test_chains_read_only_what_their_owner_may_pull(env: Env):
    U = env.u
    client = env.client
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    await env.plugin("fugitive-secret", "fugitive", {"secret.txt": b"fugitive only"})

    # A glob covering another team's sources, or a plugin of another system: 403, nothing stored.
    resp = await client.post("/api/v1/chains", json={"name": "door", "match": ["generic/**"],
                                                     "plugins": [f"plugins/{FORM}:1.0"]}, headers=basic("door"))
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["detail"]["glob"] == "generic/**" and error["detail"]["repository"].startswith("generic/")
    assert "door may not pull" in error["message"]
    for match in (["generic/team-*/**"], ["generic/*"], ["generic/team-a/**", f"generic/team-b/face{U}"], ["**"]):
        assert (await env.chain("door", "door", match, [f"plugins/{FORM}:1.0"], expect=403))
    resp = await client.post("/api/v1/chains", json={"name": "door", "match": ["generic/team-a/**"],
                                                     "plugins": ["plugins/fugitive-secret:1.0"]}, headers=basic("door"))
    assert resp.status == 403 and (await resp.json())["error"]["detail"]["repository"] == "plugins/fugitive-secret"
    assert (await client.get("/api/v1/chains/door", headers=basic("door"))).status == 404

    # The legitimate chain: its own team's sources and its own plugin.
    chain = await env.chain("door", "door", ["generic/team-a/**"], [f"plugins/{FORM}:1.0"])
    assert chain["owner"] == {"name": "door", "kind": "user"}
    # Widening it later is checked the same way, and leaves it as it was.
    resp = await client.put("/api/v1/chains/door", json={"match": ["generic/**"], "plugins": [f"plugins/{FORM}:1.0"]},
                            headers=basic("door"))
    assert resp.status == 403
    resp = await client.put("/api/v1/chains/door", json={"match": ["generic/team-a/**"],
                                                         "plugins": ["plugins/fugitive-secret:1.0"]},
                            headers=basic("door"))
    assert resp.status == 403
    assert (await (await client.get("/api/v1/chains/door", headers=basic("door"))).json())["match"] == ["generic/team-a/**"]

    # Another team's pushes never reach door's chain; its own team's do, under the whole path.
    await env.generic(f"generic/team-b/face{U}", "1.0", "teamb")
    await env.generic(f"generic/team-a/face{U}", "1.0", "teama")
    job = await env.job("door", f"generic/team-a/face{U}", "1.0")
    assert job["status"] == "succeeded", job
    assert job["target"]["repository"] == f"business/door/team-a/face{U}"
    detail = await (await client.get(f"/api/v1/assemblies/{job['id']}", headers=basic(ADMIN))).json()
    assert "reading as the chain's owner, user door" in detail["logs"]
    resp = await client.get("/api/v1/assemblies", params={"chain": "door"}, headers=basic(ADMIN))
    assert {j["source"]["repository"] for j in (await resp.json())["items"]} == {f"generic/team-a/face{U}"}

    # A revoked grant stops the chain at its next run, with a job error naming why.
    await env.revoke("door", "generic/team-a/**")
    await env.generic(f"generic/team-a/face{U}", "1.1", "teama")
    job = await env.job("door", f"generic/team-a/face{U}", "1.1")
    assert job["status"] == "failed"
    assert f"chain owner door may not pull generic/team-a/face{U}" in job["error"]["reason"]
    assert await env.manifest_status(f"business/door/team-a/face{U}", "1.1") == 404
    # An explicit re-assembly by the business developer is no way around it.
    resp = await client.post("/api/v1/chains/door/assemble", json={"packages": [f"generic/team-a/face{U}:1.0"]},
                             headers=basic("door"))
    assert resp.status == 202
    [job_id] = (await resp.json())["jobs"]

    async def failed():
        job = await (await client.get(f"/api/v1/assemblies/{job_id}", headers=basic(ADMIN))).json()
        return job if job["status"] == "failed" else None

    assert "may not pull" in (await wait_for(failed, timeout=60))["error"]["reason"]


async def test_business_names_keep_the_whole_source_path(env: Env):
    U = env.u
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    await env.chain(ADMIN, "search", ["generic/**"], [f"plugins/{FORM}:1.0"])
    a = await env.generic(f"generic/team-a/face{U}", "1.0", "teama")
    b = await env.generic(f"generic/team-b/face{U}", "1.0", "teamb")
    c = await env.generic(f"generic/face{U}", "1.0", ADMIN)
    for repo, digest, target in ((f"generic/team-a/face{U}", a, f"business/search/team-a/face{U}"),
                                 (f"generic/team-b/face{U}", b, f"business/search/team-b/face{U}"),
                                 (f"generic/face{U}", c, f"business/search/face{U}")):
        job = await env.job("search", repo, "1.0")
        assert job["status"] == "succeeded" and job["target"]["repository"] == target, job
        manifest, _ = await env.manifest(target, "1.0")
        assert manifest["subject"]["digest"] == digest  # each kept its own package, none overwritten


async def test_plugins_cannot_change_which_files_are_models(env: Env):
    U = env.u
    await env.image(f"images/team-a/face{U}", "teama")
    for name, patch in (("door-nomodels", {"runtime": {"images": [{"ref": f"images/team-a/face{U}:v1", "models": []}]}}),
                        ("door-noruntime", {"runtime": None}),
                        ("door-pkgmodels", {"models": ["nothing"]})):
        await env.plugin(name, "door", {"patch.json": json.dumps(patch).encode()},
                         {"files": [{"source": "patch.json", "merge_patch": "descriptor"}]})
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    images = [{"ref": f"images/team-a/face{U}:v1", "models": [MODELS]}]
    for n, plugin in enumerate(("door-nomodels", "door-noruntime", "door-pkgmodels")):
        await env.chain("door", "door", ["generic/team-a/**"], [f"plugins/{FORM}:1.0", f"plugins/{plugin}:1.0"]) \
            if n == 0 else await env.client.put(
                "/api/v1/chains/door", json={"match": ["generic/team-a/**"],
                                             "plugins": [f"plugins/{FORM}:1.0", f"plugins/{plugin}:1.0"]},
                headers=basic("door"))
        tag = f"1.{n}"
        await env.generic(f"generic/team-a/face{U}", tag, "teama", images)
        job = await env.job("door", f"generic/team-a/face{U}", tag)
        assert job["status"] == "failed", job
        assert f"plugins/{plugin}:1.0" in job["error"]["reason"] and "plugins may not change" in job["error"]["reason"]
        assert await env.manifest_status(f"business/door/team-a/face{U}", tag) == 404


# -- full builds -----------------------------------------------------------------------------
async def _assembled(env: Env, chain: str, repo: str, tag: str, user: str, images: list[dict]) -> str:
    await env.generic(repo, tag, user, images)
    job = await env.job(chain, repo, tag)
    assert job["status"] == "succeeded", job
    return f"{job['target']['repository']}:{tag}"


async def test_builds_need_every_right_and_never_move_or_weaken_licensed_images(env: Env):
    U = env.u
    client = env.client
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    await env.chain(ADMIN, "vault", ["generic/team-b/**"], [f"plugins/{FORM}:1.0"])
    await env.chain(ADMIN, "mirror", ["generic/team-b/**"], [f"plugins/{FORM}:1.0"])
    await env.chain(ADMIN, "other", ["generic/team-a/**"], [f"plugins/{FORM}:1.0"])
    await env.chain("door", "door", ["generic/team-a/**"], [f"plugins/{FORM}:1.0"])

    # Team B's image, licensed hard and frozen by a legitimate build.
    secret = await env.image(f"images/team-b/secret{U}", "teamb")
    secret_images = [{"ref": f"images/team-b/secret{U}:v1", "models": [MODELS]}]
    vault = await _assembled(env, "vault", f"generic/team-b/secret{U}", "1.0", "teamb", secret_images)
    first = await env.finished(await env.build(ADMIN, vault, "hard"))
    frozen_manifest, frozen_digest = await env.manifest(f"images/team-b/secret{U}", "v1-hard")
    assert first["result"]["images"][0]["encrypted_files"] == len(secret.models)

    # Team A's descriptor points at team B's image with no models: hard would move the
    # frozen tag (DENIED, naming it), soft would seal nothing (the build fails).
    trick_images = [{"ref": f"images/team-b/secret{U}:v1", "models": []}]
    trick = await _assembled(env, "other", f"generic/team-a/trick{U}", "1.0", "teama", trick_images)
    resp = await client.post("/api/v1/full-builds", json={"package": trick, "license": "hard"}, headers=basic(ADMIN))
    assert resp.status == 403
    message = (await resp.json())["error"]["message"]
    assert message.startswith("DENIED") and f"images/team-b/secret{U}:v1-hard is frozen" in message
    failed = await env.finished(await env.build(ADMIN, trick, "soft"), expect="failed")
    assert "nothing encrypted" in failed["error"]
    assert await env.manifest_status(f"images/team-b/secret{U}", "v1-soft") == 404
    assert (await env.manifest(f"images/team-b/secret{U}", "v1-hard"))[1] == frozen_digest
    # Only "full" may license an image without encrypting anything.
    await env.finished(await env.build(ADMIN, trick, "full"))

    # The same image, license, key and models from another package reuse the frozen tag.
    mirror = await _assembled(env, "mirror", f"generic/team-b/secret{U}", "1.1", "teamb", secret_images)
    reused = await env.finished(await env.build(ADMIN, mirror, "hard"))
    assert reused["result"]["images"][0]["digest"] == frozen_digest
    assert (await env.manifest(f"images/team-b/secret{U}", "v1-hard"))[0] == frozen_manifest

    # door: its own package, but a runtime image it may neither pull nor push: 403, nothing queued.
    await env.image(f"images/team-a/face{U}", "teama")
    face_images = [{"ref": f"images/team-a/face{U}:v1", "models": [MODELS]}]
    door_pkg = await _assembled(env, "door", f"generic/team-a/face{U}", "1.0", "teama", face_images)
    resp = await client.post("/api/v1/full-builds", json={"package": door_pkg, "license": "soft"}, headers=basic("door"))
    assert resp.status == 403 and f"images/team-a/face{U}" in json.dumps(await resp.json())
    # Another system's package, and a consumer: 403 (before its existence is even told).
    resp = await client.post("/api/v1/full-builds", json={"package": vault, "license": "soft"}, headers=basic("door"))
    assert resp.status == 403
    resp = await client.post("/api/v1/full-builds", json={"package": door_pkg, "license": "soft"},
                             headers=basic("fugitive"))
    assert resp.status == 403
    resp = await client.post("/api/v1/full-builds", json={"package": door_pkg, "license": "soft"})
    assert resp.status == 401
    listing = await (await client.get("/api/v1/full-builds", params={"package": door_pkg},
                                      headers=basic(ADMIN))).json()
    assert listing["items"] == []

    # Given the image rights, door's build goes through, as door, and freezes the exact source.
    resp = await client.post("/api/v1/grants", json={"subject": "door", "role": "algorithm-dev",
                                                     "pattern": "images/team-a/**"}, headers=basic(ADMIN))
    assert resp.status == 201
    build = await env.finished(await env.build("door", door_pkg, "soft"))
    assert build["result"]["tag"] == f"business/door/team-a/face{U}:1.0-soft"
    # The freeze is on generic/team-a/face<uid>:1.0, not on a same-named repository elsewhere.
    resp = await client.put(f"/v2/generic/team-a/face{U}/manifests/1.0", data=b"{}",
                            headers={"Content-Type": mt.OCI_MANIFEST, **basic("teama")})
    assert resp.status == 403 and "is frozen" in (await resp.json())["errors"][0]["message"]
    await env.generic(f"generic/team-b/face{U}", "1.0", "teamb")
    await env.generic(f"generic/face{U}", "1.0", ADMIN)
    await env.generic(f"generic/team-b/face{U}", "1.0", "teamb")  # and again: nothing there is frozen

    # Frozen content cannot be deleted through /v2: not the licensed image's layers or
    # config, not the source image's, not the business package's blobs.
    licensed, _ = await env.manifest(f"images/team-a/face{U}", "v1-soft")
    source, _ = await env.manifest(f"images/team-a/face{U}", "v1")
    business, _ = await env.manifest(f"business/door/team-a/face{U}", "1.0")
    targets = [(f"images/team-a/face{U}", layer["digest"]) for layer in licensed["layers"]]
    targets += [(f"images/team-a/face{U}", licensed["config"]["digest"]), (f"images/team-a/face{U}", source["layers"][0]["digest"]),
                (f"business/door/team-a/face{U}", business["layers"][0]["digest"])]
    for repo, digest in targets:
        resp = await client.delete(f"/v2/{repo}/blobs/{digest}", headers=basic(ADMIN))
        assert resp.status == 403, (repo, digest)
        error = (await resp.json())["errors"][0]
        assert error["code"] == "DENIED" and "frozen" in error["message"] and build["id"] in error["message"]
    # A frozen manifest's child (the licensed image stored in the business repository) too.
    index, _ = await env.manifest(f"business/door/team-a/face{U}", "1.0-soft")
    resp = await client.delete(f"/v2/business/door/team-a/face{U}/manifests/{index['manifests'][1]['digest']}",
                               headers=basic(ADMIN))
    assert resp.status == 403
    # Everything still pulls.
    for layer in licensed["layers"]:
        resp = await client.get(f"/v2/images/team-a/face{U}/blobs/{layer['digest']}", headers=basic("teama"))
        assert resp.status == 200
        await resp.read()
    # Unfrozen content still deletes (the legitimate path): a blob nobody froze.
    loose = await push_blob(client, f"images/team-a/face{U}", b"scratch", headers=basic("teama"))
    resp = await client.delete(f"/v2/images/team-a/face{U}/blobs/{loose}", headers=basic("teama"))
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("models_floor", [{"images/team-a/**": [MODELS]}])
async def test_the_operators_model_floor_cannot_be_lowered_by_a_package(env: Env):
    U = env.u
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    await env.chain(ADMIN, "other", ["generic/team-a/**"], [f"plugins/{FORM}:1.0"])
    image = await env.image(f"images/team-a/floor{U}", "teama")
    package = await _assembled(env, "other", f"generic/team-a/floor{U}", "1.0", "teama",
                               [{"ref": f"images/team-a/floor{U}:v1", "models": []}])
    build = await env.finished(await env.build(ADMIN, package, "soft"))
    assert build["result"]["images"][0]["encrypted_files"] == len(image.models)
    assert build["result"]["images"][0]["models"] == [MODELS]


async def test_embedded_builds_follow_derivation_rights(env: Env):
    """An embedded package (models in the package, no runtime image) is built with the
    requester's rights on its sources and its business repository, and freezes its source."""
    U = env.u
    client = env.client
    await env.plugin(FORM, "door", {"form.json": b"{}"})
    await env.chain("door", "door", ["generic/team-a/**"], [f"plugins/{FORM}:1.0"])
    repo = f"generic/team-a/edge{U}"
    model = b"weights " * 4000
    await env.generic(repo, "1.0", "teama", files={"bin/edge": b"\x7fELF", "model/edge.rknn": model},
                      models=["model/*.rknn"])
    job = await env.job("door", repo, "1.0")
    assert job["status"] == "succeeded", job
    package = f"business/door/team-a/edge{U}:1.0"

    # Neither another system's developer nor the algorithm's own developer may build it.
    for user in ("fugitive", "teama"):
        resp = await client.post("/api/v1/full-builds", json={"package": package, "license": "soft"},
                                 headers=basic(user))
        assert resp.status == 403, (user, await resp.text())
    assert await env.manifest_status(f"business/door/team-a/edge{U}", "1.0-soft") == 404

    build = await env.finished(await env.build("door", package, "soft"))
    assert build["result"]["package"]["encrypted_files"] == ["model/edge.rknn"]
    index, _ = await env.manifest(f"business/door/team-a/edge{U}", "1.0-soft")
    licensed, _ = await env.manifest(f"business/door/team-a/edge{U}", index["manifests"][0]["digest"])
    sealed = next(l for l in licensed["layers"] if l["annotations"][mt.ANNOTATION_TITLE] == "model/edge.rknn")
    resp = await client.get(f"/v2/business/door/team-a/edge{U}/blobs/{sealed['digest']}", headers=basic("door"))
    assert resp.status == 200 and model[:64] not in await resp.read()

    # The generic version is frozen for its own developer too.
    await env.generic(repo, "1.0", "teama", files={"bin/edge": b"other"}, models=["model/*.rknn"], expect=403)

    # Without pull on the generic source any more, the requester can't build from it.
    await env.revoke("door", "generic/team-a/**")
    resp = await client.post("/api/v1/full-builds", json={"package": package, "license": "hard"},
                             headers=basic("door"))
    assert resp.status == 403, await resp.text()
    assert repo in json.dumps(await resp.json()), await resp.text()
