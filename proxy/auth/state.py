"""Typed app state for authentication (``web.AppKey``)."""

from __future__ import annotations

from aiohttp import web

from .authenticator import Authenticator
from .registry_token import TokenSigner
from .store import AuthStore

__all__ = ["AUTH", "AUTH_STORE", "SIGNER"]

AUTH_STORE = web.AppKey("auth_store", AuthStore)  # always present: users can be managed before auth is on
AUTH = web.AppKey("auth", Authenticator)  # present when [auth] enabled
SIGNER = web.AppKey("auth_signer", TokenSigner)  # present when [auth] enabled
