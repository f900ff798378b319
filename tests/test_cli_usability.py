"""The command line as a script uses it: a piped password, a closed output pipe, and one
ISO 8601 time format in the API and in tables (against a real ``algomint serve``)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import metadata_url
from tests.support.server import run_server

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
EPOCH = re.compile(r"\b1\d{9}(\.\d+)?\b")


def _config(tmp_path: Path) -> str:
    url = metadata_url(tmp_path / "metadata.db")  # the CLI and the server share the test's store
    return (f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'
            + (f'url = "{url}"\n' if url else "") + '[auth]\nenabled = true\n'
            '[webhooks]\nallow = ["http://127.0.0.1:*/"]\n')  # subscriptions point at loopback


def _cli(*argv: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *argv], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def _whoami(url: str, user: str, password: str) -> dict:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url + "/api/v1/whoami", headers={"Authorization": f"Basic {auth}"})
    return json.loads(urllib.request.urlopen(request).read())


def test_cli_as_scripts_use_it(tmp_path):
    config = tmp_path / "algomint.toml"
    config.write_text(_config(tmp_path))
    token = _cli("admin", "bootstrap", "--config", str(config), env={}).stdout.strip()
    forced = _cli("admin", "--json", "bootstrap", "--config", str(config), "--force", env={})
    assert ISO.fullmatch(json.loads(forced.stdout)["expires_at"]), forced.stdout
    with run_server(tmp_path, config.read_text()) as server:
        env = {"ALGOMINT_URL": server.url, "ALGOMINT_TOKEN": token}

        # `echo pw | algomint admin users create alice`: stdin is not a terminal, so it is read.
        created = _cli("admin", "users", "create", "alice", "--role", "consumer", stdin="alice-piped-password\n", env=env)
        assert created.returncode == 0, created.stderr
        assert _whoami(server.url, "alice", "alice-piped-password")["name"] == "alice"
        empty = _cli("admin", "users", "create", "bob", stdin="", env=env)
        assert empty.returncode == 1 and "no password on standard input" in empty.stderr
        assert "Traceback" not in empty.stderr

        # Times: ISO 8601 in answers and in tables, never epoch seconds.
        made = _cli("admin", "--json", "subscriptions", "create", "http://127.0.0.1:9/hook", "--event", "*", env=env)
        assert made.returncode == 0, made.stderr
        sub = json.loads(made.stdout)
        assert ISO.fullmatch(sub["created"]) and ISO.fullmatch(sub["updated"])
        table = _cli("admin", "subscriptions", "show", sub["id"], env=env)
        assert ISO.search(table.stdout) and not EPOCH.search(table.stdout), table.stdout
        chains = _cli("admin", "--json", "chains", "reload", env=env)
        assert chains.returncode == 0, chains.stderr
        loaded = json.loads(chains.stdout)["file"]["loaded_at"]
        assert loaded is None or ISO.fullmatch(loaded)

        # `--json` (and the connection options) work where the README puts them: after the command.
        after = _cli("admin", "catalog", "--json", "--url", server.url, env={"ALGOMINT_TOKEN": token})
        assert after.returncode == 0, after.stderr
        assert json.loads(after.stdout) == []
        listed = _cli("admin", "users", "list", "--json", env=env)
        assert listed.returncode == 0 and any(u["name"] == "alice" for u in json.loads(listed.stdout)), listed.stdout
        table = _cli("admin", "--json", "users", "list", env=env)
        assert json.loads(table.stdout) == json.loads(listed.stdout)

        # `algomint admin … | head`: the reader closes the pipe before anything is written.
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "admin", "--json", "users", "list"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(30) == 0, stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_local_failures_read_without_a_status(tmp_path):
    """Errors that never reached a server (nothing listening, a bootstrap refused) name the
    cause alone: no HTTP status of 0 in front of it."""
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = _cli("admin", "whoami", env={"ALGOMINT_URL": f"http://127.0.0.1:{port}", "ALGOMINT_TOKEN": "amt_x_y"})
    assert down.returncode == 1
    assert down.stderr.startswith("algomint: unreachable: "), down.stderr
    config = tmp_path / "algomint.toml"
    config.write_text(_config(tmp_path))
    assert _cli("admin", "bootstrap", "--config", str(config), env={}).returncode == 0
    again = _cli("admin", "bootstrap", "--config", str(config), env={})
    assert again.returncode == 1
    assert again.stderr.startswith("algomint: bootstrapped: users exist already"), again.stderr


def test_a_server_url_without_http_scheme_is_refused_before_any_request():
    for url in ("127.0.0.1:5000", "ftp://127.0.0.1/", "http://"):
        run = _cli("admin", "whoami", env={"ALGOMINT_URL": url, "ALGOMINT_TOKEN": "amt_x_y"})
        assert run.returncode == 1, run.stderr
        assert run.stderr.startswith(f"algomint: url: the server URL must be http(s)://HOST[:PORT], not {url!r}"), run.stderr


def _on_a_terminal(argv: list[str], keys: bytes, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal, type ``keys`` once
    it prompts, and return its exit status and everything it wrote."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout, stderr and /dev/tty are the terminal
        os.execve(sys.executable, [sys.executable, "-m", "proxy.cli", *argv], {**os.environ, **env})
    output, sent, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not sent and b"Password:" in output:
            os.write(fd, keys)
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_end_of_input_at_a_password_prompt_is_a_message_not_a_traceback():
    env = {"ALGOMINT_URL": "http://127.0.0.1:1", "ALGOMINT_TOKEN": "amt_x_y"}  # no request is made
    code, output = _on_a_terminal(["admin", "users", "create", "carol"], b"\x04", env)  # Ctrl-D
    assert code == 1, output
    assert "Traceback" not in output and "EOFError" not in output, output
    assert "algomint: no-password: no password entered" in output, output


def test_ctrl_c_at_a_password_prompt_stops_quietly():
    env = {"ALGOMINT_URL": "http://127.0.0.1:1", "ALGOMINT_TOKEN": "amt_x_y"}  # no request is made
    code, output = _on_a_terminal(["admin", "users", "create", "carol"], b"\x03", env)  # Ctrl-C
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
