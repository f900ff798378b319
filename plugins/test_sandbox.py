"""The sandbox itself: what a sandboxed process sees, can reach and inherits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from packer.plugin import PluginError
from packer.settings import SandboxConfig
from plugins import function as function_kind
from plugins import job as job_kind
from plugins._process import Limits, run_process
from plugins.conftest import processes_with
from plugins.sandbox import WORK, Sandbox, SandboxSpec, _watched

CHECK = r"""
import json, os, socket, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "env": sorted(os.environ), "cwd": os.getcwd(),
       "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")), "root": sorted(os.listdir("/")),
       "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), "etc": sorted(os.listdir("/etc"))}
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
    out["connect"] = "ok"
except OSError as exc:
    out["connect"] = type(exc).__name__
open("/work/out.json", "w").write(json.dumps(out))
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    box = Sandbox(SandboxConfig(network=["plugins/net-*"]), private=[tmp_path / "data"])
    assert box.probe(tmp_path / "scratch"), box.error
    return box


async def _check(box: Sandbox, root: Path, network: bool = False) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    keep = open(__file__, "rb")  # a descriptor of the service: the sandbox must not get it
    try:
        root.mkdir(exist_ok=True)
        box.prepare(root)
        launch = box.launch([sys.executable, "-I", "-S", "-c", CHECK, str(listener.getsockname()[1])],
                            SandboxSpec(root, WORK, {"PATH": "/usr/bin", "ONLY": "this"}, network))
        os.set_inheritable(keep.fileno(), True)
        result = await run_process(launch.argv, cwd=launch.cwd, env=launch.env, timeout=30, stdout_limit=65536,
                                   stderr_limit=65536, limits=Limits(processes=64),
                                   pass_fds=launch.pass_fds)
        assert result.returncode == 0, result.stderr
        return json.loads((root / "out.json").read_text())
    finally:
        keep.close()
        listener.close()


