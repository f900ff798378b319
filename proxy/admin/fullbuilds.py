"""``algomint admin full-build create|show|list``: licensed full builds from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .client import AdminClient, AdminError
from .output import Output

__all__ = ["register"]

_COLUMNS = ["id", "package", "license", "state", "progress", "created", "error"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("full-build", help="licensed full builds of business packages")
    commands = area.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="start a full build")
    create.add_argument("package", help="business/<system>/<algorithm>:<version>")
    create.add_argument("--license", required=True, help="license kind (full, soft, hard, …)")
    create.add_argument("--wait", action="store_true", help="follow the build with a progress bar until it ends")
    create.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")
    create.set_defaults(admin_func=_create)

    show = commands.add_parser("show", help="a build with its per-layer progress")
    show.add_argument("id")
    show.add_argument("--wait", action="store_true", help="follow it until it ends")
    show.set_defaults(admin_func=_show)

    listing = commands.add_parser("list", help="builds, newest first")
    listing.add_argument("--package", help="only builds of this package")
    listing.add_argument("--state", choices=["queued", "running", "succeeded", "failed"])
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(admin_func=_list)


def _row(build: dict[str, Any]) -> dict[str, Any]:
    total = build.get("bytes_total") or 0
    progress = f"{100 * build['bytes_done'] // total}%" if total else "-"
    return {**build, "progress": progress, "created": build["created_at"]}


def _bar(build: dict[str, Any], width: int = 30) -> str:
    total, done = build.get("bytes_total") or 0, build.get("bytes_done") or 0
    fraction = done / total if total else (1.0 if build["state"] == "succeeded" else 0.0)
    filled = int(width * fraction)
    return (f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% "
            f"{done / 2**20:8.1f}/{total / 2**20:.1f} MiB  {build['state']:<9}")


def _line(build: dict[str, Any]) -> str:
    """One progress line, for logs and pipes (no carriage returns)."""
    total, done = build.get("bytes_total") or 0, build.get("bytes_done") or 0
    percent = f"{100 * done // total}%" if total else "-"
    return f"full build {build['id']}: {build['state']} {percent} ({done}/{total} bytes)"


class _Progress:
    """A redrawn bar on a terminal; elsewhere a line whenever state or whole percent changes."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def show(self, build: dict[str, Any], final: bool = False) -> None:
        if self.tty:
            print(_bar(build), end="\n" if final else "", file=sys.stderr, flush=True)
            return
        line = _line(build)
        if line != self.last:
            print(line, file=sys.stderr, flush=True)
            self.last = line


def _follow(client: AdminClient, out: Output, build: dict[str, Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout if timeout else None
    progress = _Progress()
    while build["state"] in ("queued", "running"):
        progress.show(build)
        if deadline is not None and time.monotonic() > deadline:
            progress.show(build, final=True)
            raise AdminError(0, "timeout", f"full build {build['id']} still {build['state']} after {timeout:g}s")
        time.sleep(0.5)
        build = client.get(f"/full-builds/{build['id']}")
    progress.show(build, final=True)
    _print(out, build)
    return 0 if build["state"] == "succeeded" else 1


def _print(out: Output, build: dict[str, Any]) -> None:
    if out.json_mode:
        out.json(build)
        return
    summary = {k: build.get(k) for k in ("id", "package", "license", "state", "bytes_done", "bytes_total", "error")}
    if build.get("result"):
        summary["result"] = build["result"]["tag"]
        summary["digest"] = build["result"]["digest"]
    out.item(summary)
    for warning in build.get("warnings") or []:
        out.message(f"warning: {warning}")
    if build.get("layers"):
        out.message("")
        out.table(build["layers"], ["image", "position", "state", "bytes_done", "size", "encrypted_files"])


def _create(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    build = client.post("/full-builds", {"package": args.package, "license": args.license})
    if args.wait:
        return _follow(client, out, build, args.timeout)
    if out.json_mode:
        out.json(build)
    else:
        out.message(f"full build {build['id']} {build['state']}")
    return 0


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    build = client.get(f"/full-builds/{args.id}")
    if args.wait:
        return _follow(client, out, build, 0)
    _print(out, build)
    return 0


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    rows = []
    for build in client.paginate("/full-builds", package=args.package, state=args.state, limit=min(args.limit, 500)):
        rows.append(_row(build))
        if len(rows) >= args.limit:
            break
    out.table(rows, _COLUMNS)
    return 0
