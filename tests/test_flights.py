"""Coalesced backend reads: shared when concurrent, never older than the caller."""

from __future__ import annotations

import asyncio

import pytest

from proxy.service.flights import Flights


class Source:
    """Counts fetches; each answers its own number once ``gate`` opens."""

    def __init__(self) -> None:
        self.fetches = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None

    async def fetch(self) -> int:
        self.fetches += 1
        number = self.fetches
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return number


async def started(source: Source, count: int) -> None:
    for _ in range(100):
        if source.fetches >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} fetches never started")


async def test_a_burst_shares_one_fetch() -> None:
    flights: Flights[str, int] = Flights()
    source = Source()
    assert await asyncio.gather(*(flights.run("k", source.fetch) for _ in range(10))) == [1] * 10
    assert source.fetches == 1


async def test_keys_do_not_share() -> None:
    flights: Flights[str, int] = Flights()
    source = Source()
    assert sorted(await asyncio.gather(flights.run("a", source.fetch), flights.run("b", source.fetch))) == [1, 2]


async def test_a_later_caller_never_gets_an_earlier_read() -> None:
    flights: Flights[str, int] = Flights()
    source = Source()
    source.gate.clear()
    first = asyncio.create_task(flights.run("k", source.fetch))
    await started(source, 1)
    # The first read is under way: what it saw may predate this caller, so it gets its own.
    second = asyncio.create_task(flights.run("k", source.fetch))
    await started(source, 2)
    source.gate.set()
    assert (await first, await second) == (1, 2)


async def test_past_the_limit_callers_queue_for_one_read() -> None:
    flights: Flights[str, int] = Flights(limit=1)
    source = Source()
    source.gate.clear()
    first = asyncio.create_task(flights.run("k", source.fetch))
    await started(source, 1)
    queued = [asyncio.create_task(flights.run("k", source.fetch)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert source.fetches == 1  # nothing more runs until the first read ends
    source.gate.set()
    assert await first == 1
    assert await asyncio.gather(*queued) == [2] * 5
    assert source.fetches == 2


async def test_errors_reach_every_caller_and_are_not_kept() -> None:
    flights: Flights[str, int] = Flights()
    source = Source()
    source.error = LookupError("gone")
    results = await asyncio.gather(*(flights.run("k", source.fetch) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    source.error = None
    assert await flights.run("k", source.fetch) == 2


async def test_a_cancelled_caller_leaves_the_read_to_the_others() -> None:
    flights: Flights[str, int] = Flights()
    source = Source()
    source.gate.clear()
    leaving = asyncio.create_task(flights.run("k", source.fetch))
    staying = asyncio.create_task(flights.run("k", source.fetch))
    await started(source, 1)
    leaving.cancel()
    source.gate.set()
    assert await staying == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Flights(limit=0)
