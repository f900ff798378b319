"""``/healthz`` latency while the audit chain is verified, run by hand from the repository
root (never in CI).

Writes ``--records`` audit records (default 100,000) into a fresh metadata database
through ``AuditLog`` (the chain as the server writes it), starts ``algomint serve`` on it
(embedded storage, auth off), then:

- **idle**: ``/healthz`` one request after another for ``--seconds``: p50 / p99 / max;
- **during verify**: ``POST /api/v1/audit/verify`` and, until it answers, ``/healthz`` one
  after another as before: p50 / p99 / max, and how long the verify took.

Repeated ``--repeat`` times; prints each round and the median of the p99s.
Target (issue 17): ``/healthz`` p99 under 10 ms during a 100k-record verify.

On a shared machine other processes' load dominates wall-clock latency (compare the idle
line), so the run ends with a figure load does not blur: ``verify_chain`` in this process
beside a task that yields to the loop and wakes again at once, reporting the loop's
*holds*: the CPU time (``time.thread_time``) spent between two of its wakes, i.e. the
longest stretch verify keeps every other request waiting, whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.audit import AuditEvent, AuditLog  # noqa: E402
from proxy.meta import SqliteDatabase  # noqa: E402
from tests.support.server import run_server  # noqa: E402


async def fill(path: Path, records: int) -> None:
    db = SqliteDatabase(path)
    await db.open()
    log = AuditLog(db, flush_interval=0.05, batch_size=5000)
    await log.start()
    for i in range(records):
        log.record(AuditEvent(action="manifest.push", outcome="success", actor=f"user{i % 7}", actor_kind="user",
                              repository=f"generic/algo{i % 50}", reference=f"v{i}", status=201,
                              client="127.0.0.1", user_agent="bench", request_id=f"r{i}", detail={"i": i}))
        if i % 5000 == 4999:
            await log.flush()
    await log.close()
    await db.close()


def _ms(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000, ordered[-1] * 1000


async def probe(http: aiohttp.ClientSession, url: str, until: asyncio.Future | float) -> list[float]:
    samples: list[float] = []
    while (not until.done()) if isinstance(until, asyncio.Future) else time.monotonic() < until:
        started = time.perf_counter()
        async with http.get(url + "/healthz") as resp:
            await resp.read()
            assert resp.status == 200
        samples.append(time.perf_counter() - started)
    return samples


async def measure(url: str, seconds: float, repeat: int) -> None:
    async with aiohttp.ClientSession() as http:
        await probe(http, url, time.monotonic() + 1)  # warm-up
        idle = await probe(http, url, time.monotonic() + seconds)
        print(f"idle          healthz n={len(idle):5d}  p50 {_ms(idle)[0]:6.2f} ms  p99 {_ms(idle)[1]:6.2f} ms  "
              f"max {_ms(idle)[2]:6.2f} ms")
        p99s = []
        for round_ in range(repeat):
            started = time.perf_counter()
            verify = asyncio.ensure_future(http.post(url + "/api/v1/audit/verify"))
            during = await probe(http, url, verify)
            resp = await verify
            result = await resp.json()
            took = time.perf_counter() - started
            assert resp.status == 200 and result["ok"], result
            p50, p99, worst = _ms(during)
            p99s.append(p99)
            print(f"verify #{round_ + 1}     healthz n={len(during):5d}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                  f"max {worst:6.2f} ms   verify {result['records']} records in {took:.2f} s")
        print(f"median p99 during verify: {statistics.median(p99s):.2f} ms (target < 10 ms)")


async def holds(path: Path) -> None:
    from proxy.audit import verify_chain

    db = SqliteDatabase(path)
    await db.open()
    samples: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0)  # one pass of the loop: whatever else ran, ran in one piece
            now = time.thread_time()
            samples.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    result = await verify_chain(db)
    took = time.perf_counter() - started
    done = True
    await task
    await db.close()
    p50, p99, worst = _ms(samples)
    print(f"in process    loop holds n={len(samples):5d}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {worst:6.2f} ms"
          f"   verify {result.records} records in {took:.2f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="idle probing time")
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        asyncio.run(fill(work / "metadata.db", args.records))
        print(f"wrote {args.records} audit records in {time.perf_counter() - started:.1f} s")
        config = f'[storage]\npath = "{work / "storage"}"\n[metadata]\npath = "{work / "metadata.db"}"\n'
        with run_server(work / "server", config) as server:
            asyncio.run(measure(server.url, args.seconds, args.repeat))
        for _ in range(args.repeat):
            asyncio.run(holds(work / "metadata.db"))


if __name__ == "__main__":
    main()
