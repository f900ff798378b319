"""Walk the audit hash chain and name the first record that was altered, removed or reordered.

At each record, against the previous one (seq 0 with the genesis hash before the first):

- a gap in ``seq``                                   -> the missing records were removed;
- its ``prev_hash`` is the hash of some other record -> reordered (it sits after the wrong one);
- its own hash doesn't match its fields              -> altered (this record);
- its link fails but its own hash holds              -> the previous record was altered and
  re-hashed to hide it;
- link and own hash both fail, linked hash unknown   -> records before it were removed and the
  rest renumbered.

Records appended after the last one can't be told from a truncated tail by the chain
alone: keep the reported head (``seq``, ``hash``) somewhere else to detect truncation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from ..meta import Database
from .records import GENESIS, record_hash

__all__ = ["ChainProblem", "VerifyResult", "verify_chain"]

_PAGE = 1000
_SLICE = 16  # records hashed (~0.3 ms; more on a loaded machine) between two turns of the event loop


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: Literal["altered", "removed", "reordered"]
    message: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problem: ChainProblem | None = None


async def verify_chain(db: Database, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Walk the whole chain; ``anchor`` (a ``seq`` and ``hash`` kept elsewhere from an
    earlier run) must still be in it, which catches a truncated or rewritten log."""
    prev_seq, prev_hash, count = 0, GENESIS, 0
    last_good = (0, GENESIS)  # the record before prev: the head if prev turns out altered
    anchored = anchor is None
    while True:
        rows = await db.fetchall("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (prev_seq, _PAGE))
        good = await _intact(rows, prev_seq, prev_hash)
        for i, row in enumerate(rows):
            if i == good:
                problem = await _check(db, row, prev_seq, prev_hash)
                assert problem is not None
                if problem.seq == prev_seq:  # the previous record was the altered one
                    return VerifyResult(False, count - 1, *last_good, problem)
                return VerifyResult(False, count, prev_seq, prev_hash, problem)
            count += 1
            last_good = (prev_seq, prev_hash)
            prev_seq, prev_hash = row["seq"], row["hash"]
            if anchor is not None and prev_seq == anchor[0]:
                if prev_hash != anchor[1]:
                    problem = ChainProblem(prev_seq, "altered", f"record {prev_seq} is not the one anchored")
                    return VerifyResult(False, count, prev_seq, prev_hash, problem)
                anchored = True
        if len(rows) < _PAGE:
            break
    if not anchored:
        assert anchor is not None
        problem = ChainProblem(anchor[0], "removed", f"the log ends at {prev_seq}, before anchored record {anchor[0]}")
        return VerifyResult(False, count, prev_seq, prev_hash, problem)
    return VerifyResult(True, count, prev_seq, prev_hash)


async def _intact(rows: Sequence[Any], prev_seq: int, prev_hash: str) -> int:
    """How many of ``rows``, from the first, follow on and match their hash. Hashing is
    the cost (~20 µs a record): it runs in slices of ``_SLICE`` records with the event
    loop let in between, so requests keep being answered while a long log is verified."""
    for i, row in enumerate(rows):
        if row["seq"] != prev_seq + 1 or row["prev_hash"] != prev_hash or record_hash(row) != row["hash"]:
            return i
        prev_seq, prev_hash = row["seq"], row["hash"]
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep(0)
    return len(rows)


async def _check(db: Database, row, prev_seq: int, prev_hash: str) -> ChainProblem | None:
    seq = row["seq"]
    if seq != prev_seq + 1:
        missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1} to {seq - 1}"
        return ChainProblem(prev_seq + 1, "removed", f"record {missing} missing: the log jumps from {prev_seq} to {seq}")
    intact = record_hash(row) == row["hash"]
    if row["prev_hash"] == prev_hash:
        return None if intact else ChainProblem(seq, "altered", f"record {seq} does not match its hash")
    # No index on hash (it would double the cost of every write): this scan runs once, at
    # the first broken link.
    linked = await db.fetchone("SELECT seq FROM audit_log WHERE hash = ?", (row["prev_hash"],))
    if linked is not None and linked["seq"] != prev_seq:
        return ChainProblem(seq, "reordered", f"record {seq} was written after record {linked['seq']}, not {prev_seq}")
    if intact and prev_seq > 0:
        return ChainProblem(prev_seq, "altered",
                            f"record {prev_seq} was changed and re-hashed: record {seq} links to a different hash")
    if intact:
        return ChainProblem(seq, "altered", f"record {seq} does not start the chain")
    return ChainProblem(seq, "removed", f"records before {seq} were removed and the rest renumbered")
