"""The service layer shared by the REST and gRPC servers (see docs/api-contract.md).

``Service(db, settings).execute(ctx, op, params)`` is the only entry point the
servers use; it authenticates, applies tenancy, limits and validation, runs the
operation on the engine and records metrics.
"""

from __future__ import annotations

from engramdb.service.context import Principal, RequestContext, Role
from engramdb.service.executor import OPS, OpSpec, Readiness, Service, parse_authorization

__all__ = ["OPS", "OpSpec", "Principal", "Readiness", "RequestContext", "Role", "Service", "parse_authorization"]
