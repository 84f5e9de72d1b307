"""The REST routes: one row per service operation (docs/api-contract.md).

Routes are data, not code: the app registers one generic endpoint per row and
the OpenAPI document is generated from the same rows and the service's
models, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from engramdb.service import models


@dataclass(frozen=True)
class RouteSpec:
    """How one operation is exposed: method, path, body model, result model and success status.

    ``path`` uses Starlette syntax (``{id:path}`` lets record ids contain ``/``
    once percent-decoded); ``query`` names the query parameters it accepts.
    """

    op: str
    method: str
    path: str
    body: type[BaseModel] | None
    result: type[BaseModel]
    summary: str
    status: int = 200
    query: tuple[str, ...] = ()
    tag: str = "records"
    errors: tuple[tuple[str, str], ...] = ()  # (status, description) beyond the common ones

    @property
    def openapi_path(self) -> str:
        return self.path.replace(":path}", "}")


_C = "/v1/collections/{coll}"
_R = _C + "/records"
# Statuses only operations that call an external model can answer.
_UPSTREAM_ERRORS = (
    ("502", "The model endpoint failed or its answer was rejected (code upstream_error, invalid_extraction)"),
    ("504", "The model endpoint did not answer within its timeout (code deadline_exceeded)"),
)

ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "create_collection",
        "POST",
        "/v1/collections",
        models.CreateCollectionBody,
        models.CollectionResult,
        "Create a collection",
        status=201,
        tag="collections",
    ),
    RouteSpec(
        "list_collections",
        "GET",
        "/v1/collections",
        None,
        models.CollectionsResult,
        "List the tenant's collections",
        tag="collections",
    ),
    RouteSpec(
        "get_collection",
        "GET",
        _C,
        None,
        models.CollectionInfoResult,
        "A collection and its record count",
        query=("consistency",),
        tag="collections",
    ),
    RouteSpec(
        "delete_collection",
        "DELETE",
        _C,
        None,
        models.DeletedCollectionResult,
        "Delete a collection with all its data",
        tag="collections",
    ),
    RouteSpec(
        "alter_collection",
        "PATCH",
        _C,
        models.AlterCollectionBody,
        models.AlterCollectionResult,
        "Change indexed fields, default TTL or ef_search online",
        tag="collections",
    ),
    RouteSpec("upsert", "POST", _R, models.UpsertBody, models.VersionsResult, "Insert or replace records"),
    RouteSpec("get", "POST", _R + "/get", models.GetBody, models.RecordsResult, "Get records by id"),
    RouteSpec(
        "get_one",
        "GET",
        _R + "/{id:path}",
        None,
        models.RecordResult,
        "Get one record",
        query=("include", "consistency"),
    ),
    RouteSpec(
        "patch", "PATCH", _R + "/{id:path}", models.PatchBody, models.RecordResult, "Merge changes into a record"
    ),
    RouteSpec(
        "delete", "POST", _R + "/delete", models.DeleteBody, models.DeletedResult, "Delete records by id or filter"
    ),
    RouteSpec(
        "delete_one",
        "DELETE",
        _R + "/{id:path}",
        None,
        models.DeletedResult,
        "Delete one record",
        query=("consistency",),
    ),
    RouteSpec("scan", "POST", _R + "/scan", models.ScanBody, models.ScanResult, "Page through records in id order"),
    RouteSpec("count", "POST", _C + "/count", models.CountBody, models.CountResult, "Count records"),
    RouteSpec(
        "refresh_ttl",
        "POST",
        _R + "/refresh_ttl",
        models.RefreshTtlBody,
        models.RefreshedResult,
        "Restart records' TTL clock",
    ),
    RouteSpec("search", "POST", _C + "/search", models.SearchBody, models.HitsResult, "Vector, text or hybrid search"),
    RouteSpec(
        "list_namespaces",
        "POST",
        _C + "/namespaces",
        models.ListNamespacesBody,
        models.NamespacesResult,
        "List namespace paths",
    ),
    RouteSpec(
        "link", "POST", _C + "/edges", models.LinkBody, models.VersionsResult, "Create or replace edges", tag="graph"
    ),
    RouteSpec(
        "unlink", "POST", _C + "/edges/delete", models.UnlinkBody, models.DeletedResult, "Remove edges", tag="graph"
    ),
    RouteSpec(
        "edges", "POST", _C + "/edges/list", models.EdgesBody, models.EdgesResult, "Edges of a record", tag="graph"
    ),
    RouteSpec(
        "neighbors",
        "POST",
        _C + "/neighbors",
        models.NeighborsBody,
        models.HitsResult,
        "Records reachable from one",
        tag="graph",
    ),
    RouteSpec(
        "subgraph",
        "POST",
        _C + "/subgraph",
        models.SubgraphBody,
        models.SubgraphResult,
        "Neighbourhood of records",
        tag="graph",
    ),
    RouteSpec(
        "extract",
        "POST",
        _C + "/extract",
        models.ExtractBody,
        models.ExtractionResult,
        "Extract entities and relations from text with the server's LLM and store them",
        tag="graph",
        errors=_UPSTREAM_ERRORS,
    ),
    RouteSpec(
        "create_key",
        "POST",
        "/v1/admin/keys",
        models.CreateKeyBody,
        models.NewKeyResult,
        "Create an API key",
        tag="admin",
    ),
    RouteSpec("list_keys", "GET", "/v1/admin/keys", None, models.KeysResult, "List the tenant's API keys", tag="admin"),
    RouteSpec(
        "revoke_key", "DELETE", "/v1/admin/keys/{key_id}", None, models.RevokedResult, "Revoke an API key", tag="admin"
    ),
    RouteSpec(
        "rotate_key",
        "POST",
        "/v1/admin/keys/{key_id}/rotate",
        models.RotateKeyBody,
        models.NewKeyResult,
        "Replace an API key; the old one expires after a grace period",
        tag="admin",
    ),
    # POST, not DELETE: the confirmation travels in a body, which DELETE requests may not carry
    # through every proxy and HTTP library.
    RouteSpec(
        "erase_tenant",
        "POST",
        "/v1/admin/tenants/{tenant}/erase",
        models.EraseTenantBody,
        models.TenantErasedResult,
        "Delete a tenant with its collections and API keys and erase them from disk (confirm = the tenant's name)",
        tag="admin",
    ),
    RouteSpec(
        "create_backup",
        "POST",
        "/v1/admin/backups",
        models.CreateBackupBody,
        models.BackupResult,
        "Back up the whole node into the operator's backup.dir under a name (bootstrap admin key only)",
        status=201,
        tag="admin",
    ),
    RouteSpec(
        "list_backups",
        "GET",
        "/v1/admin/backups",
        None,
        models.BackupsResult,
        "List the backups in backup.dir (bootstrap admin key only)",
        tag="admin",
    ),
    RouteSpec(
        "verify_backup",
        "POST",
        "/v1/admin/backups/{name}/verify",
        None,
        models.BackupResult,
        "Check a backup's manifest, every file's checksum and its database (bootstrap admin key only)",
        tag="admin",
    ),
    RouteSpec(
        "stats",
        "GET",
        "/v1/admin/stats",
        None,
        models.StatsResult,
        "Memory per component of the node answering: process, RocksDB, each collection's indexes",
        query=("limit",),
        tag="admin",
    ),
)
