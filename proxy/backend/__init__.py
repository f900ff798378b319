"""Storage backends behind one interface: embedded filesystem and remote registry."""

from .base import Backend, BlobInfo, BlobReader, ManifestData, ManifestInfo, SocketSource, UploadStatus

__all__ = ["Backend", "BlobInfo", "BlobReader", "ManifestData", "ManifestInfo", "SocketSource", "UploadStatus"]
