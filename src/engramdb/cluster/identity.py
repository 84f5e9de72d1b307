"""A node's identity: its id, kept in its data directory, and the HLC node number derived from it.

A data directory holds one node's replicas, so it belongs to one node id for good: the id is
written into ``<data_dir>/cluster-node-id`` at the first start (generated when the operator did
not choose one) and every later start must agree with it. Starting a copied or reused directory
under another id would make two nodes claim the same replicas, or a node serve data the cluster
placed elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

import xxhash

from engramdb import validation
from engramdb.errors import FailedPrecondition

NODE_ID_FILE: Final = "cluster-node-id"
_MAX_FILE_BYTES = 1024  # a node id is at most 128 characters; anything longer is not one of ours


def resolve_node_id(data_dir: Path, configured: str | None) -> str:
    """This node's id: the one stored in ``data_dir``, else ``configured``, else a new ``n-<8 hex>``.

    The first start stores it (file mode 0600, written atomically). FailedPrecondition
    ``node_id_mismatch`` when ``configured`` differs from the stored id; ``node_id_unreadable`` when
    the file is not a node id.
    """
    if configured is not None:
        validation.name(configured, "cluster.node_id")
    path = Path(data_dir) / NODE_ID_FILE
    stored = _read(path)
    if stored is None:
        candidate = configured if configured is not None else "n-" + secrets.token_hex(4)
        stored = _create(path, candidate)
    if configured is not None and configured != stored:
        raise FailedPrecondition(
            f"the data directory {data_dir} belongs to node {stored!r}, not {configured!r}: a data directory belongs "
            f"to one node. Start node {stored!r} on it (set cluster.node_id to {stored!r} or leave it unset), or give "
            f"node {configured!r} its own data directory",
            code="node_id_mismatch",
            details={"stored": stored, "configured": configured},
        )
    return stored


def hlc_node(node_id: str) -> int:
    """The node number (1..65535) this node writes into its HLC versions; the same for the same id, always."""
    return xxhash.xxh3_64_intdigest(validation.name(node_id, "node id").encode()) % 65535 + 1


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    text = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_FILE_BYTES or not validation.NAME_RE.fullmatch(text):
        raise FailedPrecondition(
            f"{path} does not hold a node id ({validation.NAME_RULE}); it is written by EngramDB at a node's "
            "first start. Restore it from a backup of this data directory, or write this node's id into it",
            code="node_id_unreadable",
        )
    return text


def _create(path: Path, node_id: str) -> str:
    """Write ``node_id`` into ``path`` unless it exists; the id the file holds afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(node_id.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            # A hard link never replaces an existing file: two starts racing keep the first id.
            os.link(tmp, path)
        except FileExistsError:
            stored = _read(path)
            assert stored is not None
            return stored
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return node_id


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
