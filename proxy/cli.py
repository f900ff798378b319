"""The ``algomint`` command line."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Sequence

from .config import Config, ConfigError, load_config
from .logs import setup_logging

__all__ = ["main"]

DEFAULT_CONFIG = Path("config/algomint.toml")


def load_cli_config(path: Path | None, **overrides: object) -> Config | None:
    """The config for a command: ``path``, else config/algomint.toml if present; None
    (after printing why) when it is invalid."""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        return load_config(path, **overrides)
    except ConfigError as exc:
        print(f"algomint: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    overrides = {}
    if args.listen:
        overrides["server__listen"] = args.listen
    config = load_cli_config(args.config, **overrides)
    if config is None:
        return 2
    from .cluster import replica_id

    setup_logging(config.log.level, replica_id(config.server.replica_id))
    from .startup import StartupError, check_listen, one_line

    try:
        check_listen(config.server.host, config.server.port, config.server.listen)
        from .server import serve  # the whole service: loaded once the address is known to be free

        serve(config)
    except ConfigError as exc:  # found while wiring (e.g. an unreadable secret file)
        print(f"algomint: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"algomint: cannot start: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - wiring failed in a way not foreseen: still one line
        print(f"algomint: cannot start: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="algomint", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry service")
    serve.add_argument("--config", type=Path, help="TOML config file (default: config/algomint.toml if present)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.set_defaults(func=_serve)
    from packer.licensing.cli import register as add_license_commands

    add_license_commands(commands)
    from packer.unpack import register as add_unpack_command

    add_unpack_command(commands)
    from .admin import add_admin_parser

    add_admin_parser(commands)
    from .admin.audit import add_offline_commands as add_audit_commands

    add_audit_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        # Ctrl-C at a prompt or during a command: stop, as a shell command does (128 + SIGINT).
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`algomint admin … | head`): its choice, not a failure. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
