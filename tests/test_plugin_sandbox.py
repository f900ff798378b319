"""Hostile function and job plugins, pushed by a business developer into a real server.

Each plugin tries to read the signing key, the config, a world-readable file of the host,
``/etc/shadow``, ``/proc/1/environ`` and its parent's and the server's environment; to write
outside its work directory by absolute path, by ``..``, through a directory descriptor and
through a symlink; to reach a loopback service the test runs; to fork 1000 processes; and to
escape its group with ``setsid`` and keep running. Every attempt must fail, the plugin's report
(the business package it produced) says how, nothing outside the work directory changes and
no process of the plugin survives it. Also: a job never outlives a SIGKILLed server, and
without a sandbox function and job plugins are refused (or run in a reported unsafe mode)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from plugins.conftest import processes_with
from proxy.oci import mediatypes as mt
from tests.support.oci import digest_of
from tests.support.server import Server, start_server

ADMIN_PASSWORD = "admin-password-for-sandbox-tests"
BIZ = ("biz", "biz-password-for-sandbox-tests")

# Shared by both plugins; in the function it runs under the harness's audit hook, and where
# that hook refuses, a second try goes around it (``_posixsubprocess``), so the sandbox is
# what has to hold.
ATTACK = r'''
import json, os, socket

def attempt(report, name, action):
    try:
        result = action()
    except BaseException as exc:  # noqa
        report[name] = "failed: %s: %s" % (type(exc).__name__, exc)
    else:
        report[name] = ("SUCCEEDED: %r" % (result,))[:300]

def read(path):
    def go():
        with open(path, "rb") as f:
            return f.read(200)
    return go

def ancestors_environ():
    # The run's first process (the watchdog) shares this very environment; anything else
    # read from an ancestor below the namespace's init would be a leak.
    def go():
        own = read("/proc/self/environ")()
        pid = os.getppid()
        while pid > 1:
            data = read("/proc/%d/environ" % pid)()
            if data != own:
                return data
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        raise PermissionError("no ancestor holds anything but this environment")
    return go

def write(path):
    def go():
        with open(path, "w") as f:
            f.write("pwned")
        return os.path.realpath(path)
    return go

def write_dir_fd(directory):
    def go():
        d = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("pwned-dirfd", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d)
        os.write(fd, b"pwned")
        return directory
    return go

def write_symlink(target):
    def go():
        link = "pwned-link"
        try:
            os.symlink(target, link)
            with open(link, "w") as f:
                f.write("pwned")
            return target
        finally:
            if os.path.lexists(link):
                os.unlink(link)
    return go

def spawn(argv, new_session):
    try:
        import subprocess
        return subprocess.Popen(argv, start_new_session=new_session, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    except PermissionError as exc:
        if "blocked" not in str(exc):
            raise
    import _posixsubprocess  # around the function harness's audit hook
    r, w = os.pipe()
    try:
        args = [os.fsencode(a) for a in argv]
        return _posixsubprocess.fork_exec(args, [args[0]], True, (w,), None, None, -1, -1, -1, -1, -1, -1,
                                          r, w, True, new_session, -1, None, None, None, -1, None, False)
    finally:
        os.close(r)
        os.close(w)

def fork_many(marker):
    def go():
        for i in range(1000):
            try:
                spawn(["/bin/sh", "-c", "sleep " + marker], False)
            except OSError as exc:
                raise OSError(exc.errno, "fork %d refused: %s" % (i + 1, exc.strerror)) from None
        return "1000 processes started"
    return go

def escape(marker):
    def go():
        return "started pid %s in a new session" % spawn(["/bin/sh", "-c", "sleep " + marker], True)
    return go

def attack(p):
    r = {}
    attempt(r, "read signing key", read(p["key"]))
    attempt(r, "read config", read(p["config"]))
    attempt(r, "read host file", read(p["victim"] + "/secret.txt"))
    attempt(r, "read /etc/shadow", read("/etc/shadow"))
    attempt(r, "read /proc/1/environ", read("/proc/1/environ"))
    attempt(r, "read ancestors' environ", ancestors_environ())
    attempt(r, "read server environ", read("/proc/%d/environ" % p["server_pid"]))
    attempt(r, "write absolute", write(p["victim"] + "/pwned-abs"))
    attempt(r, "write dotdot", write("../../../../../../pwned-dotdot"))
    attempt(r, "write dotdot to host", write("../../../../../../" + p["victim"].lstrip("/") + "/pwned-dotdot"))
    attempt(r, "write dir_fd root", write_dir_fd("/"))
    attempt(r, "write dir_fd host", write_dir_fd(p["victim"]))
    attempt(r, "write symlink", write_symlink(p["victim"] + "/pwned-symlink"))
    attempt(r, "connect loopback", lambda: socket.create_connection(("127.0.0.1", p["port"]), timeout=3))
    attempt(r, "escape setsid", escape(p["marker"]))
    attempt(r, "fork 1000", fork_many(p["marker"]))
    return r
'''

JOB_SCRIPT = ATTACK + r'''
context = json.loads(os.environ["ALGOMINT_CONTEXT"])
report = attack(context["params"])
print(json.dumps(report, indent=1))
with open("files/report.json", "w") as f:
    json.dump(report, f)
'''

FUNCTION_SCRIPT = ATTACK + r'''
def transform(package, context):
    report = attack(context["params"])
    print(json.dumps(report, indent=1))
    package["files"]["report.json"] = json.dumps(report)
'''

# The one attempt that may start something: it must not outlive the run (checked on the host).
MAY_START = {"escape setsid"}


class Listener:
    """A loopback TCP service the plugins try to reach; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def _config(workdir: Path, extra: str = "") -> str:
    return (f'[storage]\npath = "{workdir / "storage"}"\n[metadata]\npath = "{workdir / "metadata.db"}"\n'
            f'[auth]\nenabled = true\n{extra}')


