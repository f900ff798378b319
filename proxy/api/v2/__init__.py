"""The OCI distribution-spec v1.1 endpoints, one module per area."""

from __future__ import annotations

from . import base, blobs, listings, manifests, uploads

HANDLERS = {
    "v2.base": base.version_check,
    "v2.catalog": listings.catalog,
    "v2.tags": listings.tags,
    "v2.manifest.get": manifests.get_manifest,
    "v2.manifest.put": manifests.put_manifest,
    "v2.manifest.delete": manifests.delete_manifest,
    "v2.upload.start": uploads.start_upload,
    "v2.upload.status": uploads.upload_status,
    "v2.upload.patch": uploads.patch_upload,
    "v2.upload.finish": uploads.finish_upload,
    "v2.upload.cancel": uploads.cancel_upload,
    "v2.blob.get": blobs.get_blob,
    "v2.blob.delete": blobs.delete_blob,
    "v2.referrers": listings.referrers,
}

__all__ = ["HANDLERS"]
