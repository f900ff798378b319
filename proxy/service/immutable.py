"""Immutable tags (DESIGN §7): in the namespaces given (plugins by default), a tag once
pushed keeps its content for good, because provenance names it.

- Re-pushing the same bytes under a tag is allowed (idempotent); other content under a
  tag that already names something is ``DENIED``: a new version needs a new tag.
- Manifests and blobs there are never deleted through the registry API (``DENIED``): a
  deleted tag could be pushed again with other content, and a business package's
  ``plugin@version`` provenance would then name something that never ran.

``check`` is the ``Policy`` half (deletes, known from the URL); ``claim`` is asked by the
registry service for every tag push, once it knows the digest. The claim is a row in the
metadata store (primary key: repository and tag) taken before the manifest is written,
so of two concurrent pushes of different content to a new tag exactly one wins, on one
server or several sharing the database. A tag that predates the table is claimed for
the digest the storage already holds. A claim is given back when the write fails; one
left by a crash between claim and write keeps the tag for the content first pushed
(pushing those same bytes again completes it), never for other content."""

from __future__ import annotations

from typing import Awaitable, Callable

from ..meta import Database
from ..oci.errors import Errors, RegistryError
from .policy import Action, Request

__all__ = ["ImmutableTags", "SCHEMA"]

# Created with the other registry tables (``proxy.app``).

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS immutable_tags (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (repository, tag)
    )""",
]


class ImmutableTags:
    def __init__(self, db: Database, prefixes: tuple[str, ...]) -> None:
        self.db = db
        self.prefixes = prefixes

    def applies(self, repository: str | None) -> bool:
        return bool(repository) and repository.startswith(self.prefixes)  # type: ignore[union-attr]

    # -- Policy: deletes ----------------------------------------------------------
    async def check(self, request: Request) -> None:
        if request.action is Action.DELETE and request.reference and self.applies(request.repository):
            raise RegistryError(
                Errors.DENIED, {"repository": request.repository, "reference": request.reference},
                message=f"{request.repository} is immutable: its versions are never deleted, because the "
                        "provenance of business packages names them",
            )

    # -- the registry service: tag pushes -------------------------------------------
    async def claim(self, repository: str, tag: str, digest: str,
                    current: Callable[[], Awaitable[str | None]]) -> bool:
        """Allow ``digest`` under ``repository:tag`` or raise ``DENIED``; True when this
        call took a new claim, which ``release`` gives back if the write then fails."""
        held = await self._held(repository, tag)
        taken = False
        if held is None:
            existing = await current()  # pushed before the table, or the claim was released
            taken = await self.db.execute(
                "INSERT INTO immutable_tags (repository, tag, digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (repository, tag, existing or digest)) == 1 and existing is None
            held = await self._held(repository, tag)  # a concurrent push may have won
        if held != digest:
            raise RegistryError(
                Errors.DENIED, {"repository": repository, "tag": tag, "digest": held, "pushed": digest},
                message=f"{repository}:{tag} already holds {held} and its tags are immutable: "
                        "push the new content under a new tag",
            )
        return taken

    async def release(self, repository: str, tag: str, digest: str) -> None:
        await self.db.execute("DELETE FROM immutable_tags WHERE repository = ? AND tag = ? AND digest = ?",
                              (repository, tag, digest))

    async def _held(self, repository: str, tag: str) -> str | None:
        row = await self.db.fetchone("SELECT digest FROM immutable_tags WHERE repository = ? AND tag = ?",
                                     (repository, tag))
        return row["digest"] if row else None