@pytest.fixture
def victims() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    workdir = tmp_path / "srv"
    srv = start_server(workdir, _config(workdir), env={"ALGOMINT_ADMIN_PASSWORD": ADMIN_PASSWORD})
    try:
        yield srv
    finally:
        if srv.process.poll() is None:
            srv.process.terminate()
            try:
                srv.process.wait(10)
            except Exception:  # noqa: BLE001
                srv.process.kill()


def _admin() -> aiohttp.BasicAuth:
    return aiohttp.BasicAuth("admin", ADMIN_PASSWORD)


async def _call(session: aiohttp.ClientSession, method: str, url: str, auth: aiohttp.BasicAuth, status: int,
                **kwargs: Any) -> Any:
    async with session.request(method, url, auth=auth, **kwargs) as resp:
        body = await resp.read()
        assert resp.status == status, body.decode(errors="replace")
        return json.loads(body) if body and resp.content_type == "application/json" else body


async def _push_generic(session: aiohttp.ClientSession, url: str, repo: str, tag: str) -> None:
    config = json.dumps({"name": repo.rsplit("/", 1)[1], "version": tag}).encode()
    layer = b"weights"
    for blob in (config, layer):
        await _call(session, "POST", f"{url}/v2/{repo}/blobs/uploads/", _admin(), 201,
                    params={"digest": digest_of(blob)}, data=blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(layer), "size": len(layer),
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
    })
    await _call(session, "PUT", f"{url}/v2/{repo}/manifests/{tag}", _admin(), 201, data=manifest,
                headers={"Content-Type": mt.OCI_MANIFEST})


