"""Audit records and their hash chain.

Each record carries ``prev_hash`` (the previous record's ``hash``; 64 zeros for the
first) and ``hash`` = SHA-256 over the compact JSON array of every other field in
``HASHED_FIELDS`` order (``detail`` as its stored, key-sorted JSON text), ``seq`` and
``prev_hash`` included, so editing, removing or reordering records breaks the chain."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from ..meta import Dialects

__all__ = ["AuditEvent", "AuditRecord", "Outcome", "GENESIS", "HASHED_FIELDS", "SCHEMA", "record_hash", "iso_time", "canonical"]

GENESIS = "0" * 64
# The fields covered by ``hash``, in table order; ``detail`` is hashed as its stored text.
HASHED_FIELDS = (
    "seq", "time", "actor", "actor_kind", "action", "repository", "reference", "digest", "outcome", "status",
    "client", "user_agent", "request_id", "detail", "prev_hash",
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        action TEXT NOT NULL,
        repository TEXT,
        reference TEXT,
        digest TEXT,
        outcome TEXT NOT NULL,
        status INTEGER,
        client TEXT,
        user_agent TEXT,
        request_id TEXT,
        detail TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log(actor, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_action ON audit_log(action, seq)",
    # Append-only: the server never updates or deletes; these make an accident loud too.
    Dialects(
        """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
        """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$""",
    ),
    Dialects(
        """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
        """CREATE OR REPLACE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
    ),
]


def iso_time(timestamp: float) -> str:
    """UTC, microseconds, fixed width: sorts as text in time order."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# A JSON array in a fixed field order is canonical without sorting keys.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class AuditEvent:
    """What happened, as submitted; the log adds ``seq`` and the chain.

    Built on the request path, so it is a plain slotted class (a frozen dataclass costs
    a ``object.__setattr__`` per field) and keeps the time as a number until written."""

    action: str
    outcome: str  # "success" | "failure" | "denied"
    actor: str = "anonymous"
    actor_kind: str = "anonymous"
    repository: str | None = None
    reference: str | None = None
    digest: str | None = None
    status: int | None = None
    client: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    detail: Mapping[str, Any] | None = None
    time: float = field(default_factory=time.time)

    def row(self, seq: int, prev_hash: str) -> dict[str, Any]:
        """The stored form, ``hash`` included."""
        values = {
            "seq": seq, "time": iso_time(self.time), "actor": self.actor, "actor_kind": self.actor_kind,
            "action": self.action, "repository": self.repository, "reference": self.reference,
            "digest": self.digest, "outcome": self.outcome, "status": self.status, "client": self.client,
            "user_agent": self.user_agent, "request_id": self.request_id,
            "detail": canonical(dict(self.detail)) if self.detail else None, "prev_hash": prev_hash,
        }
        values["hash"] = record_hash(values)
        return values


def record_hash(values: Mapping[str, Any]) -> str:
    """SHA-256 of the compact JSON array of the ``HASHED_FIELDS`` values, in that order."""
    return hashlib.sha256(_encode([values[k] for k in HASHED_FIELDS]).encode()).hexdigest()


Outcome = Literal["success", "failure", "denied"]


@dataclass(frozen=True)
class AuditRecord:
    """A stored record, as queries return it (and the management API serves it)."""

    seq: int
    time: str
    actor: str
    actor_kind: str
    action: str
    repository: str | None
    reference: str | None
    digest: str | None
    outcome: Outcome
    status: int | None
    client: str | None
    user_agent: str | None
    request_id: str | None
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "AuditRecord":
        values = {k: row[k] for k in (*HASHED_FIELDS, "hash")}
        values["detail"] = json.loads(values["detail"]) if values["detail"] else None
        return cls(**values)
