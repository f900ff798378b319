"""Chains (business systems): ``{name, match, plugins, params, platforms}``, from a file and the API.

The chains file (``[chains] file``, TOML) is an ordered list of ``[[chain]]`` tables,
human-edited and reloaded on SIGHUP or by API; a reload is all-or-nothing and its errors
name the file, the line of the chain and the field. Chains created through the API live
in the metadata store. Names are unique across both. Every change (an API chain saved or
deleted, the file reloaded) bumps the shared ``chains`` version, and every replica
re-reads its API chains and its chains file when it sees the bump (``refresh``). Either
way, a chain whose plugin references don't resolve to usable plugins is refused.

Every chain has an owner, whose rights it runs with: the principal that last created or
changed it through the API, or ``SYSTEM`` (the operator) for the chains file. The API
checks that the owner may pull everything the chain can read; assembly checks it again,
against the owner's rights at the time, before every run.

``match`` globs are matched against repository names: ``*`` and ``?`` stay inside one
path component, ``**`` crosses components (``generic/*`` matches ``generic/face-recog``).
A chain only ever matches generic packages (``generic/``): never its own output, plugins
or images, and every source has one collision-free business name. A chain with
``platforms`` (``["linux/arm64", "linux/amd64+cuda12"]``) also filters on the generic
package's descriptor ``platform``: a package for another platform (or none) is not
assembled for it, and its job ends ``skipped`` saying why.
"""

from __future__ import annotations

import json
import logging
import re
import time
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.cluster import versions
from proxy.cluster.versions import CHAINS, bump
from proxy.meta import Database
from proxy.service.policy import SYSTEM, Principal

from .platform import Platform, PlatformError

__all__ = [
    "SCHEMA",
    "Chain",
    "ChainError",
    "ChainRegistry",
    "ChainSpec",
    "glob_match",
    "validate_globs",
    "load_chains_file",
]

log = logging.getLogger(__name__)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS chains (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )""",
    # Who a chain runs as (a table of its own so databases from before owners keep working:
    # a chain without a row has no owner and is not run until someone saves it again).
    """CREATE TABLE IF NOT EXISTS chain_owners (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        kind TEXT NOT NULL
    )""",
]

_NAME_RE = r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$"  # one repository name component: business/<name>/…
_GLOB_RE = re.compile(r"^[a-z0-9._\-/*?]+$")

# Checks that every plugin reference is usable; raises with a reason otherwise.
PluginCheck = Callable[[str], Awaitable[None]]


class ChainError(ValueError):
    """A chain that can't be accepted; ``field`` is its dotted location, ``line`` its file line."""

    def __init__(self, message: str, field: str | None = None, *, file: str | None = None, line: int | None = None,
                 chain: str | None = None, conflict: bool = False) -> None:
        self.message, self.field, self.file, self.line, self.chain = message, field, file, line, chain
        self.conflict = conflict  # clashes with an existing chain, as opposed to being invalid
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        if chain:
            where += f"chain {chain!r}: "
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in {"file": self.file, "line": self.line, "chain": self.chain, "field": self.field,
                                  "message": self.message}.items() if v is not None}


