"""Console sessions in the shared metadata database: any replica accepts them, a sign-out on
one is refused by all, sessions before sign-in cost no row, forged cookies are refused."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from proxy.api.state import DATABASE
from proxy.app import create_app
from proxy.ui.context import SESSIONS
from proxy.ui.sessions import COOKIE, SessionStore
from tests.conftest import metadata_database
from tests.support.auth import ADMIN, ROLE_USERS, AuthEnv, auth_config, basic, password_of
from tests.support.packer import wait_for

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def _rows(db) -> list:
    return await db.fetchall("SELECT id_hash, username, last_seen FROM console_sessions ORDER BY created")


@pytest.fixture
async def store_db(tmp_path):
    db = metadata_database(tmp_path / "meta.db")
    await db.open()
    yield db
    await db.close()


async def test_idle_expiry_and_last_seen_written_at_most_every_30_seconds(store_db):
    now = [1000.0]
    store = await SessionStore.open(store_db, idle=120, clock=lambda: now[0])
    session = await store.new("alg", "fp")
    [row] = await _rows(store_db)
    assert row["id_hash"] != session.id and session.id not in row["id_hash"]  # only a hash is stored
    now[0] = 1010
    assert (await store.get(session.id)).user == "alg"
    assert (await _rows(store_db))[0]["last_seen"] == 1000  # 10 s: not worth a write
    now[0] = 1100
    assert (await store.get(session.id)).csrf == session.csrf
    assert (await _rows(store_db))[0]["last_seen"] == 1100
    now[0] = 1200
    assert await store.get(session.id, touch=False) is not None  # a progress poll does not restart it
    assert (await _rows(store_db))[0]["last_seen"] == 1100
    now[0] = 1221
    assert await store.get(session.id) is None  # 121 s since the last real use
    assert await _rows(store_db) == []  # and the row is gone
    assert await store.get(session.id) is None and await store.get("") is None


async def test_forged_and_unknown_cookies_are_refused(store_db):
    now = [1000.0]
    store = await SessionStore.open(store_db, idle=120, clock=lambda: now[0])
    signed = await store.new("alg", "fp")
    anonymous = await store.new()
    assert anonymous.user is None and anonymous.csrf != signed.csrf and not anonymous.csrf_ok(None)
    assert anonymous.csrf_ok(anonymous.csrf) and not anonymous.csrf_ok(signed.csrf)
    assert (await store.get(anonymous.id)).csrf == anonymous.csrf
    nonce, issued, mac = anonymous.id.split(".")[1:]
    for forged in (signed.id + "x", signed.id[:-1], "x" * 43, "a." + "x" * 300, f"a.{nonce}.{int(issued) + 500}.{mac}",
                   f"a.{nonce}x.{issued}.{mac}", f"a.{nonce}.{issued}.{mac[:-2]}", "a...", "a.x.y.z", "a." * 5):
        assert await store.get(forged) is None, forged
    # A store with another secret (another deployment) refuses this one's sessions before sign-in.
    other = SessionStore(store_db, b"k" * 32, idle=120, clock=lambda: now[0])
    assert await other.get(anonymous.id) is None
    assert other.open_flash(store.seal_flash(["hi"])) == [] and store.open_flash(store.seal_flash(["hi"])) == ["hi"]
    assert store.open_flash("e30." + "x" * 10) == [] and store.open_flash(None) == []
    # Sessions before sign-in expire too.
    now[0] = 1121
    assert await store.get(anonymous.id) is None
    assert len(await _rows(store_db)) == 1


async def test_signed_in_sessions_are_capped_per_user_and_end_removes_the_row(store_db):
    now = [1000.0]
    store = await SessionStore.open(store_db, idle=120, clock=lambda: now[0], max_per_user=3)
    sessions = []
    for _ in range(5):
        sessions.append(await store.new("alg", "fp"))
        now[0] += 1
    biz = await store.new("biz", "fp")
    assert [await store.get(s.id) is not None for s in sessions] == [False, False, True, True, True]
    assert len(await _rows(store_db)) == 4  # biz's own session is not pushed out by alg's
    await store.end(biz.id)
    assert await store.get(biz.id) is None and len(await _rows(store_db)) == 3


@pytest.fixture
async def two_replicas(aiohttp_client, tmp_path):
    """Two app instances on one configuration: one metadata database, one storage."""
    config = auth_config(tmp_path, "filesystem")
    first, second = create_app(config), create_app(config)
    a = AuthEnv(await aiohttp_client(first), first)
    b = AuthEnv(await aiohttp_client(second), second)
    for role, name in ROLE_USERS.items():
        await a.create_user(name, [role])
    return a, b


async def _sign_in(form_client: TestClient, post_client: TestClient, user: str) -> None:
    """The form from one replica, the post to (maybe) another, as a balancer may route them."""
    form = await form_client.get("/ui/login")
    csrf = _CSRF.search(await form.text()).group(1)
    cookie = form_client.session.cookie_jar.filter_cookies(form_client.make_url("/ui/"))[COOKIE].value
    _set_cookie(post_client, cookie)
    resp = await post_client.post("/ui/login", data={"csrf": csrf, "username": user, "password": password_of(user)},
                                  allow_redirects=False)
    assert resp.status == 303, await resp.text()


def _cookie(client: TestClient) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))[COOKIE].value


def _set_cookie(client: TestClient, value: str) -> None:
    client.session.cookie_jar.update_cookies({COOKIE: value}, client.make_url("/ui/"))


async def test_a_session_from_one_replica_is_accepted_by_another_until_signed_out(two_replicas):
    a, b = two_replicas
    await _sign_in(a.client, b.client, ADMIN)  # the sign-in form of A posted to B
    _set_cookie(a.client, _cookie(b.client))
    for client in (a.client, b.client):
        resp = await client.get("/ui/algorithms", allow_redirects=False)
        assert resp.status == 200 and "Signed in as" in await resp.text()
    # A flash message set on A is shown by B.
    csrf = _CSRF.search(await (await a.client.get("/ui/algorithms")).text()).group(1)
    resp = await a.client.post("/ui/systems/reload", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    flash = a.client.session.cookie_jar.filter_cookies(a.client.make_url("/ui/"))["algomint_flash"].value
    b.client.session.cookie_jar.update_cookies({"algomint_flash": flash}, b.client.make_url("/ui/"))
    assert "re-read" in await (await b.client.get("/ui/systems")).text()
    assert "re-read" not in await (await b.client.get("/ui/systems")).text()  # shown once
    # Signed out on A: refused on B at once.
    session = _cookie(a.client)
    resp = await a.client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    _set_cookie(b.client, session)
    resp = await b.client.get("/ui/algorithms", allow_redirects=False)
    assert resp.status == 303 and "/ui/login" in resp.headers["Location"]


async def test_disabling_an_account_on_one_replica_ends_its_session_on_another(two_replicas):
    a, b = two_replicas
    await _sign_in(b.client, b.client, "alg")
    assert (await b.client.get("/ui/algorithms", allow_redirects=False)).status == 200
    resp = await a.client.patch("/api/v1/users/alg", json={"disabled": True},
                                headers=basic(ADMIN))
    assert resp.status == 200, await resp.text()

    async def signed_out() -> bool:  # B's account cache follows A's change within about a second
        return (await b.client.get("/ui/algorithms", allow_redirects=False)).status == 303

    await wait_for(signed_out, timeout=10)
    assert [r["username"] for r in await _rows(a.app[DATABASE])] == []  # and its row is gone


async def test_a_flood_of_anonymous_page_views_writes_no_row(two_replicas):
    a, b = two_replicas
    for _ in range(30):
        a.client.session.cookie_jar.clear()
        resp = await a.client.get("/ui/login")
        assert resp.status == 200 and COOKIE in resp.cookies
        resp = await a.client.post("/ui/login", data={"csrf": "forged", "username": "x", "password": "y"})
        assert resp.status == 403
    assert await _rows(a.app[DATABASE]) == []
    await _sign_in(a.client, a.client, ADMIN)
    assert [r["username"] for r in await _rows(b.app[DATABASE])] == [ADMIN]


async def test_idle_session_expires_on_every_replica(two_replicas):
    a, b = two_replicas
    await _sign_in(a.client, a.client, ADMIN)
    _set_cookie(b.client, _cookie(a.client))
    assert (await b.client.get("/ui/algorithms", allow_redirects=False)).status == 200
    b.app[SESSIONS].idle = 0.0  # every gap is now too long for B
    resp = await b.client.get("/ui/algorithms", allow_redirects=False)
    assert resp.status == 303 and "/ui/login" in resp.headers["Location"]
    # B deleted the row: A refuses the session too, though its own idle limit is long.
    assert (await a.client.get("/ui/algorithms", allow_redirects=False)).status == 303


async def test_a_password_changed_on_one_replica_keeps_that_session_everywhere_and_ends_the_others(two_replicas):
    a, b = two_replicas
    async with TestClient(b.client.server) as kept_on_b:
        await _sign_in(b.client, b.client, "alg")  # another session of alg
        await _sign_in(a.client, a.client, "alg")
        _set_cookie(kept_on_b, _cookie(a.client))
        assert (await kept_on_b.get("/ui/account", allow_redirects=False)).status == 200
        csrf = _CSRF.search(await (await a.client.get("/ui/account")).text()).group(1)
        new = "a-new-password-for-alg"
        resp = await a.client.post("/ui/users/alg/password", data={"csrf": csrf, "current_password": password_of("alg"),
                                                                   "password": new, "repeat": new},
                                   allow_redirects=False)
        assert resp.status == 303, await resp.text()

        async def settled() -> bool:  # once B's account cache has the new password
            return (await b.client.get("/ui/account", allow_redirects=False)).status == 303

        await wait_for(settled, timeout=10)
        assert (await kept_on_b.get("/ui/account", allow_redirects=False)).status == 200
        assert (await a.client.get("/ui/account", allow_redirects=False)).status == 200
