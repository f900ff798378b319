"""``algomint admin gc [--dry-run]``: garbage-collect the embedded storage from the shell."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]

_COLUMNS = ["id", "status", "dry_run", "trigger", "actor", "started", "blobs_removed", "bytes_reclaimed"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("gc", help="garbage-collect the embedded storage (admin)")
    area.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    area.add_argument("--no-wait", action="store_true", help="start the run and return")
    area.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds")
    area.add_argument("--list", action="store_true", help="list recent runs instead of starting one")
    area.set_defaults(admin_func=_gc)


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {"id": run["id"], "status": run["status"], "dry_run": run["dry_run"], "phase": run["phase"],
            **run["counts"], "error": run.get("error")}


def _gc(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    if args.list:
        rows = []
        for run in client.get("/gc", limit=20)["items"]:
            started = run["started_at"]
            rows.append({**run, **run["counts"], "started": started})
        out.table(rows, _COLUMNS)
        return 0
    run = client.post("/gc", {"dry_run": args.dry_run})
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while not args.no_wait and run["status"] == "running":
        if deadline is not None and time.monotonic() > deadline:
            raise AdminError(0, "timeout", f"garbage collection {run['id']} still running after {args.timeout:g}s")
        time.sleep(0.5)
        run = client.get(f"/gc/{run['id']}")
    if out.json_mode:
        out.json(run)
    else:
        out.item(_summary(run))
    return 0 if run["status"] != "failed" else 1
