"""The OpenAPI 3.1 document, generated from the route table and the service models.

FastAPI would derive a schema from endpoint signatures, but the endpoints here
deliberately take raw requests (validation happens once, in the service), so
the document is assembled from the same models the service validates with.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engramdb.server.rest.routes import ROUTES, RouteSpec
from engramdb.service import models
from engramdb.validation import CONSISTENCY_LEVELS, MAX_ID_BYTES, MAX_STATS_COLLECTIONS, NAME_PATTERN

REF = "#/components/schemas/{model}"
TENANT_HEADER = "X-EngramDB-Tenant"
_ERROR_STATUSES = {
    "400": "The request is invalid (code says why)",
    "401": "No valid API key",
    "403": "The key's role or scope does not allow this, or a web page of another site sent it (origin_not_allowed)",
    "404": "The collection, record, key or tenant does not exist (or belongs to another tenant)",
    "409": "Conflicts with the current state",
    "413": "The body is larger than server.max_request_mb",
    "421": "The Host header names a host not in server.allowed_hosts (host_not_allowed)",
    "431": "The request line and headers are larger than server.max_header_kb",
    "429": "Rate limited; retry after Retry-After seconds",
    "503": "Starting, shutting down or unavailable",
}
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "coll": {"type": "string", "minLength": 1, "maxLength": models.MAX_COLL_PATH_CHARS},
    "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_BYTES},
    "key_id": {"type": "string", "minLength": 1, "maxLength": models.MAX_KEY_ID_CHARS},
    "name": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN},  # a backup's
    "tenant": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN},
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(extra: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The error responses every operation documents, plus ``extra`` (status, description) pairs."""
    err = _ref(models.ErrorBody)
    out = {code: _json(err, desc) for code, desc in (*_ERROR_STATUSES.items(), *extra)}
    out["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    out["429"]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    out["default"] = _json(err, "Any other error")
    return out


def _required(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


def _operation(r: RouteSpec) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for name in _PATH_PARAMS:
        if "{" + name in r.path:
            params.append({"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]})
    if "include" in r.query:
        params.append(
            {
                "name": "include",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"$ref": REF.format(model="IncludeField")}},
                "description": "record fields to return (repeat the parameter, or separate with commas)",
            }
        )
    if "consistency" in r.query:
        params.append(
            {
                "name": "consistency",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(CONSISTENCY_LEVELS)},
                "description": "replicas of each shard that must answer in a cluster; omitted = the server's "
                "default. A single node is every replica",
            }
        )
    if "limit" in r.query:
        params.append(
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_STATS_COLLECTIONS},
                "description": "collections listed, the largest first (default 100)",
            }
        )
    params.append(
        {
            "name": TENANT_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": NAME_PATTERN},
            "description": "act on this tenant (only the bootstrap admin key may name another tenant than its own)",
        }
    )
    extra = r.errors
    if r.body is not None:
        extra = (("415", "The body is not declared Content-Type: application/json"), *extra)
    op: dict[str, Any] = {
        "operationId": r.op,
        "summary": r.summary,
        "tags": [r.tag],
        "parameters": params,
        "responses": {str(r.status): _json(_ref(r.result), "Success"), **_errors(extra)},
    }
    if r.body is not None:
        op["requestBody"] = {
            "required": _required(r.body),
            "content": {"application/json": {"schema": _ref(r.body)}},
        }
    return op


def build_openapi(version: str) -> dict[str, Any]:
    """The whole document (``/openapi.json``)."""
    bodies: list[type[BaseModel]] = [r.body for r in ROUTES if r.body is not None]
    results: list[type[BaseModel]] = [r.result for r in ROUTES]
    results.extend((models.ErrorBody, models.HealthResult, models.ReadyResult))
    inputs: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in dict.fromkeys(bodies)]
    outputs: list[tuple[type[BaseModel], Any]] = [(m, "serialization") for m in dict.fromkeys(results)]
    _, top = models_json_schema(inputs + outputs, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["IncludeField"] = {"type": "string", "enum": list(get_args(models.IncludeField))}
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.openapi_path, {})[r.method.lower()] = _operation(r)
    public = {"security": [], "tags": ["operations"]}
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "summary": "Liveness: 200 while the process runs",
            **public,
            "responses": {"200": _json(_ref(models.HealthResult), "Alive")},
        }
    }
    paths["/ready"] = {
        "get": {
            "operationId": "ready",
            "summary": "Readiness: 200 once every collection is loaded, 503 with progress before",
            **public,
            "responses": {
                "200": _json(_ref(models.ReadyResult), "Ready"),
                "503": _json(_ref(models.ReadyResult), "Loading or shutting down"),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (admin key needed when auth is on)",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "EngramDB",
            "version": version,
            "description": 'Memory database for AI applications. Errors are {"error": {code, message, details?}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }
