"""``full.built``: a successful full build is delivered to subscribers of it (and of ``*``),
signed, on both backends; a failed build emits nothing."""

from __future__ import annotations

import hashlib
import hmac
import tarfile

from packer.webhooks import SIGNATURE_HEADER
from tests.support.packer import wait_for
from tests.support.tarlayers import build_image, with_layer
from tests.test_fullbuild_e2e import fb, fb_config, keys, make_package, run_build  # noqa: F401 - fixtures
from tests.test_webhooks import SECRET, _async, _deliveries, _start_receiver, _subscribe


async def test_full_built_is_delivered(fb, aiohttp_server, tmp_path):
    receiver, _ = await _start_receiver(aiohttp_server)
    pkg = await make_package(fb, tmp_path)
    only = await _subscribe(fb, receiver.url, ["full.built"], [pkg.business])
    everything = await _subscribe(fb, receiver.url + "?all", ["*"], ["**"])
    build = await run_build(fb, pkg.name, "soft")

    await wait_for(lambda: _async(len(receiver.events("full.built")) >= 1 and len(receiver.received) >= 2),
                   timeout=15)
    events = [(e, body, headers) for e, body, headers in receiver.received if e["type"] == "full.built"]
    assert len({e["id"] for e, _, _ in events}) == 1  # one event, delivered to both subscriptions
    assert len(events) == 2
    event, body, headers = events[0]
    assert hmac.compare_digest(headers[SIGNATURE_HEADER],
                               "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest())
    assert event["repository"] == pkg.business
    data = event["data"]
    assert data["build"] == build["id"] and data["license"] == "soft" and data["package"] == pkg.name
    assert data["tag"] == build["result"]["tag"] == f"{pkg.business}:1.0-soft"
    assert data["digest"] == build["result"]["digest"]
    assert [i["licensed"] for i in data["images"]] == [f"{pkg.image_repo}:v1-soft"]
    for sub in (only, everything):
        deliveries = await wait_for(lambda s=sub: _delivered(fb, s["id"]))
        assert [d["event_type"] for d in deliveries] == ["full.built"]


async def _delivered(client, sub_id: str) -> list[dict] | None:
    items = await _deliveries(client, sub_id)
    return items if items and all(d["status"] == "delivered" for d in items) else None


async def test_failed_build_emits_nothing(fb, aiohttp_server, tmp_path):
    receiver, _ = await _start_receiver(aiohttp_server)
    info = tarfile.TarInfo("../../etc/evil")
    info.size = 1
    layer = info.tobuf(tarfile.USTAR_FORMAT) + b"x" + b"\0" * 511 + b"\0" * 1024
    pkg = await make_package(fb, tmp_path, image=with_layer(build_image(tmp_path / "evil"), layer))
    sub = await _subscribe(fb, receiver.url, ["full.built"], ["**"])
    await run_build(fb, pkg.name, expect="failed")
    assert await _deliveries(fb, sub["id"]) == []


async def test_cli_wait_prints_progress_lines_off_a_terminal(fb, tmp_path, capsys):
    import asyncio
    import re

    from proxy.cli import main as cli_main

    pkg = await make_package(fb, tmp_path)
    url = f"http://127.0.0.1:{fb.server.port}"
    code = await asyncio.to_thread(cli_main, ["admin", "--url", url, "full-build", "create", pkg.name,
                                              "--license", "soft", "--wait", "--timeout", "60"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert lines and "\r" not in captured.err
    assert all(re.fullmatch(r"full build \S+: (queued|running|succeeded) (-|\d+%) \(\d+/\d+ bytes\)", line)
               for line in lines), lines
    assert lines[-1].split(": ")[1].startswith("succeeded 100%")
    # Times in the API answer and in the listing are ISO 8601.
    build = (await (await fb.get("/api/v1/full-builds", params={"package": pkg.name})).json())["items"][0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build["created_at"])
    assert await asyncio.to_thread(cli_main, ["admin", "--url", url, "full-build", "list", "--package", pkg.name]) == 0
    assert build["created_at"] in capsys.readouterr().out
