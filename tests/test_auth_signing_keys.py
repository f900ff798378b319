"""Registry tokens verify with the public key alone: through the JWKS algomint serves, and
by a real docker-registry (distribution 2.8) configured for token auth with algomint's
certificate bundle — before and across a key rotation."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import jwt
import pytest

from proxy.app import create_app
from proxy.auth.keyring import BUNDLE, KeyRing, rotate
from proxy.auth.registry_token import TokenSigner
from proxy.auth.setup import signing_keys_dir
from proxy.auth.state import SIGNER
from tests.support.auth import auth_config, basic
from tests.support.distribution import BINARY, run_distribution


async def test_jwks_verifies_a_token_from_the_token_service(aiohttp_client, tmp_path: Path):
    client = await aiohttp_client(create_app(auth_config(tmp_path, "filesystem")))
    resp = await client.get("/token", params={"service": "algomint", "scope": "repository:generic/x:pull"},
                            headers=basic("admin"))
    token = (await resp.json())["token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    for path in ("/token/jwks", "/.well-known/jwks.json"):
        jwks = await (await client.get(path)).json()
        [key] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
        assert set(key) >= {"kty", "crv", "x", "y", "kid"} and "d" not in key  # public only
        claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["ES256"], audience="algomint", issuer="algomint")
        assert claims["sub"] == "admin"
    pem = await (await client.get("/token/certs.pem")).text()
    assert pem.count("BEGIN CERTIFICATE") == 1 and "PRIVATE" not in pem


@pytest.mark.skipif(BINARY is None, reason="docker-registry is not installed")
async def test_a_backing_registry_verifies_tokens_with_the_certificates_alone(aiohttp_client, tmp_path: Path):
    app = create_app(auth_config(tmp_path, "filesystem"))
    client = await aiohttp_client(app)
    keys_dir = signing_keys_dir(_config(app))
    signer: TokenSigner = app[SIGNER]
    repo = f"generic/t{uuid.uuid4().hex[:8]}"
    resp = await client.get("/token", params={"service": "algomint", "scope": f"repository:{repo}:pull,push"},
                            headers=basic("admin"))
    before_rotation = (await resp.json())["token"]
    # Publish the next key now, signing only later: verifiers load it before it is used.
    upcoming, _ = rotate(keys_dir, activate_in=3600, keep_retired=3600)
    signer.keys.scan()
    grant = [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
    assert signer.keys.signer().kid != upcoming.kid  # not signing yet
    # What the upcoming key will sign once active (same claims, signed by it now).
    claims = jwt.decode(before_rotation, options={"verify_signature": False})
    after_rotation = jwt.encode(claims, upcoming.private, algorithm="ES256", headers={"kid": upcoming.kid})
    foreign, _ = TokenSigner(KeyRing.open(tmp_path / "foreign"), "algomint").issue(
        "admin", "user", use="access", ttl=300, access=grant)

    with run_distribution(tmp_path / "registry", token_bundle=keys_dir / BUNDLE) as registry:
        async with aiohttp.ClientSession() as session:
            async def status(token: str) -> int:
                async with session.get(f"{registry.url}/v2/{repo}/tags/list",
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
                    return resp.status

            assert await status(before_rotation) == 404  # authorised; the repository is just empty
            async with session.post(f"{registry.url}/v2/{repo}/blobs/uploads/",
                                    headers={"Authorization": f"Bearer {before_rotation}"}) as resp:
                assert resp.status == 202  # a push is authorised too
            assert await status(foreign) == 401
            assert await status(before_rotation[:-4] + "AAAA") == 401
            # The backing registry started with the bundle holding the published key: tokens
            # the next key will sign verify, and the current key's tokens still do.
            assert await status(after_rotation) == 404
            assert await status(before_rotation) == 404


def _config(app):
    from proxy.api.state import CONFIG
    return app[CONFIG]


async def test_rotation_keeps_old_tokens_and_removing_a_key_ends_them(aiohttp_client, tmp_path: Path):
    app = create_app(auth_config(tmp_path, "filesystem"))
    client = await aiohttp_client(app)
    signer: TokenSigner = app[SIGNER]
    resp = await client.get("/token", params={"service": "algomint"}, headers=basic("admin"))
    token = (await resp.json())["token"]
    assert (await client.get("/v2/", headers={"Authorization": f"Bearer {token}"})).status == 200  # now cached
    old = signer.keys.signer()
    new, _ = rotate(signing_keys_dir(_config(app)), keep_retired=3600)
    signer.keys.scan()  # what the server does by itself within seconds
    # After a rotation the new key signs and the old key's tokens keep working.
    resp = await client.get("/token", params={"service": "algomint"}, headers=basic("admin"))
    assert jwt.get_unverified_header((await resp.json())["token"])["kid"] == new.kid
    assert (await client.get("/v2/", headers={"Authorization": f"Bearer {token}"})).status == 200
    old.path.unlink()  # a leaked key: rotate, then delete it
    signer.keys.scan()
    assert (await client.get("/v2/", headers={"Authorization": f"Bearer {token}"})).status == 401
    resp = await client.get("/token", params={"service": "algomint"}, headers=basic("admin"))
    fresh = (await resp.json())["token"]
    assert (await client.get("/v2/", headers={"Authorization": f"Bearer {fresh}"})).status == 200
