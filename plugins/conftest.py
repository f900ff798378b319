"""Fixtures for plugin-kind tests: artifacts, packages, contexts and environments built in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest

from packer.cache import LruCache
from packer.outbound import DEFAULT_DENY_HOSTS, DEFAULT_DENY_NETWORKS, Denylist, guarded_session
from packer.package import Package, PackageFile
from packer.plugin import PluginArtifact, PluginConfig, PluginContext, PluginEnv
from packer.settings import PluginsConfig
from plugins.sandbox import Sandbox

DESCRIPTOR = {"name": "face-recog", "version": "1.0", "parameters": {"threshold": 0.5}, "x-kept": [1, 2]}


def artifact(kind: str, options: dict[str, Any] | None = None, files: dict[str, bytes] | None = None,
             annotations: dict[str, dict[str, str]] | None = None) -> PluginArtifact:
    config = PluginConfig.model_validate({"name": f"test-{kind}", "version": "1.0", "kind": kind, **(options or {})})
    return PluginArtifact(
        f"plugins/test-{kind}", "sha256:" + "ab" * 32, config,
        {p: PackageFile(p, d, annotations=(annotations or {}).get(p, {})) for p, d in (files or {}).items()},
    )


@pytest.fixture
def make_artifact() -> Callable[..., PluginArtifact]:
    return artifact


@pytest.fixture
def package() -> Package:
    return Package(dict(DESCRIPTOR), {"model.txt": PackageFile("model.txt", b"weights", "application/x-model")},
                   {"org.example": "kept"})


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def context(logs: list[str]) -> PluginContext:
    return PluginContext(chain="door", params={"site": "hq"}, system="door", algorithm="face-recog", version="1.0",
                         source_repository="generic/face-recog", source_digest="sha256:" + "cd" * 32,
                         plugin="plugins/test@sha256:" + "ab" * 32, cap=1024 * 1024, log=logs.append)


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[Callable[..., PluginEnv]]:
    sessions: list[aiohttp.ClientSession] = []

    def make(http: bool = False, deny: Denylist | None = None, **sections: dict[str, Any]) -> PluginEnv:
        deny = deny or Denylist(DEFAULT_DENY_NETWORKS, DEFAULT_DENY_HOSTS)
        session = None
        if http:
            session = guarded_session(deny)
            sessions.append(session)
        settings = PluginsConfig.model_validate(sections)
        sandbox = Sandbox(settings.sandbox, private=[tmp_path / "private"])
        sandbox.probe(tmp_path / "work")
        return PluginEnv(settings, tmp_path / "work", sandbox, session, LruCache(1024 * 1024), deny)

    yield make
    for session in sessions:
        await session.close()


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker``: what a plugin left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found
