"""Console admin pages over the API's own rules: setting a user's password, garbage collection."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from tests.support.auth import (  # noqa: F401 - auth_env is a fixture
    ADMIN, AuthEnv, auth_config, auth_env, basic, password_of,
)
from tests.support.oci import push_blob
from tests.test_console import csrf_of, sign_in

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def backend_kind() -> str:
    return "filesystem"


async def _console_login(client: TestClient, user: str, password: str) -> int:
    """The status of a console sign-in with these credentials (303: signed in)."""
    csrf = _CSRF.search(await (await client.get("/ui/login")).text()).group(1)
    resp = await client.post("/ui/login", data={"csrf": csrf, "username": user, "password": password},
                             allow_redirects=False)
    return resp.status


# -- an admin sets a user's password -------------------------------------------------------


async def test_admin_sets_a_users_password_and_their_sessions_end(auth_env):
    client, new = auth_env.client, "a-new-password-set-by-admin"
    async with TestClient(client.server) as other:  # alg's own browser
        await sign_in(other, "alg")
        assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 200
        await sign_in(client, ADMIN)
        listing = await (await client.get("/ui/admin/users")).text()
        assert 'href="/ui/admin/users/alg"' in listing and "Set the password of alg" in listing
        page = await (await client.get("/ui/admin/users/alg")).text()
        assert 'action="/ui/admin/users/alg/password"' in page and 'name="current_password"' not in page
        csrf = _CSRF.search(page).group(1)

        # Without the form's token: refused, nothing changed.
        resp = await client.post("/ui/admin/users/alg/password", data={"password": new, "repeat": new})
        assert resp.status == 403
        # The API's length rule, beside the field; the refused value is never sent back.
        short = "short-pw"
        resp = await client.post("/ui/admin/users/alg/password", data={"csrf": csrf, "password": short, "repeat": short})
        text = await resp.text()
        assert resp.status == 422 and 'id="err-password"' in text and "to 1024 characters" in text
        assert short not in text
        resp = await client.post("/ui/admin/users/alg/password", data={"csrf": csrf, "password": new,
                                                                       "repeat": new + "x"})
        text = await resp.text()
        assert resp.status == 422 and 'id="err-repeat"' in text and new not in text
        assert (await client.get("/api/v1/whoami", headers=basic("alg"))).status == 200  # still the old one

        resp = await client.post("/ui/admin/users/alg/password", data={"csrf": csrf, "password": new, "repeat": new},
                                 allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/ui/admin/users/alg"
        assert "Location" in resp.headers and new not in resp.headers["Location"]
        # The new password works on the API and the console, the old one on neither.
        assert (await client.get("/api/v1/whoami", headers=basic("alg", new))).status == 200
        assert (await client.get("/api/v1/whoami", headers=basic("alg"))).status == 401
        # alg's console session ended with the change.
        assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 303
        assert await _console_login(other, "alg", password_of("alg")) == 401
        assert await _console_login(other, "alg", new) == 303
        assert (await other.get("/ui/algorithms", allow_redirects=False)).status == 200
        # The admin's own session goes on.
        assert (await client.get("/ui/admin/users", allow_redirects=False)).status == 200

        # Closing the second client stops the shared server: the audit is read before.
        records = await auth_env.audit(action="users.set_password")
        mine = [r for r in records if r["actor"] == ADMIN and "/ui/admin/users/alg/password" in json.dumps(r)]
        assert {r["outcome"] for r in mine} >= {"success", "denied"}
        everything = json.dumps(await auth_env.audit())
        assert new not in everything and short not in everything


async def test_robots_and_unknown_accounts_have_no_password_to_set(auth_env):
    client = auth_env.client
    await auth_env.create_user("ci-bot", ["algorithm-dev"], kind="robot")
    await sign_in(client, ADMIN)
    page = await (await client.get("/ui/admin/users/ci-bot")).text()
    assert "Robots have no password" in page and "/password" not in page
    csrf = await csrf_of(client, "/ui/admin/users")
    pw = "a-password-for-a-robot"
    resp = await client.post("/ui/admin/users/ci-bot/password", data={"csrf": csrf, "password": pw, "repeat": pw})
    assert resp.status == 409 and "robots have no password" in await resp.text()
    assert (await client.get("/ui/admin/users/nobody-here")).status == 404
    resp = await client.post("/ui/admin/users/nobody-here/password", data={"csrf": csrf, "password": pw, "repeat": pw})
    assert resp.status == 404


async def test_an_admin_setting_their_own_password_gives_the_current_one_and_keeps_this_session(auth_env):
    client, admin2, new = auth_env.client, "root2", "root2-new-password-here"
    async with TestClient(client.server) as other:
        await sign_in(other, admin2)
        await sign_in(client, admin2)
        page = await (await client.get(f"/ui/admin/users/{admin2}")).text()
        assert 'name="current_password"' in page
        csrf = _CSRF.search(page).group(1)
        resp = await client.post(f"/ui/admin/users/{admin2}/password", data={"csrf": csrf, "password": new,
                                                                            "repeat": new})
        text = await resp.text()
        assert resp.status == 403 and 'id="err-current_password"' in text and "current password is wrong" in text
        resp = await client.post(f"/ui/admin/users/{admin2}/password",
                                 data={"csrf": csrf, "current_password": "wrong-one", "password": new, "repeat": new})
        assert resp.status == 403
        assert (await client.get("/api/v1/whoami", headers=basic(admin2))).status == 200
        resp = await client.post(f"/ui/admin/users/{admin2}/password",
                                 data={"csrf": csrf, "current_password": password_of(admin2), "password": new,
                                       "repeat": new}, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        assert (await client.get("/ui/admin/users", allow_redirects=False)).status == 200  # this one goes on
        assert (await other.get("/ui/admin/users", allow_redirects=False)).status == 303  # the other ended
        assert (await client.get("/api/v1/whoami", headers=basic(admin2, new))).status == 200


@pytest.mark.parametrize("user", ["biz", "alg", "cons"])
async def test_setting_passwords_here_is_for_admins_only(auth_env, user):
    client = auth_env.client
    await sign_in(client, user)
    csrf = await csrf_of(client)
    new = "a-password-someone-wants"
    # Another account's page, or their own (the account page is theirs): the admin pages' answer.
    for target in ("alg" if user != "alg" else "biz", user):
        assert (await client.get(f"/ui/admin/users/{target}")).status == 403, target
        data = {"csrf": csrf, "password": new, "repeat": new, "current_password": password_of(user)}
        resp = await client.post(f"/ui/admin/users/{target}/password", data=data)
        assert resp.status == 403, target
        assert (await client.get("/api/v1/whoami", headers=basic(target))).status == 200
        assert (await client.get("/api/v1/whoami", headers=basic(target, new))).status == 401
    assert (await client.get("/ui/admin/users")).status == 403


# -- garbage collection --------------------------------------------------------------------


def _blob_files(storage: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (storage / "blobs").rglob("*") if p.is_file()}


def _age(root: Path, seconds: float) -> None:
    """Everything stored so far, older than the grace period."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