async def _wait_job(session: aiohttp.ClientSession, url: str, auth: aiohttp.BasicAuth, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        items = (await _call(session, "GET", f"{url}/api/v1/assemblies", auth, 200))["items"]
        if items and all(j["status"] in ("succeeded", "failed") for j in items):
            return items[0]
        assert time.monotonic() < deadline, f"assembly not finished: {items}"
        await asyncio.sleep(0.1)


async def _files(session: aiohttp.ClientSession, url: str, repo: str, tag: str) -> dict[str, bytes]:
    doc = await _call(session, "GET", f"{url}/v2/{repo}/manifests/{tag}", _admin(), 200,
                      headers={"Accept": mt.OCI_MANIFEST})
    doc = json.loads(doc) if isinstance(doc, bytes) else doc
    out = {}
    for layer in doc["layers"]:
        out[layer["annotations"][mt.ANNOTATION_TITLE]] = await _call(
            session, "GET", f"{url}/v2/{repo}/blobs/{layer['digest']}", _admin(), 200)
    return out


def _snapshot(paths: list[Path]) -> dict[str, str]:
    """Name -> content hash of every file under ``paths`` (what must not change)."""
    out = {}
    for root in paths:
        items = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in items:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


async def _run_hostile(server: Server, victims: list[Path], kind: str, options: dict[str, Any], script: str,
                       filename: str) -> tuple[dict, dict[str, str], Listener, str]:
    victim = Path(tempfile.mkdtemp(prefix="algomint-victim-"))  # a world-writable place any host user
    victims.append(victim)                                       # can reach: only the sandbox, not
    victim.chmod(0o777)                                          # permissions, keeps the plugin out
    (victim / "secret.txt").write_text("host secret")
    (victim / "secret.txt").chmod(0o644)
    data = server.log_path.parent
    key, config = next((data / "auth-keys").glob("*.key")), data / "algomint.toml"
    assert config.exists()
    guarded = [victim, key, config, Path("/etc/shadow"), Path("/etc/passwd")]
    before = _snapshot(guarded)
    listener = Listener()
    marker = f"{600 + int(uuid.uuid4().int % 300)}.{uuid.uuid4().int % 10**9:09d}"  # a unique sleep length
    params = {"key": str(key), "config": str(config), "victim": str(victim), "server_pid": server.process.pid,
              "port": listener.port, "marker": marker}
    url, biz = server.url, aiohttp.BasicAuth(*BIZ)
    async with aiohttp.ClientSession() as session:
        await _call(session, "POST", f"{url}/api/v1/users", _admin(), 201,
                    json={"name": BIZ[0], "kind": "user", "roles": ["business-dev"], "password": BIZ[1]})
        # A chain reads with its owner's rights: the attacker may pull what it assembles.
        await _call(session, "POST", f"{url}/api/v1/grants", _admin(), 201,
                    json={"subject": BIZ[0], "role": "consumer", "pattern": "generic/**"})
        plugin = {"name": f"hostile-{kind}", "version": "1.0", "kind": kind, "options": options,
                  "files": [{"path": filename, "data": base64.b64encode(script.encode()).decode()}]}
        await _call(session, "POST", f"{url}/api/v1/plugins", biz, 201, json=plugin)
        await _call(session, "POST", f"{url}/api/v1/chains", biz, 201,
                    json={"name": "evil", "match": ["generic/*"], "plugins": [f"plugins/hostile-{kind}:1.0"],
                          "params": params})
        await _push_generic(session, url, "generic/face-recog", "1.0")
        job = await _wait_job(session, url, biz)
        assert job["status"] == "succeeded", job
        files = await _files(session, url, "business/evil/face-recog", "1.0")
        detail = await _call(session, "GET", f"{url}/api/v1/assemblies/{job['id']}", biz, 200)
    report = json.loads(files["report.json"])
    after = _snapshot(guarded)
    assert after == before, "a file outside the work directory changed"
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]
    assert not any(Path(p).exists() for p in ("/pwned-dotdot", "/pwned-dirfd", "/tmp/pwned-dirfd"))
    return report, detail, listener, marker


def _assert_contained(report: dict, listener: Listener, marker: str) -> None:
    assert set(report) >= {"read signing key", "read config", "read /etc/shadow", "read /proc/1/environ",
                           "read ancestors' environ", "read server environ", "write absolute", "write dotdot",
                           "write dir_fd root", "write dir_fd host", "write symlink", "connect loopback",
                           "escape setsid", "fork 1000"}
    for name, outcome in report.items():
        if name not in MAY_START:
            assert outcome.startswith("failed: "), f"{name}: {outcome}"
    assert "refused" in report["fork 1000"] and "fork 1000 refused" not in report["fork 1000"]
    assert listener.accepted == 0
    # Nothing the plugin started survives it, not even the process that left its session.
    deadline = time.monotonic() + 5
    while processes_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(f"sleep {marker}") == [], "a plugin process outlived its run"


async def test_hostile_job_plugin_is_contained(server: Server, victims: list[Path]) -> None:
    report, detail, listener, marker = await _run_hostile(
        server, victims, "job", {"command": ["python3", "{plugin}/attack.py"]}, JOB_SCRIPT, "attack.py")
    try:
        _assert_contained(report, listener, marker)
        # The plugin's own log, kept with the assembly, shows each failure too.
        assert "No such file or directory: '/etc/shadow'" in detail["logs"]
        assert "Connection refused" in detail["logs"]
    finally:
        listener.close()


async def test_hostile_function_plugin_is_contained(server: Server, victims: list[Path]) -> None:
    report, detail, listener, marker = await _run_hostile(server, victims, "function", {}, FUNCTION_SCRIPT,
                                                          "attack.py")
    try:
        _assert_contained(report, listener, marker)
        assert "No such file or directory: '/etc/shadow'" in detail["logs"]
        # The audit hook stopped the plain calls; the sandbox stopped the ones that went around it.
        assert "blocked" in report["write absolute"]
    finally:
        listener.close()


