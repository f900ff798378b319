"""Without a config file, ``config/chains.toml`` (from the working directory) is read when it
exists, and reloading works whether it exists or not; a file named in the config must exist."""

from __future__ import annotations

import base64
import json
import urllib.request

from tests.support.server import run_server

CHAIN = """
[[chain]]
name = "door"
match = ["generic/face-*"]
plugins = ["plugins/door-form:1.0"]
"""


def _call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_default_chains_file_is_read_without_a_config_file(tmp_path):
    workdir = tmp_path / "empty"
    with run_server(workdir, config_text=None) as server:
        status, listing = _call(server.url + "/api/v1/chains/reload", "POST")
        assert status == 200, listing  # no file yet: no file chains, not an error
        assert listing["file"]["file"] == "config/chains.toml" and listing["file"]["chains"] == 0

        status, _ = _call(server.url + "/api/v1/plugins", "POST", {
            "name": "door-form", "version": "1.0", "kind": "file", "options": {},
            "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]})
        assert status == 201
        (workdir / "config").mkdir()
        (workdir / "config" / "chains.toml").write_text(CHAIN)
        status, listing = _call(server.url + "/api/v1/chains/reload", "POST")
        assert status == 200, listing
        assert [(c["name"], c["source"]) for c in listing["items"]] == [("door", "file")]


def test_default_chains_file_is_read_at_start(tmp_path):
    workdir = tmp_path / "with-chains"
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "chains.toml").write_text(CHAIN)
    with run_server(workdir, config_text=None) as server:
        status, listing = _call(server.url + "/api/v1/chains")
        assert status == 200
        # Read: its plugin does not exist yet, so the file is rejected with the field named.
        assert listing["file"]["file"] == "config/chains.toml"
        assert listing["file"]["error"]["field"] == "plugins.0" and listing["file"]["error"]["line"] == 2


def test_empty_setting_means_no_chains_file(tmp_path):
    from proxy.config import load_config

    assert load_config(None, environ={"ALGOMINT_CHAINS__FILE": '""'}).chains.file is None
    assert load_config(None, environ={}).chains.optional
    assert not load_config(None, environ={"ALGOMINT_CHAINS__FILE": "x.toml"}).chains.optional
