"""Roles, grants and the permission policy: who may pull, push, delete or manage what.

A grant gives one subject (user or robot) one role on one repository pattern; the role
says which actions. What a principal holds on a repository is the union over its
grants whose pattern matches, plus the anonymous-pull patterns, minus pushes into the
system namespaces (only algomint writes ``business/**``). Registry-wide actions (the
catalog, the management API) need a grant on ``**``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

from ..oci.errors import Errors, RegistryError
from ..service.policy import Action, Principal, Request
from .patterns import compile_pattern
from .registry_token import Scope

__all__ = [
    "Role", "ROLES", "Permissions", "PermissionPolicy", "IdentitySource", "TokenPrincipal",
    "REGISTRY_ACTIONS", "CATALOG_ACCESS", "grant_access",
]

# Actions a registry token can carry (manage is for the management API only).
REGISTRY_ACTIONS = (Action.PULL, Action.PUSH, Action.DELETE)
CATALOG_ACCESS = ("registry", "catalog", "*")


@dataclass(frozen=True)
class Role:
    name: str
    actions: frozenset[Action]
    defaults: tuple[str, ...]  # patterns granted when a user is created with this role
    description: str


ROLES: Mapping[str, Role] = {
    role.name: role
    for role in (
        Role("admin", frozenset(Action), ("**",), "everything: all repositories, users, tokens, grants, audit"),
        Role("algorithm-dev", frozenset(REGISTRY_ACTIONS), ("generic/**", "images/**"),
             "pushes generic algorithm packages and runtime images"),
        Role("business-dev", frozenset(Action), ("plugins/**", "business/**"),
             "pushes plugins; manages chains and full builds of business packages"),
        Role("consumer", frozenset({Action.PULL}), ("business/**",), "pulls delivered business packages"),
    )
}


@dataclass(frozen=True)
class TokenPrincipal(Principal):
    """An authenticated principal, with how it proved itself.

    ``access`` is set for registry bearer tokens: the (type, name, action) triples the
    token carries; the policy then allows only what both the token and the current
    grants allow. ``None`` means not restricted by a token (Basic, API token)."""

    method: str = "basic"  # "basic" | "api_token" | "bearer"
    token_id: str | None = None  # the API token used, directly or to obtain a bearer token
    access: frozenset[tuple[str, str, str]] | None = field(default=None, compare=False)


class Permissions:
    """What a set of (role, pattern) grants allows, with the server-wide rules applied."""

    def __init__(
        self,
        grants: Iterable[tuple[str, str]],
        anonymous_pull: Sequence[str] = (),
        system_namespaces: Sequence[str] = (),
    ) -> None:
        self._rules: list[tuple[re.Pattern[str], frozenset[Action]]] = [
            (compile_pattern(pattern), ROLES[role].actions) for role, pattern in grants if role in ROLES
        ]
        self._rules += [(compile_pattern(p), frozenset({Action.PULL})) for p in anonymous_pull]
        self._system = [compile_pattern(p) for p in system_namespaces]
        self._wide = frozenset().union(*(ROLES[r].actions for r, p in grants if p == "**" and r in ROLES))
        # The patterns themselves, for questions about whole globs (``coverage``), not one name.
        self._pull = tuple(p for r, p in grants if r in ROLES and Action.PULL in ROLES[r].actions) + tuple(anonymous_pull)

    def actions(self, repository: str) -> frozenset[Action]:
        held: frozenset[Action] = frozenset()
        for regex, actions in self._rules:
            if regex.fullmatch(repository):
                held |= actions
        if Action.PUSH in held and any(regex.fullmatch(repository) for regex in self._system):
            held -= {Action.PUSH}
        return held

    def pull_patterns(self) -> tuple[str, ...]:
        """Every pattern this principal may pull from (its grants and anonymous pull)."""
        return self._pull

    def registry_wide(self, action: Action) -> bool:
        """True when a grant on ``**`` includes ``action`` (catalog, management API)."""
        return action in self._wide


class IdentitySource(Protocol):
    async def permissions_of(self, principal: Principal) -> Permissions | None:
        """The principal's current permissions; None when it no longer exists or is disabled."""


class PermissionPolicy:
    """The ``Policy`` deciding from users' grants; UNAUTHORIZED asks for credentials, DENIED refuses."""

    def __init__(self, identities: IdentitySource) -> None:
        self.identities = identities

    async def check(self, request: Request) -> None:
        principal = request.principal
        if principal.kind == "system":
            return
        perms = await self.identities.permissions_of(principal)
        if perms is None:
            raise RegistryError(Errors.UNAUTHORIZED, message="credentials are no longer valid")
        access = principal.access if isinstance(principal, TokenPrincipal) else None
        if access is not None and request.action is Action.MANAGE:
            # Registry tokens are scoped to registry actions; management needs an API token or Basic.
            raise RegistryError(Errors.DENIED, {"action": "manage"},
                                message="registry tokens do not grant management; use an API token")
        if request.repository is None:
            self._registry_wide(request, perms, access)
            return
        detail = {"repository": request.repository, "action": request.action.value}
        if request.action not in perms.actions(request.repository):
            if principal.is_anonymous:
                raise RegistryError(Errors.UNAUTHORIZED, detail)
            raise RegistryError(Errors.DENIED, detail)
        if access is not None and ("repository", request.repository, request.action.value) not in access:
            # The user holds it but this token wasn't issued for it: ask for a new token.
            raise RegistryError(Errors.UNAUTHORIZED, detail, message="token does not cover this scope")

    @staticmethod
    def _registry_wide(request: Request, perms: Permissions, access: frozenset | None) -> None:
        route = request.extra.get("route")
        if request.principal.is_anonymous:
            raise RegistryError(Errors.UNAUTHORIZED)
        if route == "v2.base":  # any authenticated principal may probe the API
            return
        detail = {"action": request.action.value, "scope": "registry-wide"}
        if not perms.registry_wide(request.action):
            raise RegistryError(Errors.DENIED, detail)
        if route == "v2.catalog" and access is not None and CATALOG_ACCESS not in access:
            raise RegistryError(Errors.UNAUTHORIZED, detail, message="token does not cover this scope")


def grant_access(perms: Permissions, scopes: Iterable[Scope]) -> list[dict[str, object]]:
    """The spec's down-scoping: for each requested scope, the requested actions the
    principal holds (``*`` = all it holds); scopes it holds nothing on are left out."""
    granted: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        kind, name, wanted = scope.type, scope.name, set(scope.actions)
        if kind == "repository":
            held = [a.value for a in REGISTRY_ACTIONS if a in perms.actions(name)]
            actions = [a for a in held if "*" in wanted or a in wanted]
        elif (kind, name) == CATALOG_ACCESS[:2] and "*" in wanted and perms.registry_wide(Action.PULL):
            actions = ["*"]
        else:
            continue
        merged = granted.setdefault((kind, name), [])
        merged.extend(a for a in actions if a not in merged)
    return [{"type": k, "name": n, "actions": a} for (k, n), a in granted.items() if a]