async def _follow(client: TestClient, location: str) -> str:
    """The run's status block, asked for as htmx asks, until it stops asking for itself."""
    for _ in range(400):
        resp = await client.get(location, headers={"HX-Request": "true"})
        assert resp.status == 200
        block = await resp.text()
        if "hx-trigger" not in block:
            assert "<html" not in block  # the fragment only
            return block
        await asyncio.sleep(0.05)
    raise AssertionError("the run never ended")


@pytest.fixture
async def gc_env(aiohttp_client, tmp_path: Path) -> AuthEnv:
    app = create_app(auth_config(tmp_path, "filesystem", gc__grace_period=600.0))
    env = AuthEnv(await aiohttp_client(app), app)
    for name, role in (("biz", "business-dev"), ("alg", "algorithm-dev")):
        await env.create_user(name, [role])
    return env


async def test_gc_dry_run_reports_and_a_run_reclaims_an_unreferenced_blob(gc_env, tmp_path):
    client, storage = gc_env.client, tmp_path / "storage"
    repo = f"generic/gc-{uuid.uuid4().hex[:8]}"
    stray = os.urandom(5000)
    digest = await push_blob(client, repo, stray, headers=basic(ADMIN))  # uploaded, never referenced
    _age(storage, 1200)
    assert digest in _blob_files(storage)
    await sign_in(client, ADMIN)
    page = await (await client.get("/ui/admin/storage")).text()
    assert "No runs yet." in page and 'action="/ui/admin/storage/gc"' in page
    csrf = _CSRF.search(page).group(1)

    resp = await client.post("/ui/admin/storage/gc", data={"dry_run": "true"})  # no token
    assert resp.status == 403
    assert (await (await client.get("/api/v1/gc", headers=basic(ADMIN))).json())["items"] == []

    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "true"}, allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    dry_id = location.rsplit("/", 1)[1]
    block = await _follow(client, location)
    assert 'id="gc-status">succeeded' in block and 'id="gc-phase">done' in block and "Would reclaim" in block
    dry = await (await client.get(f"/api/v1/gc/{dry_id}", headers=basic(ADMIN))).json()
    assert dry["dry_run"] is True and dry["counts"]["blobs_removed"] == 1
    assert dry["counts"]["bytes_reclaimed"] == len(stray) and f"({len(stray)} bytes)" in block
    assert digest in _blob_files(storage)  # a dry run removes nothing
    assert (await client.get(f"/v2/{repo}/blobs/{digest}", headers=basic(ADMIN))).status == 200

    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "false"}, allow_redirects=False)
    assert resp.status == 303
    run_id = resp.headers["Location"].rsplit("/", 1)[1]
    page = await (await client.get(resp.headers["Location"])).text()
    assert "<h1>Garbage collection" in page and "started." in page  # the flash
    block = await _follow(client, resp.headers["Location"])
    assert 'id="gc-status">succeeded' in block and 'id="gc-blobs-removed">1<' in block and "Reclaimed" in block
    assert digest not in _blob_files(storage)
    assert (await client.get(f"/v2/{repo}/blobs/{digest}", headers=basic(ADMIN))).status == 404

    listing = await (await client.get("/ui/admin/storage")).text()
    assert listing.index(run_id[:12]) < listing.index(dry_id[:12])  # newest first
    assert "dry run" in listing and f">{ADMIN}<" in listing and "Running now" not in listing
    started = await gc_env.audit(action="gc.start_gc")
    assert {r["actor"] for r in started if r["outcome"] == "success"} == {ADMIN} and len(started) >= 2
    runs = await gc_env.audit(action="gc.run")
    assert {r["reference"] for r in runs} >= {dry_id, run_id}


