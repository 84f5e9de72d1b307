"""The ``engramdb`` command.

    engramdb serve [--config FILE] [--data-dir DIR] [--host H] [--port P] [--grpc-port G]
    engramdb config check [--config FILE] [--data-dir DIR]
    engramdb keys create --data-dir DIR --role ROLE [--tenant T] [--collections a,b] [--expires-in 30d] [--name N]
    engramdb keys list|revoke|rotate --data-dir DIR ...
    engramdb keys generate            (a random string for ENGRAMDB_ADMIN_KEY)
    engramdb backup create DEST --data-dir DIR   (server stopped; a running server: the admin API)
    engramdb backup verify SRC
    engramdb backup restore SRC --data-dir DIR [--force]
    engramdb backup list DIR
    engramdb stats [--data-dir DIR | --url URL ...] [--limit N] [--load] [--json]
    engramdb cluster status [--config FILE] [--etcd URL[,URL]] [--name NAME] [--json]
    engramdb dev cluster [--nodes 3] [--dir ./cluster-data] [--base-port 7878]

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
from pathlib import Path
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
    serve.add_argument(
        "--cluster-etcd",
        metavar="URL[,URL]",
        help="run as a cluster node with these etcd endpoints (sets cluster.enabled and cluster.etcd_endpoints)",
    )
    serve.add_argument("--node-id", metavar="ID", help="this node's id in the cluster (cluster.node_id)")
    serve.add_argument("--peer-port", type=int, metavar="N", help="node-to-node port (cluster.peer_port, default 7880)")

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
    _add_transfer_commands(sub)
    _add_backup_commands(sub)
    _add_erase_commands(sub)
    _add_stats_command(sub)
    _add_cluster_commands(sub)
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
    cluster: dict[str, Any] = {}
    if getattr(args, "cluster_etcd", None) is not None:
        cluster.update(enabled=True, etcd_endpoints=args.cluster_etcd)
    for flag, key in (("node_id", "node_id"), ("peer_port", "peer_port")):
        value = getattr(args, flag, None)
        if value is not None:
            cluster[key] = value
    return {"data_dir": args.data_dir, "server": server or None, "cluster": cluster or None}


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


def _api_key(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The API key named by ``--api-key-env`` (None without it), or what to tell the user when it is unset."""
    if not args.api_key_env:
        return None, None
    import os

    key = os.environ.get(args.api_key_env)
    if not key:
        return None, f"environment variable {args.api_key_env} is not set (it should hold the API key)"
    return key, None


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


# ------------------------------------------------------------ export / import (docs/export-import.md)


def _add_transfer_commands(sub: Any) -> None:
    exp = sub.add_parser("export", help="write a collection to a JSONL or Parquet file")
    exp.add_argument("collection")
    exp.add_argument("out", metavar="OUT", help="output file (written as OUT.partial, renamed when complete)")
    exp.add_argument("--format", choices=("jsonl", "parquet"), help="default: parquet for *.parquet, else jsonl")
    exp.add_argument(
        "--edge-workers", type=int, default=None, help="parallel edge reads (default 1 embedded, 4 over --url)"
    )
    _connection_args(exp)
    imp = sub.add_parser("import", help="load an export into a collection (resumable)")
    imp.add_argument("input", metavar="IN")
    imp.add_argument("--collection", help="target collection (default: the exported name)")
    imp.add_argument("--create", action="store_true", help="create the collection with the exported configuration")
    imp.add_argument("--resume", action="store_true", help="continue an interrupted import from its checkpoint")
    imp.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default IN.checkpoint)")
    imp.add_argument("--batch-size", type=int, default=256, help="records or edges per write (default 256)")
    imp.add_argument(
        "--ttl",
        choices=("keep", "restart"),
        default="keep",
        help="keep: the exported expiry time (default); restart: records with a TTL get it again from now",
    )
    _connection_args(imp)


def _connection_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--url", help="a server's URL; without it --data-dir is opened directly (server stopped)")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (with --url)")
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the server's TLS certificate")
    p.add_argument("--tenant", help="tenant (default: the key's, or 'default')")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


