"""Metadata store: the small, transactional state beside content (SQLite by default)."""

from .db import Database, MetadataError

__all__ = ["Database", "MetadataError"]
