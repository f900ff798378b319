"""``algomint admin assemblies list|show``: assembly jobs, their plugins, errors and logs."""

from __future__ import annotations

import argparse
from typing import Any

from .client import AdminClient
from .output import Output

__all__ = ["register"]

_COLUMNS = ["id", "chain", "status", "source", "target", "duration_ms", "error"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("assemblies", help="assembly jobs (generic + plugins = business)")
    commands = area.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed"])
    listing.add_argument("--chain")
    listing.add_argument("--repository", help="source or target repository")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(admin_func=_list)

    show = commands.add_parser("show", help="one job with its plugins and log")
    show.add_argument("id", type=int)
    show.set_defaults(admin_func=_show)


def _row(job: dict[str, Any]) -> dict[str, Any]:
    source, target = job["source"], job["target"]
    return {
        **job,
        "source": f"{source['repository']}:{source['tag']}" if source else "(not yours to see)",
        "target": f"{target['repository']}:{target['tag']}" + ("" if job["tag_written"] is not False else " (unchanged)"),
        "error": (job["error"] or {}).get("reason"),
    }


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    page = client.get("/assemblies", status=args.status, chain=args.chain, repository=args.repository,
                      limit=max(1, min(args.limit, 500)))
    if out.json_mode:
        out.json(page["items"])
    else:
        out.table([_row(j) for j in page["items"]], _COLUMNS)
    return 0


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    job = client.get(f"/assemblies/{args.id}")
    if out.json_mode:
        out.json(job)
        return 0
    row = _row(job)
    out.item({k: row[k] for k in ("id", "chain", "status", "trigger", "runs", "source", "target")}
             | {"digest": job["target"]["digest"], "created": job["created"], "duration_ms": job["duration_ms"], "error": row["error"]})
    out.message("\nplugins:")
    out.table(job["plugins"], ["ref", "kind", "digest", "ms"])
    out.message("\nlog:\n" + (job.get("logs") or ""))
    return 0 if job["status"] != "failed" else 1
