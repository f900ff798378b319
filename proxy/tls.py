"""TLS for ``algomint serve``: one server context from ``[server] tls_cert``/``tls_key``,
re-read in place on SIGHUP so a renewed certificate applies to new connections without
closing the listener or the connections already open."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from .config import ConfigError

__all__ = ["ServerTLS"]

log = logging.getLogger(__name__)


class ServerTLS:
    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(self.context)

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls_cert / server.tls_key: cannot load {self._cert} and {self._key}: {exc}") from None

    def reload(self) -> bool:
        """Re-read the files. A pair that does not load (half-written, key and
        certificate apart) is tried on a scratch context first and the one in use kept."""
        try:
            self._load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
            self._load(self.context)
        except ConfigError as exc:
            log.error("TLS reload failed; keeping the certificate in use", extra={"error": str(exc)})
            return False
        log.info("TLS certificate reloaded", extra={"cert": str(self._cert)})
        return True
