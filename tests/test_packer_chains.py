"""Chains: globs, the chains file (errors naming file, line, chain, field), reloads, API clashes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from packer.chains import ChainError, ChainRegistry, ChainSpec, glob_match, load_chains_file
from packer.plugin import PluginError
from packer.settings import ChainsConfig
from proxy.app import create_app
from tests.conftest import metadata_database
from proxy.service.policy import SYSTEM
from packer.chains import SCHEMA
from tests.support.packer import push_plugin

GOOD = """\
# Door access control
[[chain]]
name = "door"
match = ["generic/*"]
plugins = ["plugins/door-form:1.0", "plugins/door-service:2.1"]
[chain.params]
site = "hq"

[[chain]]
name = "search"
match = ["generic/face-*", "generic/vision/**"]
plugins = ["plugins/search-form:1.0"]
"""


@pytest.mark.parametrize("glob,name,matches", [
    ("generic/*", "generic/face-recog", True),
    ("generic/*", "generic/vision/face", False),
    ("generic/**", "generic/vision/face", True),
    ("generic/face-*", "generic/face-recog", True),
    ("generic/face-?", "generic/face-a", True),
    ("generic/face-?", "generic/face-ab", False),
    ("**", "business/door/x", True),  # the glob matches; the registry still excludes business/
    ("generic/*", "generic", False),
])
def test_globs(glob, name, matches):
    assert glob_match(glob, name) is matches


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chains.toml"
    path.write_text(text)
    return path


def test_chains_file_in_order_with_lines(tmp_path):
    specs = load_chains_file(_write(tmp_path, GOOD))
    assert [(s.name, line) for s, line in specs] == [("door", 2), ("search", 9)]
    assert specs[0][0].params == {"site": "hq"}


@pytest.mark.parametrize("text,expected", [
    ("[[chain]]\nname = \"a\"\nmatch = [\n", ":3: invalid TOML: Invalid value at end of file"),
    ("[[chain]]\nname = \"a\"\nmatch = [1,,]\nplugins = []\n", ":3: invalid TOML: Invalid value"),
    ("[[chain]]\nname = \"a\"\nmatch = [\"generic/*\"]\n", ":1: chain 'a': plugins: Field required"),
    (GOOD + "\n[[chain]]\nname = \"Bad Name\"\nmatch = [\"generic/*\"]\nplugins = [\"plugins/x:1\"]\n",
     ":14: chain 'Bad Name': name: String should match pattern"),
    (GOOD + "\n[[chain]]\nname = \"door\"\nmatch = [\"generic/*\"]\nplugins = [\"plugins/x:1\"]\n",
     ":14: chain 'door': name: duplicate chain name (first on line 2)"),
    ("[[chain]]\nname = \"a\"\nmatch = [\"generic/*\"]\nplugins = [\"plugins/x:1\"]\nplugin = []\n",
     ":1: chain 'a': plugin: Extra inputs are not permitted"),
    ("[chains]\nx = 1\n", ": unknown top-level keys ['chains']"),
    ("[[chain]]\nname = \"a\"\nmatch = [\"generic/*\"]\nplugins = [\"plugins/x:1\"]\nparams = 3\n",
     ":1: chain 'a': params: Input should be a valid dictionary"),
])
def test_chains_file_errors_name_line_chain_and_field(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ChainError) as info:
        load_chains_file(path)
    assert str(info.value).startswith(str(path)) and expected in str(info.value), str(info.value)


class FakePlugins:
    def __init__(self, known: set[str]) -> None:
        self.known = known

    async def check(self, ref: str) -> None:
        if ref not in self.known:
            raise PluginError(f"plugin {ref} not found")


@pytest.fixture
async def db(tmp_path):
    database = metadata_database(tmp_path / "m.db")
    await database.open()
    await database.migrate("chains", SCHEMA)
    yield database
    await database.close()


async def test_missing_plugin_rejects_the_file_naming_line_and_field(db, tmp_path):
    path = _write(tmp_path, GOOD)
    plugins = FakePlugins({"plugins/door-form:1.0", "plugins/door-service:2.1", "plugins/search-form:1.0"})
    registry = ChainRegistry(db, path, plugins.check)
    await registry.start()
    assert [c.name for c in registry.all()] == ["door", "search"]
    assert [c.name for c in registry.matching("generic/face-recog")] == ["door", "search"]
    assert registry.matching("business/door/face-recog") == [] and registry.matching("plugins/x") == []

    path.write_text(GOOD.replace("door-service:2.1", "door-service:9.9"))
    with pytest.raises(ChainError) as info:
        await registry.reload()
    assert str(info.value) == (f"{path}:2: chain 'door': plugins.1: plugin plugins/door-service:9.9 not found")
    assert [c.name for c in registry.all()] == ["door", "search"]  # the chains in force are kept

    # At start-up a missing plugin rejects the file (logged, shown by the API) without stopping the service.
    fresh = ChainRegistry(db, path, plugins.check)
    await fresh.start()
    assert fresh.all() == [] and fresh.file_status()["error"]["field"] == "plugins.1"
    # A file that does not parse stops start-up.
    path.write_text("[[chain]\n")
    with pytest.raises(ChainError, match="invalid TOML"):
        await ChainRegistry(db, path, plugins.check).start()


async def test_file_and_api_names_cannot_clash(db, tmp_path):
    plugins = FakePlugins({"plugins/a:1"})
    registry = ChainRegistry(db, None, plugins.check)
    await registry.start()
    await registry.create(ChainSpec(name="door", match=["generic/*"], plugins=["plugins/a:1"]), SYSTEM)
    registry.file = _write(tmp_path, '[[chain]]\nname = "door"\nmatch = ["generic/*"]\nplugins = ["plugins/a:1"]\n')
    with pytest.raises(ChainError, match="created through the API"):
        await registry.reload()
    registry.file.write_text('[[chain]]\nname = "gate"\nmatch = ["generic/*"]\nplugins = ["plugins/a:1"]\n')
    await registry.reload()
    assert [(c.name, c.source) for c in registry.all()] == [("gate", "file"), ("door", "api")]
    with pytest.raises(ChainError, match="already exists") as info:
        await registry.create(ChainSpec(name="gate", match=["x"], plugins=["plugins/a:1"]), SYSTEM)
    assert info.value.conflict
    with pytest.raises(ChainError, match="edit the file"):
        await registry.delete("gate")


async def test_reload_through_the_api(aiohttp_client, config, tmp_path):
    uid = uuid.uuid4().hex[:8]
    path = tmp_path / "chains.toml"
    path.write_text("")
    client = await aiohttp_client(create_app(config.model_copy(update={"chains": ChainsConfig(file=path)})))
    await push_plugin(client, f"p-{uid}", "1.0", "file", {}, {"x": b"x"})
    path.write_text(f'[[chain]]\nname = "c-{uid}"\nmatch = ["generic/*"]\nplugins = ["plugins/p-{uid}:1.0"]\n')
    resp = await client.post("/api/v1/chains/reload")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [c["name"] for c in body["items"]] == [f"c-{uid}"] and body["file"]["error"] is None
    path.write_text(path.read_text() + f'\n[[chain]]\nname = "d-{uid}"\nmatch = ["generic/*"]\nplugins = ["plugins/p-{uid}:2.0"]\n')
    resp = await client.post("/api/v1/chains/reload")
    assert resp.status == 422
    assert (await resp.json())["error"]["detail"] == {"file": str(path), "line": 6, "chain": f"d-{uid}",
                                                      "field": "plugins.0",
                                                      "message": f"plugin plugins/p-{uid}:2.0 not found"}
    assert [c["name"] for c in (await (await client.get("/api/v1/chains")).json())["items"]] == [f"c-{uid}"]


def test_shipped_files_load(tmp_path):
    from proxy.config import load_config

    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "config" / "algomint.toml", environ={})
    assert config.chains.file == Path("config/chains.toml") and config.assembly.workers == 2
    shipped = root / "config" / "chains.toml"
    assert load_chains_file(shipped) == []  # all examples are commented out
    lines = shipped.read_text().splitlines()
    start = lines.index("# [[chain]]")
    example = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:])
    specs = load_chains_file(_write(tmp_path, example))
    assert [s.name for s, _ in specs] == ["access-control", "fugitive-search"]
