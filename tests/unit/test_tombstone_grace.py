"""How long tombstones are kept: the erase bound shortens it on one node, never below a cluster's gc grace."""

from __future__ import annotations

from pathlib import Path

from engramdb.config import load as load_settings
from engramdb.engine.database import Database
from engramdb.storage.store import Store


def test_erase_bound_caps_the_grace_on_one_node(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", tombstone_grace_seconds=864000, erase_within_seconds=3600)
    try:
        assert store.grace_ms() == 1800 * 1000
    finally:
        store.close()


def test_a_cluster_replica_keeps_tombstones_for_the_gc_grace(tmp_path: Path) -> None:
    """Purging a tombstone before every replica saw the delete would let a lagging replica bring it back."""
    settings = load_settings(
        data_dir=str(tmp_path),
        storage={"erase_within_seconds": 3600},
        cluster={"enabled": True, "gc_grace_seconds": 7200},
    )
    db = Database(tmp_path, settings, start_background=False)
    try:
        assert db.store.grace_ms() == 7200 * 1000
    finally:
        db.close()