def test_server_environment_holds_no_bootstrap_password(server: Server) -> None:
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
    assert ADMIN_PASSWORD.encode() not in environ


def test_a_job_dies_with_a_killed_server(tmp_path: Path) -> None:
    workdir = tmp_path / "srv"
    config = f'[storage]\npath = "{workdir / "storage"}"\n[metadata]\npath = "{workdir / "metadata.db"}"\n'
    server = start_server(workdir, config)
    marker = f"{700 + int(uuid.uuid4().int % 200)}.{uuid.uuid4().int % 10**9:09d}"
    try:
        async def start_job() -> None:
            async with aiohttp.ClientSession() as session:
                plugin = {"name": "slow", "version": "1.0", "kind": "job",
                          "options": {"command": ["sh", "-c", f"sleep {marker}; echo late > files/late.txt"]}}
                async with session.post(f"{server.url}/api/v1/plugins", json=plugin) as resp:
                    assert resp.status == 201, await resp.text()
                chain = {"name": "slow", "match": ["generic/*"], "plugins": ["plugins/slow:1.0"]}
                async with session.post(f"{server.url}/api/v1/chains", json=chain) as resp:
                    assert resp.status == 201, await resp.text()
                await _push_generic_anonymous(session, server.url)

        asyncio.run(start_job())
        deadline = time.monotonic() + 30
        while not processes_with(f"sleep {marker}"):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 5
        while processes_with(f"sleep {marker}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(f"sleep {marker}") == [], "a job process outlived the killed server"
    finally:
        if server.process.poll() is None:
            server.process.kill()
        for pid in processes_with(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)


async def _push_generic_anonymous(session: aiohttp.ClientSession, url: str) -> None:
    config, layer = b'{"name": "face-recog", "version": "1.0"}', b"weights"
    for blob in (config, layer):
        async with session.post(f"{url}/v2/generic/face-recog/blobs/uploads/", params={"digest": digest_of(blob)},
                                data=blob) as resp:
            assert resp.status == 201, await resp.text()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(layer), "size": len(layer),
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
    })
    async with session.put(f"{url}/v2/generic/face-recog/manifests/1.0", data=manifest,
                           headers={"Content-Type": mt.OCI_MANIFEST}) as resp:
        assert resp.status == 201, await resp.text()


def _sandbox_config(tmp_path: Path, **sandbox: Any):
    from proxy.config import load_config

    env = {"ALGOMINT_STORAGE__PATH": str(tmp_path / "storage"), "ALGOMINT_METADATA__PATH": str(tmp_path / "m.db")}
    env.update({f"ALGOMINT_PLUGINS__SANDBOX__{k.upper()}": str(v) for k, v in sandbox.items()})
    return load_config(None, environ=env)


def _plugin(kind: str) -> dict:
    options = {"command": ["true"]} if kind == "job" else {}
    files = {"function": {"t.py": b"def transform(p, c):\n    p['files']['ran.txt'] = 'yes'\n"},
             "file": {"f.txt": b"x"}}.get(kind, {})
    return {"name": f"p-{kind}", "version": "1.0", "kind": kind, "options": options,
            "files": [{"path": p, "data": base64.b64encode(d).decode()} for p, d in files.items()]}


async def test_without_the_sandbox_function_and_job_plugins_are_refused(aiohttp_client, tmp_path: Path) -> None:
    from proxy.app import create_app

    client = await aiohttp_client(create_app(_sandbox_config(tmp_path, bwrap=tmp_path / "missing" / "bwrap")))
    ready = await client.get("/readyz")
    sandbox = (await ready.json())["checks"]["sandbox"]
    assert ready.status == 200  # file and service plugins, and everything else, still work
    assert sandbox.startswith("unavailable: bubblewrap not found") and "function and job plugins are refused" in sandbox
    for kind in ("function", "job"):
        resp = await client.post("/api/v1/plugins", json=_plugin(kind))
        assert resp.status == 422
        message = json.dumps(await resp.json())
        assert f"{kind} plugins are refused: the sandbox is unavailable (bubblewrap not found" in message
        assert "[plugins.sandbox] unsafe = true" in message
    assert (await client.post("/api/v1/plugins", json=_plugin("file"))).status == 201


