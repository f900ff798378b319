"""Console page times with many business packages, run by hand from the repository root
(never in CI): ``PYTHONPATH=$PWD python3 bench/bench_console.py --packages 10000``.

Seeds ``--packages`` business packages (``business/door/alg-NNNNN:1.0``, each its own
repository) and a tenth as many generic ones straight into the embedded storage, then times
server-side rendering of the main pages (the median of ``--repeat`` requests, through the
in-process test client, signed in) as an admin and as a business developer who may read
only ``business/**``. The issue's target: every page under 200 ms."""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from tests.support.auth import ADMIN, auth_config, basic, password_of, seed_image

PAGES = ["/ui/algorithms", "/ui/systems", "/ui/systems/door", "/ui/repositories/business/door/alg-00042?tag=1.0",
         "/ui/assemblies"]


async def _sign_in(client: TestClient, user: str) -> None:
    form = await (await client.get("/ui/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    resp = await client.post("/ui/login", data={"csrf": csrf, "username": user, "password": password_of(user)})
    assert resp.status == 200, resp.status


async def main(packages: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(auth_config(Path(tmp), "filesystem"))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/api/v1/users", json={"name": "biz", "kind": "user", "roles": ["business-dev"],
                                                            "password": password_of("biz")}, headers=basic(ADMIN))
            assert resp.status == 201
            plugin = {"name": "door-form", "version": "1.0", "kind": "file",
                      "files": [{"path": "form.json", "data": base64.b64encode(b"{}").decode()}]}
            resp = await client.post("/api/v1/plugins", json=plugin, headers=basic(ADMIN))
            assert resp.status == 201, await resp.text()
            # The door system's page lists its packages; it matches nothing seeded, so nothing assembles.
            chain = {"name": "door", "match": ["generic/none-*"], "plugins": ["plugins/door-form:1.0"]}
            resp = await client.post("/api/v1/chains", json=chain, headers=basic(ADMIN))
            assert resp.status == 201, await resp.text()
            started = time.perf_counter()
            for i in range(packages):
                await seed_image(app, f"business/door/alg-{i:05d}", "1.0")
                if i % 10 == 0:
                    await seed_image(app, f"generic/alg-{i:05d}", "1.0")
                if i % 1000 == 999:
                    print(f"  {i + 1} seeded, {time.perf_counter() - started:.0f}s", flush=True)
            print(f"seeded {packages} business + {packages // 10} generic packages in "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
            for user in (ADMIN, "biz"):
                await _sign_in(client, user)
                for page in PAGES:
                    times = []
                    for _ in range(repeat):
                        t0 = time.perf_counter()
                        resp = await client.get(page)
                        await resp.read()
                        times.append((time.perf_counter() - t0) * 1000)
                    print(f"{user:6} {resp.status} {statistics.median(times):8.1f} ms  {page}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.packages, args.repeat))
