"""``algomint serve`` failing to start: a non-zero exit at once, one line naming the cause
(and the key or file), no traceback, and no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.distribution import free_port


def _serve(workdir: Path, config_text: str, listen: str | None = None) -> tuple[int, str]:
    """Run serve in its own session; return (exit code, stderr) once it has exited, and
    prove nothing of its process group survives."""
    config = workdir / "algomint.toml"
    config.write_text(config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
         "--listen", listen or f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=workdir, start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("serve kept running after a start-up failure")
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the process group is left
    return proc.returncode, stderr


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("algomint:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _paths(tmp_path: Path) -> str:
    return f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'


def test_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        code, stderr = _serve(tmp_path, _paths(tmp_path), listen)
    assert code != 0
    line = _one_line(stderr)
    assert "server.listen" in line and listen in line and "address already in use" in line


def test_bad_config_key(tmp_path):
    code, stderr = _serve(tmp_path, _paths(tmp_path) + "[server]\nlisten_on = \"127.0.0.1:1\"\n")
    assert code != 0
    assert "server.listen_on" in _one_line(stderr)


@pytest.mark.parametrize("chains,cause", [
    ('chain "x" {\n', "invalid TOML"),
    ("[[chain]]\nname = \"Bad Name\"\nmatch = [\"generic/*\"]\nplugins = []\n", "name"),
    (None, "file not found"),
])
def test_bad_chains_file(tmp_path, chains, cause):
    path = tmp_path / "chains.toml"
    if chains is not None:
        path.write_text(chains)
    code, stderr = _serve(tmp_path, _paths(tmp_path) + f'[chains]\nfile = "{path}"\n')
    assert code != 0
    line = _one_line(stderr)
    assert "chains.file" in line and str(path) in line and cause in line


def test_unusable_storage_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = f'[storage]\npath = "{blocker / "storage"}"\n[metadata]\npath = "{tmp_path / "metadata.db"}"\n'
    code, stderr = _serve(tmp_path, config)
    assert code != 0
    line = _one_line(stderr)
    assert "storage.path" in line and str(blocker) in line


def test_unusable_metadata_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = f'[storage]\npath = "{tmp_path / "storage"}"\n[metadata]\npath = "{blocker / "m.db"}"\n'
    code, stderr = _serve(tmp_path, config)
    assert code != 0
    assert "metadata.path" in _one_line(stderr)


@pytest.mark.parametrize("extra,key", [
    ('[storage]\nbackend = "registry"\nurl = "not-a-url"\n', "storage.url"),
    ('[licenses.soft]\nscheme = "x25519"\npublic_key = "/nonexistent/soft.pub"\n', "licenses.soft"),
])
def test_unusable_settings_found_while_wiring(tmp_path, extra, key):
    code, stderr = _serve(tmp_path, f'[metadata]\npath = "{tmp_path / "metadata.db"}"\n' + extra)
    assert code != 0
    assert key in _one_line(stderr)