class _TenantHost:
    """The embedded database seen as one tenant's collections (what an import needs of it)."""

    def __init__(self, db: Database, tenant: str):
        self.db, self.tenant = db, tenant

    def get_collection(self, name: str) -> Any:
        return self.db.get_collection(name, tenant=self.tenant)

    def create_collection(self, name: str, dimension: int | None = None, metric: str = "cosine", **kw: Any) -> Any:
        return self.db.create_collection(name, dimension, metric, tenant=self.tenant, **kw)


class _Progress:
    """One self-overwriting status line on stderr, at most a few times a second (only on a terminal)."""

    def __init__(self, verb: str, enabled: bool):
        self.verb, self.enabled, self.last = verb, enabled, 0.0

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        print(f"\r{self.verb} {text}\x1b[K", end="\n" if final else "", file=sys.stderr, flush=True)


def cmd_transfer(args: argparse.Namespace) -> int:

    from engramdb import transfer
    from engramdb.errors import EngramError

    db: Any
    try:
        if args.url:
            from engramdb.client import Client

            key, missing = _api_key(args)
            if missing:
                return _fail(missing)
            db = Client(args.url, key, tenant=args.tenant, verify=args.ca_file or True, timeout=120.0)
            host: Any = db
        else:
            # Importing with --create into a new data directory is how an embedded deployment is seeded.
            db = _open_db(args, create=args.command == "import" and args.create)
            host = _TenantHost(db, args.tenant or "default")
    except (EngramError, OSError, RuntimeError) as e:
        return _fail(e.message if isinstance(e, EngramError) else str(e))
    progress = _Progress(args.command, sys.stderr.isatty() and not args.quiet)
    try:
        if args.command == "export":
            coll = host.get_collection(args.collection)
            fmt = args.format or ("parquet" if str(args.out).endswith(".parquet") else "jsonl")
            workers = args.edge_workers or (4 if args.url else 1)
            total = max(1, coll.count())

            def shown(records: int, edges: int) -> None:
                progress.show(f"{100 * records // total:3d}% {records:,} records, {edges:,} edges")

            write = transfer.export_parquet if fmt == "parquet" else transfer.export_jsonl
            stats = write(coll, args.out, edge_workers=workers, progress=shown)
            progress.show(f"{stats.records:,} records, {stats.edges:,} edges", final=True)
            for note in stats.notes:
                print(f"note: {note}", file=sys.stderr)
            print(f"exported {stats.records} records and {stats.edges} edges of {args.collection} to {args.out}")
        else:

            def shown_import(pos: int, total: int, records: int, edges: int) -> None:
                progress.show(f"{100 * pos // max(1, total):3d}% {records:,} records, {edges:,} edges")

            got = transfer.import_file(
                host,
                args.input,
                collection=args.collection,
                create=args.create,
                resume=args.resume,
                checkpoint=args.checkpoint,
                batch_size=args.batch_size,
                ttl=args.ttl,
                progress=shown_import,
            )
            progress.show(f"{got.records:,} records, {got.edges:,} edges", final=True)
            resumed = f" (resumed after line {got.resumed_from_line})" if got.resumed_from_line else ""
            expired = f", {got.skipped_expired} expired since the export skipped" if got.skipped_expired else ""
            print(f"imported {got.records} records and {got.edges} edges into {got.collection}{resumed}{expired}")
        return 0
    except EngramError as e:
        progress.show("failed", final=True)
        return _fail(e.message)
    except OSError as e:
        return _fail(str(e))
    finally:
        db.close()


# ------------------------------------------------------------ backup (docs/backup.md)


def _add_backup_commands(sub: Any) -> None:
    bk = sub.add_parser("backup", help="back up, verify and restore a data directory")
    bs = bk.add_subparsers(dest="backup_command", required=True)
    create = bs.add_parser(
        "create", help="back up a data directory whose server is stopped (a running server: the admin API)"
    )
    create.add_argument("dest", metavar="DEST", help="the new backup directory (must not exist, or be empty)")
    _config_args(create)
    verify = bs.add_parser("verify", help="check a backup: manifest, version, every file's checksum, its database")
    verify.add_argument("src", metavar="SRC", help="the backup directory")
    restore = bs.add_parser("restore", help="restore a backup as a data directory (server stopped)")
    restore.add_argument("src", metavar="SRC", help="the backup directory")
    _config_args(restore)
    restore.add_argument("--force", action="store_true", help="replace a data directory that is not empty")
    lst = bs.add_parser("list", help="list the backups in a directory (e.g. the server's backup.dir)")
    lst.add_argument("directory", metavar="DIR")
    for p in (create, verify, restore, lst):
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    for p in (create, verify, restore):
        p.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")


