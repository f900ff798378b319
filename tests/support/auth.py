"""Helpers for tests with authentication on: config, users per role, credentials, seeding."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.api.state import REGISTRY
from proxy.app import create_app
from proxy.config import Config
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.oci import digest_of, image_manifest

__all__ = [
    "ADMIN", "ADMIN_PASSWORD", "ROLE_USERS", "password_of", "basic", "bearer", "auth_config", "seed_image",
    "AuthEnv", "auth_env",
]

ADMIN = "admin"
ADMIN_PASSWORD = "admin-password-for-tests"
# One user per role (the role's default grants), named after it.
ROLE_USERS = {"algorithm-dev": "alg", "business-dev": "biz", "consumer": "cons", "admin": "root2"}


def password_of(user: str) -> str:
    return ADMIN_PASSWORD if user == ADMIN else f"{user}-password-for-tests"


def basic(user: str, password: str | None = None) -> dict[str, str]:
    raw = f"{user}:{password_of(user) if password is None else password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_config(tmp_path: Path, backend: str, distribution: Any = None, **overrides: Any) -> Config:
    secret = tmp_path / "admin-password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    return make_config(tmp_path, backend, distribution, auth__enabled=True,
                       auth__admin_password_file=str(secret), **overrides)


async def seed_image(app: web.Application, repo: str, tag: str, payload: bytes = b"layer") -> str:
    """Store an image as algomint itself would (below the policy); returns its digest."""
    service = app[REGISTRY]
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = payload + repo.encode() + tag.encode()
    for blob in (config, layer):
        status = await service.backend.start_upload(repo)

        async def chunks(data: bytes = blob):
            yield data

        await service.backend.finish_upload(repo, status.upload_id, digest_of(blob), chunks())
    stored = await service.put_manifest(repo, tag, image_manifest(config, [layer]), mt.OCI_MANIFEST)
    return stored.digest


class AuthEnv:
    """A client against algomint with auth on, the admin bootstrapped, one user per role."""

    def __init__(self, client: TestClient, app: web.Application) -> None:
        self.client = client
        self.app = app

    async def create_user(self, name: str, roles: list[str], kind: str = "user") -> dict:
        body: dict[str, Any] = {"name": name, "kind": kind, "roles": roles}
        if kind == "user":
            body["password"] = password_of(name)
        resp = await self.client.post("/api/v1/users", json=body, headers=basic(ADMIN))
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def api_token(self, owner: str, **extra: Any) -> dict:
        resp = await self.client.post("/api/v1/tokens", json={"name": "test", "owner": owner, **extra},
                                      headers=basic(ADMIN))
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def registry_token(self, headers: dict[str, str], *scopes: str, **params: str) -> dict:
        query = [("service", "algomint"), *(("scope", s) for s in scopes), *params.items()]
        resp = await self.client.get("/token", params=query, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def audit(self, **query: str) -> list[dict]:
        resp = await self.client.get("/api/v1/audit", params=query, headers=basic(ADMIN))
        assert resp.status == 200, await resp.text()
        return (await resp.json())["items"]


@pytest.fixture
async def auth_env(aiohttp_client, tmp_path: Path, backend_kind: str, request: pytest.FixtureRequest) -> AuthEnv:
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    app = create_app(auth_config(tmp_path, backend_kind, dist))
    env = AuthEnv(await aiohttp_client(app), app)
    for role, name in ROLE_USERS.items():
        await env.create_user(name, [role])
    return env
