"""The ``engramdb`` command.

    engramdb serve [--config FILE] [--data-dir DIR] [--host H] [--port P] [--grpc-port G]
    engramdb config check [--config FILE] [--data-dir DIR]
    engramdb keys create --data-dir DIR --role ROLE [--tenant T] [--collections a,b] [--expires-in 30d] [--name N]
    engramdb keys list|revoke|rotate --data-dir DIR ...
    engramdb keys generate            (a random string for ENGRAMDB_ADMIN_KEY)

``keys`` subcommands work directly on a data directory whose server is
stopped (RocksDB allows one process per directory). Heavy modules are imported
inside the commands so ``engramdb --help`` starts instantly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engramdb.config import Settings
    from engramdb.engine.database import Database

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"15m"``, ``"12h"``, ``"30d"`` or ``"2w"``."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 15m, 12h, 30d or 2w")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engramdb", description="EngramDB: one store for the memory of AI applications.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the REST and gRPC server")
    _config_args(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="REST port (default 7878)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 7879)")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate the configuration and print every problem")
    _config_args(check)

    keys = sub.add_parser("keys", help="manage API keys in a stopped server's data directory")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    create = ks.add_parser("create", help="create a key and print it (shown once)")
    _keys_args(create)
    create.add_argument("--role", choices=("reader", "writer", "admin"), required=True)
    create.add_argument("--tenant", default="default")
    create.add_argument("--collections", help="comma-separated collection scope (default: all)")
    create.add_argument("--expires-in", type=parse_duration, help="lifetime, e.g. 3600, 12h, 30d")
    create.add_argument("--name", help="a label for the key")
    lst = ks.add_parser("list", help="list keys (never their secrets)")
    _keys_args(lst)
    lst.add_argument("--tenant", help="only this tenant's keys")
    revoke = ks.add_parser("revoke", help="revoke a key by id")
    _keys_args(revoke)
    revoke.add_argument("key_id")
    rotate = ks.add_parser("rotate", help="replace a key; the old one keeps working for the grace period")
    _keys_args(rotate)
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=parse_duration, default=86400.0, help="grace period (default 1d)")
    ks.add_parser("generate", help="print a random key suitable for ENGRAMDB_ADMIN_KEY (stores nothing)")
    return p


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    p.add_argument("--data-dir", help="data directory (default ./engramdb-data)")


def _keys_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, as ``config.load`` overrides."""
    server: dict[str, Any] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("grpc_port", "grpc_port")):
        value = getattr(args, flag, None)
        if value is not None:
            server[key] = value
    return {"data_dir": args.data_dir, "server": server or None}


def _settings(args: argparse.Namespace) -> Settings:
    from engramdb import config

    return config.load(args.config, **_overrides(args))


def _server_config(args: argparse.Namespace) -> tuple[Settings, list[str], list[str]]:
    """``(settings, problems, warnings)``: every problem at once, from the file, environment, schema and file system."""
    from engramdb import config
    from engramdb.server.lifecycle import preflight

    got = config.gather(args.config, **_overrides(args))
    # Runs even when the schema has problems, on the valid rest, so one run shows everything to fix.
    problems, warnings = preflight(got.settings, invalid=got.invalid)
    return got.settings, got.problems + problems, warnings


def _fail(message: str, status: int = 1) -> int:
    print(f"engramdb: {message}", file=sys.stderr)
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    from engramdb.config import format_problems
    from engramdb.server.lifecycle import run_server

    settings, problems, _ = _server_config(args)
    if problems:
        return _fail(f"refusing to start, {format_problems(problems)}")
    return run_server(settings)  # checks the file system again, just before opening it


def cmd_config_check(args: argparse.Namespace) -> int:
    from engramdb.config import format_problems

    _, problems, warnings = _server_config(args)
    for w in warnings:
        print(f"warning: {w}")
    if problems:
        print(format_problems(problems), file=sys.stderr)
        return 1
    print("configuration OK")
    return 0


def _open_db(args: argparse.Namespace, *, create: bool = False) -> Database:
    from engramdb.engine.database import Database

    settings = _settings(args)
    # Creating keys before the first start is normal; listing or revoking in a missing directory is a typo.
    if not create and not settings.data_dir.is_dir():
        raise FileNotFoundError(f"data directory {settings.data_dir} does not exist")
    try:
        return Database(settings.data_dir, settings, start_background=False)
    except Exception as e:
        raise RuntimeError(f"cannot open {settings.data_dir} (is a server running on it?): {e}") from e


def _print_new_key(secret: str, info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"key": secret, **info}, allow_nan=False))
        return
    print(secret)
    print(
        f"# id {info['id']}, tenant {info['tenant']}, role {info['role']}"
        + (f", collections {','.join(info['collections'])}" if info.get("collections") else "")
        + (
            f", expires {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(info['expires_at']))} UTC"
            if info.get("expires_at")
            else ""
        )
        + " - store the key now, it is not shown again",
        file=sys.stderr,
    )


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command == "generate":
        import secrets

        from engramdb.service.api_keys import KEY_PREFIX

        print(KEY_PREFIX + secrets.token_urlsafe(32))
        return 0
    from engramdb.errors import EngramError
    from engramdb.service.api_keys import KeyStore

    try:
        db = _open_db(args, create=args.keys_command == "create")
    except (EngramError, OSError, RuntimeError) as e:
        return _fail(str(e))
    try:
        ks = KeyStore(db.metadata)
        if args.keys_command == "create":
            scope = [c.strip() for c in args.collections.split(",") if c.strip()] if args.collections else None
            # 0 is a (refused) lifetime, not "no expiry": only an omitted --expires-in means never.
            expires = time.time() + args.expires_in if args.expires_in is not None else None
            secret, key = ks.create(
                tenant=args.tenant, role=args.role, collections=scope, expires_at=expires, name=args.name
            )
            _print_new_key(secret, key.info(), args.json)
        elif args.keys_command == "list":
            stored = ks.list_keys(args.tenant)
            keys = [k.info() for k in stored]
            if args.json:
                print(json.dumps(keys, allow_nan=False))  # info() is finite; never print bare NaN
            else:
                now = time.time()
                for key, k in zip(stored, keys, strict=True):
                    state = "revoked" if k["revoked"] else "expired" if key.expired(now) else "active"
                    colls = ",".join(k["collections"]) if k["collections"] else "*"
                    print(f"{k['id']}  {k['tenant']:<16} {k['role']:<7} {state:<8} {colls}  {k['name'] or ''}")
        elif args.keys_command == "revoke":
            ks.revoke(args.key_id)
            print(f"revoked {args.key_id}")
        elif args.keys_command == "rotate":
            secret, key = ks.rotate(args.key_id, grace_seconds=args.grace)
            _print_new_key(secret, key.info(), args.json)
        return 0
    except EngramError as e:
        return _fail(e.message)
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``engramdb`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "config":
        return cmd_config_check(args)
    return cmd_keys(args)


if __name__ == "__main__":
    sys.exit(main())
