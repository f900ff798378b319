"""The identity building blocks below HTTP: patterns, password hashing, API token
format, scopes and down-scoping, permissions, the failed-login throttle, signing keys."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from proxy.auth import tokens
from proxy.auth.passwords import hash_password, verify_password
from proxy.auth.patterns import compile_pattern, validate_pattern
from proxy.auth.permissions import Permissions, grant_access
from proxy.auth.ratelimit import LoginThrottle, Throttled, migrate as migrate_throttle
from proxy.auth.keyring import KeyRing, libtrust_kid, rotate
from proxy.auth.registry_token import Scope, TokenError, TokenSigner, parse_scopes
from proxy.service.policy import Action
from tests.conftest import metadata_database


@pytest.mark.parametrize("pattern, name, matches", [
    ("generic/**", "generic/face", True),
    ("generic/**", "generic/face/v2", True),
    ("generic/**", "generic", False),
    ("generic/**", "genericx/face", False),
    ("generic/*", "generic/face", True),
    ("generic/*", "generic/face/v2", False),
    ("business/access-*/**", "business/access-control/face", True),
    ("business/access-*/**", "business/fugitive/face", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/xb", False),
    ("**", "anything/at/all", True),
    ("images/face.v1", "images/face-v1", False),  # `.` is literal
])
def test_patterns(pattern: str, name: str, matches: bool):
    assert bool(compile_pattern(pattern).fullmatch(name)) is matches


@pytest.mark.parametrize("bad", ["", "Generic/**", "generic/***", "generic//x", "/abs", "a/**b", "x" * 300, "a b"])
def test_invalid_patterns(bad: str):
    with pytest.raises(ValueError):
        validate_pattern(bad)


def test_passwords():
    encoded = hash_password("correct horse battery")
    assert encoded.startswith("scrypt$16384$8$1$") and "correct" not in encoded
    assert encoded != hash_password("correct horse battery")  # salted
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("correct horse batterY", encoded)
    assert not verify_password("anything", None)  # unknown user: dummy work, refused
    assert not verify_password("anything", "scrypt$99$1$1$AA$AA")  # not a power of two
    assert not verify_password("anything", "garbage")
    assert not verify_password("x" * 5000, encoded)


def test_api_token_format():
    new = tokens.generate()
    token_id, secret = tokens.parse(new.token)
    assert token_id == new.id and tokens.secret_matches(secret, new.secret_hash)
    assert not tokens.secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), new.secret_hash)
    assert new.secret_hash != secret and secret not in new.secret_hash
    for bad in ("amt_", "amt_zzzzzzzzzzzz_" + "a" * 43, new.token + "x", "ghp_" + new.token[4:]):
        assert tokens.parse(bad) is None


def test_scopes_parse_and_drop_what_they_cannot():
    scopes = parse_scopes(["repository:generic/face:pull,push", "repository:a/b:pull registry:catalog:*",
                           "repository(plugin):plugins/x:pull", "repository:BAD NAME:pull", "nonsense", ":::"])
    assert scopes == [
        Scope("repository", "generic/face", ("pull", "push")), Scope("repository", "a/b", ("pull",)),
        Scope("registry", "catalog", ("*",)), Scope("repository", "plugins/x", ("pull",)),
    ]
    assert len(parse_scopes(["repository:a/b:pull"] * 100)) == 32


def test_permissions_and_down_scoping():
    perms = Permissions([("algorithm-dev", "generic/**"), ("consumer", "business/door/**"), ("admin", "misc/*")],
                        anonymous_pull=["public/**"], system_namespaces=["business/**", "misc/system"])
    assert perms.actions("generic/face") == {Action.PULL, Action.PUSH, Action.DELETE}
    assert perms.actions("business/door/face") == {Action.PULL}
    assert perms.actions("misc/system") == {Action.PULL, Action.DELETE, Action.MANAGE}  # no push: system namespace
    assert perms.actions("public/tool") == {Action.PULL}
    assert perms.actions("images/x") == frozenset()
    assert not perms.registry_wide(Action.MANAGE)
    assert Permissions([("admin", "**")]).registry_wide(Action.MANAGE)
    granted = grant_access(perms, parse_scopes([
        "repository:generic/face:pull,push,delete,manage", "repository:business/door/face:*",
        "repository:generic/face:pull", "registry:catalog:*", "repository:images/x:pull"]))
    assert granted == [
        {"type": "repository", "name": "generic/face", "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": "business/door/face", "actions": ["pull"]},
    ]


async def test_login_throttle_grows_per_user_and_address_and_never_locks(tmp_path: Path):
    now = [1000.0]
    db = metadata_database(tmp_path / "meta.db")
    await db.open()
    await migrate_throttle(db)
    throttle = LoginThrottle(db, free=2, base_delay=1, max_delay=8, window=60, max_waiting=2, clock=lambda: now[0])
    # A second replica on the same store: failures and turns are shared, held attempts are its own.
    other = LoginThrottle(db, free=2, base_delay=1, max_delay=8, window=60, max_waiting=2, clock=lambda: now[0])
    try:
        for replica in (throttle, other):
            wait, hold = await replica.reserve("alice", "10.0.0.1")
            assert wait == 0
            replica.release(hold)
            await replica.failed("alice", "10.0.0.1")
        # Past the free failures, the pair's next check waits; the delay doubles up to the cap.
        assert [throttle.delay(n) for n in range(2, 8)] == [1, 2, 4, 8, 8, 8]
        wait, hold = await throttle.reserve("alice", "10.0.0.1")
        assert wait == 1
        # A concurrent attempt, on the other replica, is spaced after it.
        wait2, hold2 = await other.reserve("alice", "10.0.0.1")
        assert wait2 == 2
        wait3, hold3 = await throttle.reserve("alice", "10.0.0.1")
        assert wait3 == 3
        with pytest.raises(Throttled):  # one more than max_waiting held here is refused
            await throttle.reserve("alice", "10.0.0.1")
        for replica, h in ((throttle, hold), (other, hold2), (throttle, hold3)):
            replica.release(h)
        # Other pairs are untouched: the same user elsewhere, other users at the same address.
        assert (await throttle.reserve("alice", "10.0.0.2"))[0] == 0
        assert (await other.reserve("bob", "10.0.0.1"))[0] == 0
        # A success clears the pair, for every replica; failures are forgotten after the window.
        _, hold = await other.reserve("alice", "10.0.0.1")
        await other.succeeded(hold)
        assert (await throttle.reserve("alice", "10.0.0.1"))[0] == 0
        for _ in range(3):
            await throttle.failed("carol", None)
        assert await other.failures("carol", None) == 3
        now[0] += 61
        assert (await other.reserve("carol", None))[0] == 0
        await other.failed("carol", None)
        assert await throttle.failures("carol", None) == 1  # started over
    finally:
        await db.close()


def test_signing_keys_are_private_and_reused(tmp_path: Path):
    directory = tmp_path / "keys"
    ring = KeyRing.open(directory)
    [key] = ring.keys()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key.path).st_mode) == 0o600
    assert KeyRing.open(directory).signer().kid == key.kid  # reused, not replaced
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temp file left
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", key.kid)  # libtrust's key id form
    key.path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        KeyRing.open(directory)


def test_rotation_keeps_old_tokens_until_they_expire(tmp_path: Path):
    directory = tmp_path / "keys"
    signer = TokenSigner(KeyRing.open(directory), "algomint")
    old, _ = signer.issue("alice", "user", use="access", ttl=300)
    first = signer.keys.signer().kid
    new_key, removed = rotate(directory, keep_retired=360)
    assert removed == []
    signer.keys.scan()
    new, _ = signer.issue("alice", "user", use="access", ttl=300)
    assert jwt.get_unverified_header(new)["kid"] == new_key.kid != first
    # A verifier that has never seen the new key (another replica) finds it on first use.
    replica = TokenSigner(KeyRing(directory), "algomint")
    for token in (old, new):
        assert replica.verify(token, "access").subject == "alice"
        assert signer.verify(token, "access").subject == "alice"
    # The JWKS carries both; each token verifies with the published key alone.
    jwks = {k["kid"]: k for k in signer.keys.jwks()["keys"]}
    assert set(jwks) == {first, new_key.kid}
    for token in (old, new):
        public = jwt.PyJWK(jwks[jwt.get_unverified_header(token)["kid"]]).key
        assert jwt.decode(token, public, algorithms=["ES256"], audience="algomint")["sub"] == "alice"
    # Long after the old key stopped signing, a rotation removes it: its tokens end.
    later = time.time() + 400
    _, removed = rotate(directory, keep_retired=360, now=later)
    assert removed == [first]
    signer.keys.scan()
    with pytest.raises(TokenError, match="unknown key"):
        signer.verify(old, "access")


def test_a_key_can_be_published_before_it_signs(tmp_path: Path):
    directory = tmp_path / "keys"
    ring = KeyRing.open(directory)
    first = ring.signer().kid
    upcoming, _ = rotate(directory, activate_in=3600, keep_retired=360)
    ring.scan()
    assert ring.signer().kid == first and upcoming.kid in {k["kid"] for k in ring.jwks()["keys"]}
    assert ring.signer(now=time.time() + 3601).kid == upcoming.kid
    bundle = x509.load_pem_x509_certificates(ring.bundle())
    assert len(bundle) == 2
    assert {libtrust_kid(c.public_key()) for c in bundle} == {first, upcoming.kid}


def test_signer_checks_audience_use_and_time(tmp_path: Path):
    keys = KeyRing.open(tmp_path / "keys")
    signer = TokenSigner(keys, "algomint")
    token, claims = signer.issue("alice", "user", use="access", ttl=300, now=1_000_000,
                                 access=[{"type": "repository", "name": "a/b", "actions": ["pull"]}])
    assert signer.verify(token, "access", now=1_000_100).access == {("repository", "a/b", "pull")}
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, "access", now=1_000_300)
    with pytest.raises(TokenError, match="not yet valid"):
        signer.verify(token, "access", now=1_000_000 - 60)
    with pytest.raises(TokenError, match="not a token for refresh"):
        signer.verify(token, "refresh", now=1_000_100)
    with pytest.raises(TokenError, match="another service"):
        TokenSigner(keys, "other").verify(token, "access", now=1_000_100)
    with pytest.raises(TokenError, match="unknown key"):
        TokenSigner(KeyRing.open(tmp_path / "other"), "algomint").verify(token, "access", now=1_000_100)
    with pytest.raises(TokenError, match="too long"):
        signer.verify("a" * 5000, "access")
