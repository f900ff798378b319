"""``/api/v1/users``: people (passwords) and robots (API tokens only)."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from ...auth.passwords import hash_password, verify_password
from ...auth.state import AUTH_STORE
from ...auth.store import AuthStore, Grant, User, validate_user_name
from ...api.state import CONFIG
from .errors import ApiError
from .grants import GrantOut, RoleName, grant_out
from .principals import iso, principal_of, require_self_or_manager, store_errors
from .router import Access, ApiRouter, Page, page_params, parse_body, next_cursor

__all__ = ["router", "UserOut"]

router = ApiRouter("users")


class UserOut(BaseModel):
    name: str
    kind: Literal["user", "robot"]
    disabled: bool
    description: str
    has_password: bool
    created_at: str
    updated_at: str
    grants: list[GrantOut]


class UserCreate(BaseModel):
    name: str = Field(description="1-64 lowercase letters, digits, '.', '_', '-'")
    kind: Literal["user", "robot"] = "user"
    password: SecretStr | None = Field(None, description="required for users; robots have none (use API tokens)")
    roles: list[RoleName] = Field([], description="each role is granted on its default patterns (see /roles)")
    description: str = Field("", max_length=500)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_user_name(value)

    @model_validator(mode="after")
    def _password_for_users_only(self) -> "UserCreate":
        if self.kind == "user" and self.password is None:
            raise ValueError("a user needs a password")
        if self.kind == "robot" and self.password is not None:
            raise ValueError("robots have no password: create an API token for them")
        return self


class UserUpdate(BaseModel):
    disabled: bool | None = None
    description: str | None = Field(None, max_length=500)


class PasswordChange(BaseModel):
    password: SecretStr
    current_password: SecretStr | None = Field(None, description="required when changing your own password")


async def users_out(store: AuthStore, users: list[User]) -> list[UserOut]:
    grants = await store.grants_of([u.name for u in users])
    return [_user_out(u, grants[u.name]) for u in users]


async def user_out(store: AuthStore, user: User) -> UserOut:
    return (await users_out(store, [user]))[0]


def _user_out(user: User, grants: list[Grant]) -> UserOut:
    return UserOut(name=user.name, kind=user.kind, disabled=user.disabled,  # type: ignore[arg-type]
                   description=user.description, has_password=user.password_hash is not None,
                   created_at=iso(user.created_at) or "", updated_at=iso(user.updated_at) or "",
                   grants=[grant_out(g) for g in grants])


async def _new_hash(request: web.Request, password: SecretStr) -> str:
    """Check the length policy, then hash off the event loop (scrypt takes tens of ms)."""
    value = password.get_secret_value()
    minimum = request.app[CONFIG].auth.password_min_length
    if not minimum <= len(value) <= 1024:
        raise ApiError(422, "request body failed validation",
                       {"fields": [{"field": "password", "message": f"must be {minimum} to 1024 characters"}]})
    return await asyncio.to_thread(hash_password, value)


@router.route("GET", "/users", summary="List users and robots", response=Page[UserOut],
              query={"limit": "page size (1-500)", "cursor": "from the previous page's `next`"}, action=Access.MANAGE)
async def index(request: web.Request) -> web.Response:
    limit, cursor = page_params(request, cursor=str)
    store = request.app[AUTH_STORE]
    users = await store.list_users(limit + 1, cursor)
    items = await users_out(store, users[:limit])
    page = Page[UserOut](items=items, next=next_cursor(request, users[limit - 1].name) if len(users) > limit else None)
    return web.json_response(page.model_dump(mode="json"))


@router.route("POST", "/users", summary="Create a user or robot", body=UserCreate, response=UserOut, status=201, action=Access.MANAGE)
async def create(request: web.Request) -> web.Response:
    body = await parse_body(request, UserCreate)
    password_hash = await _new_hash(request, body.password) if body.password is not None else None
    store = request.app[AUTH_STORE]
    with store_errors():
        user = await store.create_user(body.name, kind=body.kind, password_hash=password_hash,
                                       description=body.description, roles=body.roles,
                                       created_by=principal_of(request).name)
    return web.json_response((await user_out(store, user)).model_dump(mode="json"), status=201)


@router.route("GET", "/users/{user}", summary="Show a user (yourself, or any as admin)", action=Access.SIGNED_IN,
              response=UserOut)
async def show(request: web.Request) -> web.Response:
    name = request.match_info["user"]
    await require_self_or_manager(request, name)
    store = request.app[AUTH_STORE]
    with store_errors():
        user = await store.get_user(name)
    return web.json_response((await user_out(store, user)).model_dump(mode="json"))


@router.route("PATCH", "/users/{user}", summary="Disable, enable or describe a user", body=UserUpdate,
              response=UserOut, action=Access.MANAGE)
async def update(request: web.Request) -> web.Response:
    body = await parse_body(request, UserUpdate)
    store = request.app[AUTH_STORE]
    with store_errors():
        user = await store.update_user(request.match_info["user"], disabled=body.disabled,
                                       description=body.description)
    return web.json_response((await user_out(store, user)).model_dump(mode="json"))


@router.route("DELETE", "/users/{user}", summary="Delete a user with its tokens and grants", status=204, action=Access.MANAGE)
async def delete(request: web.Request) -> web.Response:
    name = request.match_info["user"]
    if name == principal_of(request).name:
        raise ApiError(409, "you cannot delete your own account")
    with store_errors():
        await request.app[AUTH_STORE].delete_user(name)
    return web.Response(status=204)


@router.route("PUT", "/users/{user}/password", summary="Set a password (your own with the current one, or any as admin)",
              action=Access.SIGNED_IN, body=PasswordChange, status=204)
async def set_password(request: web.Request) -> web.Response:
    name = request.match_info["user"]
    body = await parse_body(request, PasswordChange)
    principal = await require_self_or_manager(request, name)
    store = request.app[AUTH_STORE]
    with store_errors():
        user = await store.get_user(name)
    if user.kind == "robot":
        raise ApiError(409, "robots have no password: create an API token for them")
    if principal.name == name:
        current = body.current_password.get_secret_value() if body.current_password else ""
        if not await asyncio.to_thread(verify_password, current, user.password_hash):
            raise ApiError(403, "the current password is wrong")
    new_hash = await _new_hash(request, body.password)
    with store_errors():
        await store.update_user(name, password_hash=new_hash)
    return web.Response(status=204)
