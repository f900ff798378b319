"""Identity and permissions: users, robots, API tokens, grants, registry tokens.

Modules below HTTP (``passwords``, ``tokens``, ``patterns``, ``permissions``, ``store``,
``registry_token``, ``authenticator``) know nothing of aiohttp; ``middleware`` and
``token_endpoint`` are the HTTP side, ``setup`` wires them into the app. Import the
submodules directly: this package stays import-light so ``proxy.config`` can use
``patterns`` without pulling in the HTTP layer."""
