"""HTTP layer: the OCI distribution API (``/v2``), operations endpoints, middlewares."""