class _ByteProgress:
    """A progress bar on stderr for copying or checking bytes: on a terminal, or when asked (--progress)."""

    WIDTH = 30

    def __init__(self, verb: str, enabled: bool):
        self.verb, self.enabled = verb, enabled
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * self.WIDTH)
        mib = 1024 * 1024
        print(
            f"\r{self.verb} [{bar:<{self.WIDTH}}] {100 * frac:5.1f}% {done / mib:,.1f}/{total / mib:,.1f} MiB\x1b[K",
            end="",
            file=sys.stderr,
            flush=True,
        )
        self.shown = True

    def end(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def _backup_line(what: str, info: dict[str, Any]) -> str:
    return (
        f"{what}: {info['files']} files, {info['bytes'] / (1024 * 1024):,.1f} MiB, written by EngramDB "
        f"{info['engramdb_version']} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(info['created_at']))} UTC, "
        f"consistent at changelog sequence {info['seq']}"
    )


def cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engramdb.engine import backup
    from engramdb.errors import EngramError

    def fail(e: EngramError) -> int:
        return _fail(f"{e.message} [{e.code}]")

    if args.backup_command == "list":
        found = backup.list_backups(args.directory)
        if args.json:
            print(json.dumps(found, allow_nan=False))
        for b in [] if args.json else found:
            print(
                _backup_line(b["name"], b)
                if b["status"] == "complete"
                else f"{b['name']}: {b['status']}: {b['problem']}"
            )
        return 0
    progress = _ByteProgress(args.backup_command, args.progress or sys.stderr.isatty())
    try:
        if args.backup_command == "verify":
            info = backup.verify_backup(args.src, progress=progress)
            what = f"backup {args.src} is sound"
        elif args.backup_command == "restore":
            if args.data_dir is None and args.config is None:
                return _fail("name the data directory to restore into: --data-dir DIR (or --config FILE)")
            data_dir = _settings(args).data_dir
            info = backup.restore_backup(args.src, data_dir, force=args.force, progress=progress)
            what = f"restored {args.src} into {data_dir}"
        else:
            db = _open_backup_source(args)
            if isinstance(db, int):
                return db
            try:
                info = backup.create_backup(db, Path(args.dest), progress=progress)
            finally:
                db.close()
            what = f"backup written to {args.dest}"
    except EngramError as e:
        progress.end()
        return fail(e)
    except OSError as e:
        progress.end()
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    progress.end()
    print(json.dumps(info, allow_nan=False) if args.json else _backup_line(what, info))
    return 0


def _open_backup_source(args: argparse.Namespace) -> Database | int:
    """The data directory to back up, opened (a stopped server's); an exit status if it cannot be."""
    from engramdb.engine.database import Database
    from engramdb.errors import EngramError

    settings = _settings(args)
    if not settings.data_dir.is_dir():
        return _fail(f"data directory {settings.data_dir} does not exist")
    try:
        return Database(settings.data_dir, settings, start_background=False)
    except EngramError as e:
        if e.code == "data_dir_locked":
            return _fail(
                f"the data directory {settings.data_dir} is in use by a running server. Ask that server for the "
                "backup instead (POST /v1/admin/backups with the bootstrap admin key; the operator sets backup.dir), "
                "or stop it and run this command again [data_dir_locked]"
            )
        return _fail(f"{e.message} [{e.code}]")


# ------------------------------------------------------------------- erase (docs/security.md, Erasure)


def _add_erase_commands(sub: Any) -> None:
    er = sub.add_parser("erase", help="erase data from a stopped server's data directory for good")
    es = er.add_subparsers(dest="erase_command", required=True)
    tenant = es.add_parser("tenant", help="delete a tenant with its collections and API keys, and erase them from disk")
    _config_args(tenant)
    tenant.add_argument("name", help="the tenant")
    tenant.add_argument("--yes", action="store_true", help="do not ask to type the tenant's name to confirm")
    tenant.add_argument("--json", action="store_true", help="print JSON")


def cmd_erase(args: argparse.Namespace) -> int:
    from engramdb.engine.database import Database
    from engramdb.errors import EngramError
    from engramdb.service.api_keys import KeyStore
    from engramdb.service.executor import erase_tenant

    settings = _settings(args)
    if not settings.data_dir.is_dir():
        return _fail(f"data directory {settings.data_dir} does not exist")
    if not args.yes:
        if not sys.stdin.isatty():
            return _fail(f"erasing tenant {args.name!r} cannot be undone: add --yes to confirm")
        typed = input(f"erase tenant {args.name!r} and every collection and API key of it, for good? type its name: ")
        if typed.strip() != args.name:
            return _fail("not confirmed; nothing was erased")
    try:
        db = Database(settings.data_dir, settings, start_background=False)
    except EngramError as e:
        if e.code == "data_dir_locked":
            return _fail(
                f"the data directory {settings.data_dir} is in use by a running server. Ask that server instead "
                f"(POST /v1/admin/tenants/{args.name}/erase with confirm, or Client.erase_tenant), "
                "or stop it and run this command again [data_dir_locked]"
            )
        return _fail(f"{e.message} [{e.code}]")
    try:
        done = erase_tenant(db, KeyStore(db.metadata), args.name)
    except EngramError as e:
        return _fail(f"{e.message} [{e.code}]")
    finally:
        db.close()
    if args.json:
        print(json.dumps(done))
    else:
        print(f"erased tenant {done['tenant']}: {done['collections']} collections, {done['keys']} API keys")
    return 0


# ------------------------------------------------------------------- stats (docs/observability.md)


def _add_stats_command(sub: Any) -> None:
    st = sub.add_parser(
        "stats", help="memory per component: process, RocksDB, each collection's indexes (a server or a data dir)"
    )
    _connection_args(st)
    st.add_argument("--limit", type=int, default=None, help="collections listed, the largest first (default 100)")
    st.add_argument(
        "--load",
        action="store_true",
        help="without --url: load the collections' indexes first, as a starting server does, to estimate them",
    )
    st.add_argument("--json", action="store_true", help="print JSON")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):,.1f} MiB"


