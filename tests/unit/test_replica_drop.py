"""Replicas are erased only on etcd's positive mark of a deleted collection, never for its absence."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import engramdb
from engramdb.cluster.control import Entry, View
from engramdb.cluster.replica import Replicas, replica_name


def _names(db: Any) -> list[str]:
    return [c.name for c in db.list_collections(tenant="t")]


def test_a_collection_missing_from_etcd_keeps_its_replicas(tmp_path: Path) -> None:
    """An empty or older etcd (after a restore, by mistake) must not make a node delete data."""
    with engramdb.open(tmp_path / "db", storage={"sync_writes": False}) as db:
        name = replica_name("notes", 5, 0)
        db.create_collection(name, 2, tenant="t").upsert({"id": "a", "vector": [1.0, 0.0]})
        replicas = Replicas(db, None, "n1", 10.0)  # type: ignore[arg-type]
        empty = View(revision=100)
        assert replicas.drop_orphans(empty) == 0
        assert _names(db) == [name]
        assert replicas.unknown(empty) == [f"t/{name}"]
        marked = View(revision=101, dropped=MappingProxyType({("t", "notes", 5): Entry({"at": 0.0}, 101, 101)}))
        assert replicas.unknown(marked) == []
        assert replicas.drop_orphans(marked) == 1
        assert _names(db) == []


def test_a_mark_for_another_incarnation_leaves_this_one(tmp_path: Path) -> None:
    """Deleted at revision 5 and created again at 9: the mark of 5 never touches the replicas of 9."""
    with engramdb.open(tmp_path / "db", storage={"sync_writes": False}) as db:
        name = replica_name("notes", 9, 0)
        db.create_collection(name, 2, tenant="t")
        replicas = Replicas(db, None, "n1", 10.0)  # type: ignore[arg-type]
        view = View(
            revision=12,
            collections=MappingProxyType({("t", "notes"): Entry({"shards": 1}, 9, 9)}),
            dropped=MappingProxyType({("t", "notes", 5): Entry({"at": 0.0}, 6, 6)}),
        )
        assert replicas.drop_orphans(view) == 0 and _names(db) == [name]
        assert replicas.unknown(view) == []
