"""``algomint admin audit list|verify`` (through the API) and ``algomint audit verify``
(offline, straight from the metadata database named in the config)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from .client import AdminClient
from .output import Output

__all__ = ["register", "add_offline_commands"]

_COLUMNS = ["seq", "time", "actor", "action", "repository", "reference", "outcome", "status", "client"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("audit", help="the audit log")
    commands = area.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="records, newest first")
    listing.add_argument("--actor")
    listing.add_argument("--action", help="an action, or a prefix ending in * (users.*)")
    listing.add_argument("--repository", help="a repository pattern (business/**)")
    listing.add_argument("--outcome", choices=["success", "failure", "denied"])
    listing.add_argument("--since", help="ISO 8601 time (inclusive)")
    listing.add_argument("--until", help="ISO 8601 time (exclusive)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many records (default 50)")
    listing.set_defaults(admin_func=_list)

    verify = commands.add_parser("verify", help="walk the hash chain on the server")
    verify.set_defaults(admin_func=_verify_remote)


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> None:
    query = {k: getattr(args, k) for k in ("actor", "action", "repository", "outcome", "since", "until")}
    rows: list[dict[str, Any]] = []
    for record in client.paginate("/audit", **query, limit=min(args.limit, 500)):
        rows.append(record)
        if len(rows) >= args.limit:
            break
    out.table(rows, _COLUMNS)


def _report(result: dict[str, Any], out: Output) -> int:
    if out.json_mode:
        out.json(result)
    elif result["ok"]:
        out.message(f"audit log intact: {result['records']} records; head {result['head_seq']} {result['head_hash']}")
    else:
        problem = result["problem"]
        print(f"audit log broken at record {problem['seq']} ({problem['kind']}): {problem['message']}", file=sys.stderr)
    return 0 if result["ok"] else 1


def _verify_remote(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    return _report(client.post("/audit/verify"), out)


# -- offline ---------------------------------------------------------------------

def add_offline_commands(commands: argparse._SubParsersAction) -> None:
    """``algomint audit verify``: no server needed, reads the metadata database directly."""
    audit = commands.add_parser("audit", help="the audit log, read straight from the metadata database")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="walk the hash chain; name the first altered, removed or reordered record")
    verify.add_argument("--config", type=Path, help="TOML config file (default: config/algomint.toml if present)")
    verify.add_argument("--anchor", metavar="SEQ:HASH",
                        help="a head printed by an earlier run: it must still be in the log (catches truncation)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify_offline)


def _verify_offline(args: argparse.Namespace) -> int:
    from ..audit.verify import verify_chain
    from ..cli import load_cli_config
    from ..meta import MetadataError, create_database

    config = load_cli_config(args.config)
    if config is None:
        return 2
    anchor = None
    if args.anchor:
        seq, _, digest = args.anchor.partition(":")
        if not (seq.isascii() and seq.isdigit()) or len(digest) != 64:
            print("algomint: --anchor must be SEQ:HASH as printed by verify", file=sys.stderr)
            return 2
        anchor = (int(seq), digest)

    async def run() -> dict[str, Any]:
        db = create_database(config.metadata)
        await db.open()
        try:
            if not await db.has_table("audit_log"):
                result = {"ok": anchor is None, "records": 0, "head_seq": 0, "head_hash": "0" * 64,
                          "problem": None if anchor is None else {"seq": anchor[0], "kind": "removed",
                                                                   "message": "there is no audit log"}}
                return result
            outcome = await verify_chain(db, anchor)
        finally:
            await db.close()
        problem = outcome.problem
        return {"ok": outcome.ok, "records": outcome.records, "head_seq": outcome.head_seq,
                "head_hash": outcome.head_hash,
                "problem": {"seq": problem.seq, "kind": problem.kind, "message": problem.message} if problem else None}

    if config.metadata.url is None and not Path(config.metadata.path).exists():
        print(f"algomint: no metadata database at {config.metadata.path}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run())
    except MetadataError as exc:
        print(f"algomint: {exc}", file=sys.stderr)
        return 2
    return _report(result, Output(json_mode=args.json))
