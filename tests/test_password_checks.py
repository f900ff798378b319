"""Password checks are single-flighted per (user, password, stored hash) and bounded in
concurrency: a burst of identical Basic credentials costs one scrypt run, a wrong
password never joins (or poisons) a right one's check, and no more than ``limit`` scrypt
runs (16 MiB each) are ever in memory at once. The fake ``verify_password`` blocks on a
gate the test opens, so what runs concurrently is decided by the test, not by timing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from proxy.auth import passwords
from proxy.auth.passwords import PasswordChecks, hash_password
from proxy.auth.state import AUTH
from tests.support.auth import auth_env, basic, password_of  # noqa: F401 - fixture

STORED = hash_password("right-password-123")


class GatedScrypt:
    """Stands in for ``verify_password``: counts runs, tracks how many run at once,
    and holds each run until ``gate`` opens."""

    def __init__(self, real=passwords.verify_password) -> None:
        self.real = real
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.active = self.most = 0

    def __call__(self, password: str, stored: str | None) -> bool:
        with self.lock:
            self.calls.append(password)
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            assert self.gate.wait(30)
            return self.real(password, stored)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def scrypt(monkeypatch) -> GatedScrypt:
    fake = GatedScrypt()
    monkeypatch.setattr(passwords, "verify_password", fake)
    return fake


async def _until(condition, turns: int = 100_000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_identical_credentials_share_one_check(scrypt):
    checks = PasswordChecks(limit=4)
    waiting = [asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED)) for _ in range(16)]
    await _until(lambda: len(scrypt.calls) == 1)
    scrypt.gate.set()
    results = await asyncio.gather(*waiting)
    assert scrypt.calls == ["right-password-123"] and checks.runs == 1
    assert results[0] == (True, True) and results[1:] == [(True, False)] * 15
    # The flight is over: a later request checks again (the authenticator's cache is
    # what spares it), it does not reuse a finished answer forever.
    assert await checks.verify("alice", "right-password-123", STORED) == (True, True)
    assert checks.runs == 2


async def test_a_wrong_password_in_flight_never_poisons_a_right_one(scrypt):
    checks = PasswordChecks(limit=4)
    wrong = asyncio.ensure_future(checks.verify("alice", "wrong-password-456", STORED))
    await _until(lambda: len(scrypt.calls) == 1)  # the wrong check is running
    right = asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED))
    await _until(lambda: len(scrypt.calls) == 2)  # a check of its own, not a seat on the wrong one
    scrypt.gate.set()
    assert await wrong == (False, True)
    assert await right == (True, True)
    # And the other way round: a right check in flight gives nothing to a wrong password.
    scrypt.gate.clear()
    right = asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED))
    await _until(lambda: len(scrypt.calls) == 3)
    wrong = asyncio.ensure_future(checks.verify("alice", "wrong-password-456", STORED))
    await _until(lambda: len(scrypt.calls) == 4)
    scrypt.gate.set()
    assert (await right, await wrong) == ((True, True), (False, True))


async def test_same_password_against_a_changed_hash_is_checked_again(scrypt):
    checks = PasswordChecks(limit=4)
    old = asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED))
    await _until(lambda: len(scrypt.calls) == 1)
    new = asyncio.ensure_future(checks.verify("alice", "right-password-123", hash_password("another-one-789")))
    await _until(lambda: len(scrypt.calls) == 2)
    scrypt.gate.set()
    assert (await old, await new) == ((True, True), (False, True))


async def test_concurrent_checks_are_bounded(scrypt):
    checks = PasswordChecks(limit=2)
    users = [asyncio.ensure_future(checks.verify(f"user{i}", "right-password-123", STORED)) for i in range(8)]
    await _until(lambda: scrypt.active == 2)
    await asyncio.sleep(0.2)  # room for a third to start, were it allowed to
    assert scrypt.active == 2 and len(scrypt.calls) == 2
    scrypt.gate.set()
    assert [ok for ok, _ in await asyncio.gather(*users)] == [True] * 8
    assert scrypt.most == 2 and checks.runs == 8


async def test_a_caller_going_away_leaves_the_check_to_the_others(scrypt):
    checks = PasswordChecks(limit=1)
    first = asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED))
    await _until(lambda: len(scrypt.calls) == 1)
    second = asyncio.ensure_future(checks.verify("alice", "right-password-123", STORED))
    await asyncio.sleep(0)
    first.cancel()  # the client that started the check disconnected
    scrypt.gate.set()
    assert await second == (True, False)
    assert checks.runs == 1


async def test_a_burst_of_basic_requests_costs_one_scrypt(auth_env, scrypt):  # noqa: F811
    headers = basic("cons", password_of("cons"))
    checks = auth_env.app[AUTH].passwords
    before = checks.runs  # the admin's logins while users were created
    requests = [asyncio.ensure_future(auth_env.client.get("/v2/", headers=headers)) for _ in range(12)]
    await _until(lambda: len(scrypt.calls) == 1)
    await asyncio.sleep(0.2)  # let the rest of the burst arrive and join
    scrypt.gate.set()
    assert [r.status for r in await asyncio.gather(*requests)] == [200] * 12
    assert scrypt.calls == [password_of("cons")] and checks.runs == before + 1
    # One login recorded, as for a cached check.
    records = await auth_env.audit(actor="cons", action="login")
    assert len(records) == 1 and records[0]["outcome"] == "success"
