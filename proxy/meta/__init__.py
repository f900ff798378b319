"""Metadata store: the small, transactional state beside content (SQLite by default,
PostgreSQL when several replicas share it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .db import Database, Dialects, MetadataError, Row, Statement, Transaction
from .sqlite import SqliteDatabase

if TYPE_CHECKING:
    from ..config import MetadataConfig

__all__ = ["Database", "Dialects", "MetadataError", "Row", "SqliteDatabase", "Statement", "Transaction",
           "create_database"]


def create_database(settings: "MetadataConfig") -> Database:
    """The store ``[metadata]`` names, not yet opened: ``url`` for PostgreSQL, else ``path``."""
    if settings.url is None:
        return SqliteDatabase(settings.path)
    from .postgres import PostgresDatabase  # asyncpg is an extra: imported only when used

    return PostgresDatabase(settings.url, password=settings.resolved_password(), pool_size=settings.pool_size)