async def test_unsafe_mode_runs_unsandboxed_and_says_so(aiohttp_client, tmp_path: Path, caplog) -> None:
    from proxy.app import create_app

    caplog.set_level("WARNING")
    client = await aiohttp_client(create_app(_sandbox_config(tmp_path, bwrap=tmp_path / "missing", unsafe="true")))
    ready = await client.get("/readyz")
    sandbox = (await ready.json())["checks"]["sandbox"]
    assert ready.status == 200 and sandbox.startswith("unsafe: bubblewrap not found")
    assert "WITHOUT a sandbox" in sandbox
    assert any("UNSAFE" in r.getMessage() for r in caplog.records)
    assert (await client.post("/api/v1/plugins", json=_plugin("function"))).status == 201
    chain = {"name": "door", "match": ["generic/*"], "plugins": ["plugins/p-function:1.0"]}
    assert (await client.post("/api/v1/chains", json=chain)).status == 201
    config, layer = b'{"name": "face-recog", "version": "1.0"}', b"weights"
    for blob in (config, layer):
        resp = await client.post("/v2/generic/face-recog/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
        assert resp.status == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.ALGORITHM_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": digest_of(layer), "size": len(layer),
                    "annotations": {mt.ANNOTATION_TITLE: "model.onnx"}}],
    })
    resp = await client.put("/v2/generic/face-recog/manifests/1.0", data=manifest,
                            headers={"Content-Type": mt.OCI_MANIFEST})
    assert resp.status == 201

    async def finished() -> dict | None:
        items = (await (await client.get("/api/v1/assemblies")).json())["items"]
        return items[0] if items and items[0]["status"] in ("succeeded", "failed") else None

    deadline = time.monotonic() + 30
    while (job := await finished()) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job


MAKE_CARD = b'''import json, pathlib
d = json.load(open("algorithm.json"))
pathlib.Path("files/MODEL_CARD.md").write_text(f"# {d['name']} {d['version']}\\n")
'''


@pytest.mark.parametrize("sandbox", ["", "[plugins.sandbox]\nbwrap = \"/nonexistent/bwrap\"\nunsafe = true\n"],
                         ids=["sandboxed", "unsafe"])
def test_job_readme_example_works_with_default_relative_paths(tmp_path: Path, sandbox: str) -> None:
    # plugins/job/README.md from an empty directory: the data directory (and so the work
    # area) is relative to the cwd, yet {plugin} must name the plugin's files absolutely.
    workdir = tmp_path / "empty"
    config = f'[storage]\npath = "data/storage"\n[metadata]\npath = "data/metadata.db"\n{sandbox}'
    server = start_server(workdir, config)

    async def scenario() -> dict[str, bytes]:
        async with aiohttp.ClientSession() as session:
            plugin = {"name": "model-card", "version": "1.0", "kind": "job",
                      "options": {"command": ["python3", "{plugin}/make_card.py"]},
                      "files": [{"path": "make_card.py", "data": base64.b64encode(MAKE_CARD).decode()}]}
            async with session.post(f"{server.url}/api/v1/plugins", json=plugin) as resp:
                assert resp.status == 201, await resp.text()
            chain = {"name": "door", "match": ["generic/*"], "plugins": ["plugins/model-card:1.0"]}
            async with session.post(f"{server.url}/api/v1/chains", json=chain) as resp:
                assert resp.status == 201, await resp.text()
            await _push_generic_anonymous(session, server.url)
            deadline = time.monotonic() + 60
            while True:
                async with session.get(f"{server.url}/api/v1/assemblies") as resp:
                    items = (await resp.json())["items"]
                if items and items[0]["status"] in ("succeeded", "failed"):
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert items[0]["status"] == "succeeded", items[0]
            async with session.get(f"{server.url}/v2/business/door/face-recog/manifests/1.0",
                                   headers={"Accept": mt.OCI_MANIFEST}) as resp:
                doc = json.loads(await resp.read())
            out = {}
            for layer in doc["layers"]:
                async with session.get(f"{server.url}/v2/business/door/face-recog/blobs/{layer['digest']}") as resp:
                    out[layer["annotations"][mt.ANNOTATION_TITLE]] = await resp.read()
            return out

    try:
        files = asyncio.run(scenario())
        assert files["MODEL_CARD.md"] == b"# face-recog 1.0\n"
    finally:
        server.process.terminate()
        server.process.wait(10)