def _print_stats(got: dict[str, Any]) -> None:
    proc, rocks, totals = got.get("process"), got.get("rocksdb"), got["totals"]
    if proc is not None:
        print(f"process   rss {_mib(proc['rss_bytes'])}, peak {_mib(proc['peak_rss_bytes'])}")
    if rocks is not None:
        print(
            f"rocksdb   memtables {_mib(rocks['memtables_bytes'])}, block cache {_mib(rocks['block_cache_bytes'])}"
            f" of {_mib(rocks['block_cache_capacity_bytes'])}, table readers {_mib(rocks['table_readers_bytes'])};"
            f" files: SST {_mib(rocks['sst_files_bytes'])}, WAL {_mib(rocks['wal_bytes'])}"
        )
    print(
        f"{'TENANT':<16} {'COLLECTION':<24} {'RECORDS':>10} {'VECTOR':>12} {'ID MAPS':>12} {'PAYLOAD':>12} {'TEXT':>12}"
    )
    for c in got["collections"]:
        cells = [_mib(c[k]) for k in ("vector_index_bytes", "id_maps_bytes", "payload_index_bytes", "text_index_bytes")]
        shown = f"{c['records']:>10,}" if c["loaded"] else f"{'unloaded':>10}"
        print(f"{c['tenant']:<16} {c['name']:<24} {shown} " + " ".join(f"{x:>12}" for x in cells))
    more = " (more not listed: raise --limit)" if got["more"] else ""
    print(
        f"total     {totals['collections']} collections ({totals['loaded_collections']} loaded); listed: "
        f"{totals['records']:,} records, indexes {_mib(totals['index_bytes'])}{more}"
    )


def cmd_stats(args: argparse.Namespace) -> int:

    from engramdb.errors import EngramError

    limit = args.limit
    try:
        if args.url:
            from engramdb.client import Client

            key, missing = _api_key(args)
            if missing:
                return _fail(missing)
            with Client(args.url, key, tenant=args.tenant, verify=args.ca_file or True, timeout=60.0) as client:
                got = client.stats(limit)
        else:
            db = _open_db(args)
            try:
                if args.load:
                    tenants = [args.tenant] if args.tenant else db.list_tenants()
                    for t in tenants:
                        for cfg in db.list_collections(tenant=t):
                            db.get_collection(cfg.name, tenant=t).load()
                got = db.stats(100 if limit is None else limit, tenant=args.tenant)
            finally:
                db.close()
    except EngramError as e:
        return _fail(f"{e.message} [{e.code}]")
    except (OSError, RuntimeError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(got))
    else:
        _print_stats(got)
    return 0


