"""EngramDB: one store for the memory of AI applications.

Embedded: ``db = engramdb.open("./data")``. Remote: ``engramdb.connect(url,
api_key=...)`` or ``engramdb.AsyncClient(url, api_key=...)``, with the same
methods, types and errors: all of them implement the Protocols of
:mod:`engramdb.api` (``DatabaseAPI``/``CollectionAPI`` and their asyncio twins),
which hold the reference documentation of every method.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from engramdb._version import __version__ as __version__
from engramdb.api import AsyncCollectionAPI, AsyncDatabaseAPI, CollectionAPI, DatabaseAPI
from engramdb.errors import (
    AlreadyExists,
    CorruptData,
    DimensionMismatch,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    NotFound,
    PermissionDenied,
    RateLimited,
    StorageFull,
    Unauthenticated,
    Unavailable,
)
from engramdb.types import CollectionConfig, Edge, ExtractResult, Hit, Record, ScanPage

if TYPE_CHECKING:
    from engramdb.engine.collection import Collection
    from engramdb.engine.database import Database


def open(path: str | os.PathLike[str], **settings: Any) -> Database:
    """Open (creating if needed) an embedded database in directory ``path``.

    Keyword arguments are settings sections, e.g. ``storage={"sync_writes": False}``.
    """
    from engramdb.config import load
    from engramdb.engine.database import Database

    return Database(path, load(None, data_dir=str(path), **settings))


def __getattr__(name: str) -> Any:
    # Lazy: importing engramdb must stay cheap (cold start), and the client
    # pulls in httpx only when used.
    if name == "connect":
        from engramdb.client.sync import connect

        return connect
    if name == "AsyncClient":
        from engramdb.client.asyncio import AsyncClient

        return AsyncClient
    if name in ("Database", "Collection"):
        from engramdb.engine import collection, database

        return {"Database": database.Database, "Collection": collection.Collection}[name]
    raise AttributeError(f"module 'engramdb' has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncCollectionAPI",
    "AsyncDatabaseAPI",
    "Collection",
    "CollectionAPI",
    "CollectionConfig",
    "CorruptData",
    "Database",
    "DatabaseAPI",
    "DimensionMismatch",
    "Edge",
    "EngramError",
    "ExtractResult",
    "FailedPrecondition",
    "Hit",
    "InvalidArgument",
    "InvalidFilter",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Record",
    "ScanPage",
    "StorageFull",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "open",
]
