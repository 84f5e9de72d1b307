"""The service layer: the one place for auth, tenancy, limits, validation and metrics.

REST and gRPC call :meth:`Service.execute` with a :class:`RequestContext` and
the operation's parameters as a dict (the shapes of docs/api-contract.md) and
get a JSON-ready dict back, or an :class:`~engramdb.errors.EngramError` whose
``http_status``/``grpc_status`` they map. Every request goes through the same
steps, in an order chosen so that a caller learns nothing it is not entitled
to: per-IP rate limit → auth-failure throttle → authentication → tenant →
per-key rate limit → role → request validation → collection scope → engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from engramdb import tracing, validation
from engramdb.api import ServedCollection, TenantData
from engramdb.config import ExtractionSettings, Settings
from engramdb.embed.profiles import PROFILE_DETAIL
from engramdb.engine import backup
from engramdb.engine.budget import query_budget
from engramdb.engine.database import DEFAULT_TENANT, Database
from engramdb.engine.extraction import Extractor
from engramdb.errors import (
    DeadlineExceeded,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UpstreamError,
    is_failure,
)
from engramdb.service import models
from engramdb.service.api_keys import DEFAULT_ROTATION_GRACE_SECONDS, KeyStore, digest, same_digest
from engramdb.service.context import (
    ANONYMOUS_KEY_ID,
    BOOTSTRAP_KEY_ID,
    METRICS_KEY_ID,
    Principal,
    RequestContext,
    Role,
    role_allows,
)
from engramdb.service.limits import AuthFailureThrottle, TokenBuckets
from engramdb.service.metrics import ServiceMetrics
from engramdb.service.resources import ResourceChecks
from engramdb.types import CollectionConfig, ExtractResult, Hit, Record

log = logging.getLogger("engramdb.service")

AuthMode = Literal["required", "optional", "disabled"]
# What a caller may need: a role for operations, "metrics" for /metrics (the operator only).
Access = Role | Literal["metrics"]
# The caller without a key where that is allowed (auth disabled, or development mode): the admin of
# tenant ``default`` only, so a page or a local proxy reaching the port cannot touch other tenants.
ANONYMOUS = Principal(ANONYMOUS_KEY_ID, DEFAULT_TENANT, "admin", None, any_tenant=False, metrics=True)
# The metrics key reads /metrics and nothing else (an empty scope as a second guard behind check_access).
METRICS_PRINCIPAL = Principal(METRICS_KEY_ID, DEFAULT_TENANT, "reader", frozenset(), metrics=True)
BOOTSTRAP = Principal(BOOTSTRAP_KEY_ID, DEFAULT_TENANT, "admin", None, any_tenant=True, metrics=True)
Scope = Literal["collection", "create", "list", "none"]
MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class Call:
    """What a handler needs besides its parameters."""

    ctx: RequestContext
    principal: Principal
    tenant: str


Handler = Callable[["Service", Call, Any, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    """An operation: its request model, the least role that may call it and its scope check."""

    name: str
    model: type[BaseModel]
    role: Role
    scope: Scope
    handler: Handler


def parse_authorization(value: str | None) -> str | None:
    """The key in ``Bearer <key>`` (scheme case-insensitive, RFC 7235), None if absent."""
    if value is None or not value.strip():
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated("send the API key as 'Authorization: Bearer <key>'", code="invalid_authorization")
    return token


# The engine's error code for a shape problem in each request field (a string where a number
# belongs, a value outside an enumeration), so a request refused by the pydantic models fails with
# the code of the same call on the embedded engine: e.g. k="5" is ``invalid_k`` both ways, not a
# generic ``invalid_argument``. Range rules are the engine's own (validation.py); the models do not
# repeat them. tests/unit/test_validation_parity.py holds the two paths together.
_FIELD_CODES: dict[str, str] = {
    "k": "invalid_k",
    "include": "invalid_include",
    "limit": "invalid_limit",
    "cursor": "invalid_cursor",
    "ef": "invalid_ef",
    "mode": "invalid_mode",
    "text": "invalid_text",
    "weights": "invalid_weights",
    "expand": "invalid_expand",
    "filter": "invalid_filter",
    "namespace": "invalid_namespace",
    "namespace_prefix": "invalid_namespace",
    "prefix": "invalid_namespace",
    "suffix": "invalid_namespace",
    "id": "invalid_id",
    "ids": "invalid_id",
    "src": "invalid_id",
    "dst": "invalid_id",
    "vector": "invalid_vector",
    "metadata": "invalid_metadata",
    "ttl_seconds": "invalid_ttl",
    "expires_at": "invalid_ttl",
    "relation": "invalid_relation",
    "relations": "invalid_relation",
    "direction": "invalid_direction",
    "hops": "invalid_hops",
    "fanout": "invalid_fanout",
    "timeout_ms": "invalid_timeout",
    "weight": "invalid_weight",
    "properties": "invalid_properties",
    "role": "invalid_role",
    "tenant": "invalid_name",
    "collections": "invalid_scope",
    "source_id": "invalid_id",
    "confirm": "erase_not_confirmed",
    "consistency": "invalid_consistency",
}
_BATCHES = {"records": "invalid_record", "edges": "invalid_edge"}


def _error_code(op: str, loc: tuple[int | str, ...], kind: str) -> str:
    """The engine-compatible code of one pydantic error (see ``_FIELD_CODES``)."""
    if not loc:
        return "invalid_argument"
    head = str(loc[0])
    if kind == "too_long" and len(loc) == 1 and head in ("records", "ids", "edges"):
        return "batch_too_large"
    if op == "create_collection":
        if loc == ("embedder",):
            return "embedder_not_allowed"  # anything but {"profile": name} (EmbedderRef)
        if head in ("shards", "replication_factor"):
            return f"invalid_{head}"  # the codes validation.shards / replication_factor give a bad number
        return "invalid_config"  # the engine reports every collection-config problem so
    if op == "alter_collection" and head != "coll":
        return "invalid_config"  # as the engine's validation.indexed_fields_change, default_ttl, ef_search
    if head in _BATCHES:
        if len(loc) <= 2 or kind == "extra_forbidden":
            return _BATCHES[head]
        return _FIELD_CODES.get(str(loc[2]), "invalid_argument")
    if op in ("create_key", "rotate_key") and head in ("expires_at", "grace_seconds"):
        return "invalid_expiry"
    return _FIELD_CODES.get(head, "invalid_argument")


def validation_error(e: ValidationError, op: str) -> InvalidArgument:
    """An InvalidArgument listing every problem (without echoing the input values)."""
    errors = e.errors(include_url=False, include_input=False, include_context=False)
    problems = []
    for err in errors[:MAX_REPORTED_ERRORS]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        problems.append({"field": loc, "problem": err["msg"]})
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    more = len(errors) - len(problems)
    if more > 0:
        summary += f"; and {more} more"
    code = _error_code(op, tuple(errors[0]["loc"]), errors[0]["type"]) if errors else "invalid_argument"
    cls = InvalidFilter if code == "invalid_filter" else InvalidArgument
    return cls(f"invalid {op} request: {summary}", code=code, details={"errors": problems})


class Readiness:
    """Start-up progress: ``loading`` until every collection's indexes are loaded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status: Literal["loading", "ready", "failed", "shutting_down"] = "loading"
        self.current: str | None = None
        self.done = 0
        self.total = 0
        self.error: str | None = None

    def progress(self, label: str, done: int, total: int) -> None:
        with self._lock:
            self.current, self.done, self.total = label, done, total

    def set(self, status: Literal["loading", "ready", "failed", "shutting_down"], error: str | None = None) -> None:
        with self._lock:
            if self.status != "shutting_down":  # shutting down is final
                self.status = status
            self.error = error

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def build_extractor(cfg: ExtractionSettings) -> Extractor | None:
    """The chat extractor of the ``extraction`` settings, or None when extraction is disabled.

    Raises InvalidArgument (code ``invalid_config``) when it cannot be built,
    e.g. the API key's environment variable is unset.
    """
    if not cfg.enabled:
        return None
    from engramdb.extract.llm import ChatExtractor

    assert cfg.model is not None
    try:
        return ChatExtractor(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            api_key_file=str(cfg.api_key_file) if cfg.api_key_file else None,
            timeout_seconds=cfg.timeout_seconds,
            max_retries=cfg.max_retries,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"extraction: {e.message}", code="invalid_config") from None


