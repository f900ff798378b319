"""Shutdown closes the metadata store only after every shielded manifest write ended.

A manifest write whose client went away runs on (shielded); a stop arriving meanwhile
must wait for it, or its journal entry, referrers row and event are cut off by a closed
store (``ValueError('no active connection')``, a task exception nobody retrieves)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from proxy.backend.filesystem import FilesystemBackend
from proxy.app import create_app
from proxy.meta import create_database
from proxy.oci import mediatypes as mt
from tests.conftest import make_config
from tests.support.oci import descriptor, digest_of, image_manifest, push_blob


class _SlowManifestStore(FilesystemBackend):
    """Holds every manifest write until ``release`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def put_manifest(self, *args, **kwargs) -> None:
        self.entered.set()
        await self.release.wait()
        await super().put_manifest(*args, **kwargs)


async def test_stop_waits_for_a_shielded_manifest_write(aiohttp_client, tmp_path: Path, repo: str) -> None:
    config = make_config(tmp_path, "filesystem")
    backend = _SlowManifestStore(tmp_path / "storage")
    client = await aiohttp_client(create_app(config, backend=backend))
    unhandled: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))

    layer = b"shutdown layer"
    await push_blob(client, repo, b"{}")
    await push_blob(client, repo, layer)
    subject = image_manifest(b"{}", [layer])
    await push_blob(client, repo, b"{}")
    # A referrer: its stored manifest needs a referrers row, written after the backend.
    manifest = image_manifest(b"{}", [layer], subject=descriptor(subject, mt.OCI_MANIFEST))
    put = asyncio.create_task(client.put(f"/v2/{repo}/manifests/v1", data=manifest,
                                         headers={"Content-Type": mt.OCI_MANIFEST}))
    await asyncio.wait_for(backend.entered.wait(), 30)
    put.cancel()  # the client goes away; the write is shielded and goes on
    with contextlib.suppress(asyncio.CancelledError):
        await put
    # The stop arrives while the write is held; let it go once the stop is under way.
    loop.call_later(0.3, backend.release.set)
    await client.close()
    assert backend.release.is_set()

    db = create_database(config.metadata)
    await db.open()
    try:
        pending = await db.fetchall("SELECT * FROM manifest_changes")
        referrers = await db.fetchall("SELECT * FROM referrers WHERE repo = ?", (repo,))
    finally:
        await db.close()
    assert pending == []  # the journal entry was closed: nothing left for a replay
    assert [r["digest"] for r in referrers] == [digest_of(manifest)]
    assert [c for c in unhandled if "exception" in c] == []
