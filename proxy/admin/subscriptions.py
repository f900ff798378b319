"""``algomint admin subscriptions …``: webhooks on events and their deliveries."""

from __future__ import annotations

import argparse

from .client import AdminClient
from .output import Output

__all__ = ["register"]

_COLUMNS = ["id", "url", "events", "repositories", "active"]


def register(areas: argparse._SubParsersAction) -> None:
    area = areas.add_parser("subscriptions", help="webhook subscriptions to events")
    commands = area.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="subscriptions").set_defaults(admin_func=_list)

    create = commands.add_parser("create", help="subscribe a URL (prints the secret once)")
    create.add_argument("target", metavar="URL", help="where events are POSTed")
    create.add_argument("--event", action="append", required=True,
                        help="generic.pushed, business.assembled, assembly.failed, full.built or * (repeat)")
    create.add_argument("--repository", action="append", metavar="GLOB", help="repository glob (repeat; default **)")
    create.add_argument("--secret", help="HMAC secret (default: generated)")
    create.add_argument("--description", default="")
    create.set_defaults(admin_func=_create)

    show = commands.add_parser("show", help="one subscription")
    show.add_argument("id")
    show.set_defaults(admin_func=_show)

    for verb, active in (("enable", True), ("disable", False)):
        cmd = commands.add_parser(verb, help=f"{verb} a subscription")
        cmd.add_argument("id")
        cmd.set_defaults(admin_func=_toggle, active=active)

    delete = commands.add_parser("delete", help="delete a subscription")
    delete.add_argument("id")
    delete.set_defaults(admin_func=_delete)

    deliveries = commands.add_parser("deliveries", help="deliveries and attempts, newest first")
    deliveries.add_argument("id")
    deliveries.add_argument("--status", choices=["pending", "delivered", "dead"])
    deliveries.add_argument("--limit", type=int, default=50)
    deliveries.set_defaults(admin_func=_deliveries)

    retry = commands.add_parser("retry", help="queue a (dead-lettered) delivery again")
    retry.add_argument("id")
    retry.add_argument("delivery", type=int)
    retry.set_defaults(admin_func=_retry)


def _list(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.table(list(client.paginate("/subscriptions")), _COLUMNS)
    return 0


def _create(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"url": args.target, "events": args.event, "description": args.description}
    if args.repository:
        body["repositories"] = args.repository
    if args.secret:
        body["secret"] = args.secret
    out.item(client.post("/subscriptions", body))
    return 0


def _show(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.item(client.get(f"/subscriptions/{args.id}"))
    return 0


def _toggle(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.item(client.patch(f"/subscriptions/{args.id}", {"active": args.active}))
    return 0


def _delete(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    client.delete(f"/subscriptions/{args.id}")
    out.message(f"deleted subscription {args.id}")
    return 0


def _deliveries(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    page = client.get(f"/subscriptions/{args.id}/deliveries", status=args.status, limit=max(1, min(args.limit, 500)))
    if out.json_mode:
        out.json(page["items"])
        return 0
    rows = [{**d, "history": " ".join(str(a["status"] or "ERR") for a in d["history"])} for d in page["items"]]
    out.table(rows, ["id", "event_type", "repository", "status", "attempts", "history", "last_error"])
    return 0


def _retry(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    client.post(f"/subscriptions/{args.id}/deliveries/{args.delivery}/retry")
    out.message(f"delivery {args.delivery} queued again")
    return 0