# ------------------------------------------------------------------- cluster (docs/cluster.md)

STATUS_TIMEOUT = 5.0  # seconds to wait for etcd's first answer


def _add_cluster_commands(sub: Any) -> None:
    cl = sub.add_parser("cluster", help="inspect a cluster through its etcd")
    cs = cl.add_subparsers(dest="cluster_command", required=True)
    st = cs.add_parser("status", help="members, collections, shards and their replica sets, as etcd holds them")
    st.add_argument("--config", metavar="FILE", help="YAML configuration file (its cluster section is used)")
    st.add_argument("--etcd", metavar="URL[,URL]", help="etcd endpoints (default: cluster.etcd_endpoints)")
    st.add_argument("--name", help="the cluster's name (default: cluster.name)")
    st.add_argument("--json", action="store_true", help="print JSON")
    rs = cs.add_parser(
        "restore",
        help="write a cluster backup's schema, placement and API keys into a fresh etcd (docs/backup.md, Cluster)",
    )
    rs.add_argument("manifest", metavar="MANIFEST", help="the cluster-<name>.json a cluster backup wrote")
    rs.add_argument("--config", metavar="FILE", help="YAML configuration file (its cluster section is used)")
    rs.add_argument("--etcd", metavar="URL[,URL]", help="etcd endpoints (default: cluster.etcd_endpoints)")
    rs.add_argument("--name", help="the cluster's name (default: cluster.name)")
    rs.add_argument("--force", action="store_true", help="also when etcd already holds collections or keys")
    dev = sub.add_parser("dev", help="tools for trying EngramDB out")
    ds = dev.add_subparsers(dest="dev_command", required=True)
    dc = ds.add_parser(
        "cluster", help="start a local etcd and N nodes on loopback ports; Ctrl-C stops them (data is kept)"
    )
    dc.add_argument("--nodes", type=int, default=3, help="how many nodes, 1-16 (default 3)")
    dc.add_argument("--dir", default="./cluster-data", help="where etcd's and the nodes' data and logs go")
    dc.add_argument(
        "--base-port",
        type=int,
        default=7878,
        help="node n<i> serves REST on BASE+10*(i-1), gRPC on the next port, node-to-node on the one after; "
        "etcd uses BASE-2 and BASE-1 (default 7878)",
    )


def _iso(ts: Any) -> str | None:
    import datetime

    try:
        return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def cluster_report(view: Any, cluster: str, endpoints: list[str]) -> dict[str, Any]:
    """``cluster status`` as data: members, tenants, collections with each shard's replica set (see --json)."""
    members = []
    for node_id, entry in sorted(view.members.items()):
        v = entry.value
        members.append(
            {
                "node_id": node_id,
                "state": str(v.get("state", "")),
                "address": str(v.get("address", "")),
                "version": str(v.get("version", "")),
                "started_at": _iso(v.get("started_at")),
                "up": True,  # the key exists only while the node's lease is alive
            }
        )
    keys = sorted(set(view.collections) | {(t, c) for t, c, _ in view.placement})
    collections, missing_nodes = [], set()
    for t, c in keys:
        entry = view.collections.get((t, c))
        config = dict(entry.value) if entry is not None else {}
        shards = config.get("shards")
        placed = sorted((s, e.value) for (pt, pc, s), e in view.placement.items() if (pt, pc) == (t, c))
        out_shards = []
        for shard, value in placed:
            replicas, pending = _names(value.get("replicas")), _names(value.get("pending"))
            down = [n for n in replicas + pending if n not in view.members]
            missing_nodes.update(down)
            out_shards.append(
                {"shard": shard, "replicas": replicas, "pending": pending, "epoch": value.get("epoch"), "down": down}
            )
        unplaced = []
        if isinstance(shards, int) and 0 < shards <= 4096:
            have = {s for s, _ in placed}
            unplaced = [s for s in range(shards) if s not in have]
        collections.append(
            {
                "tenant": t,
                "name": c,
                "in_schema": entry is not None,
                "shards": shards,
                "replication_factor": config.get("replication_factor"),
                "placement": out_shards,
                "unplaced_shards": unplaced,
            }
        )
    for node_id in sorted(missing_nodes):
        members.append(
            {"node_id": node_id, "state": None, "address": None, "version": None, "started_at": None, "up": False}
        )
    return {
        "cluster": cluster,
        "etcd_endpoints": endpoints,
        "revision": view.revision,
        "members": members,
        "tenants": sorted(set(view.tenants) | {t for t, _ in keys}),
        "collections": collections,
    }