class Service:
    """Executes operations for REST and gRPC (see the module docstring).

    ``extractor`` overrides the one built from ``settings.extraction`` (for
    applications embedding the service); the service closes only an extractor
    it built itself. Call :meth:`close` after the last operation.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        admin_key: str | None = None,
        metrics_key: str | None = None,
        extractor: Extractor | None = None,
        data: TenantData | None = None,
        key_rows: Any = None,
        problems: Callable[[], list[str]] | None = None,
        cluster_backup: Callable[[str], dict[str, Any]] | None = None,
    ):
        self.db = db
        # Where collections and records live: this node's engine, or the cluster coordinator,
        # which offers the same calls and reaches the engines of every node (docs/cluster.md).
        self.data: TenantData = data if data is not None else db
        # Collection configs arrive from API callers: embed only with the operator's profiles.
        db.refuse_inline_embedders()
        self.settings = settings
        # API keys: this node's metadata rows, or (cluster mode) rows every node shares in etcd.
        self.keys = KeyStore(key_rows if key_rows is not None else db.metadata)
        self._extra_problems = problems
        # In a cluster a backup covers every node (engramdb.cluster.backup), through the same call.
        self._cluster_backup = cluster_backup
        srv = settings.server
        # Only the digests of the bootstrap and metrics keys are kept, so a heap dump does not reveal them.
        self._bootstrap_digest = digest(admin_key) if admin_key else None
        self._metrics_digest = digest(metrics_key) if metrics_key else None
        configured_key = self._bootstrap_digest is not None or self._metrics_digest is not None
        # "optional" (development mode) lasts only while no key is stored: see auth_mode.
        self._auth_setting: AuthMode = (
            "disabled"
            if srv.auth == "disabled"
            else "required"
            if srv.auth_required(any_key=configured_key or self.keys.has_keys())
            else "optional"
        )
        rl = srv.rate_limits
        self._key_buckets = TokenBuckets(rl.per_key_per_second, rl.per_key_burst)
        self._ip_buckets = TokenBuckets(rl.per_ip_per_second, rl.per_ip_burst)
        self._auth_throttle = AuthFailureThrottle(rl.auth_failures_per_minute)
        self.metrics = ServiceMetrics()
        self.metrics.watch(db.store)
        self.readiness = Readiness()
        self.resources = ResourceChecks(db.path, srv.min_free_disk_mb)
        self._inflight = 0
        self._idle = threading.Condition()
        self._draining = False
        # Built at start so a bad key or URL stops the server instead of failing the first request.
        self._owns_extractor = extractor is None
        self.extractor: Extractor | None = extractor if extractor is not None else build_extractor(settings.extraction)
        self._extraction_url = _public_endpoint(settings.extraction) if self._owns_extractor else None
        # Each extraction holds a worker thread for as long as the model takes (seconds to minutes);
        # bounding them keeps the other operations served when many arrive at once.
        self._extract_slots = threading.BoundedSemaphore(settings.extraction.max_concurrent)

    # ------------------------------------------------------------ lifecycle
    def load_all(self) -> None:
        """Load every collection's indexes, reporting progress; flips readiness when done."""
        try:
            self.db.load_all(progress=self.readiness.progress)
        except BaseException as e:
            # Also a Rust panic from an index binding (a BaseException): /ready
            # must say "failed", never stay "loading" behind a dead thread.
            log.exception("loading collections failed")
            self.readiness.set("failed", error=f"{type(e).__name__}: {e}")
            if not is_failure(e):
                raise
            return
        self.readiness.set("ready")

    def ready_report(self) -> dict[str, Any]:
        """The body of ``/ready``: status plus progress while not ready.

        Once loaded, the node is ready only while the database reports no
        problem (:meth:`Database.problems`: a storage or background thread
        gone, an index that misses changes or cannot commit) and the machine
        has room to go on (:mod:`engramdb.service.resources`: disk space, file
        descriptors, memory); otherwise the status is ``unavailable`` with the reasons.
        """
        r = self.readiness
        if r.ready:
            problems = [*self.db.problems(), *self.resources.problems()]
            if self._extra_problems is not None:
                problems.extend(self._extra_problems())
            if problems:
                return {"status": "unavailable", "problems": problems}
            return {"status": "ready"}
        progress: dict[str, Any] = {"current": r.current, "done": r.done, "total": r.total}
        if r.error:
            progress["error"] = r.error
        try:
            colls = self.db.collections()
            progress["collections_total"] = len(colls)
            progress["collections_loaded"] = sum(1 for c in colls if c.loaded)
        except EngramError:
            pass  # closed during shutdown
        status = "loading" if r.status == "loading" else r.status
        return {"status": status, "progress": progress}

    def health_report(self) -> dict[str, Any]:
        """The body of ``/health``: ``ok`` unless no write can ever complete again in this process.

        A node that can still serve reads stays live even while it is not
        ready; only a dead storage thread (every write would fail until a
        restart) makes liveness fail, so that an orchestrator restarts it.
        """
        fatal = self.db.fatal
        if fatal is not None:
            return {"status": "unavailable", "problem": f"storage is unavailable: {fatal}; restart the server"}
        return {"status": "ok"}

    def begin_drain(self) -> None:
        """Refuse new operations (503); those already running finish."""
        self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no operation runs; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Release what the service holds besides the database (the extractor's connections)."""
        self.metrics.unwatch()
        ext, self.extractor = self.extractor, None
        if ext is not None and self._owns_extractor:
            close = getattr(ext, "close", None)
            if callable(close):
                close()

    # ----------------------------------------------------------------- auth
    @property
    def auth_mode(self) -> AuthMode:
        """``required``, ``disabled``, or ``optional`` (development mode: no key configured or stored yet)."""
        if self._auth_setting == "optional" and self.keys.has_keys():
            return "required"  # the first stored key switches authentication on for good
        return self._auth_setting

    def auth_summary(self) -> str:
        """Which auth mode is in force and why, for the start-up log."""
        srv = self.settings.server
        mode = self.auth_mode
        if mode == "disabled":
            return (
                "auth disabled (server.auth: disabled): API keys are ignored and every request acts as the "
                "admin of tenant 'default' only"
            )
        if mode == "optional":
            return (
                f"auth off, development mode (server.auth: auto on loopback {srv.host} with no key configured "
                "or stored): requests without a key act as the admin of tenant 'default' only, until the first "
                "API key is created; behind a reverse proxy on this host use server.auth: required"
            )
        if srv.auth == "required":
            why = "server.auth: required"
        elif self._bootstrap_digest is not None:
            why = "server.auth: auto and a bootstrap admin key is configured"
        elif self._metrics_digest is not None:
            why = "server.auth: auto and a metrics key is configured"
        elif self.keys.has_keys():
            why = "server.auth: auto and API keys are stored in the data directory"
        else:
            why = f"server.auth: auto and {srv.host} is not a loopback address"
        return f"auth required ({why})"

    def authenticate(self, ctx: RequestContext) -> Principal:
        """Who is calling: applies the per-IP limit and failure throttle, then checks the key."""
        ip = ctx.client_ip or "unknown"
        wait = self._ip_buckets.take(ip)
        if wait:
            self.metrics.rate_limited.labels("ip").inc()
            raise RateLimited("too many requests from this address; slow down", retry_after=_ceil(wait))
        if ctx.duplicate_header is not None:
            self._refuse_duplicate(ctx.duplicate_header)
        if self._auth_setting == "disabled":
            return ANONYMOUS
        blocked = self._auth_throttle.blocked_for(ip)
        if blocked:
            self.metrics.rate_limited.labels("auth_failures").inc()
            raise RateLimited(
                "too many failed authentication attempts from this address; wait and retry with a valid key",
                retry_after=_ceil(blocked),
                code="auth_throttled",
            )
        try:
            token = ctx.api_key or parse_authorization(ctx.authorization)
        except Unauthenticated:
            self.metrics.auth_failures.labels("malformed").inc()
            raise
        if token is None:
            if self._auth_setting == "optional":
                if not self.keys.has_keys():
                    return ANONYMOUS
                self.metrics.auth_failures.labels("missing").inc()
                raise Unauthenticated(
                    "this server requires an API key now that API keys exist (server.auth: auto): "
                    "send 'Authorization: Bearer <key>'",
                    code="missing_api_key",
                )
            self.metrics.auth_failures.labels("missing").inc()
            raise Unauthenticated(
                "this server requires an API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        return self._verify(token, ip)

    def _refuse_duplicate(self, header: str) -> None:
        # Proxies and libraries disagree on which copy of a repeated header counts (first, last,
        # joined), so a request that carries two can be read differently along the way: refuse it.
        if header == "authorization":
            self.metrics.auth_failures.labels("malformed").inc()
            raise Unauthenticated(
                "the request has more than one Authorization header; send exactly one 'Authorization: Bearer <key>'",
                code="invalid_authorization",
            )
        raise InvalidArgument(f"the request has more than one {header} header; send it once", code="duplicate_header")

    def _verify(self, token: str, ip: str) -> Principal:
        h = digest(token)
        if self._bootstrap_digest is not None and same_digest(h, self._bootstrap_digest):
            return BOOTSTRAP
        if self._metrics_digest is not None and same_digest(h, self._metrics_digest):
            return METRICS_PRINCIPAL
        key = self.keys.lookup(token)
        reason = None
        if key is None:
            reason, code, msg = "invalid", "invalid_api_key", "the API key is not valid"
        elif key.revoked:
            reason, code, msg = "revoked", "api_key_revoked", "the API key was revoked; ask an admin for a new one"
        elif key.expired(time.time()):
            reason, code, msg = "expired", "api_key_expired", "the API key has expired; ask an admin for a new one"
        if reason is not None:
            self._auth_throttle.record(ip)
            self.metrics.auth_failures.labels(reason).inc()
            raise Unauthenticated(msg, code=code)
        assert key is not None
        scope = frozenset(key.collections) if key.collections is not None else None
        return Principal(key.id, key.tenant, key.role, scope)

    def _acting_tenant(self, ctx: RequestContext, p: Principal) -> str:
        asked = ctx.tenant
        if asked is not None:
            validation.name(asked, "tenant (X-EngramDB-Tenant)")
        if p.any_tenant:
            return asked or p.tenant
        if asked and asked != p.tenant:
            if p is ANONYMOUS:
                how = (
                    "auth is disabled on this server, which then serves tenant 'default' only"
                    if self._auth_setting == "disabled"
                    else "other tenants need an API key, and configuring the bootstrap admin key "
                    "(ENGRAMDB_ADMIN_KEY) turns authentication on"
                )
                raise PermissionDenied(
                    f"requests without an API key act on tenant 'default' only: {how}", code="tenant_not_allowed"
                )
            raise PermissionDenied(
                "this API key belongs to another tenant and cannot act on the tenant asked for",
                code="tenant_mismatch",
            )
        return p.tenant

    def check_access(self, ctx: RequestContext, role: Access) -> Principal:
        """Authenticate and rate-limit ``ctx`` and require ``role``; for endpoints outside ``execute``.

        ``"metrics"`` requires the operator (bootstrap key, metrics key, or anonymous where
        auth is off): ``/metrics`` names every tenant's collections, so tenant admins get 403.
        """
        p = self.authenticate(ctx)
        ctx.principal = p
        ctx.acting_tenant = self._acting_tenant(ctx, p)
        if p.key_id != ANONYMOUS_KEY_ID:
            wait = self._key_buckets.take(p.key_id)
            if wait:
                self.metrics.rate_limited.labels("key").inc()
                raise RateLimited("this API key's rate limit is exceeded; slow down", retry_after=_ceil(wait))
        if role == "metrics":
            if not p.metrics:
                raise PermissionDenied(
                    "/metrics names every tenant's collections and is for the operator: use the bootstrap admin "
                    "key or the metrics key (ENGRAMDB_METRICS_KEY or server.metrics_key_file)",
                    code="permission_denied",
                )
        elif p is METRICS_PRINCIPAL:
            raise PermissionDenied("the metrics key grants /metrics only; use an API key", code="permission_denied")
        elif not role_allows(p.role, role):
            raise PermissionDenied(
                f"this API key has role {p.role!r}; this operation needs {role!r}", code="permission_denied"
            )
        return p

    # -------------------------------------------------------------- execute
    def execute(
        self, ctx: RequestContext, op: str, params: dict[str, Any] | Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run operation ``op`` for ``ctx``; returns the JSON-ready result or raises EngramError.

        ``params`` may be a function that decodes them from the wire (gRPC): it is called only
        after authentication and the rate limits, so a malformed or hostile message costs an
        unauthenticated caller nothing but a refusal, and may raise InvalidArgument.
        """
        spec = OPS.get(op)
        label = op if spec is not None else "unknown"
        start = time.perf_counter()
        status = "ok"
        fault = False  # a server-side failure (5xx), which marks the span failed; client errors do not
        span = tracing.start("service", label)  # None unless tracing is on
        try:
            self._enter()
        except EngramError as e:
            tracing.finish(span, e.code)
            raise
        try:
            if spec is None:
                raise InvalidArgument(f"unknown operation {op!r}", code="unknown_operation")
            p = self.check_access(ctx, spec.role)
            assert ctx.acting_tenant is not None
            if not isinstance(params, dict):
                if callable(params):
                    params = params()
                if not isinstance(params, dict):
                    raise InvalidArgument("the request must be a JSON object", code="invalid_argument")
            try:
                req = spec.model.model_validate(params)
            except ValidationError as e:
                raise validation_error(e, op) from None
            self._check_scope(p, spec, req)
            return spec.handler(self, Call(ctx, p, ctx.acting_tenant), req, params)
        except EngramError as e:
            status = e.code
            fault = e.http_status >= 500
            if PROFILE_DETAIL in e.details:
                raise _embedder_failure(e, op, ctx.request_id) from None
            raise
        except Exception:
            status, fault = "internal", True
            log.exception("operation %s failed (request id %s)", op, ctx.request_id)
            raise EngramError(f"internal error; the server log has the details (request id {ctx.request_id})") from None
        finally:
            self._exit()
            self.metrics.observe(label, status, time.perf_counter() - start)
            if span is not None:
                tracing.finish(span, None if status == "ok" else status, failed=fault)

    def _enter(self) -> None:
        with self._idle:
            if self._draining:
                raise Unavailable("the server is shutting down; retry shortly", code="shutting_down")
            self._inflight += 1
            self.metrics.in_flight.inc()

    def _exit(self) -> None:
        with self._idle:
            self._inflight -= 1
            self.metrics.in_flight.dec()
            if not self._inflight:
                self._idle.notify_all()

    @staticmethod
    def _check_scope(p: Principal, spec: OpSpec, req: Any) -> None:
        if p.collections is None:
            return
        name = req.coll if spec.scope == "collection" else req.name if spec.scope == "create" else None
        if name is not None and not p.may_use(name):
            raise PermissionDenied(f"this API key may not use collection {name!r}", code="collection_not_in_scope")

    def collection(self, call: Call, name: str, consistency: str | None = None) -> ServedCollection:
        coll = self.data.get_collection(name, tenant=call.tenant)
        # The level is validated by the collection (every path gets invalid_consistency) before the operation runs.
        return coll if consistency is None else coll.with_consistency(consistency)

    # ------------------------------------------------------------ handlers
    # Each handler gets the validated model and the raw params; bulk payloads
    # (records, edges) are passed to the engine as the validated dicts, which
    # avoids copying large vectors a second time.

    def _create_collection(
        self, call: Call, req: models.CreateCollectionBody, params: dict[str, Any]
    ) -> dict[str, Any]:
        kw = req.model_dump(exclude_unset=True)
        name = kw.pop("name")
        coll = self.data.create_collection(name, tenant=call.tenant, **kw)
        return {"collection": _collection_out(coll.config)}

    def _list_collections(self, call: Call, req: models.ListCollectionsBody, params: dict[str, Any]) -> dict[str, Any]:
        configs = self.data.list_collections(tenant=call.tenant)
        return {
            "collections": [_collection_out(c) for c in configs if call.principal.may_use(c.name)],
        }

    def _get_collection(self, call: Call, req: models.GetCollection, params: dict[str, Any]) -> dict[str, Any]:
        coll = self.collection(call, req.coll, req.consistency)
        return {"collection": _collection_out(coll.config), "count": coll.count(), "reindex": coll.reindex_status()}

    def _alter_collection(self, call: Call, req: models.AlterCollection, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "indexed_fields", "default_ttl_seconds", "ef_search")
        cfg = self.data.alter_collection(req.coll, tenant=call.tenant, **kw)
        return {"collection": _collection_out(cfg), "reindex": self.collection(call, req.coll).reindex_status()}

    def _delete_collection(self, call: Call, req: models.DeleteCollection, params: dict[str, Any]) -> dict[str, Any]:
        self.data.delete_collection(req.coll, tenant=call.tenant)
        return {"deleted": True}

    def _upsert(self, call: Call, req: models.Upsert, params: dict[str, Any]) -> dict[str, Any]:
        return {"versions": self.collection(call, req.coll, req.consistency).upsert(params["records"])}

    def _get(self, call: Call, req: models.Get, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "include", "refresh_ttl")
        recs = self.collection(call, req.coll, req.consistency).get_many(req.ids, **kw)
        return {"records": [_record(r) for r in recs]}

    def _get_one(self, call: Call, req: models.GetOne, params: dict[str, Any]) -> dict[str, Any]:
        coll = self.collection(call, req.coll, req.consistency)
        rec = coll.get(req.id, **_set_fields(req, "include"))
        if rec is None:
            raise NotFound(f"record {req.id!r} does not exist in collection {req.coll!r}", code="record_not_found")
        return {"record": _record(rec)}

    def _patch(self, call: Call, req: models.Patch, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "metadata", "text", "namespace", "ttl_seconds", "importance", "vector")
        return {"record": _record(self.collection(call, req.coll, req.consistency).patch(req.id, **kw))}

    def _delete(self, call: Call, req: models.Delete, params: dict[str, Any]) -> dict[str, Any]:
        return {"deleted": self.collection(call, req.coll, req.consistency).delete(req.ids, filter=req.filter)}

    def _delete_one(self, call: Call, req: models.DeleteOne, params: dict[str, Any]) -> dict[str, Any]:
        return {"deleted": self.collection(call, req.coll, req.consistency).delete([req.id])}

    def _scan(self, call: Call, req: models.Scan, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "cursor", "limit", "id_prefix", "namespace_prefix", "filter", "include")
        with self._query_budget():
            page = self.collection(call, req.coll, req.consistency).scan(**kw)
        return {"records": [_record(r) for r in page.records], "next_cursor": page.next_cursor}

    def _count(self, call: Call, req: models.Count, params: dict[str, Any]) -> dict[str, Any]:
        with self._query_budget():
            return {"count": self.collection(call, req.coll, req.consistency).count(req.filter)}

    def _refresh_ttl(self, call: Call, req: models.RefreshTtl, params: dict[str, Any]) -> dict[str, Any]:
        return {"refreshed": self.collection(call, req.coll, req.consistency).refresh_ttl(req.ids)}

    def _search(self, call: Call, req: models.Search, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(
            req, "k", "filter", "ef", "include", "exact", "text", "mode", "weights", "min_score", "refresh_ttl"
        )
        if "vector" in req.model_fields_set:
            kw["vector"] = params["vector"]
        if req.expand is not None:
            kw["expand"] = req.expand.model_dump(exclude_unset=True)
        with self._query_budget():
            hits = self.collection(call, req.coll, req.consistency).search(**kw)
        return {"hits": [_hit(h) for h in hits]}

    def _query_budget(self) -> AbstractContextManager[None]:
        # One expensive count, scan or search must not hold a worker (and the CPU other
        # tenants share) for longer than the operator allows (server.query_timeout_seconds).
        return query_budget(self.settings.server.query_timeout_seconds)

    def _list_namespaces(self, call: Call, req: models.ListNamespaces, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "suffix", "max_depth", "limit", "offset")
        found = self.collection(call, req.coll, req.consistency).list_namespaces(req.prefix, **kw)
        return {"namespaces": [list(ns) for ns in found]}

    def _link(self, call: Call, req: models.Link, params: dict[str, Any]) -> dict[str, Any]:
        coll = self.collection(call, req.coll, req.consistency)
        return {"versions": coll.link(params["edges"], create_missing=req.create_missing)}

    def _unlink(self, call: Call, req: models.Unlink, params: dict[str, Any]) -> dict[str, Any]:
        return {"deleted": self.collection(call, req.coll, req.consistency).unlink(params["edges"])}

    def _edges(self, call: Call, req: models.Edges, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "direction", "relation", "limit")
        return {"edges": [e.to_dict() for e in self.collection(call, req.coll, req.consistency).edges(req.id, **kw)]}

    def _neighbors(self, call: Call, req: models.Neighbors, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "hops", "relations", "direction", "limit", "fanout", "include", "timeout_ms")
        _drop_none(kw, "fanout", "timeout_ms")
        return {"hits": [_hit(h) for h in self.collection(call, req.coll, req.consistency).neighbors(req.id, **kw)]}

    def _subgraph(self, call: Call, req: models.Subgraph, params: dict[str, Any]) -> dict[str, Any]:
        kw = _set_fields(req, "hops", "relations", "direction", "limit", "include", "timeout_ms")
        _drop_none(kw, "timeout_ms")
        got = self.collection(call, req.coll, req.consistency).subgraph(req.ids, **kw)
        return {
            "nodes": [_record(r) for r in got.get("nodes", [])],
            "edges": [e.to_dict() for e in got.get("edges", [])],
        }

    def _extract(self, call: Call, req: models.Extract, params: dict[str, Any]) -> dict[str, Any]:
        # The collection first: another tenant's (or a missing) collection is a 404 whatever the configuration.
        coll = self.collection(call, req.coll, req.consistency)
        extractor = self.extractor
        if extractor is None:
            raise FailedPrecondition(
                "extraction is not configured on this server; the operator enables it by setting "
                "extraction.model (ENGRAMDB_EXTRACTION__MODEL) and, for a provider other than OpenAI, "
                "extraction.base_url, with the key in extraction.api_key_env or extraction.api_key_file",
                code="extraction_not_configured",
            )
        if not self._extract_slots.acquire(blocking=False):
            # Refused before anything runs, so clients may retry it like any 429.
            raise RateLimited(
                f"{self.settings.extraction.max_concurrent} extractions are already running "
                "(extraction.max_concurrent); retry shortly",
                retry_after=1.0,
                code="extraction_busy",
            )
        try:
            kw = _set_fields(req, "instructions", "namespace", "dedupe_threshold", "source_id")
            result: ExtractResult = coll.extract(req.text, extractor, **kw)
        except (UpstreamError, DeadlineExceeded) as e:
            raise self._without_endpoint(e) from None
        finally:
            self._extract_slots.release()
        return result.to_dict()

    def _without_endpoint(self, e: EngramError) -> EngramError:
        """``e`` without the operator's model URL, which is internal to the deployment.

        Callers of ``extract`` never chose that endpoint and need not learn where
        it is (often an address on a private network); the operator finds the
        full message in the log. Same class, code and other details.
        """
        url = self._extraction_url
        if url is None or e.details.get("url") != url:
            return e  # not the extraction endpoint (e.g. the collection's own embedder)
        log.warning("extraction failed: %s", e.message)
        details = {k: v for k, v in e.details.items() if k != "url"}
        message = e.message.replace(f"chat endpoint at {url}", "extraction endpoint").replace(url, "<endpoint>")
        return type(e)(message, code=e.code, details=details)

    # keys
    def _key_tenant(self, call: Call, asked: str | None) -> str:
        if asked is None or asked == call.tenant:
            return call.tenant
        if not call.principal.any_tenant:
            who = "a request without an API key" if call.principal is ANONYMOUS else "an admin key"
            raise PermissionDenied(f"{who} can create keys only for its own tenant", code="tenant_mismatch")
        return asked

    def _create_key(self, call: Call, req: models.CreateKeyBody, params: dict[str, Any]) -> dict[str, Any]:
        first = self.auth_mode == "optional"
        secret, key = self.keys.create(
            tenant=self._key_tenant(call, req.tenant),
            role=req.role,
            collections=req.collections,
            expires_at=req.expires_at,
            name=req.name,
        )
        log.info("API key %s created (tenant %s, role %s)", key.id, key.tenant, key.role)
        if first:
            log.warning("the first API key was created: authentication is now required for every request")
        return _new_key(secret, key)

    def _list_keys(self, call: Call, req: models.ListKeysBody, params: dict[str, Any]) -> dict[str, Any]:
        return {"keys": [k.info() for k in self.keys.list_keys(call.tenant)]}

    def _revoke_key(self, call: Call, req: models.RevokeKey, params: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.revoke(req.key_id, tenant=call.tenant)
        log.info("API key %s revoked", key.id)
        return {"revoked": True}

    def _rotate_key(self, call: Call, req: models.RotateKey, params: dict[str, Any]) -> dict[str, Any]:
        grace = DEFAULT_ROTATION_GRACE_SECONDS if req.grace_seconds is None else req.grace_seconds
        secret, key = self.keys.rotate(req.key_id, grace_seconds=grace, tenant=call.tenant)
        log.info("API key %s rotated to %s", req.key_id, key.id)
        return _new_key(secret, key)

    # erase
    def _erase_tenant(self, call: Call, req: models.EraseTenant, params: dict[str, Any]) -> dict[str, Any]:
        """Delete a tenant, its collections and its keys, and erase them from disk (GDPR erase)."""
        target = req.tenant
        validation.name(target, "tenant")
        if not call.principal.any_tenant and target != call.tenant:
            if call.principal is ANONYMOUS:
                raise PermissionDenied(
                    "requests without an API key act on tenant 'default' only; erasing another tenant needs "
                    "the bootstrap admin key",
                    code="tenant_not_allowed",
                )
            raise PermissionDenied(
                "an admin key can erase only its own tenant; the bootstrap admin key can erase any",
                code="tenant_mismatch",
            )
        if req.confirm != target:
            raise InvalidArgument(
                f"erasing a tenant cannot be undone: send confirm equal to the tenant's name ({target!r})",
                code="erase_not_confirmed",
            )
        return erase_tenant(self.db, self.keys, target, data=self.data)

    # backups
    def _backup_dir(self, call: Call) -> Path:
        """The operator's backup directory, for the bootstrap admin key only (a backup holds every tenant)."""
        if not call.principal.any_tenant:
            raise PermissionDenied(
                "backups hold every tenant's data and are for the operator: use the bootstrap admin key "
                "(ENGRAMDB_ADMIN_KEY or server.admin_key_file)",
                code="permission_denied",
            )
        d = self.settings.backup.dir
        if d is None:
            raise FailedPrecondition(
                "no backup directory is configured on this server; the operator sets backup.dir "
                "(ENGRAMDB_BACKUP__DIR), or stops the server and runs 'engramdb backup create DEST --data-dir DIR'",
                code="backup_not_configured",
            )
        return d

    def _create_backup(self, call: Call, req: models.CreateBackupBody, params: dict[str, Any]) -> dict[str, Any]:
        d = self._backup_dir(call)
        if self._cluster_backup is not None:
            info = self._cluster_backup(req.name)
            log.info("cluster backup %s created (every node, and the cluster manifest on this one)", req.name)
            return {"backup": info}
        dest = backup.backup_path(d, req.name)
        d.mkdir(parents=True, exist_ok=True)
        info = backup.create_backup(self.db, dest, min_free_mb=self.settings.server.min_free_disk_mb)
        log.info("backup %s created (%d bytes, changelog sequence %d)", req.name, info["bytes"], info["seq"])
        return {"backup": info}

    def _list_backups(self, call: Call, req: models.ListBackupsBody, params: dict[str, Any]) -> dict[str, Any]:
        return {"backups": backup.list_backups(self._backup_dir(call))}

    def _verify_backup(self, call: Call, req: models.VerifyBackup, params: dict[str, Any]) -> dict[str, Any]:
        return {"backup": backup.verify_backup(backup.backup_path(self._backup_dir(call), req.name))}

    # stats
    def _stats(self, call: Call, req: models.Stats, params: dict[str, Any]) -> dict[str, Any]:
        """Memory per component of this node (in a cluster: of the node answering, its own replicas)."""
        p = call.principal
        # The bootstrap key sees every tenant unless it names one (X-EngramDB-Tenant); others their own.
        every = p.any_tenant and call.ctx.tenant is None
        out = self.db.stats(req.limit, tenant=None if every else call.tenant)
        if not p.metrics:
            # Node-wide figures move with every tenant's traffic: the operator's, like /metrics.
            out["process"] = out["rocksdb"] = None
        return out


def erase_tenant(db: Database, keys: KeyStore, tenant: str, data: TenantData | None = None) -> dict[str, Any]:
    """Delete ``tenant``'s collections and API keys and erase them from disk (the service's and the CLI's).

    Returns ``{"tenant", "collections", "keys"}`` (how many of each); NotFound
    (``tenant_not_found``) if the tenant has neither collections nor keys.
    """
    validation.name(tenant, "tenant")
    # The keys first: they stop working before the data goes, and their rows are rewritten
    # before the erase below compacts the metadata, so the old rows leave the files with it.
    # Their anonymous revoked rows stay, so authentication stays on (KeyStore.erase_tenant).
    n_keys = keys.erase_tenant(tenant)
    if data is not None and data is not db:
        # A cluster: the collections go from etcd, and every node erases its replicas of them.
        collections = len(data.list_collections(tenant=tenant))
        if not collections and not n_keys:
            raise NotFound(f"tenant {tenant!r} does not exist", code="tenant_not_found")
        for cfg in data.list_collections(tenant=tenant):
            try:
                data.delete_collection(cfg.name, tenant=tenant)
            except NotFound:
                pass
        forget = getattr(keys.rows, "forget_history", None)
        if forget is not None:
            forget()  # etcd keeps the rewritten key rows' old values until its history is compacted
        log.info("tenant %s erased cluster-wide: %d collections, %d API keys", tenant, collections, n_keys)
        return {"tenant": tenant, "collections": collections, "keys": n_keys}
    try:
        collections = db.erase_tenant(tenant)
    except NotFound:
        if not n_keys:
            raise
        collections = 0  # keys but never a collection: only the key rows to erase
        db.erase(set())
    log.info("tenant %s erased: %d collections, %d API keys", tenant, collections, n_keys)
    return {"tenant": tenant, "collections": collections, "keys": n_keys}


def _public_endpoint(cfg: ExtractionSettings) -> str | None:
    """The chat URL as the extractor's errors show it (``details.url``), None when extraction is off."""
    if not cfg.enabled:
        return None
    from engramdb.openai_http import endpoint_url, public_url

    return public_url(endpoint_url(cfg.base_url, "chat/completions"))


def _collection_out(cfg: CollectionConfig) -> dict[str, Any]:
    """A collection's configuration for API callers: of its embedder, only the profile name.

    Where a profile's endpoint is and where its key comes from is the
    operator's business; an inline config from before profiles shows its
    provider only (its URL or paths may be another caller's).
    """
    out = cfg.model_dump(mode="json")
    emb = cfg.embedder
    if emb is not None:
        out["embedder"] = {"profile": emb.profile} if emb.profile is not None else {"provider": emb.provider}
    return out


def _embedder_failure(e: EngramError, op: str, request_id: str) -> EngramError:
    """``e``, raised by an embedder profile's provider, without what only the operator should see.

    The full message (endpoint URL, HTTP status, the endpoint's own words,
    key variable or file names) goes to the log; the caller learns the
    profile, the error class and the request id to ask the operator about.
    """
    profile = e.details[PROFILE_DETAIL]
    log.warning("%s: embedding failed (request id %s): %s", op, request_id, e.message)
    message = f"embedding with profile {profile!r} failed; the server log has details (request id {request_id})"
    if isinstance(e, (UpstreamError, DeadlineExceeded)):
        return type(e)(message, code=e.code, details={PROFILE_DETAIL: profile})
    # Anything else is the server's configuration (a model that cannot load, an unreadable key), not the request.
    return UpstreamError(message, code="embedder_failed", details={PROFILE_DETAIL: profile})


def _ceil(seconds: float) -> float:
    """Retry-After in whole seconds (what HTTP allows), never zero."""
    return float(max(1, int(-(-seconds // 1))))


def _set_fields(req: BaseModel, *names: str) -> dict[str, Any]:
    """The named fields the caller actually sent, so the engine's own defaults apply otherwise."""
    return {n: getattr(req, n) for n in names if n in req.model_fields_set}


def _drop_none(kw: dict[str, Any], *names: str) -> None:
    for n in names:
        if kw.get(n, 0) is None:
            del kw[n]


def _record(r: Record) -> dict[str, Any]:
    return r.to_dict()


def _hit(h: Hit) -> dict[str, Any]:
    d = h.to_dict()
    d["score"] = float(d["score"])  # numpy scalars are not JSON for every transport
    if h.record is not None:
        d["record"] = _record(h.record)
    return d


def _new_key(secret: str, key: Any) -> dict[str, Any]:
    return {
        "key": secret,
        "id": key.id,
        "role": key.role,
        "tenant": key.tenant,
        "collections": key.collections,
        "expires_at": key.expires_at,
        "name": key.name,
    }


def _spec(name: str, model: type[BaseModel], role: Role, scope: Scope) -> OpSpec:
    return OpSpec(name, model, role, scope, getattr(Service, f"_{name}"))


OPS: dict[str, OpSpec] = {
    s.name: s
    for s in (
        _spec("create_collection", models.CreateCollectionBody, "writer", "create"),
        _spec("list_collections", models.ListCollectionsBody, "reader", "list"),
        _spec("get_collection", models.GetCollection, "reader", "collection"),
        _spec("delete_collection", models.DeleteCollection, "writer", "collection"),
        # A schema change, like creating or deleting a collection: the writer role.
        _spec("alter_collection", models.AlterCollection, "writer", "collection"),
        _spec("upsert", models.Upsert, "writer", "collection"),
        _spec("get", models.Get, "reader", "collection"),
        _spec("get_one", models.GetOne, "reader", "collection"),
        _spec("patch", models.Patch, "writer", "collection"),
        _spec("delete", models.Delete, "writer", "collection"),
        _spec("delete_one", models.DeleteOne, "writer", "collection"),
        _spec("scan", models.Scan, "reader", "collection"),
        _spec("count", models.Count, "reader", "collection"),
        _spec("refresh_ttl", models.RefreshTtl, "writer", "collection"),
        _spec("search", models.Search, "reader", "collection"),
        _spec("list_namespaces", models.ListNamespaces, "reader", "collection"),
        _spec("link", models.Link, "writer", "collection"),
        _spec("unlink", models.Unlink, "writer", "collection"),
        _spec("edges", models.Edges, "reader", "collection"),
        _spec("neighbors", models.Neighbors, "reader", "collection"),
        _spec("subgraph", models.Subgraph, "reader", "collection"),
        _spec("extract", models.Extract, "writer", "collection"),
        _spec("create_key", models.CreateKeyBody, "admin", "none"),
        _spec("list_keys", models.ListKeysBody, "admin", "none"),
        _spec("revoke_key", models.RevokeKey, "admin", "none"),
        _spec("rotate_key", models.RotateKey, "admin", "none"),
        _spec("erase_tenant", models.EraseTenant, "admin", "none"),
        _spec("create_backup", models.CreateBackupBody, "admin", "none"),
        _spec("list_backups", models.ListBackupsBody, "admin", "none"),
        _spec("verify_backup", models.VerifyBackup, "admin", "none"),
        _spec("stats", models.Stats, "admin", "none"),
    )
}