class ChainSpec(BaseModel):
    """A chain as declared (file table or API body)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_RE, max_length=64)
    match: list[str] = Field(min_length=1, max_length=100)
    plugins: list[str] = Field(min_length=1, max_length=50)
    params: dict[str, Any] = {}
    # Only packages whose descriptor ``platform`` one of these names selects
    # (``packer.platform``); empty: every package the globs match.
    platforms: list[str] = Field(default=[], max_length=64)

    @field_validator("match")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        return validate_globs(value)

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                Platform.parse(name)
            except PlatformError as exc:
                raise ValueError(str(exc)) from None
        return value

    def takes_platform(self, declared: Any) -> bool:
        """Whether a package whose descriptor says ``platform: declared`` is for this
        chain: always without a filter; never when it declares none or not a valid name."""
        if not self.platforms:
            return True
        try:
            platform = Platform.parse(declared)
        except PlatformError:
            return False
        return any(Platform.parse(name).selects(platform) for name in self.platforms)


@dataclass(frozen=True)
class Chain:
    spec: ChainSpec
    source: Literal["file", "api"]
    created: float | None = None
    updated: float | None = None
    owner: Principal | None = None  # whose rights the chain reads with; None: unknown, never run

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        owner = {"name": self.owner.name, "kind": self.owner.kind} if self.owner else None
        return {**self.spec.model_dump(mode="json"), "source": self.source, "owner": owner,
                "created": self.created, "updated": self.updated}


def validate_globs(value: list[str]) -> list[str]:
    """Repository globs: name characters, ``/``, ``*``, ``**`` and ``?``."""
    for glob in value:
        if not glob or len(glob) > 255 or not _GLOB_RE.match(glob):
            raise ValueError(f"{glob!r} is not a repository glob (lowercase name characters, /, *, ?)")
    return value


@lru_cache(maxsize=1024)
def _compile(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(glob: str, name: str) -> bool:
    return _compile(glob).match(name) is not None


def _validation_error(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    return err["msg"], ".".join(str(p) for p in err["loc"]) or None


def _chain_lines(text: str) -> list[int]:
    """Line numbers of each ``[[chain]]`` header, in order."""
    return [n for n, line in enumerate(text.splitlines(), 1) if re.match(r"^\s*\[\[\s*chain\s*\]\]", line)]


def load_chains_file(path: Path) -> list[tuple[ChainSpec, int | None]]:
    """Parse and validate the chains file (without checking plugins): each chain with the
    line of its ``[[chain]]`` header. ``ChainError`` on any problem."""
    name = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ChainError("file not found", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainError(f"cannot read: {exc}", file=name) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = str(exc), None
        found = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
        if found:
            message, line = message[: found.start()], int(found.group(1))
        elif message.endswith("(at end of document)"):
            message, line = message[: -len(" (at end of document)")] + " at end of file", len(text.splitlines()) or 1
        raise ChainError(f"invalid TOML: {message}", file=name, line=line) from None
    unknown = set(data) - {"chain"}
    if unknown:
        raise ChainError(f"unknown top-level keys {sorted(unknown)}; chains are [[chain]] tables", file=name)
    tables = data.get("chain", [])
    if not isinstance(tables, list):
        raise ChainError("'chain' must be an array of tables ([[chain]])", file=name)
    lines = _chain_lines(text)
    specs: list[tuple[ChainSpec, int | None]] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        line = lines[i] if i < len(lines) else None
        label = table.get("name") if isinstance(table, dict) and isinstance(table.get("name"), str) else f"#{i + 1}"
        try:
            spec = ChainSpec.model_validate(table)
        except ValidationError as exc:
            message, field = _validation_error(exc)
            raise ChainError(message, field, file=name, line=line, chain=label) from None
        if spec.name in seen:
            raise ChainError(f"duplicate chain name (first on line {seen[spec.name]})", "name", file=name,
                             line=line, chain=spec.name)
        seen[spec.name] = line or 0
        specs.append((spec, line))
    return specs


class ChainRegistry:
    """The chains in force: file chains (in file order) then API chains (in creation order)."""

    def __init__(self, db: Database, file: Path | None, check_plugin: PluginCheck, sources: str = "generic/", *,
                 optional: bool = False) -> None:
        self.db = db
        self.file = file
        self.optional = optional  # the default file: absent means no file chains, not an error
        self.check_plugin = check_plugin
        self.sources = sources  # the namespace chains read from; nothing else ever matches
        self._file_chains: list[Chain] = []
        self._api_chains: list[Chain] = []
        self.loaded_at: float | None = None
        self.file_error: ChainError | None = None

    # -- loading --------------------------------------------------------------------
    async def start(self) -> None:
        """Load API chains and the chains file. A file that doesn't parse stops start-up
        (an edit mistake); plugins that don't resolve only reject the file's chains, with
        the error logged and shown by the API, so a deleted plugin tag can't stop the registry."""
        await versions.migrate(self.db)  # changes are announced to other replicas there
        await self._load_api()
        if self.file is None:
            return
        specs = self._read_file()
        try:
            await self._activate(specs)
        except ChainError as exc:
            self.file_error = exc
            log.error("chains file rejected", extra={"error": str(exc)})

    async def _load_api(self) -> None:
        rows = await self.db.fetchall(
            "SELECT c.spec, c.created, c.updated, o.owner, o.kind FROM chains c"
            " LEFT JOIN chain_owners o ON o.name = c.name ORDER BY c.position, c.name")
        self._api_chains = [Chain(ChainSpec.model_validate(json.loads(r["spec"])), "api", r["created"], r["updated"],
                                  Principal(r["owner"], r["kind"]) if r["owner"] else None)
                            for r in rows]

    async def _check_plugins(self, spec: ChainSpec, **where: Any) -> None:
        for i, ref in enumerate(spec.plugins):
            try:
                await self.check_plugin(ref)
            except ChainError:
                raise
            except Exception as exc:  # noqa: BLE001 - the check's reason is the message
                raise ChainError(str(getattr(exc, "reason", None) or exc), f"plugins.{i}", chain=spec.name, **where) from None

    async def _activate(self, specs: list[tuple[ChainSpec, int | None]]) -> None:
        api_names = {c.name for c in self._api_chains}
        for spec, line in specs:
            if spec.name in api_names:
                raise ChainError("a chain with this name was created through the API", "name",
                                 file=str(self.file), line=line, chain=spec.name)
            await self._check_plugins(spec, file=str(self.file), line=line)
        self._file_chains = [Chain(spec, "file", owner=SYSTEM) for spec, _ in specs]
        self.loaded_at = time.time()
        self.file_error = None

    async def reload(self) -> list[Chain]:
        """Re-read the chains file; on any error the chains in force are kept."""
        if self.file is None:
            raise ChainError("no chains file is configured ([chains] file)")
        await self._activate(self._read_file())
        async with self.db.transaction() as tx:
            await bump(tx, CHAINS)  # every replica re-reads its file too
        return list(self._file_chains)

    async def refresh(self) -> None:
        """Another replica changed chains: re-read the API chains and the chains file
        (a file that no longer loads keeps the chains in force, as a reload would)."""
        await self._load_api()
        if self.file is None:
            return
        try:
            await self._activate(self._read_file())
        except ChainError as exc:
            self.file_error = exc
            log.error("chains file rejected", extra={"error": str(exc)})

    def _read_file(self) -> list[tuple[ChainSpec, int | None]]:
        assert self.file is not None
        if self.optional and not self.file.exists():
            return []
        return load_chains_file(self.file)

    def file_status(self) -> dict[str, Any]:
        return {
            "file": str(self.file) if self.file else None,
            "loaded_at": self.loaded_at,
            "chains": len(self._file_chains),
            "error": self.file_error.to_json() if self.file_error else None,
        }

    # -- queries --------------------------------------------------------------------
    def all(self) -> list[Chain]:
        return self._file_chains + self._api_chains

    def get(self, name: str) -> Chain | None:
        return next((c for c in self.all() if c.name == name), None)

    def matches(self, chain: Chain, repository: str) -> bool:
        if not repository.startswith(self.sources):
            return False  # assembly output, plugins and images never trigger assembly
        return any(glob_match(glob, repository) for glob in chain.spec.match)

    def prefixes(self, chain: Chain) -> list[str]:
        """Name prefixes that cover every repository ``chain`` can match (each glob's
        literal start, within the sources namespace), without overlap: a listing can
        walk these ranges instead of every repository."""
        found: set[str] = set()
        for glob in chain.spec.match:
            literal = re.split(r"[*?]", glob, maxsplit=1)[0]
            if literal.startswith(self.sources):
                found.add(literal)
            elif self.sources.startswith(literal):
                found.add(self.sources)
        # Drop prefixes another one covers, or the same repository would be walked twice.
        return sorted(p for p in found if not any(p != q and p.startswith(q) for q in found))

    def matching(self, repository: str) -> list[Chain]:
        return [c for c in self.all() if self.matches(c, repository)]

    # -- API chains -----------------------------------------------------------------
    async def create(self, spec: ChainSpec, owner: Principal) -> Chain:
        """Store an API chain owned by ``owner`` (who the caller checked may read it all)."""
        if self.get(spec.name) is not None:
            raise ChainError("a chain with this name already exists", "name", chain=spec.name, conflict=True)
        await self._check_plugins(spec)
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT COALESCE(MAX(position), 0) + 1 AS next FROM chains")
            changed = await tx.execute(
                "INSERT INTO chains (name, position, spec, created, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (spec.name, row["next"], spec.model_dump_json(), now, now),
            )
            if changed:
                await self._set_owner(tx, spec.name, owner)
                await bump(tx, CHAINS)
        if not changed:
            raise ChainError("a chain with this name already exists", "name", chain=spec.name, conflict=True)
        await self._load_api()
        return self.get(spec.name)  # type: ignore[return-value]

    def _api_chain(self, name: str) -> Chain:
        current = self.get(name)
        if current is None:
            raise KeyError(name)
        if current.source != "api":
            raise ChainError("defined in the chains file: edit the file and reload", "name", chain=name, conflict=True)
        return current

    async def update(self, spec: ChainSpec, owner: Principal) -> Chain:
        """Replace an API chain; whoever changes it owns it from then on."""
        self._api_chain(spec.name)
        await self._check_plugins(spec)
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE chains SET spec = ?, updated = ? WHERE name = ?",
                             (spec.model_dump_json(), time.time(), spec.name))
            await self._set_owner(tx, spec.name, owner)
            await bump(tx, CHAINS)
        await self._load_api()
        return self.get(spec.name)  # type: ignore[return-value]

    async def delete(self, name: str) -> None:
        self._api_chain(name)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM chains WHERE name = ?", (name,))
            await tx.execute("DELETE FROM chain_owners WHERE name = ?", (name,))
            await bump(tx, CHAINS)
        await self._load_api()

    @staticmethod
    async def _set_owner(tx: Any, name: str, owner: Principal) -> None:
        await tx.execute("INSERT INTO chain_owners (name, owner, kind) VALUES (?, ?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, kind = excluded.kind",
                         (name, owner.name, owner.kind))
