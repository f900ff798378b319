"""Shared fixtures: a real CNCF distribution registry on a free loopback port."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.distribution import Distribution, run_distribution


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """One docker-registry for the session; tests use distinct repository names."""
    with run_distribution(tmp_path_factory.mktemp("distribution")) as registry:
        yield registry


# -- the service under test, on each backend ------------------------------------------

from aiohttp.test_utils import TestClient  # noqa: E402

from proxy.app import create_app  # noqa: E402
from proxy.config import Config, load_config  # noqa: E402

BACKENDS = ["filesystem", "registry"]
# Allow rules (any port) for the loopback receivers and services tests start.
LOOPBACK_ALLOW = ["http://127.0.0.1:*/", "http://localhost:*/"]


def make_config(tmp_path: Path, backend: str, distribution: Distribution | None = None, **overrides) -> Config:
    storage: dict = {"backend": backend, "path": str(tmp_path / "storage")}
    if "storage_verify_reads" in overrides:
        storage["verify_reads"] = overrides.pop("storage_verify_reads")
    if backend == "registry":
        assert distribution is not None
        storage["url"] = distribution.url
    env = {f"ALGOMINT_STORAGE__{k.upper()}": str(v) for k, v in storage.items()}
    env["ALGOMINT_METADATA__PATH"] = str(tmp_path / "metadata.db")
    # Webhooks reach nothing by default; tests' receivers listen on loopback.
    env["ALGOMINT_WEBHOOKS__ALLOW"] = str(LOOPBACK_ALLOW).replace("'", '"')
    return load_config(None, environ=env, **overrides)


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def config(tmp_path: Path, backend_kind: str, request: pytest.FixtureRequest) -> Config:
    dist = request.getfixturevalue("distribution") if backend_kind == "registry" else None
    return make_config(tmp_path, backend_kind, dist)


@pytest.fixture
async def client(aiohttp_client, config: Config) -> TestClient:
    """An HTTP client against algomint on the parametrised backend."""
    return await aiohttp_client(create_app(config))


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses (the distribution fixture is shared)."""
    import uuid

    return f"test/r{uuid.uuid4().hex[:12]}"