async def test_a_sandboxed_process_sees_only_its_work_directory(sandbox: Sandbox, tmp_path: Path) -> None:
    out = await _check(sandbox, tmp_path / "run")
    if os.geteuid() == 0:
        assert (out["uid"], out["gid"]) == (65534, 65534)
        assert (tmp_path / "run" / "out.json").stat().st_uid == 65534  # and on the host, too
    # PWD comes from bubblewrap, LC_CTYPE from Python's locale coercion: nothing of the service.
    assert set(out["env"]) - {"PWD", "LC_CTYPE"} == {"ONLY", "PATH"}
    assert out["cwd"] == "/work"
    assert out["fds"] == [0, 1, 2, 3]  # 3: the listing itself; nothing inherited
    assert set(out["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "root", "proc", "dev",
                                "work", "opt", "home", "srv", "var"}
    assert "tmp" not in out["root"] and "work" in out["root"]  # no host /tmp (where this test's files are)
    assert out["pids"] == sorted(out["pids"]) and max(out["pids"]) < 10  # its own PID namespace
    assert out["connect"] == "ConnectionRefusedError"  # its own network namespace: no host loopback
    assert out["etc"] == ["alternatives", "ld.so.cache"]


async def test_network_is_shared_only_when_granted(sandbox: Sandbox, tmp_path: Path) -> None:
    out = await _check(sandbox, tmp_path / "run", network=True)
    assert out["connect"] == "ok"
    assert ("resolv.conf" in out["etc"]) == Path("/etc/resolv.conf").exists()  # name resolution comes with it


def test_ro_paths_that_would_expose_private_data_are_refused(tmp_path: Path) -> None:
    box = Sandbox(SandboxConfig(ro_paths=[Path("/usr"), tmp_path]), private=[tmp_path / "data"])
    assert not box.probe(tmp_path / "scratch")
    assert f"ro_paths: {tmp_path} would expose {tmp_path / 'data'}" in box.status
    with pytest.raises(Exception, match="function plugins are refused"):
        box.require("function")


@pytest.mark.parametrize("kind,options", [("function", {}), ("job", {"command": ["true"]})])
def test_network_needs_the_admins_grant(make_artifact, make_env, kind, options) -> None:
    files = {"t.py": b"def transform(p, c):\n    pass\n"} if kind == "function" else None
    env = make_env(sandbox={"network": ["plugins/test-*"]})
    (kind_module := {"function": function_kind, "job": job_kind}[kind]).setup(
        make_artifact(kind, {**options, "network": True}, files), env)
    with pytest.raises(PluginError, match="may not have network access"):
        kind_module.setup(make_artifact(kind, {**options, "network": True}, files), make_env())


async def test_a_program_outside_the_sandbox_is_named(package, context, make_artifact, make_env) -> None:
    env = make_env(function={"python": "/opt/nowhere/python3"})
    plugin = function_kind.setup(make_artifact("function", {}, {"t.py": b"def transform(p, c):\n    pass\n"}), env)
    with pytest.raises(PluginError, match="interpreter '/opt/nowhere/python3' could not start in the sandbox: "
                                          "/opt/nowhere/python3: No such file or directory"):
        await plugin.apply(package, context)
    job = job_kind.setup(make_artifact("job", {"command": ["/home/tool"]}), make_env())
    with pytest.raises(PluginError, match="could not start in the sandbox: /home/tool: No such file"):
        await job.apply(package, context)


@pytest.mark.parametrize("kind,options", [("function", {}), ("job", {"command": ["true"]})])
def test_without_bubblewrap_the_kinds_refuse_to_set_up(make_artifact, make_env, tmp_path, kind, options) -> None:
    files = {"t.py": b"def transform(p, c):\n    pass\n"} if kind == "function" else None
    module = {"function": function_kind, "job": job_kind}[kind]
    env = make_env(sandbox={"bwrap": str(tmp_path / "missing" / "bwrap")})
    with pytest.raises(PluginError, match=f"{kind} plugins are refused: the sandbox is unavailable "
                                          r"\(bubblewrap not found"):
        module.setup(make_artifact(kind, options, files), env)
    unsafe = make_env(sandbox={"bwrap": str(tmp_path / "missing" / "bwrap"), "unsafe": True})
    module.setup(make_artifact(kind, options, files), unsafe)  # runs, unsandboxed, in unsafe mode
    assert unsafe.sandbox.status.startswith("unsafe: bubblewrap not found")


async def test_the_user_namespace_form_runs_too(tmp_path: Path) -> None:
    # The command line a service not running as root uses (bubblewrap maps uid 65534 in a user
    # namespace, nested user namespaces disabled); started here by whoever runs the tests.
    box = Sandbox(SandboxConfig(), private=[tmp_path / "data"])
    box._privileged = False
    assert box.probe(tmp_path / "scratch"), box.error
    root = tmp_path / "run"
    root.mkdir()
    code = "id -u; unshare -U true && echo nested || echo no-nested"
    launch = box.launch(["sh", "-c", code], SandboxSpec(root, WORK, {"PATH": "/usr/bin"}))
    result = await run_process(launch.argv, cwd=launch.cwd, env=launch.env, timeout=30, stdout_limit=4096,
                               stderr_limit=4096, pass_fds=launch.pass_fds)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["65534", "no-nested"]


def _wait_gone(marker: str, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with(marker)


@pytest.mark.parametrize("scope", ["-1", "0"], ids=["sandboxed", "unsafe"])
def test_a_run_whose_service_died_before_set_up_ends_at_once(sandbox: Sandbox, tmp_path: Path, scope: str) -> None:
    # The service's lifeline ends while bubblewrap is still setting up (here: before it even
    # starts), the moment at which bubblewrap's own parent-death signal is not armed yet.
    root = tmp_path / "run"
    root.mkdir()
    sandbox.prepare(root)
    marker = f"{900 + uuid.uuid4().int % 90}.{uuid.uuid4().int % 10**9:09d}"
    read_end, write_end = os.pipe()
    argv = _watched(["sh", "-c", f"sleep {marker}; touch /work/late"], read_end, scope)
    if scope == "-1":
        argv = sandbox._wrap(argv, SandboxSpec(root, WORK, {"PATH": "/usr/bin:/bin"}))
    os.close(write_end)
    process = subprocess.Popen(argv, cwd=root, pass_fds=(read_end,), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(read_end)
    try:
        assert process.wait(20) in (137, -signal.SIGKILL), process.stderr.read() if process.stderr else ""
        assert _wait_gone(marker) == [], "a process of the run outlived the service's lifeline"
        assert not (root / "late").exists()
    finally:
        process.kill()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


async def test_the_plugin_cannot_outlive_its_run_by_killing_the_watchdog(sandbox: Sandbox, tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    sandbox.prepare(root)
    marker = f"{800 + uuid.uuid4().int % 90}.{uuid.uuid4().int % 10**9:09d}"
    # The plugin's first process is the watchdog's child: it kills its parent, then lingers.
    script = f"sleep {marker} & kill -9 $PPID; wait"
    launch = sandbox.launch(["sh", "-c", script], SandboxSpec(root, WORK, {"PATH": "/usr/bin:/bin"}))
    result = await run_process(launch.argv, cwd=launch.cwd, env=launch.env, timeout=30, stdout_limit=4096,
                               stderr_limit=4096, pass_fds=launch.pass_fds)
    assert sandbox.returncode(result.returncode) == -signal.SIGKILL
    assert not result.timed_out
    assert _wait_gone(marker) == []


@pytest.mark.parametrize("unsafe", [False, True], ids=["sandboxed", "unsafe"])
async def test_the_watchdog_passes_on_how_the_plugin_ended(tmp_path: Path, unsafe: bool) -> None:
    config = SandboxConfig(bwrap=str(tmp_path / "missing"), unsafe=True) if unsafe else SandboxConfig()
    box = Sandbox(config, private=[tmp_path / "data"])
    assert box.probe(tmp_path / "scratch") is not unsafe
    # No signal ignored by the plugin; 1 MiB written past a 64 KiB file-size limit: SIGXFSZ.
    ignored = "grep -q '^SigIgn:[[:space:]]*0*$' /proc/self/status"
    too_big = "exec head -c 1048576 /dev/zero > big"
    for script, expected in [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", -signal.SIGTERM),
                             (ignored, 0), (too_big, -signal.SIGXFSZ)]:
        root = tmp_path / f"run-{uuid.uuid4().hex}"
        root.mkdir()
        box.prepare(root)
        launch = box.launch(["sh", "-c", script], SandboxSpec(root, box.view(root), {"PATH": "/usr/bin:/bin"}))
        result = await run_process(launch.argv, cwd=launch.cwd, env=launch.env, timeout=30, stdout_limit=4096,
                                   stderr_limit=4096, pass_fds=launch.pass_fds, limits=Limits(file_bytes=65536))
        assert box.returncode(result.returncode) == expected, (script, result)
    launch = box.launch(["/nowhere/tool"], SandboxSpec(root, box.view(root), {"PATH": "/usr/bin:/bin"}))
    result = await run_process(launch.argv, cwd=launch.cwd, env=launch.env, timeout=30, stdout_limit=4096,
                               stderr_limit=4096, pass_fds=launch.pass_fds)
    assert box.exec_failure(result.returncode, result.stderr.decode()) == "/nowhere/tool: No such file or directory"
