"""``algomint admin catalog``: every algorithm, its versions, and what each became.

One block per generic algorithm: each version (digest, frozen or not), under it the
business package of each system (digest, assembly state, plugin versions) and under that
the full builds per license with their licensed images."""

from __future__ import annotations

import argparse
from typing import Any

from .client import AdminClient
from .output import Output

__all__ = ["register"]


def register(areas: argparse._SubParsersAction) -> None:
    cmd = areas.add_parser("catalog", help="algorithms, versions, business packages and full builds")
    cmd.add_argument("--limit", type=int, default=0, help="at most this many algorithms (default: all)")
    cmd.set_defaults(admin_func=_catalog)


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def _lines(entry: dict[str, Any]) -> list[str]:
    lines = [entry["repository"]]
    if not entry["versions"]:
        lines.append("  (no versions)")
    for version in entry["versions"]:
        frozen = f"frozen by build {version['frozen_by']}" if version["frozen"] else "not frozen"
        profile = " ".join(p for p in (version.get("platform"), version.get("kind")) if p)
        lines.append(f"  {version['version']:<12} {_short(version.get('digest')):<20} {frozen}"
                     + (f"  ({profile})" if profile else ""))
        for pkg in version["packages"]:
            plugins = ", ".join(f"{p['name'] or p['ref']}@{p['version'] or '?'}" for p in pkg["plugins"]) or "-"
            lines.append(f"    {pkg['system']:<18} {pkg['repository']}:{pkg['tag']}  {_short(pkg['digest'])}  "
                         f"{pkg['assembly']['status']}  plugins: {plugins}")
            for build in pkg["full_builds"]:
                images = ", ".join(i["licensed"] for i in build["images"]) or "-"
                lines.append(f"      full build {build['license']:<6} {build['state']:<9} {build['tag'] or '-'}  "
                             f"{_short(build['digest'])}  images: {images}")
    return lines


def _catalog(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    entries = []
    for entry in client.paginate("/catalog", limit=100):
        entries.append(entry)
        if args.limit and len(entries) >= args.limit:
            break
    if out.json_mode:
        out.json(entries)
        return 0
    if not entries:
        out.message("no algorithms")
    for i, entry in enumerate(entries):
        out.message(("\n" if i else "") + "\n".join(_lines(entry)))
    return 0
