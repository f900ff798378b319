"""What in-flight manifest writes rely on, so a concurrent garbage collector spares it.

A write pins the digests it names (the manifest, its blobs, children and subject) before
it checks that they exist and keeps them pinned until it has stored the manifest. A
collection sees every write that overlaps it: digests pinned when it starts and every
digest pinned while it runs. Writes that finished before it started are on disk, where its
mark phase finds them. Pinning and the collector's check-then-delete both run on the event
loop with no ``await`` in between, so neither can slip inside the other."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

__all__ = ["WriteFence"]


class WriteFence:
    def __init__(self) -> None:
        self._writes: dict[int, frozenset[str]] = {}
        self._collections: list[set[str]] = []
        self._next = 0

    def pin(self, digests: Iterable[str]) -> int:
        """Pin ``digests`` for one write; pass the returned token to ``release``."""
        token, self._next = self._next, self._next + 1
        pinned = frozenset(digests)
        self._writes[token] = pinned
        for collected in self._collections:
            collected.update(pinned)
        return token

    def release(self, token: int) -> None:
        self._writes.pop(token, None)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[set[str]]:
        """For one collection: the digests any overlapping write relies on (it grows)."""
        pinned: set[str] = set()
        for digests in self._writes.values():
            pinned.update(digests)
        self._collections.append(pinned)
        try:
            yield pinned
        finally:
            self._collections.remove(pinned)