def _print_cluster_report(r: dict[str, Any]) -> None:
    up = sum(1 for m in r["members"] if m["up"])
    print(f"cluster {r['cluster']!r} (etcd {', '.join(r['etcd_endpoints'])}, revision {r['revision']})")
    print(f"members: {up} up" + (f", {len(r['members']) - up} down" if len(r["members"]) > up else ""))
    if r["members"]:
        print(f"  {'NODE':<20} {'STATE':<9} {'UP':<4} {'ADDRESS':<28} STARTED")
    for m in r["members"]:
        note = "" if m["up"] else "  (holds replicas but has no member key: down or gone)"
        print(
            f"  {m['node_id']:<20} {m['state'] or '-':<9} {'yes' if m['up'] else 'no':<4} "
            f"{m['address'] or '-':<28} {m['started_at'] or '-'}{note}"
        )
    print(f"tenants: {', '.join(r['tenants']) or '-'}")
    print(f"collections: {len(r['collections'])}")
    for c in r["collections"]:
        what = "not in the schema" if not c["in_schema"] else f"{c['shards']} shards"
        print(f"  {c['tenant']}/{c['name']}: {what}, replication factor {c['replication_factor']}")
        for p in c["placement"]:
            replicas = " ".join(n + (" (down)" if n in p["down"] else "") for n in p["replicas"]) or "-"
            pending = " ".join(n + (" (down)" if n in p["down"] else "") for n in p["pending"])
            print(
                f"    shard {p['shard']}: replicas {replicas}"
                + (f", pending {pending}" if pending else "")
                + f", epoch {p['epoch']}"
            )
        if c["unplaced_shards"]:
            print(f"    shards without placement: {', '.join(map(str, c['unplaced_shards']))}")


def _cluster_reader(args: argparse.Namespace) -> tuple[Any, Any] | int:
    """``(control plane, cluster settings)`` of --config/--etcd/--name, started and loaded; an exit status if not."""
    import logging
    import os

    from engramdb import config
    from engramdb.errors import EngramError, Unavailable

    flags = {k: v for k, v in (("etcd_endpoints", args.etcd), ("name", args.name)) if v is not None}
    try:
        c = config.load(args.config, cluster=flags or None).cluster
    except EngramError as e:
        return _fail(e.message)
    try:
        from engramdb.cluster.control import ControlPlane, EtcdTLS
    except ImportError:
        return _fail("the etcd client is not installed: pip install 'engramdb[cluster]'")
    tls = EtcdTLS(*(str(p) if p is not None else None for p in (c.etcd_ca_file, c.etcd_cert_file, c.etcd_key_file)))
    # The watch thread retries a lost etcd with a warning each time; this command reports it once itself.
    logging.getLogger("engramdb.cluster").setLevel(logging.ERROR)
    # A reader only: it watches, never registers, so it never appears as a member.
    cp = ControlPlane(
        cluster=c.name,
        node_id=f"status-{os.getpid()}",
        endpoints=c.etcd_endpoints,
        request_timeout_seconds=2.0,
        tls=tls,
    )
    try:
        cp.start()
        cp.wait_for(lambda v: v.revision > 0, STATUS_TIMEOUT)
    except Unavailable:
        why = (cp.watch_last_error or "").removeprefix("Unavailable: ")
        cp.close()
        return _fail(
            f"etcd did not answer within {STATUS_TIMEOUT:.0f} s: "
            + (why or f"no response from {', '.join(c.etcd_endpoints)}")
            + " (endpoints from --etcd or cluster.etcd_endpoints)"
        )
    return cp, c


