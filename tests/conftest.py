"""Shared fixtures: a real CNCF distribution registry on a free loopback port."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.distribution import Distribution, run_distribution
from tests.support.postgres import PostgresServer, run_postgres

# ALGOMINT_TEST_METADATA=postgres runs the suite with its metadata in PostgreSQL: every
# test gets a fresh database in one throwaway cluster.
METADATA = os.environ.get("ALGOMINT_TEST_METADATA", "sqlite")
_postgres: PostgresServer | None = None
_databases: dict[str, str] = {}  # a test's metadata path -> its PostgreSQL database


# Modules that never open the metadata store (and the browser walk, whose pages call the
# API other modules cover): the PostgreSQL run in .ci/run leaves them out (-m "not no_metadata").
_NO_METADATA = {"test_archive_download.py", "test_auth_units.py", "test_flights.py", "test_layers.py",
                "test_package_files.py", "test_tarstream.py", "test_console_browser.py"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: reads or edits the SQLite file itself (skipped on PostgreSQL)")
    config.addinivalue_line("markers", "no_metadata: never opens the metadata store")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="inspects the SQLite metadata file")
    for item in items:
        if item.path.name in _NO_METADATA:
            item.add_marker(pytest.mark.no_metadata)
        if METADATA == "postgres" and "sqlite_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def metadata_server() -> Iterator[PostgresServer | None]:
    global _postgres
    if METADATA != "postgres":
        yield None
        return
    with run_postgres() as server:
        _postgres = server
        try:
            yield server
        finally:
            _postgres = None


@pytest.fixture(autouse=True)
def _drop_test_databases(metadata_server: PostgresServer | None) -> Iterator[None]:
    yield
    _databases.clear()
    if metadata_server is not None:
        metadata_server.drop_created()


def metadata_url(path: Path) -> str | None:
    """The PostgreSQL database standing for the SQLite file ``path`` in this test (one per
    path, so a test that reopens its store finds its data), or None on SQLite."""
    if _postgres is None:
        return None
    key = str(path)
    if key not in _databases:
        _databases[key] = _postgres.create_database()
    return _databases[key]


def metadata_database(path: Path):
    """An unopened store for unit tests: the SQLite file ``path``, or its PostgreSQL stand-in."""
    from proxy.config import MetadataConfig
    from proxy.meta import create_database

    return create_database(MetadataConfig(path=path, url=metadata_url(path)))


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
    if (url := metadata_url(tmp_path / "metadata.db")) is not None:
        env["ALGOMINT_METADATA__URL"] = url
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
