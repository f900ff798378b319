"""Build the configured backend."""

from __future__ import annotations

from ..config import StorageConfig
from .base import Backend

__all__ = ["create_backend"]


def create_backend(config: StorageConfig) -> Backend:
    if config.backend == "registry":
        from .remote import RegistryBackend

        assert config.url is not None
        return RegistryBackend(
            config.url,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            insecure=config.insecure,
            verify_reads=config.reads_verified,
            connect_timeout=config.connect_timeout,
            first_byte_timeout=config.first_byte_timeout,
            timeout=config.read_timeout,
        )
    from .filesystem import FilesystemBackend

    return FilesystemBackend(
        config.path,
        upload_expiry=config.upload_expiry,
        verify_reads=config.reads_verified,
        upload_quota=config.upload_quota,
    )
