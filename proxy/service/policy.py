"""The one policy check made before every registry read and mutation.

Permissions (who may do what) and freezing (what may no longer change) plug in here as
``Policy`` implementations; the HTTP layer calls ``check`` once per request, before the
handler runs, and the service calls it for actions the URL alone can't reveal (a manifest
PUT that overwrites a tag)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, Sequence

__all__ = ["Action", "AllowAll", "Principal", "Policy", "PolicyChain", "Request", "ANONYMOUS", "SYSTEM"]


class Action(str, enum.Enum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"
    MANAGE = "manage"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user, a robot, or anonymous."""

    name: str
    kind: str = "user"  # "user" | "robot" | "anonymous" | "system"
    roles: tuple[str, ...] = ()

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Principal("anonymous", "anonymous")
SYSTEM = Principal("algomint", "system")


@dataclass(frozen=True)
class Request:
    """What a policy decides on."""

    principal: Principal
    action: Action
    repository: str | None = None  # None: registry-wide (catalog, /v2/)
    reference: str | None = None
    extra: dict = field(default_factory=dict)


class Policy(Protocol):
    async def check(self, request: Request) -> None:
        """Return to allow; raise ``RegistryError`` (``UNAUTHORIZED``/``DENIED``) to refuse."""


class AllowAll:
    async def check(self, request: Request) -> None:
        return None


class PolicyChain:
    """Every policy must allow; the first refusal wins."""

    def __init__(self, policies: Sequence[Policy] = ()) -> None:
        self.policies: list[Policy] = list(policies)

    def add(self, policy: Policy) -> None:
        self.policies.append(policy)

    async def check(self, request: Request) -> None:
        for policy in self.policies:
            await policy.check(request)
