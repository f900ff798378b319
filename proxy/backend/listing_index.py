"""A sorted index of the embedded store's repositories and tags, so a listing page costs a page.

``tags/list`` and ``_catalog`` are lexically ordered and paginated by ``last``; answering
them from directory scans costs the whole repository (or the whole store) per page. This
index is a small SQLite file next to the data (``<root>/_index/listing.sqlite``), with the
primary key doing the sorting. All methods are blocking: the backend calls them from its
worker threads, alongside the file operations they describe.

Consistency with the files, which stay the truth:

* every write happens under an exclusive ``flock`` on ``_index/lock`` (instances sharing
  the root, e.g. a build process, serialise too), and rows are added *before* a tag file
  or repository directory is created and removed *after* a tag file is unlinked: a crash
  at any point can only leave an extra row, never a file without one;
* readers check each row of a page against the disk (one ``stat`` per row) and remove
  rows whose file is gone, so extra rows never show and are repaired as they are met;
* an index that is missing, of another schema version or never finished building is
  rebuilt from a full scan at start (``ensure``), the only time the index costs the data.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["ListingIndex"]

_VERSION = "1"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS repositories (name TEXT PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS tags (
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (repo, tag)
    ) WITHOUT ROWID""",
]


class ListingIndex:
    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self.lock_path = lock_path
        self._conn: sqlite3.Connection | None = None
        # One connection, used from the backend's worker threads one at a time.
        self._conn_lock = threading.Lock()
        self.rows_read = 0  # rows fetched by page queries: lets tests see what a page costs

    # -- lifecycle -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._conn_lock:
            yield self._connect()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive across threads and processes: a row change and its file change
        happen together relative to every other writer."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def ensure(self, scan: Callable[[], Iterable[tuple[str, list[str]]]]) -> bool:
        """Rebuild from ``scan`` (repository, tags) unless a complete index of this
        version is present; returns whether it rebuilt."""
        with self.writing():
            with self._db() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
                if row is not None and row[0] == _VERSION:
                    return False
            entries = list(scan())
            with self._db() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("DELETE FROM repositories")
                    conn.execute("DELETE FROM tags")
                    conn.executemany("INSERT INTO repositories VALUES (?)", ((repo,) for repo, _ in entries))
                    conn.executemany(
                        "INSERT INTO tags VALUES (?, ?)", ((repo, tag) for repo, tags in entries for tag in tags)
                    )
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_VERSION,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return True

    # -- writes (callers hold ``writing()``) ----------------------------------------
    def add_repository(self, repo: str) -> None:
        with self._db() as conn:
            conn.execute("INSERT OR IGNORE INTO repositories VALUES (?)", (repo,))

    def add_tag(self, repo: str, tag: str) -> None:
        with self._db() as conn:
            conn.execute("INSERT OR IGNORE INTO tags VALUES (?, ?)", (repo, tag))

    def remove_tags(self, repo: str, tags: Iterable[str]) -> None:
        with self._db() as conn:
            conn.executemany("DELETE FROM tags WHERE repo = ? AND tag = ?", ((repo, tag) for tag in tags))

    def _remove_repository(self, repo: str) -> None:
        with self._db() as conn:
            conn.execute("DELETE FROM repositories WHERE name = ?", (repo,))

    # -- pages ---------------------------------------------------------------------
    def _page(
        self,
        query: str,
        params: tuple[object, ...],
        n: int | None,
        last: str | None,
        present: Callable[[str], bool],
        forget: Callable[[list[str]], None],
        lower: str = ">",
    ) -> tuple[list[str], bool]:
        """Up to ``n`` present names after ``last`` in order, and whether more follow.

        ``query`` ends its conditions with ``{lower} ?``: the one lower bound of the range,
        ``lower`` (``>`` or ``>=``) with ``last`` for the first batch, then ``>`` the batch's
        last name."""
        page: list[str] = []
        after = last or ""
        while True:
            want = None if n is None else n - len(page) + 1
            sql = query.format(lower=lower) + (" LIMIT ?" if want is not None else "")
            with self._db() as conn:
                rows = [r[0] for r in conn.execute(sql, params + (after,) + ((want,) if want is not None else ()))]
            self.rows_read += len(rows)
            gone = [name for name in rows if not present(name)]
            if gone:
                with self.writing():
                    forget([name for name in gone if not present(name)])
            page += [name for name in rows if name not in gone]
            if n is None:
                return page, False
            if len(page) > n:
                return page[:n], True
            if want is None or len(rows) < want:
                return page, False
            after, lower = rows[-1], ">"

    def tags_page(
        self, repo: str, n: int | None, last: str | None, present: Callable[[str], bool]
    ) -> tuple[list[str], bool]:
        return self._page(
            "SELECT tag FROM tags WHERE repo = ? AND tag {lower} ? ORDER BY tag",
            (repo,),
            n,
            last,
            present,
            lambda gone: self.remove_tags(repo, gone),
        )

    def repositories_page(
        self, n: int | None, last: str | None, present: Callable[[str], bool], prefix: str = ""
    ) -> tuple[list[str], bool]:
        # ``prefix`` narrows the range (the primary key still orders it): names are ASCII,
        # so "prefix <= name < prefix + U+FFFF" holds exactly the names that start with it.
        # One lower bound, the greater of the two: given both, SQLite seeks to one and
        # filters the rest row by row (a page from the middle of 100,000 names read half).
        def forget(gone: list[str]) -> None:
            for name in gone:
                self._remove_repository(name)

        after_last = last is not None and last >= prefix
        return self._page(
            "SELECT name FROM repositories WHERE name < ? AND name {lower} ? ORDER BY name",
            (prefix + "\uffff",),
            n,
            last if after_last else prefix,
            present,
            forget,
            lower=">" if after_last else ">=",
        )