async def test_a_form_without_a_clear_choice_is_a_dry_run(gc_env):
    client = gc_env.client
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/admin/storage")
    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    run = await (await client.get("/api/v1" + resp.headers["Location"].removeprefix("/ui/admin/storage"),
                                  headers=basic(ADMIN))).json()
    assert run["dry_run"] is True


async def test_a_second_run_while_one_runs_is_refused_on_the_page(gc_env, monkeypatch):
    from proxy.api.manage.gc import GC_RUNS
    client, runs = gc_env.client, gc_env.app[GC_RUNS]
    release = asyncio.Event()
    original = runs.collector.run

    async def held(*args, **kwargs):
        await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(runs.collector, "run", held)
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/admin/storage")
    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "true"}, allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    try:
        block = await (await client.get(location, headers={"HX-Request": "true"})).text()
        assert 'hx-trigger="every 2s"' in block and 'id="gc-status">running' in block
        assert 'id="gc-phase">mark (step 1 of 4' in block
        page = await (await client.get("/ui/admin/storage")).text()
        assert "Running now" in page and f'hx-get="{location}"' in page
        resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "false"})
        assert resp.status == 409 and "is already running" in await resp.text()
    finally:
        release.set()
    assert 'id="gc-status">succeeded' in await _follow(client, location)


@pytest.mark.parametrize("user", ["biz", "alg"])
async def test_gc_pages_are_for_admins_only(gc_env, user):
    client = gc_env.client
    await sign_in(client, ADMIN)
    csrf = await csrf_of(client, "/ui/admin/storage")
    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "true"}, allow_redirects=False)
    run_path = resp.headers["Location"]
    await _follow(client, run_path)
    await sign_in(client, user)
    csrf = await csrf_of(client)
    for path in ("/ui/admin/storage", run_path, "/ui/admin/storage/gc/no-such-run"):
        resp = await client.get(path)
        assert resp.status == 403 and "Not allowed" in await resp.text(), path
    for dry_run in ("true", "false"):
        resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": dry_run})
        assert resp.status == 403
    listing = await (await client.get("/api/v1/gc", headers=basic(ADMIN))).json()
    assert len(listing["items"]) == 1  # only the admin's run
    refused = await gc_env.audit(actor=user, outcome="denied")
    assert any(r["action"] == "gc.start_gc" for r in refused)


async def test_the_registry_backend_says_gc_is_the_registrys_own(aiohttp_client, tmp_path, distribution):
    app = create_app(auth_config(tmp_path, "registry", distribution))
    env = AuthEnv(await aiohttp_client(app), app)
    client = env.client
    await sign_in(client, ADMIN)
    page = await (await client.get("/ui/admin/storage")).text()
    assert 'id="gc-registry"' in page and "<code>registry garbage-collect --delete-untagged" in page
    assert 'action="/ui/admin/storage/gc"' not in page and "No runs yet" not in page
    csrf = _CSRF.search(page).group(1)
    resp = await client.post("/ui/admin/storage/gc", data={"csrf": csrf, "dry_run": "true"})
    api = await client.post("/api/v1/gc", json={"dry_run": True}, headers=basic(ADMIN))
    assert resp.status == api.status == 409
    assert (await api.json())["error"]["message"] in html.unescape(await resp.text())
