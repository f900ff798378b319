"""Running as one of several replicas on one shared metadata store.

A replica has an id (``identity``), claims background work with expiring leases
(``leases``), learns of changes other replicas made from shared version counters
(``versions``), and refuses to share an embedded storage directory (``embedded``)."""

from .embedded import EmbeddedStorageLock, StorageInUse
from .identity import replica_id
from .leases import SCHEMA as LEASES_SCHEMA, Leases
from .versions import SCHEMA as VERSIONS_SCHEMA, VersionWatch, bump

__all__ = [
    "EmbeddedStorageLock", "LEASES_SCHEMA", "Leases", "StorageInUse", "VERSIONS_SCHEMA", "VersionWatch", "bump",
    "replica_id",
]
