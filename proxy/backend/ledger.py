"""Which blobs of a foreign registry algomint has already verified in full."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["VerifiedBlobs"]


class VerifiedBlobs:
    """A bounded, least-recently-used record of ``digest -> size`` for blobs whose
    whole content was hashed and matched. Content addressing makes a match final: the
    same digest names the same bytes, so later reads only need their length checked.

    Process-local on purpose: a restart, or a blob falling out of the record, costs one
    more verifying read, never a wrong answer."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._sizes: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sizes)

    def holds(self, digest: str, size: int) -> bool:
        known = self._sizes.get(digest)
        if known is None or known != size:
            return False
        self._sizes.move_to_end(digest)
        return True

    def add(self, digest: str, size: int) -> None:
        self._sizes[digest] = size
        self._sizes.move_to_end(digest)
        while len(self._sizes) > self._max:
            self._sizes.popitem(last=False)
