"""Backing up and restoring a whole cluster: a backup per node plus one cluster manifest.

``create_backup`` through the admin API of any node in cluster mode backs up **every** member
(each into its own ``backup.dir``, under the same name, with the engine's online backup) and
writes ``cluster-<name>.json`` beside this node's backup: the schema, placement and API keys
from etcd and each node's backup summary. The schema must not change while it runs (checked:
the backup fails with ``conflict`` and is taken again).

Restoring (docs/backup.md "Cluster"): stop the nodes, ``engramdb backup restore`` each node's
backup into its data directory, start a fresh etcd, ``engramdb cluster restore MANIFEST`` (this
module's :func:`restore_manifest`: it writes the schema, placement and keys back), start the
nodes. A collection keeps the revision its replicas are named by (``replica_rev``), so the
restored nodes find their replicas although the new etcd counts revisions afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engramdb import validation
from engramdb.cluster.control import ControlPlane, View
from engramdb.cluster.replica import naming_rev
from engramdb.errors import EngramError, FailedPrecondition, InvalidArgument, Unavailable

MANIFEST_FORMAT = 1
BACKUP_TIMEOUT_SECONDS = 3600.0


def manifest_path(backup_dir: Path, name: str) -> Path:
    validation.name(name, "backup name")
    return backup_dir / f"cluster-{name}.json"


def _schema(view: View) -> dict[str, Any]:
    """Schema, placement and keys as they must be written back (with each collection's naming revision)."""
    return {
        "collections": [
            {"tenant": t, "name": c, "value": {**dict(e.value), "replica_rev": naming_rev(e)}}
            for (t, c), e in sorted(view.collections.items())
        ],
        "placement": [
            {"tenant": t, "name": c, "shard": s, "value": dict(e.value)}
            for (t, c, s), e in sorted(view.placement.items())
        ],
        "keys": [{"id": k, "value": dict(e.value)} for k, e in sorted(view.keys.items())],
    }


def _fingerprint(view: View) -> list[Any]:
    return [
        sorted((k, e.mod_revision) for k, e in view.collections.items()),
        sorted((k, e.mod_revision) for k, e in view.placement.items()),
    ]


def _checksum(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def backup_cluster(coordinator: Any, name: str, backup_dir: Path | None) -> dict[str, Any]:
    """Back up every member and write the cluster manifest on this node; returns this node's backup summary."""
    if backup_dir is None:
        raise FailedPrecondition(
            "no backup directory is configured on this node; the operator sets backup.dir (ENGRAMDB_BACKUP__DIR) "
            "on every node of the cluster",
            code="backup_not_configured",
        )
    target = manifest_path(backup_dir, name)
    control: ControlPlane = coordinator.control
    before = control.view
    members = sorted(before.members)
    calls = {n: coordinator.call(n, "Backup", {"name": name}, BACKUP_TIMEOUT_SECONDS) for n in members}
    nodes: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for n, call in calls.items():
        try:
            nodes[n] = call.result(BACKUP_TIMEOUT_SECONDS + 5)["backup"]
        except EngramError as e:
            failed[n] = f"{e.code}: {e.message}"
    if failed:
        raise Unavailable(
            f"the cluster backup {name!r} is incomplete: {len(failed)} node(s) failed ("
            + "; ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
            + "); no cluster manifest was written, fix them and take the backup again under a new name",
            code="backup_incomplete",
            details={"failed": sorted(failed)},
        )
    after = control.view
    if _fingerprint(after) != _fingerprint(before) or sorted(after.members) != members:
        raise FailedPrecondition(
            "collections, placement or members changed while the cluster was backed up; take the backup again "
            "under a new name",
            code="conflict",
        )
    body = {
        "format": MANIFEST_FORMAT,
        "cluster": control.keys.cluster,
        "created_at": time.time(),
        "etcd_revision": before.revision,
        "nodes": nodes,
        **_schema(before),
    }
    data = json.dumps({**body, "sha256": _checksum(body)}, indent=1, sort_keys=True).encode()
    tmp = target.with_name(f".{target.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return dict(nodes[coordinator.node_id]) if coordinator.node_id in nodes else next(iter(nodes.values()))


def read_manifest(path: Path) -> dict[str, Any]:
    """A cluster manifest, checked (format, checksum); CorruptData-like InvalidArgument otherwise."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read the cluster manifest {path}: {e}", code="invalid_manifest") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise InvalidArgument(f"{path} is not a cluster manifest of format {MANIFEST_FORMAT}", code="invalid_manifest")
    body = {k: v for k, v in raw.items() if k != "sha256"}
    if raw.get("sha256") != _checksum(body):
        raise InvalidArgument(f"the cluster manifest {path} is damaged (checksum mismatch)", code="invalid_manifest")
    return raw


def restore_manifest(control: ControlPlane, manifest: Mapping[str, Any], *, force: bool = False) -> dict[str, int]:
    """Write a manifest's schema, placement and keys into etcd (a fresh cluster prefix unless ``force``)."""
    view = control.wait_for(lambda v: v.revision > 0, control.request_timeout * 2)
    if manifest.get("cluster") != control.keys.cluster:
        raise InvalidArgument(
            f"the manifest is of cluster {manifest.get('cluster')!r}, not {control.keys.cluster!r}; pass --name",
            code="invalid_manifest",
        )
    if (view.collections or view.keys) and not force:
        raise FailedPrecondition(
            f"cluster {control.keys.cluster!r} in etcd already has collections or keys; restore into a fresh etcd "
            "(or pass --force to add the manifest's entries to it)",
            code="cluster_not_empty",
        )
    placements: dict[tuple[str, str], dict[int, Any]] = {}
    for p in manifest["placement"]:
        placements.setdefault((p["tenant"], p["name"]), {})[int(p["shard"])] = p["value"]
    n = 0
    for c in manifest["collections"]:
        control.create_collection_placed(
            c["tenant"], c["name"], c["value"], placements.get((c["tenant"], c["name"]), {})
        )
        n += 1
    for k in manifest["keys"]:
        control.put_key(k["id"], k["value"])
    return {"collections": n, "keys": len(manifest["keys"])}
