"""The command line for identity and audit: offline bootstrap and verify, and the admin
commands driving a real ``algomint serve`` with authentication on."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import metadata_url
from tests.support.server import run_server


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "algomint.toml"
    url = metadata_url(tmp_path / "metadata.db")  # the CLI and the server share the test's store
    path.write_text(f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'
                    + (f'url = "{url}"\n' if url else "") + f'[auth]\nenabled = true\n{extra}')
    return path


def cli(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "proxy.cli", *argv], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.sqlite_only
def test_bootstrap_prints_a_one_time_admin_token(tmp_path: Path):
    config = _config(tmp_path)
    first = cli("admin", "bootstrap", "--config", str(config))
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith("amt_") and "not shown again" in first.stderr
    again = cli("admin", "bootstrap", "--config", str(config))
    assert again.returncode == 1 and "users exist already" in again.stderr
    forced = cli("admin", "--json", "bootstrap", "--config", str(config), "--force")
    assert forced.returncode == 0
    assert json.loads(forced.stdout)["token"] != token
    conn = sqlite3.connect(tmp_path / "metadata.db")
    stored = [row[0] for row in conn.execute("SELECT secret_hash FROM auth_tokens")]
    assert len(stored) == 2 and all(token.split("_", 2)[2] not in s for s in stored)
    assert conn.execute("SELECT password_hash FROM auth_users WHERE name = 'admin'").fetchone() == (None,)
    conn.close()


@pytest.mark.sqlite_only
def test_admin_commands_against_a_running_server(tmp_path: Path):
    config = _config(tmp_path)
    token = cli("admin", "bootstrap", "--config", str(config)).stdout.strip()
    with run_server(tmp_path, config.read_text()) as server:
        env = {"ALGOMINT_URL": server.url, "ALGOMINT_TOKEN": token}
        me = cli("admin", "--json", "whoami", env=env)
        assert me.returncode == 0 and json.loads(me.stdout)["name"] == "admin"
        created = cli("admin", "users", "create", "alice", "--role", "consumer", "--password-stdin",
                      stdin="alice-long-password\n", env=env)
        assert created.returncode == 0, created.stderr
        assert "consumer:business/**" in created.stdout
        robot = cli("admin", "users", "create", "ci", "--robot", "--role", "algorithm-dev", env=env)
        assert robot.returncode == 0, robot.stderr
        listed = cli("admin", "users", "list", env=env)
        assert listed.stdout.splitlines()[0].split()[:3] == ["NAME", "KIND", "DISABLED"]
        assert {line.split()[0] for line in listed.stdout.splitlines()[1:]} == {"admin", "alice", "ci"}
        issued = cli("admin", "--json", "tokens", "create", "pipeline", "--owner", "ci", "--expires-in", "30d", env=env)
        ci_token = json.loads(issued.stdout)["token"]
        ci = cli("admin", "--json", "whoami", env={"ALGOMINT_URL": server.url, "ALGOMINT_TOKEN": ci_token})
        assert json.loads(ci.stdout)["kind"] == "robot"
        granted = cli("admin", "--json", "grants", "add", "alice", "consumer", "generic/*", env=env)
        assert granted.returncode == 0 and json.loads(granted.stdout)["pattern"] == "generic/*"
        bad = cli("admin", "grants", "add", "alice", "consumer", "Generic/***", env=env)
        assert bad.returncode == 1 and "422" in bad.stderr
        grants = json.loads(cli("admin", "--json", "grants", "list", "--subject", "alice", env=env).stdout)
        assert {g["pattern"] for g in grants} == {"business/**", "generic/*"}
        assert cli("admin", "users", "disable", "alice", env=env).returncode == 0
        req = urllib.request.Request(server.url + "/v2/", headers={"Authorization": "Basic YWxpY2U6YWxpY2UtbG9uZy1wYXNzd29yZA=="})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
        revoked = cli("admin", "tokens", "revoke", json.loads(issued.stdout)["id"], env=env)
        assert revoked.returncode == 0
        ci = cli("admin", "whoami", env={"ALGOMINT_URL": server.url, "ALGOMINT_TOKEN": ci_token})
        assert ci.returncode == 1 and "401" in ci.stderr
        records = json.loads(cli("admin", "--json", "audit", "list", "--action", "users.*", env=env).stdout)
        assert [r["action"] for r in records][:3] == ["users.update", "users.create", "users.create"]
        table = cli("admin", "audit", "list", "--limit", "3", env=env)
        assert table.returncode == 0 and len(table.stdout.splitlines()) == 4
        verified = cli("admin", "audit", "verify", env=env)
        assert verified.returncode == 0 and "audit log intact" in verified.stdout
        assert ci_token not in server.logs() and "alice-long-password" not in server.logs()
    offline = cli("audit", "verify", "--config", str(config))
    assert offline.returncode == 0, offline.stderr
    head = offline.stdout.split("head ")[1].split()
    anchored = cli("audit", "verify", "--config", str(config), "--anchor", f"{head[0]}:{head[1]}")
    assert anchored.returncode == 0
    conn = sqlite3.connect(tmp_path / "metadata.db")
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 3")
    conn.commit()
    conn.close()
    broken = cli("audit", "verify", "--config", str(config))
    assert broken.returncode == 1 and "broken at record 3 (altered)" in broken.stderr


def _whoami(url: str, user: str, password: str) -> str:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url + "/api/v1/whoami", headers={"Authorization": f"Basic {credentials}"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())["name"]


def test_first_admin_from_the_environment_or_a_secret_file(tmp_path: Path):
    for name in ("env", "file", "none", "short"):
        (tmp_path / name).mkdir()
    with run_server(tmp_path / "env", _config(tmp_path / "env").read_text(),
                    env={"ALGOMINT_ADMIN_PASSWORD": "from-the-environment"}) as server:
        assert _whoami(server.url, "admin", "from-the-environment") == "admin"
    secret = tmp_path / "admin.secret"
    secret.write_text("from-a-secret-file\n")
    with run_server(tmp_path / "file", _config(tmp_path / "file", f'admin_password_file = "{secret}"\n').read_text()) as server:
        assert _whoami(server.url, "admin", "from-a-secret-file") == "admin"
    with run_server(tmp_path / "none", _config(tmp_path / "none").read_text()) as server:
        pass
    assert "algomint admin bootstrap" in server.logs()  # no default password: a warning, no user
    short = cli("serve", "--config", str(_config(tmp_path / "short")), "--listen", "127.0.0.1:1",
                env={"ALGOMINT_ADMIN_PASSWORD": "short"})
    assert short.returncode != 0 and "at least 12 characters" in short.stderr


def test_signing_keys_rotate_under_a_running_server(tmp_path: Path):
    import os
    import stat
    import time

    config = _config(tmp_path)
    token = cli("admin", "bootstrap", "--config", str(config)).stdout.strip()
    basic = "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()

    def get(server, path: str, auth: str | None = basic) -> dict:
        req = urllib.request.Request(server.url + path, headers={"Authorization": auth} if auth else {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    with run_server(tmp_path, config.read_text()) as server:
        old = get(server, "/token?service=algomint")["token"]
        old_kid = json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))["kid"]
        rotated = cli("admin", "--json", "signing-keys", "rotate", "--config", str(config))
        assert rotated.returncode == 0, rotated.stderr
        new_kid = json.loads(rotated.stdout)["kid"]
        assert new_kid != old_kid
        for key in json.loads(rotated.stdout)["keys"]:
            assert stat.S_IMODE(os.stat(key["file"]).st_mode) == 0o600
        # The running server picks the new key up by itself, and keeps honouring the old one.
        deadline = time.monotonic() + 20
        while True:
            fresh = get(server, "/token?service=algomint")["token"]
            if json.loads(base64.urlsafe_b64decode(fresh.split(".")[0] + "=="))["kid"] == new_kid:
                break
            assert time.monotonic() < deadline, "the server never signed with the new key"
            time.sleep(0.2)
        assert {k["kid"] for k in get(server, "/token/jwks", None)["keys"]} == {old_kid, new_kid}
        for bearer_token in (old, fresh):
            assert get(server, "/v2/", f"Bearer {bearer_token}") == {}
        listed = cli("admin", "signing-keys", "list", "--config", str(config))
        assert listed.returncode == 0 and f"{new_kid}" in listed.stdout and "(signing)" in listed.stdout
