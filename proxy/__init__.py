"""algomint: an OCI distribution service that assembles and delivers algorithm packages."""

__version__ = "0.1.0"