def cmd_cluster_restore(args: argparse.Namespace) -> int:
    from engramdb.errors import EngramError

    try:
        from engramdb.cluster.backup import read_manifest, restore_manifest

        manifest = read_manifest(Path(args.manifest))
    except EngramError as e:
        return _fail(e.message)
    got = _cluster_reader(args)
    if isinstance(got, int):
        return got
    cp, c = got
    try:
        done = restore_manifest(cp, manifest, force=args.force)
    except EngramError as e:
        return _fail(e.message)
    finally:
        cp.close()
    nodes = ", ".join(sorted(manifest.get("nodes", {})))
    print(
        f"cluster {c.name}: {done['collections']} collection(s) and {done['keys']} API key(s) restored into etcd. "
        f"Restore each node's backup into its data directory (engramdb backup restore) and start nodes {nodes} "
        "with their node ids."
    )
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    got = _cluster_reader(args)
    if isinstance(got, int):
        return got
    cp, c = got
    view = cp.view
    cp.close()
    report = cluster_report(view, c.name, list(c.etcd_endpoints))
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        _print_cluster_report(report)
    return 0


def _busy_ports(ports: list[int]) -> list[int]:
    import socket

    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def cmd_dev_cluster(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from engramdb.cluster.local import LocalCluster, find_etcd
    from engramdb.config import NON_SETTING_ENV

    if not 1 <= args.nodes <= 16:
        return _fail(f"--nodes must be from 1 to 16, got {args.nodes}")
    if not 3 <= args.base_port <= 65535 - 10 * (args.nodes - 1) - 2:
        return _fail(f"--base-port {args.base_port} leaves no room for etcd below it or {args.nodes} nodes above it")
    try:
        find_etcd()
    except RuntimeError as e:
        return _fail(str(e))
    # Settings in the caller's environment apply to every node; the cluster's own (ports, ids, etcd) win.
    env = {
        k: v for k, v in os.environ.items() if k.upper().startswith("ENGRAMDB_") and k.upper() not in NON_SETTING_ENV
    }
    cluster = LocalCluster(
        Path(args.dir),
        args.nodes,
        admin_key=os.environ.get("ENGRAMDB_ADMIN_KEY") or None,
        env=env,
        default_replication_factor=min(3, args.nodes),
        name="dev",
        base_port=args.base_port,
    )
    ports = [cluster.etcd.client_port, cluster.etcd.peer_port]
    ports += [p for n in cluster.nodes for p in (n.rest_port, n.grpc_port, n.peer_port)]
    busy = _busy_ports(ports)
    if busy:
        return _fail(
            f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use (another server or dev cluster?); "
            "stop it or choose other ports with --base-port"
        )
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return  # already stopping: let the nodes finish
        stopping = True
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        print(f"starting etcd and {args.nodes} nodes of cluster 'dev' under {args.dir}", flush=True)
        print(f"  etcd  {cluster.etcd.endpoint}  (log {cluster.etcd.log_path})")
        print(f"  {'NODE':<5} {'REST':<24} {'GRPC':<17} {'PEER':<17} LOG")
        for n in cluster.nodes:
            print(f"  {n.node_id:<5} {n.url:<24} {n.grpc_target:<17} {n.peer_address:<17} {n.log_path}")
        sys.stdout.flush()
        cluster.start()
        print(f"status: engramdb cluster status --etcd {cluster.etcd.endpoint} --name dev")
        print(f"ready: cluster 'dev' with {args.nodes} nodes; Ctrl-C stops it", flush=True)
        reported: set[str] = set()
        while True:
            time.sleep(1.0)
            for n in cluster.nodes:
                if n.node_id not in reported and not n.alive:
                    reported.add(n.node_id)
                    code = n.proc.returncode if n.proc is not None else None
                    print(f"node {n.node_id} exited with status {code}; its log: {n.log_path}", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping the nodes, then etcd", flush=True)
    except (RuntimeError, OSError) as e:
        status = _fail(f"the dev cluster did not start: {e}")
    finally:
        stopping = True
        cluster.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``engramdb`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "config":
        return cmd_config_check(args)
    if args.command in ("export", "import"):
        return cmd_transfer(args)
    if args.command == "backup":
        return cmd_backup(args)
    if args.command == "erase":
        return cmd_erase(args)
    if args.command == "stats":
        return cmd_stats(args)
    if args.command == "cluster":
        return cmd_cluster_restore(args) if args.cluster_command == "restore" else cmd_cluster_status(args)
    if args.command == "dev":
        return cmd_dev_cluster(args)
    return cmd_keys(args)


if __name__ == "__main__":
    sys.exit(main())
