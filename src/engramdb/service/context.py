"""Who is calling and from where: the request context both servers build.

REST and gRPC only copy transport facts into a :class:`RequestContext` (the raw
``Authorization`` value, the client address, a request id, the requested
tenant); the service layer turns them into a :class:`Principal`. Keeping the
raw credential out of ``repr`` means a context can be logged safely.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")
_RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

# Key ids of principals that are not stored keys.
BOOTSTRAP_KEY_ID = "bootstrap"
ANONYMOUS_KEY_ID = "anonymous"
METRICS_KEY_ID = "metrics"


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` includes the rights of ``needed`` (reader < writer < admin)."""
    return _RANK.get(role, -1) >= _RANK[needed]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the key's id, tenant, role and collection scope.

    ``collections`` is ``None`` for an unscoped key. ``any_tenant`` is true for
    the bootstrap admin key only: it picks its tenant per request (anonymous
    callers are confined to tenant ``default``). ``metrics`` is true for the
    operator (bootstrap key, metrics key, anonymous in development mode): only
    they may read ``/metrics``, which names every tenant's collections.
    """

    key_id: str
    tenant: str
    role: Role
    collections: frozenset[str] | None = None
    any_tenant: bool = False
    metrics: bool = False

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    """Transport facts about one request, filled in by REST or gRPC.

    ``authorization`` is the raw ``Authorization`` header / gRPC metadata value
    (``"Bearer <key>"``, parsed by the service); a transport that has already
    extracted the key may pass it as ``api_key`` instead. Both are excluded
    from ``repr`` so they never reach a log.
    ``tenant`` is the tenant asked for with ``X-EngramDB-Tenant`` (only callers
    with ``any_tenant`` may use another tenant than their key's).
    ``principal`` and ``acting_tenant`` are set by the service once the caller
    is authenticated, so the transport can log them.
    ``duplicate_header`` names a header (``authorization`` or the tenant header)
    the request carried more than once: the service refuses such requests
    rather than guess which copy counts (transports disagree on first vs last).
    """

    authorization: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    client_ip: str | None = "unknown"
    request_id: str = field(default_factory=new_request_id)
    tenant: str | None = None
    transport: str = "rest"
    principal: Principal | None = None
    acting_tenant: str | None = None
    duplicate_header: str | None = None
