"""Real clients logging in to algomint with auth on, on both backends: skopeo (login,
--creds, an API token as password), podman (login, pull) and the oras Python SDK's login."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.support.auth import ADMIN, AuthEnv, auth_env, password_of, seed_image  # noqa: F401
from tests.support.images import write_oci_layout
from tests.support.podman import PODMAN, Podman

SKOPEO = shutil.which("skopeo")
TLS = "--tls-verify=false"

pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")


async def skopeo(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(SKOPEO, *argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, (out + err).decode()


def creds(user: str, secret: str | None = None) -> str:
    return f"{user}:{password_of(user) if secret is None else secret}"


def _host(env: AuthEnv) -> str:
    return f"127.0.0.1:{env.client.server.port}"


async def test_skopeo_push_pull_with_creds_and_login(auth_env: AuthEnv, tmp_path: Path):
    host, uid = _host(auth_env), uuid.uuid4().hex[:8]
    src = tmp_path / "src"
    write_oci_layout(src, "v1", [{"opt/models/face.onnx": os.urandom(300_000)}, {"README": b"hello"}])
    generic = f"generic/face-{uid}"
    # algorithm-dev pushes generic/** with --dest-creds (token flow behind the scenes)
    code, out = await skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds("alg"),
                             f"oci:{src}:v1", f"docker://{host}/{generic}:v1")
    assert code == 0, out
    # …and reads it back through a login stored in an auth file
    authfile = tmp_path / "auth.json"
    code, out = await skopeo("login", TLS, "--authfile", str(authfile), "-u", "alg", "-p", password_of("alg"), host)
    assert code == 0 and "Login Succeeded" in out, out
    code, out = await skopeo("copy", "--src-tls-verify=false", "--authfile", str(authfile),
                             f"docker://{host}/{generic}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert code == 0, out
    assert (tmp_path / "out" / "index.json").exists()
    # a wrong password doesn't log in
    code, out = await skopeo("login", TLS, "--authfile", str(tmp_path / "bad.json"), "-u", "alg", "-p", "wrong", host)
    assert code != 0 and "invalid username/password" in out, out
    # a consumer can't read generic/**, can't write business/**; an admin can't write business/** either
    code, out = await skopeo("inspect", TLS, "--raw", "--creds", creds("cons"), f"docker://{host}/{generic}:v1")
    assert code != 0 and "denied" in out.lower(), out
    for user in ("cons", ADMIN):
        code, out = await skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds(user),
                                 f"oci:{src}:v1", f"docker://{host}/business/door-{uid}/face:v1")
        assert code != 0 and "denied" in out.lower(), out
    # a consumer pulls business/** (assembled by algomint itself)
    business = f"business/door-{uid}/face"
    digest = await seed_image(auth_env.app, business, "1.0")
    code, out = await skopeo("inspect", TLS, "--creds", creds("cons"), f"docker://{host}/{business}:1.0")
    assert code == 0 and json.loads(out)["Digest"] == digest, out
    # anonymous gets nothing
    code, out = await skopeo("inspect", TLS, "--raw", "--no-creds", f"docker://{host}/{business}:1.0")
    assert code != 0


@pytest.mark.skipif(PODMAN is None, reason="podman is not installed")
async def test_podman_login_and_pull(auth_env: AuthEnv, tmp_path: Path):
    host, uid = _host(auth_env), uuid.uuid4().hex[:8]
    src = tmp_path / "src"
    write_oci_layout(src, "v1", [{"opt/models/face.onnx": os.urandom(300_000)}])
    image = f"generic/face-{uid}"
    code, out = await skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds("alg"),
                             f"oci:{src}:v1", f"docker://{host}/{image}:v1")
    assert code == 0, out
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {}}')  # no credentials yet, whatever the machine's own file holds
    podman = Podman(tmp_path / "podman")
    try:
        code, out = await podman("pull", TLS, "--authfile", str(authfile), f"{host}/{image}:v1")
        assert code != 0 and "unauthorized" in out.lower(), out  # no login yet
        code, out = await podman("login", TLS, "--authfile", str(authfile), "-u", "alg", "-p", password_of("alg"), host)
        assert code == 0 and "Login Succeeded" in out, out
        code, out = await podman("pull", TLS, "--authfile", str(authfile), f"{host}/{image}:v1")
        assert code == 0, out
        # a consumer holds no pull on generic/**
        code, out = await podman("pull", TLS, "--creds", creds("cons"), f"{host}/{image}:v1")
        assert code != 0 and ("denied" in out.lower() or "unauthorized" in out.lower()), out
    finally:
        podman.close()


async def test_skopeo_with_a_robot_token_as_password(auth_env: AuthEnv, tmp_path: Path):
    host, uid = _host(auth_env), uuid.uuid4().hex[:8]
    await auth_env.create_user("ci", ["algorithm-dev"], kind="robot")
    token = (await auth_env.api_token("ci"))["token"]
    src = tmp_path / "src"
    write_oci_layout(src, "v2", [{"bin/tool": os.urandom(50_000)}])
    code, out = await skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"ci:{token}",
                             f"oci:{src}:v2", f"docker://{host}/images/tool-{uid}:v2")
    assert code == 0, out
    code, out = await skopeo("list-tags", TLS, "--creds", f"ci:{token}", f"docker://{host}/images/tool-{uid}")
    assert code == 0 and json.loads(out)["Tags"] == ["v2"], out
    records = await auth_env.audit(actor="ci", action="manifest.push")
    assert records and records[0]["repository"] == f"images/tool-{uid}"
    assert token not in json.dumps(await auth_env.audit(actor="ci"))


async def test_oras_sdk_login_push_and_pull(auth_env: AuthEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import oras.provider

    host, uid = _host(auth_env), uuid.uuid4().hex[:8]
    business = f"business/door-{uid}/face"
    await seed_image(auth_env.app, business, "1.0")
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(os.urandom(80_000))
    Path("descriptor.json").write_text('{"name": "face", "version": "1.0"}')

    def as_user(user: str) -> "oras.provider.Registry":
        registry = oras.provider.Registry(host, insecure=True)
        result = registry.login(user, password_of(user), hostname=host, config_path=str(tmp_path / f"{user}.json"))
        assert "Succeeded" in str(result)
        return registry

    def work() -> tuple[list[str], int, int]:
        alg = as_user("alg")
        alg.push(target=f"{host}/generic/face-{uid}:1.0", files=["model.onnx", "descriptor.json"], quiet=True)
        pulled = as_user("alg").pull(target=f"{host}/generic/face-{uid}:1.0", outdir=str(tmp_path / "pulled"))
        consumer = as_user("cons")
        manifest_status = consumer.do_request(f"http://{host}/v2/{business}/manifests/1.0", "GET",
                                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code
        denied = as_user("cons")
        try:
            denied.push(target=f"{host}/{business}:2.0", files=["model.onnx"], quiet=True)
            push_outcome = 0
        except ValueError as exc:  # oras-py raises on the refused request
            push_outcome = 403 if "DENIED" in str(exc) else -1
        return pulled, manifest_status, push_outcome

    pulled, manifest_status, push_outcome = await asyncio.to_thread(work)
    assert sorted(Path(p).name for p in pulled) == ["descriptor.json", "model.onnx"]
    assert (tmp_path / "pulled" / "model.onnx").read_bytes() == Path("model.onnx").read_bytes()
    assert manifest_status == 200
    assert push_outcome == 403
    pushes = await auth_env.audit(actor="alg", action="manifest.push")
    assert pushes and pushes[0]["repository"] == f"generic/face-{uid}"
