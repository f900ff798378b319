"""``algomint admin chains|plugins|assemblies|subscriptions`` against a live server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from dataclasses import dataclass

import pytest

from proxy.cli import main
from tests.support.packer import push_generic, wait_jobs_done


@pytest.fixture
def backend_kind() -> str:
    return "filesystem"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def _cli(client, *args: str, ok: bool = True) -> Result:
    """``algomint admin …`` in-process (the admin client is synchronous: run it in a thread)."""
    argv = ["admin", "--url", f"http://127.0.0.1:{client.server.port}", *args]

    def run() -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return Result(code, out.getvalue(), err.getvalue())

    result = await asyncio.to_thread(run)
    assert (result.returncode == 0) is ok, result.stderr + result.stdout
    return result


async def test_admin_cli_drives_the_whole_flow(client, tmp_path):
    uid = uuid.uuid4().hex[:8]
    (tmp_path / "transform.py").write_text("def transform(p, c):\n    p['files']['cli.txt'] = c['params']['site']\n")
    (tmp_path / "form.json").write_text('{"form": 1}')
    await _cli(client, "plugins", "push", f"fn-{uid}", "1.0", "--kind", "function", "--file", str(tmp_path / "transform.py"),
               "--option", "timeout=5")
    await _cli(client, "plugins", "push", f"form-{uid}", "1.0", "--kind", "file",
               "--file", f"{tmp_path / 'form.json'}=business/form.json")
    listing = await _cli(client, "--json", "plugins", "show", f"fn-{uid}")
    assert json.loads(listing.stdout)["versions"][0]["config"]["timeout"] == 5

    await _cli(client, "chains", "create", f"door-{uid}", "--match", f"generic/a-{uid}",
               "--plugin", f"plugins/form-{uid}:1.0", "--plugin", f"plugins/fn-{uid}:1.0", "--param", "site=hq")
    failed = await _cli(client, "chains", "create", f"bad-{uid}", "--match", "generic/*", "--plugin", "plugins/none:1",
                        ok=False)
    assert "plugins.0" in failed.stderr and "not found" in failed.stderr
    chains = await _cli(client, "chains", "list")
    assert f"door-{uid}" in chains.stdout
    await _cli(client, "chains", "create", f"arm-{uid}", "--match", f"generic/a-{uid}",
               "--plugin", f"plugins/form-{uid}:1.0", "--platform", "linux/arm64", "--platform", "linux/arm64+npu")
    shown = json.loads((await _cli(client, "--json", "chains", "show", f"arm-{uid}")).stdout)
    assert shown["platforms"] == ["linux/arm64", "linux/arm64+npu"]
    refused = await _cli(client, "chains", "create", f"bad2-{uid}", "--match", "generic/*",
                         "--plugin", f"plugins/form-{uid}:1.0", "--platform", "arm64", ok=False)
    assert "platforms" in refused.stderr

    sub = json.loads((await _cli(client, "--json", "subscriptions", "create", "http://127.0.0.1:9/hook",
                                 "--event", "business.assembled", "--repository", "business/**")).stdout)
    assert len(sub["secret"]) == 64

    await push_generic(client, f"generic/a-{uid}", "1.0", {"m": b"m"}, tmp_path / "g")
    [job] = await wait_jobs_done(client, chain=f"door-{uid}")
    [skipped] = await wait_jobs_done(client, chain=f"arm-{uid}")
    assert skipped["status"] == "skipped"  # the package is for linux/amd64+cuda12
    jobs = json.loads((await _cli(client, "--json", "assemblies", "list", "--chain", f"door-{uid}")).stdout)
    assert [j["id"] for j in jobs] == [job["id"]] and jobs[0]["status"] == "succeeded"
    shown = await _cli(client, "assemblies", "show", str(job["id"]))
    assert f"plugins/fn-{uid}:1.0" in shown.stdout and "succeeded in" in shown.stdout
    table = await _cli(client, "assemblies", "list")
    assert f"business/door-{uid}/a-{uid}:1.0" in table.stdout

    again = await _cli(client, "chains", "assemble", f"door-{uid}", "--package", f"generic/a-{uid}:1.0")
    assert "queued 1 job(s)" in again.stdout
    deliveries = await _cli(client, "subscriptions", "deliveries", sub["id"])
    assert "business.assembled" in deliveries.stdout
    await _cli(client, "subscriptions", "delete", sub["id"])
    await _cli(client, "chains", "delete", f"door-{uid}")
    missing = await _cli(client, "chains", "show", f"door-{uid}", ok=False)
    assert "404" in missing.stderr
