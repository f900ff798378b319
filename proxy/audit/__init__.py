"""The audit log: append-only, hash-chained, batched writes, queries and verification.

``AUDIT`` holds the app's ``AuditLog``; ``record_request`` records an event with the
request's actor, address, user agent and request id; the ``audit_requests`` middleware
records mutations, logins, business pulls and archive downloads."""

from .log import AuditLog, AuditQuery
from .records import AuditEvent, AuditRecord
from .verify import ChainProblem, VerifyResult, verify_chain

__all__ = ["AuditLog", "AuditQuery", "AuditEvent", "AuditRecord", "ChainProblem", "VerifyResult", "verify_chain"]
