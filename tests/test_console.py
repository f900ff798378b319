"""The web console: sign-in, sessions, CSRF, and permission filtering on every page."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import pytest

from proxy.app import create_app
from proxy.ui.sessions import COOKIE
from tests.conftest import make_config
from tests.support.auth import ADMIN, auth_env, basic, password_of, seed_image  # noqa: F401 - auth_env is a fixture

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def backend_kind() -> str:
    return "filesystem"


async def sign_in(client, user: str, password: str | None = None) -> None:
    form = await client.get("/ui/login")
    assert form.status == 200
    csrf = _CSRF.search(await form.text()).group(1)
    resp = await client.post("/ui/login", data={"csrf": csrf, "username": user,
                                                "password": password_of(user) if password is None else password},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()


async def csrf_of(client, path: str = "/ui/algorithms") -> str:
    return _CSRF.search(await (await client.get(path)).text()).group(1)


async def test_pages_need_sign_in_and_cookie_is_protected(auth_env):
    client = auth_env.client
    resp = await client.get("/ui/algorithms", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login?next=")
    cookie = resp.headers["Set-Cookie"]
    form = await client.get("/ui/login")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "default-src 'self'" in form.headers["Content-Security-Policy"]
    await sign_in(client, ADMIN)
    resp = await client.get("/ui/algorithms")
    assert resp.status == 200 and "Signed in as" in await resp.text()


async def test_wrong_password_is_refused_and_throttled_like_the_api(auth_env):
    client = auth_env.client
    form = await client.get("/ui/login")
    csrf = _CSRF.search(await form.text()).group(1)
    resp = await client.post("/ui/login", data={"csrf": csrf, "username": "alg", "password": "nope"})
    assert resp.status == 401 and "invalid username or password" in await resp.text()
    # The same throttle object as the API's: failures through the console count for Basic too.
    from proxy.auth.state import AUTH
    assert await auth_env.app[AUTH].throttle.failures("alg", "127.0.0.1") == 1  # recorded for (alg, address)
    records = await auth_env.audit(action="login")
    assert any(r["outcome"] == "denied" and r["actor"] == "alg" for r in records)


async def test_form_post_without_csrf_token_is_refused(auth_env):
    client = auth_env.client
    form = await client.get("/ui/login")
    resp = await client.post("/ui/login", data={"username": ADMIN, "password": password_of(ADMIN)})
    assert resp.status == 403
    csrf = _CSRF.search(await form.text()).group(1)
    resp = await client.post("/ui/login", data={"csrf": csrf + "x", "username": ADMIN, "password": password_of(ADMIN)})
    assert resp.status == 403
    await sign_in(client, ADMIN)
    # Signed in, a post without the token (or with the pre-sign-in one) still fails.
    resp = await client.post("/ui/builds", data={"package": "business/x/y:1", "license": "full"})
    assert resp.status == 403
    resp = await client.post("/ui/builds", data={"csrf": csrf, "package": "business/x/y:1", "license": "full"})
    assert resp.status == 403
    resp = await client.post("/ui/logout", data={})
    assert resp.status == 403
    assert (await client.get("/ui/algorithms", allow_redirects=False)).status == 200


async def test_sign_out_ends_the_session(auth_env):
    client = auth_env.client
    await sign_in(client, ADMIN)
    old = client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))[COOKIE].value
    csrf = await csrf_of(client)
    resp = await client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    # The old session id is dead even when presented again.
    client.session.cookie_jar.update_cookies({COOKIE: old}, client.make_url("/ui/"))
    resp = await client.get("/ui/algorithms", allow_redirects=False)
    assert resp.status == 303 and "/ui/login" in resp.headers["Location"]


async def test_idle_session_expires(auth_env):
    from proxy.ui.context import SESSIONS
    client = auth_env.client
    await sign_in(client, ADMIN)
    assert (await client.get("/ui/algorithms", allow_redirects=False)).status == 200
    auth_env.app[SESSIONS].idle = 0.0  # every gap between two requests is now too long
    await asyncio.sleep(0.01)
    resp = await client.get("/ui/algorithms", allow_redirects=False)
    assert resp.status == 303 and "/ui/login" in resp.headers["Location"]


async def test_session_ends_when_the_password_changes(auth_env):
    client = auth_env.client
    await sign_in(client, "alg")
    assert (await client.get("/ui/algorithms", allow_redirects=False)).status == 200
    resp = await client.put("/api/v1/users/alg/password", json={"password": "a-new-password-for-alg"},
                            headers=basic(ADMIN))
    assert resp.status in (200, 204), await resp.text()
    assert (await client.get("/ui/algorithms", allow_redirects=False)).status == 303


async def test_console_session_is_not_accepted_by_the_api_or_v2(auth_env):
    client = auth_env.client
    await sign_in(client, ADMIN)
    assert (await client.get("/api/v1/users")).status == 401
    assert (await client.get("/v2/_catalog")).status == 401


async def test_business_dev_sees_only_readable_repositories(auth_env):
    app, client = auth_env.app, auth_env.client
    await seed_image(app, "generic/visible", "1.0")
    await seed_image(app, "generic/secret", "1.0")
    await seed_image(app, "business/door/visible", "1.0")
    # biz may read business/** by default but no generic repository until granted one.
    resp = await client.post("/api/v1/grants", json={"subject": "biz", "role": "consumer", "pattern": "generic/visible"},
                             headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()
    await sign_in(client, "biz")
    text = await (await client.get("/ui/algorithms")).text()
    assert "generic/visible" in text and "generic/secret" not in text
    # Guessing URLs: the unreadable repository answers exactly like a missing one.
    secret = await client.get("/ui/repositories/generic/secret")
    missing = await client.get("/ui/repositories/generic/nothing-here")
    assert secret.status == missing.status == 404
    assert (await client.get("/ui/repositories/generic/secret?tag=1.0")).status == 404
    assert (await client.get("/ui/archive/generic/secret:1.0")).status in (403, 404)
    assert (await client.get("/ui/repositories/generic/visible?tag=1.0")).status == 200
    # Admin pages are the API's admins-only routes.
    for path in ("/ui/admin/users", "/ui/admin/grants", "/ui/admin/audit", "/ui/admin/subscriptions"):
        resp = await client.get(path)
        assert resp.status == 403, path


async def test_admin_sees_everything_and_downloads_an_archive(auth_env):
    app, client = auth_env.app, auth_env.client
    digest = await seed_image(app, "generic/face", "1.0")
    await sign_in(client, ADMIN)
    text = await (await client.get("/ui/algorithms")).text()
    assert "generic/face" in text
    page = await (await client.get("/ui/repositories/generic/face?tag=1.0")).text()
    assert digest in page and f"/ui/archive/generic/face@{digest}" in page
    archive = await client.get(f"/ui/archive/generic/face@{digest}")
    assert archive.status == 200
    api = await client.get(f"/api/v1/archive/generic/face@{digest}", headers=basic(ADMIN))
    assert await archive.read() == await api.read()
    users = await (await client.get("/ui/admin/users")).text()
    assert "biz" in users and "alg" in users


async def test_auth_off_console_is_open_with_a_banner(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    resp = await client.get("/ui/algorithms")
    assert resp.status == 200 and "Authentication is off" in await resp.text()


async def test_console_can_be_turned_off(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem", ui__enabled=False)))
    assert (await client.get("/ui/algorithms")).status == 404


async def test_console_downloads_changes_and_refusals_are_audited(auth_env):
    app, client = auth_env.app, auth_env.client
    digest = await seed_image(app, "generic/audited", "1.0")
    await sign_in(client, ADMIN)
    assert (await client.get(f"/ui/archive/generic/audited@{digest}")).status == 200
    await sign_in(client, "biz")
    assert (await client.get("/ui/admin/users")).status == 403
    csrf = await csrf_of(client)
    resp = await client.post("/ui/builds", data={"csrf": csrf, "package": "business/none/x:1.0", "license": "full"})
    assert resp.status >= 400
    downloads = await auth_env.audit(action="archive.download")
    assert any(r["repository"] == "generic/audited" and r["actor"] == ADMIN for r in downloads)
    refusals = await auth_env.audit(actor="biz", outcome="denied")
    assert any("ui." in r["action"] or r["action"].startswith("full-builds") for r in refusals)
    builds = await auth_env.audit(action="full-builds.create_full_build")
    assert any(r["actor"] == "biz" for r in builds)


async def _plugin(client, name: str = "door-form") -> None:
    plugin = {"name": name, "version": "1.0", "kind": "file",
              "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]}
    resp = await client.post("/api/v1/plugins", json=plugin, headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()


async def test_chain_create_edit_and_reassemble_through_the_api_checks(auth_env):
    client = auth_env.client
    await _plugin(client)
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/new/system")
    # The API's validation shows beside the field: a plugin that does not exist.
    resp = await client.post("/ui/new/system", data={"csrf": csrf, "name": "door", "match": "generic/*",
                                                     "plugins": "plugins/missing:9.9", "params": "{}"})
    text = await resp.text()
    assert resp.status == 422 and 'id="err-plugins"' in text
    resp = await client.post("/ui/new/system", data={"csrf": csrf, "name": "door", "match": "generic/*",
                                                     "plugins": "plugins/door-form:1.0", "params": "{nope"})
    assert resp.status == 422 and 'id="err-params"' in await resp.text()
    resp = await client.post("/ui/new/system", data={"csrf": csrf, "name": "door", "match": "generic/*",
                                                     "plugins": "plugins/door-form:1.0", "params": '{"site": "hq"}'},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    chain = await (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).json()
    assert chain["params"] == {"site": "hq"} and chain["owner"]["name"] == ADMIN
    resp = await client.post("/ui/systems/door/edit", data={"csrf": csrf, "match": "generic/face*",
                                                            "plugins": "plugins/door-form:1.0", "params": "{}"},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    chain = await (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).json()
    assert chain["match"] == ["generic/face*"]
    # A platform filter: a malformed name shows beside its field; a good one is kept, shown,
    # and survives an edit that leaves it as it is.
    resp = await client.post("/ui/systems/door/edit", data={"csrf": csrf, "match": "generic/face*", "params": "{}",
                                                            "plugins": "plugins/door-form:1.0", "platforms": "arm64"})
    assert resp.status == 422 and 'id="err-platforms"' in await resp.text()
    resp = await client.post("/ui/systems/door/edit", data={"csrf": csrf, "match": "generic/face*", "params": "{}",
                                                            "plugins": "plugins/door-form:1.0",
                                                            "platforms": "linux/arm64\nlinux/amd64+cuda12\n"},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    chain = await (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).json()
    assert chain["platforms"] == ["linux/arm64", "linux/amd64+cuda12"]
    assert "linux/amd64+cuda12" in await (await client.get("/ui/systems/door/edit")).text()
    assert "<code>linux/arm64</code>" in await (await client.get("/ui/systems/door")).text()
    resp = await client.post("/ui/systems/door/assemble", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/assemblies?chain=door"
    # Without the token nothing changes.
    resp = await client.post("/ui/systems/door/edit", data={"match": "generic/**", "plugins": "plugins/door-form:1.0"})
    assert resp.status == 403


async def test_business_dev_cannot_edit_a_chain_it_may_not_manage(auth_env):
    client = auth_env.client
    await _plugin(client)
    resp = await client.post("/api/v1/chains", json={"name": "door", "match": ["generic/*"],
                                                     "plugins": ["plugins/door-form:1.0"]}, headers=basic(ADMIN))
    assert resp.status == 201
    await sign_in(client, "alg")  # algorithm developers hold no right on business/door
    csrf = await csrf_of(client)
    assert (await client.get("/ui/systems/door")).status in (403, 404)
    resp = await client.post("/ui/systems/door/edit", data={"csrf": csrf, "match": "generic/**",
                                                            "plugins": "plugins/door-form:1.0", "params": "{}"})
    assert resp.status == 403
    resp = await client.post("/ui/systems/door/assemble", data={"csrf": csrf})
    assert resp.status == 403
    chain = await (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).json()
    assert chain["match"] == ["generic/*"]


async def test_admin_subscriptions_and_audit_verification(auth_env):
    client = auth_env.client
    await sign_in(client, ADMIN)
    assert (await client.get("/ui/admin/subscriptions")).status == 200
    assert (await client.get("/ui/admin/subscriptions/no-such-id")).status == 404
    csrf = await csrf_of(client)
    resp = await client.post("/ui/admin/subscriptions/no-such-id/deliveries/1/retry", data={"csrf": csrf})
    assert resp.status == 404
    resp = await client.post("/ui/admin/audit/verify", data={"csrf": csrf})
    assert resp.status == 200 and "Intact" in await resp.text()
    await sign_in(client, "biz")
    csrf = await csrf_of(client)
    assert (await client.get("/ui/admin/subscriptions")).status == 403
    assert (await client.post("/ui/admin/audit/verify", data={"csrf": csrf})).status == 403


async def _push_algorithm(client, repo: str, tag: str, descriptor: dict) -> str:
    from proxy.oci import mediatypes as mt
    from tests.support.oci import digest_of
    config = json.dumps(descriptor).encode()
    for blob in (config, b"weights"):
        resp = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                                 headers=basic(ADMIN))
        assert resp.status == 201, await resp.text()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
                           "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(b"weights"), "size": 7,
                                       "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}]})
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={"Content-Type": mt.OCI_MANIFEST, **basic(ADMIN)})
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


async def test_descriptor_page_and_diff_between_versions(auth_env):
    client = auth_env.client
    await _push_algorithm(client, "generic/edge", "1.0", {"name": "edge", "version": "1.0", "platform": "linux/arm64",
                                                          "inputs": [{"name": "frame", "type": "image/nv12"}],
                                                          "parameters": {"threshold": 0.4}})
    await _push_algorithm(client, "generic/edge", "2.0", {"name": "edge", "version": "2.0", "platform": "linux/arm64",
                                                          "inputs": [{"name": "frame", "type": "image/nv12"}],
                                                          "parameters": {"threshold": 0.5}})
    await sign_in(client, ADMIN)
    page = await (await client.get("/ui/repositories/generic/edge?tag=1.0")).text()
    assert "linux/arm64" in page and "image/nv12" in page and "model.onnx" in page
    terminal = page.split("From a terminal", 1)[1].split("</dl>", 1)[0]
    host = f"127.0.0.1:{client.server.port}"
    assert f"oras pull --plain-http {host}/generic/edge:1.0 -u {ADMIN}" in terminal
    assert "podman" not in terminal  # a thin package is no container image
    resp = await client.get("/ui/diff/generic/edge", params={"a": "1.0", "b": "2.0"})
    text = await resp.text()
    assert resp.status == 200
    assert "<del>-" in text and "0.4</del>" in text and "<ins>+" in text and "0.5</ins>" in text
    assert "linux/arm64</del>" not in text  # unchanged lines are context, not changes
    await sign_in(client, "biz")  # biz may not read generic/edge: the diff is as unreachable as the page
    assert (await client.get("/ui/diff/generic/edge", params={"a": "1.0", "b": "2.0"})).status == 404


async def test_tokens_create_once_and_revoke_with_the_api_rules(auth_env):
    client = auth_env.client
    admin_token = await auth_env.api_token(ADMIN)
    await sign_in(client, "alg")
    csrf = await csrf_of(client, "/ui/tokens")
    resp = await client.post("/ui/tokens", data={"csrf": csrf, "name": "ci"})
    text = await resp.text()
    assert resp.status == 201
    secret = re.search(r'id="new-token" readonly size="60" value="([^"]+)"', text).group(1)
    assert (await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})).status == 200
    listing = await (await client.get("/ui/tokens")).text()
    assert secret not in listing and admin_token["id"] not in listing  # only one's own, never a secret again
    # Someone else's token: the API's answer, whatever the URL.
    resp = await client.post(f"/ui/tokens/{admin_token['id']}/revoke", data={"csrf": csrf})
    assert resp.status in (403, 404)
    own = re.search(r'/ui/tokens/([^/"]+)/revoke', listing).group(1)
    resp = await client.post(f"/ui/tokens/{own}/revoke", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})).status == 401
    resp = await client.post("/ui/tokens", data={"csrf": csrf, "name": "x", "owner": ADMIN})
    assert resp.status == 403


async def test_who_pushed_a_version_is_shown_to_admins_only(auth_env):
    client = auth_env.client
    await _push_algorithm(client, "generic/pushed", "1.0", {"name": "pushed", "version": "1.0"})
    resp = await client.post("/api/v1/grants", json={"subject": "biz", "role": "consumer", "pattern": "generic/pushed"},
                             headers=basic(ADMIN))
    assert resp.status == 201
    await sign_in(client, ADMIN)

    async def shown() -> bool:
        return "by <strong>admin</strong>" in await (await client.get("/ui/repositories/generic/pushed?tag=1.0")).text()

    from tests.support.packer import wait_for
    await wait_for(shown, timeout=10)
    await sign_in(client, "biz")
    text = await (await client.get("/ui/repositories/generic/pushed?tag=1.0")).text()
    assert "Pushed" not in text and "by <strong>admin</strong>" not in text


async def test_plugins_publish_view_and_refusals(auth_env):
    from aiohttp import FormData
    client = auth_env.client
    await sign_in(client, "biz")
    csrf = await csrf_of(client, "/ui/plugins")

    def form(version: str, options: str = "{}") -> FormData:
        data = FormData()
        for key, value in (("csrf", csrf), ("name", "door-form"), ("version", version), ("kind", "file"),
                           ("options", options)):
            data.add_field(key, value)
        data.add_field("files", b'{"site": "hq"}', filename="form.json", content_type="application/json")
        return data

    resp = await client.post("/ui/plugins", data=form("not a version!"))
    assert resp.status == 422 and 'id="err-version"' in await resp.text()
    resp = await client.post("/ui/plugins", data=form("1.0", "{bad"))
    assert resp.status == 422 and 'id="err-options"' in await resp.text()
    resp = await client.post("/ui/plugins", data=form("1.0"), allow_redirects=False)
    assert resp.status == 303, await resp.text()
    page = await (await client.get("/ui/plugins/door-form")).text()
    assert "form.json" in page and "1.0" in page
    detail = await (await client.get("/api/v1/plugins/door-form", headers=basic(ADMIN))).json()
    assert [f["path"] for f in detail["versions"][0]["files"]] == ["form.json"]
    # A consumer may neither publish nor (without a grant on plugins/) see it.
    await sign_in(client, "cons")
    csrf = await csrf_of(client, "/ui/plugins")
    resp = await client.post("/ui/plugins", data=form("2.0"))
    assert resp.status == 403 and "door-form" not in (await (await client.get("/ui/plugins")).text()).split(
        "<h2>Publish")[0]
    assert (await client.get("/ui/plugins/door-form")).status in (403, 404)


async def test_oversized_form_is_refused_before_it_is_read(auth_env):
    client = auth_env.client
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client)
    resp = await client.post("/ui/tokens", data={"csrf": csrf, "name": "x" * (3 * 1024 * 1024)})
    assert resp.status == 413


async def test_admin_creates_users_and_grants_through_the_api_rules(auth_env):
    client = auth_env.client
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/admin/users")
    resp = await client.post("/ui/admin/users", data={"csrf": csrf, "name": "Bad Name", "kind": "user",
                                                      "password": "a-long-enough-password"})
    assert resp.status == 422 and 'id="err-name"' in await resp.text()
    resp = await client.post("/ui/admin/users", data=[("csrf", csrf), ("name", "dana"), ("kind", "user"),
                                                      ("password", "dana-password-for-tests"), ("roles", "consumer")],
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    resp = await client.post("/ui/admin/grants", data={"csrf": csrf, "subject": "dana", "role": "consumer",
                                                       "pattern": "generic/a**b"})
    assert resp.status == 422 and 'id="err-pattern"' in await resp.text()
    resp = await client.post("/ui/admin/grants", data={"csrf": csrf, "subject": "dana", "role": "consumer",
                                                       "pattern": "generic/team-a/**"}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    grants = (await (await client.get("/api/v1/grants", params={"subject": "dana"}, headers=basic(ADMIN))).json())["items"]
    assert {g["pattern"] for g in grants} >= {"generic/team-a/**"}
    grant = next(g for g in grants if g["pattern"] == "generic/team-a/**")
    resp = await client.post(f"/ui/admin/grants/{grant['id']}/delete", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    # The new user signs in to the console with the password set here.
    await sign_in(client, "dana", "dana-password-for-tests")
    csrf = await csrf_of(client)
    for path, data in (("/ui/admin/users", {"name": "eve", "kind": "robot"}),
                       ("/ui/admin/grants", {"subject": "dana", "role": "admin", "pattern": "**"})):
        resp = await client.post(path, data={"csrf": csrf, **data})
        assert resp.status == 403, path


async def test_session_cookie_is_secure_over_tls(aiohttp_client, tmp_path):
    import ssl

    from tests.support.auth import auth_config
    from tests.support.tlsca import make_ca
    ca = make_ca(tmp_path / "ca")
    ca.issue(tmp_path / "server.crt", tmp_path / "server.key")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    from aiohttp.test_utils import TestServer
    server = TestServer(create_app(auth_config(tmp_path, "filesystem")))
    await server.start_server(ssl=server_ctx)
    client = await aiohttp_client(server)
    resp = await client.get("/ui/login", ssl=client_ctx)
    assert resp.status == 200 and resp.url.scheme == "https", resp.url
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_assembly_status_fragment_polls_until_done(auth_env):
    from tests.support.packer import wait_for
    client = auth_env.client
    await _plugin(client)
    resp = await client.post("/api/v1/chains", json={"name": "door", "match": ["generic/*"],
                                                     "plugins": ["plugins/door-form:1.0"]}, headers=basic(ADMIN))
    assert resp.status == 201
    await _push_algorithm(client, "generic/polled", "1.0", {"name": "polled", "version": "1.0"})

    async def done() -> dict | None:
        items = (await (await client.get("/api/v1/assemblies", params={"chain": "door"},
                                          headers=basic(ADMIN))).json())["items"]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    job = await wait_for(done, timeout=30)
    await sign_in(client, ADMIN)
    full = await (await client.get(f"/ui/assemblies/{job['id']}")).text()
    fragment = await (await client.get(f"/ui/assemblies/{job['id']}", headers={"HX-Request": "true"})).text()
    assert "<html" in full and "<html" not in fragment and 'id="job"' in fragment
    assert "hx-trigger" not in fragment  # done: the block stops asking for itself
    assert "business/door/polled:1.0" in fragment
    # A job's number guessed by someone who may not read its business package.
    await sign_in(client, "alg")
    guessed, missing = await client.get(f"/ui/assemblies/{job['id']}"), await client.get("/ui/assemblies/999999")
    assert guessed.status == missing.status == 404
    said = [re.search(r'<p class="error">([^<]*)</p>', await r.text()).group(1) for r in (guessed, missing)]
    assert said == [f"no assembly job {job['id']}", "no assembly job 999999"]


def test_running_job_and_build_blocks_ask_for_themselves():
    from pathlib import Path

    import jinja2

    import proxy.ui
    from proxy.ui.filters import FILTERS
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(proxy.ui.__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined)
    env.filters.update(FILTERS)
    job = {"id": 7, "status": "running", "chain": "door", "trigger": "push", "runs": 1, "source": None,
           "target": {"repository": "business/door/x", "tag": "1.0", "digest": None}, "plugins": [], "error": None,
           "created": 0.0, "finished": None, "duration_ms": None}
    html = env.get_template("assembly_status.html").render(job=job, csrf="t")
    assert 'hx-get="/ui/assemblies/7"' in html and 'hx-trigger="every 2s"' in html
    build = {"id": "b1", "state": "queued", "package": "business/door/x:1.0", "license": "full", "bytes_done": 0,
             "bytes_total": 10, "attempts": 0}
    html = env.get_template("build_status.html").render(build=build, csrf="t")
    assert 'hx-get="/ui/builds/b1"' in html and 'hx-trigger="every 2s"' in html
    html = env.get_template("build_status.html").render(build={**build, "state": "failed", "error": "boom"}, csrf="t")
    assert "hx-trigger" not in html and "Retry this build" in html


async def test_repository_index_pages_by_prefix_and_follows_pushes_and_deletes():
    from proxy.oci.manifest import ParsedManifest
    from proxy.service.events import ManifestDeleted, ManifestStored
    from proxy.ui.catalog import RepositoryIndex
    stored = ["generic/b", "business/door/x", "generic/a", "generic/c"]
    loads = []

    async def load() -> list[str]:
        loads.append(1)
        return list(stored)

    now = [0.0]
    index = RepositoryIndex(load, refresh=30, clock=lambda: now[0])
    assert list(await index.page("generic/", None)) == ["generic/a", "generic/b", "generic/c"]
    assert list(await index.page("generic/", "generic/a")) == ["generic/b", "generic/c"]
    assert list(await index.page("business/", None)) == ["business/door/x"]
    assert list(await index.page("plugins/", None)) == []
    await index.on_event(ManifestStored("generic/ab", "sha256:0", "x", "1.0", ParsedManifest("x", {})))
    assert list(await index.page("generic/", "generic/a")) == ["generic/ab", "generic/b", "generic/c"]
    assert len(loads) == 1  # a push is added without re-reading the storage
    stored.remove("generic/c")
    await index.on_event(ManifestDeleted("generic/c", "1.0"))
    await index._reload  # the re-read a delete schedules
    assert list(await index.page("generic/", None)) == ["generic/a", "generic/b"]  # generic/ab was never stored
    now[0] = 100  # stale: served as is while it is re-read
    stored.append("generic/z")
    assert "generic/z" not in list(await index.page("generic/", None))
    await index._reload
    assert "generic/z" in list(await index.page("generic/", None))


async def test_listings_paginate_and_pages_hold_only_readable_names(auth_env):
    app, client = auth_env.app, auth_env.client
    for i in range(53):
        await seed_image(app, f"generic/p{i:03d}", "1.0")
    for i in range(3):
        await seed_image(app, f"generic/q{i:03d}", "1.0")
    resp = await client.post("/api/v1/grants", json={"subject": "biz", "role": "consumer", "pattern": "generic/q*"},
                             headers=basic(ADMIN))
    assert resp.status == 201
    await sign_in(client, ADMIN)
    first = await (await client.get("/ui/algorithms")).text()
    assert "generic/p000" in first and "generic/p049" in first and "generic/p050" not in first
    cursor = re.search(r'href="\?cursor=([^"]+)"', first).group(1)
    second = await (await client.get(f"/ui/algorithms?cursor={cursor}")).text()
    assert "generic/p050" in second and "generic/q002" in second and "generic/p049" not in second
    assert 'rel="next"' not in second
    await sign_in(client, "biz")
    only = await (await client.get("/ui/algorithms")).text()
    assert "generic/q000" in only and "generic/p0" not in only and 'rel="next"' not in only


async def test_auth_off_console_is_read_write_with_csrf(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, "filesystem")))
    await _plugin(client)
    csrf = await csrf_of(client, "/ui/new/system")
    data = {"name": "door", "match": "generic/*", "plugins": "plugins/door-form:1.0", "params": "{}"}
    assert (await client.post("/ui/new/system", data=data)).status == 403  # still no form without its token
    resp = await client.post("/ui/new/system", data={"csrf": csrf, **data}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert (await client.get("/api/v1/chains/door")).status == 200
    assert (await client.get("/ui/admin/users")).status == 200


async def test_disabling_a_user_ends_their_console_session_at_once(auth_env):
    from aiohttp.test_utils import TestClient
    admin = auth_env.client
    async with TestClient(admin.server) as other:  # a second browser, on the same server
        await _disable_while_signed_in(admin, other)


async def _disable_while_signed_in(admin, other) -> None:
    await sign_in(other, "alg")
    assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 200
    await sign_in(admin, ADMIN)
    csrf = await csrf_of(admin, "/ui/admin/users")
    resp = await admin.post("/ui/admin/users/alg/disabled", data={"csrf": csrf, "disabled": "true"},
                            allow_redirects=False)
    assert resp.status == 303
    assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 303
    resp = await admin.post("/ui/admin/users/alg/disabled", data={"csrf": csrf, "disabled": "false"},
                            allow_redirects=False)
    assert resp.status == 303
    assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 303  # signed out stays signed out


def test_assembly_status_renders_jobs_without_timings():
    """A job that never ran its plugins (refused, failed early) has no per-plugin times:
    the page says so instead of failing."""
    import jinja2

    import proxy.ui
    from proxy.ui.filters import FILTERS

    templates = Path(proxy.ui.__file__).parent / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates),
                             autoescape=True, undefined=jinja2.ChainableUndefined)
    env.filters.update(FILTERS)
    job = {"id": 7, "status": "failed", "chain": "door", "runs": 1, "trigger": "push",
           "source": {"repository": "generic/face", "tag": "1.0", "digest": "sha256:" + "a" * 64},
           "target": {"repository": "business/door/face", "tag": "1.0"}, "created": 1.0, "finished": 2.0,
           "duration_ms": None, "error": {"reason": "frozen"},
           "plugins": [{"ref": "plugins/door-form:1.0", "digest": "sha256:" + "b" * 64}]}
    html = env.get_template("assembly_status.html").render(job=job)
    assert "plugins/door-form:1.0" in html and "—" in html


async def _builds(app, repository: str, count: int, requester: str = ADMIN) -> list[str]:
    """Full-build records of ``repository:1.0`` as the build store holds them (state as it goes)."""
    from proxy.api.manage.fullbuilds import FULL_BUILDS
    from proxy.service.policy import Principal
    store = app[FULL_BUILDS].store
    return [(await store.create(f"{repository}:1.0", repository, "1.0", "full", "sha256:" + "0" * 64,
                                Principal(requester, "user"))).id for _ in range(count)]


async def _listed_builds(client, query: str = "") -> tuple[str, list[str]]:
    """Every page of /ui/builds, following the pager; the build ids listed."""
    ids: list[str] = []
    url, text = f"/ui/builds?{query}", ""
    for _ in range(50):
        resp = await client.get(url)
        assert resp.status == 200, await resp.text()
        page = await resp.text()
        text += page
        ids += re.findall(r'href="/ui/builds/([0-9a-f]{32})"', page)
        following = re.search(r'rel="next" href="([^"]+)"', page)
        if following is None:
            return text, ids
        url = "/ui/builds" + following.group(1).replace("&amp;", "&")
    raise AssertionError("the pager never ends")


async def test_full_builds_are_listed_to_whoever_may_read_their_package(auth_env):
    app, client = auth_env.app, auth_env.client
    await auth_env.create_user("door-dev", [])
    resp = await client.post("/api/v1/grants", json={"subject": "door-dev", "role": "business-dev",
                                                     "pattern": "business/door/**"}, headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()
    door = await _builds(app, "business/door/face", 3, requester="door-dev")
    gate = await _builds(app, "business/gate/face", 3)
    # The API's listing stays admins-only; the console lists each user's share of it.
    assert (await client.get("/api/v1/full-builds", headers=basic("door-dev"))).status == 403
    await sign_in(client, "door-dev")
    text, ids = await _listed_builds(client, "limit=1")
    assert sorted(ids) == sorted(door) and "business/gate" not in text
    _, ids = await _listed_builds(client, "package=business/gate/face:1.0")
    assert ids == []
    # A build of a package it may not read answers like one that does not exist.
    guessed, missing = await client.get(f"/ui/builds/{gate[0]}"), await client.get(f"/ui/builds/{'f' * 32}")
    assert guessed.status == missing.status == 404
    assert (await client.get(f"/ui/builds/{door[0]}")).status == 200
    await sign_in(client, ADMIN)
    _, ids = await _listed_builds(client, "limit=2")
    assert set(door + gate) <= set(ids)
    _, ids = await _listed_builds(client, "package=business/gate/face:1.0")
    assert sorted(ids) == sorted(gate)


async def test_a_long_run_of_unreadable_builds_ends_a_page_early(auth_env, monkeypatch):
    from proxy.ui import jobs
    app, client = auth_env.app, auth_env.client
    await auth_env.create_user("door-dev", [])
    resp = await client.post("/api/v1/grants", json={"subject": "door-dev", "role": "consumer",
                                                     "pattern": "business/door/*"}, headers=basic(ADMIN))
    assert resp.status == 201
    door = await _builds(app, "business/door/face", 1)
    # Newer, so listed first, and under the grant's literal prefix (business/door/), so only
    # the policy can tell they are unreadable: one segment deeper than the grant's "*".
    await _builds(app, "business/door/team-b/face", 12)
    monkeypatch.setattr(jobs, "_BATCH", 2)
    monkeypatch.setattr(jobs, "_MAX_BATCHES", 3)  # 6 builds looked at per page
    await sign_in(client, "door-dev")
    first = await (await client.get("/ui/builds")).text()
    assert "/ui/builds/" not in first.split("<main", 1)[1] and 'rel="next"' in first
    assert "in this stretch of builds" in first
    text, ids = await _listed_builds(client)
    assert ids == door and "team-b" not in text


async def test_a_long_run_of_unreadable_repositories_ends_a_page_early(auth_env, monkeypatch):
    from proxy.ui import repositories
    app, client = auth_env.app, auth_env.client
    for i in range(7):
        await seed_image(app, f"generic/a{i}", "1.0")
    await seed_image(app, "generic/z-readable", "1.0")
    resp = await client.post("/api/v1/grants", json={"subject": "biz", "role": "consumer",
                                                     "pattern": "generic/z-*"}, headers=basic(ADMIN))
    assert resp.status == 201
    monkeypatch.setattr(repositories, "SCAN", 3)
    await sign_in(client, "biz")
    pages, url = [], "/ui/algorithms"
    while url:
        page = await (await client.get(url)).text()
        pages.append(page)
        following = re.search(r'rel="next" href="([^"]+)"', page)
        url = "/ui/algorithms" + following.group(1) if following else None
    # The pager's cursor is sealed: it never spells the unreadable name a page stopped at.
    assert len(pages) == 3 and not re.search(r"generic/a\d", "".join(pages))
    assert "generic/z-readable" in pages[-1] and "in this stretch of names" in pages[0]


async def test_admin_subscribes_a_url_pauses_and_deletes_it(aiohttp_client, tmp_path):
    from tests.support.auth import AuthEnv, auth_config
    app = create_app(auth_config(tmp_path, "filesystem", webhooks__allow=["http://127.0.0.1:9/hooks"]))
    env = AuthEnv(await aiohttp_client(app), app)
    await env.create_user("biz", ["business-dev"])
    client = env.client
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/admin/subscriptions")
    # The API's refusals beside the fields: a URL outside the allow-list, no event chosen.
    resp = await client.post("/ui/admin/subscriptions", data={"csrf": csrf, "url": "http://127.0.0.1:9/elsewhere",
                                                               "events": "business.assembled", "repositories": "**"})
    assert resp.status == 422 and 'id="err-url"' in await resp.text()
    resp = await client.post("/ui/admin/subscriptions", data={"csrf": csrf, "url": "http://127.0.0.1:9/hooks/ci",
                                                               "repositories": "**"})
    assert resp.status == 422 and "Error:" in await resp.text()
    form = [("csrf", csrf), ("url", "http://127.0.0.1:9/hooks/ci"), ("events", "business.assembled"),
            ("events", "assembly.failed"), ("repositories", "business/door/**\nbusiness/gate/**")]
    resp = await client.post("/ui/admin/subscriptions", data=form)
    text = await resp.text()
    assert resp.status == 201
    secret = re.search(r'id="new-secret" readonly size="60" value="([^"]+)"', text).group(1)
    sub_id = re.search(r'href="/ui/admin/subscriptions/([^"]+)"', text).group(1)
    api = await (await client.get(f"/api/v1/subscriptions/{sub_id}", headers=basic(ADMIN))).json()
    assert api["events"] == ["business.assembled", "assembly.failed"] and api["active"] is True
    assert api["repositories"] == ["business/door/**", "business/gate/**"]
    assert secret not in await (await client.get(f"/ui/admin/subscriptions/{sub_id}")).text()
    resp = await client.post(f"/ui/admin/subscriptions/{sub_id}/active", data={"csrf": csrf, "active": "false"},
                             allow_redirects=False)
    assert resp.status == 303
    api = await (await client.get(f"/api/v1/subscriptions/{sub_id}", headers=basic(ADMIN))).json()
    assert api["active"] is False
    # Not for business developers, whatever the URL.
    await sign_in(client, "biz")
    biz_csrf = await csrf_of(client)
    for path, data in ((f"/ui/admin/subscriptions/{sub_id}/active", {"active": "true"}),
                       (f"/ui/admin/subscriptions/{sub_id}/delete", {}), ("/ui/admin/subscriptions", dict(form))):
        assert (await client.post(path, data={**data, "csrf": biz_csrf})).status == 403, path
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client)
    resp = await client.post(f"/ui/admin/subscriptions/{sub_id}/delete", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get(f"/api/v1/subscriptions/{sub_id}", headers=basic(ADMIN))).status == 404
    created = await env.audit(action="subscriptions.create_subscription")
    assert any(r["actor"] == ADMIN and r["outcome"] == "success" for r in created)


async def test_changing_your_password_keeps_this_session_and_ends_the_others(auth_env):
    from aiohttp.test_utils import TestClient
    client = auth_env.client
    async with TestClient(client.server) as other:
        await sign_in(other, "alg")
        await sign_in(client, "alg")
        page = await (await client.get("/ui/account")).text()
        assert "algorithm-dev on <code>generic/**</code>" in page
        csrf = await csrf_of(client, "/ui/account")
        new = "a-new-password-for-alg"
        resp = await client.post("/ui/users/alg/password", data={"csrf": csrf, "current_password": "wrong",
                                                                 "password": new, "repeat": new})
        assert resp.status == 403 and "current password is wrong" in await resp.text()
        resp = await client.post("/ui/users/alg/password", data={"csrf": csrf, "current_password": password_of("alg"),
                                                                 "password": new, "repeat": new + "x"})
        assert resp.status == 422 and 'id="err-repeat"' in await resp.text()
        resp = await client.post("/ui/users/alg/password", data={"csrf": csrf, "current_password": password_of("alg"),
                                                                 "password": new, "repeat": new}, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        assert (await client.get("/ui/account", allow_redirects=False)).status == 200
        assert (await other.get("/ui/account", allow_redirects=False)).status == 303  # the other session ended
        assert (await client.get("/api/v1/whoami", headers=basic("alg", new))).status == 200
        # Someone else's password: the API's rule (admins only).
        resp = await client.post("/ui/users/biz/password", data={"csrf": csrf, "password": new, "repeat": new})
        assert resp.status == 403
        assert (await client.get("/api/v1/whoami", headers=basic("biz"))).status == 200


async def test_a_system_is_deleted_by_whoever_may_manage_it(auth_env):
    client = auth_env.client
    await _plugin(client)
    resp = await client.post("/api/v1/chains", json={"name": "door", "match": ["generic/*"],
                                                     "plugins": ["plugins/door-form:1.0"]}, headers=basic(ADMIN))
    assert resp.status == 201
    await sign_in(client, "alg")
    csrf = await csrf_of(client)
    assert (await client.post("/ui/systems/door/delete", data={"csrf": csrf})).status == 403
    await sign_in(client, "biz")
    csrf = await csrf_of(client)
    assert 'action="/ui/systems/door/delete"' in await (await client.get("/ui/systems/door")).text()
    resp = await client.post("/ui/systems/door/delete", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).status == 404


async def test_business_packages_page_is_a_consumers_way_in(auth_env):
    app, client = auth_env.app, auth_env.client
    for name in ("business/door/face", "business/door/edge", "business/gate/face"):
        await seed_image(app, name, "1.0")
    await auth_env.create_user("door-reader", [])
    resp = await client.post("/api/v1/grants", json={"subject": "door-reader", "role": "consumer",
                                                     "pattern": "business/door/**"}, headers=basic(ADMIN))
    assert resp.status == 201
    await sign_in(client, "door-reader")
    assert (await client.get("/ui/systems/door")).status == 403  # the chain itself is not theirs to read
    text = await (await client.get("/ui/packages")).text()
    assert "business/door/face" in text and "business/door/edge" in text and "business/gate" not in text
    narrowed = await (await client.get("/ui/packages", params={"start": "door/e"})).text()
    assert "business/door/edge" in narrowed and "business/door/face" not in narrowed
    # A filter is a name prefix, never a pattern: anything else is ignored.
    assert "business/door/face" in await (await client.get("/ui/packages", params={"start": "*"})).text()
    page = await (await client.get("/ui/repositories/business/door/face?tag=1.0")).text()
    host = f"127.0.0.1:{client.server.port}"
    assert f"curl -fLOJ -u door-reader http://{host}/api/v1/archive/business/door/face:1.0" in page
    assert f"podman pull --tls-verify=false {host}/business/door/face:1.0" in page  # an image: podman pulls it
    assert (await client.get("/ui/repositories/business/gate/face?tag=1.0")).status == 404


async def test_algorithms_page_shows_the_push_commands(auth_env):
    client = auth_env.client
    await sign_in(client, "alg")
    text = await (await client.get("/ui/algorithms")).text()
    host = f"127.0.0.1:{client.server.port}"
    assert f"oras login --plain-http -u alg {host}" in text
    assert f"oras push --plain-http {host}/generic/face-recog:1.0" in text
    assert f"docker://{host}/images/face-recog:v1" in text


async def test_token_lifetime_roles_table_and_chains_file_reload(auth_env):
    client = auth_env.client
    await sign_in(client, "alg")
    csrf = await csrf_of(client, "/ui/tokens")
    resp = await client.post("/ui/tokens", data={"csrf": csrf, "name": "short", "days": "2"})
    assert resp.status == 201
    created = re.search(r"expires (\S+)\. Copy it now", await resp.text()).group(1)
    listing = await (await client.get("/api/v1/tokens", headers=basic(ADMIN), params={"owner": "alg"})).json()
    token = next(t for t in listing["items"] if t["name"] == "short")
    from datetime import UTC, datetime
    left = datetime.fromisoformat(token["expires_at"]) - datetime.now(UTC)
    assert created == token["expires_at"] and 1.9 * 86400 < left.total_seconds() <= 2 * 86400
    assert (await client.post("/ui/tokens", data={"csrf": csrf, "name": "bad", "days": "-1"})).status == 422
    assert (await client.post("/ui/systems/reload", data={"csrf": csrf})).status == 403  # admins only
    assert "Re-read the chains file" not in await (await client.get("/ui/systems")).text()
    await sign_in(client, ADMIN)
    grants_page = await (await client.get("/ui/admin/grants")).text()
    assert "<caption>Roles</caption>" in grants_page and "business-dev" in grants_page
    csrf = await csrf_of(client, "/ui/systems")
    resp = await client.post("/ui/systems/reload", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert "re-read" in await (await client.get("/ui/systems")).text()


async def test_a_full_package_names_only_the_licensed_images_its_reader_may_pull(auth_env):
    from packer.fullbuild.store import Frozen
    from proxy.api.manage.fullbuilds import FULL_BUILDS
    from proxy.api.state import REGISTRY
    from proxy.oci import mediatypes as mt
    app, client = auth_env.app, auth_env.client
    repo = "business/door/face"
    thin = await seed_image(app, repo, "1.0")
    child = await app[REGISTRY].get_manifest(repo, thin)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "artifactType": mt.FULL,
                        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": thin, "size": len(child.data)}]})
    full = (await app[REGISTRY].put_manifest(repo, "1.0-full", index.encode(), mt.OCI_INDEX)).digest
    [build] = await _builds(app, repo, 1)
    images = [{"ref": f"images/{n}:v1", "licensed": f"images/{n}:v1-full", "digest": "sha256:" + "4" * 64}
              for n in ("open", "secret")]
    await app[FULL_BUILDS].store.succeed(build, {"tag": f"{repo}:1.0-full", "digest": full, "images": images}, [],
                                         [Frozen(repo, "1.0-full", full, build, f"{repo}:1.0")])
    await auth_env.create_user("door-reader", [])
    for pattern in ("business/door/**", "images/open"):
        resp = await client.post("/api/v1/grants", json={"subject": "door-reader", "role": "consumer",
                                                         "pattern": pattern}, headers=basic(ADMIN))
        assert resp.status == 201
    host = f"127.0.0.1:{client.server.port}"
    await sign_in(client, "door-reader")
    page = await (await client.get(f"/ui/repositories/{repo}", params={"tag": "1.0-full"})).text()
    assert f"skopeo copy --all --src-tls-verify=false --src-creds door-reader docker://{host}/{repo}:1.0-full" in page
    assert f"podman pull --tls-verify=false {host}/images/open:v1-full" in page and "images/secret" not in page
    await sign_in(client, ADMIN)
    page = await (await client.get(f"/ui/repositories/{repo}", params={"tag": "1.0-full"})).text()
    assert f"{host}/images/open:v1-full" in page and f"{host}/images/secret:v1-full" in page
