"""The FastAPI application: thin routes over :meth:`Service.execute`.

Each route only turns HTTP into ``(RequestContext, op, params)`` and the result
or error back into HTTP; authentication, tenancy, limits and validation all
happen in the service, shared with gRPC. This module adds what is specific to
HTTP: the request-size limit, request ids, one structured log line and one
metrics sample per request, refusing API keys in query strings, and mapping
every error (including routing and framework errors) to
``{"error": {"code", "message", "details"?}}`` with the right status.

Per-request cost matters here (a search is well under a millisecond in the
engine): blocking calls go to the app's own thread pool through
``loop.run_in_executor`` (cheaper than AnyIO's ``to_thread``, same 40-thread
bound), FastAPI's built-in OpenTelemetry hooks are off (they checked the global
providers on every request; EngramDB exports Prometheus metrics and JSON logs),
the hot routes are matched first, and the access-log fields are only built when
the line is emitted. ``bench/bench_server.py`` compares the result with a bare
Starlette endpoint making the same engine call.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engramdb import tracing
from engramdb._version import __version__
from engramdb.errors import (
    EngramError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
)
from engramdb.server import metrics as server_metrics
from engramdb.server.rest.guards import HostMatcher, allowed_hosts, check_request
from engramdb.server.rest.openapi import TENANT_HEADER, build_openapi
from engramdb.server.rest.routes import ROUTES, RouteSpec
from engramdb.service import RequestContext, Service
from engramdb.service.context import new_request_id
from engramdb.validation import json_loads

access_log = logging.getLogger("engramdb.access")

# Query parameter names that would carry a credential; refused so keys never end up in URLs and proxy logs.
_CREDENTIAL_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization", "bearer"}
)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
_TENANT_HEADER = TENANT_HEADER.lower().encode("latin-1")
# Threads for blocking calls (engine, fsync, key checks): the bound AnyIO's default limiter had.
BLOCKING_THREADS = 40
# Operations whose paths are tried first (Starlette tries routes in order; see _route_rank).
_HOT_OPS = ("search", "get", "upsert", "get_one", "patch", "delete_one", "count")

T = TypeVar("T")


class ORJSONResponse(Response):
    """JSON rendered with orjson (numpy scalars included); FastAPI's own class of that name is deprecated."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def error_response(e: EngramError) -> ORJSONResponse:
    """The HTTP form of an error: status, JSON body and the headers the status calls for."""
    headers: dict[str, str] = {}
    if isinstance(e, RateLimited) or e.http_status == 429:
        retry = float(getattr(e, "retry_after", e.details.get("retry_after", 1.0)))
        headers["Retry-After"] = str(max(1, int(-(-retry // 1))))
    if e.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="engramdb"'
    allow = e.details.get("allow") if isinstance(e, MethodNotAllowed) else None
    if allow:
        headers["Allow"] = str(allow)
    return ORJSONResponse({"error": e.to_dict()}, status_code=e.http_status, headers=headers)


class BlockingRunner:
    """Runs blocking calls in a thread pool of its own, off the event loop.

    ``loop.run_in_executor`` costs a fraction of AnyIO's ``to_thread.run_sync``
    (no capacity limiter, RunVar or cancel-scope bookkeeping per call); the
    pool's size is the bound the limiter gave. Calls run in a copy of the
    caller's context, as with AnyIO. A caller cancelled while its call runs
    gets ``CancelledError`` at once and the call finishes in its thread (the
    service's in-flight count keeps shutdown waiting for it).
    """

    def __init__(self, max_workers: int = BLOCKING_THREADS):
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="engramdb-rest")

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn, *args)

    def shutdown(self) -> None:
        """Release idle threads; calls still running finish in theirs (nothing waits for them here)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ middleware
class RequestMiddleware:
    """Request id, body-size limit, one JSON access-log line and HTTP metrics per request.

    Pure ASGI (not ``BaseHTTPMiddleware``) so bodies stream through without
    being buffered twice and errors keep their original status.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, http_metrics: server_metrics.HttpMetrics):
        self.app = app
        self.max_body = max_body_bytes
        self.http_metrics = http_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = [500]
        # None unless tracing is on; continues the caller's trace (W3C traceparent).
        span = tracing.start_server("HTTP " + scope["method"], scope["headers"]) if tracing.enabled() else None

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            too_big = self._declared_too_big(headers.get(b"content-length"))
            if too_big is not None:
                await error_response(too_big)(scope, receive, send_wrapper)
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            self._finish(scope, state, status[0], time.perf_counter() - start)
            if span is not None:
                route = route_template(scope)
                tracing.finish(
                    span,
                    failed=status[0] >= 500,
                    name=f"{scope['method']} {route}",
                    attributes={
                        "http.request.method": scope["method"],
                        "http.route": route,
                        "http.response.status_code": status[0],
                    },
                )

    def _declared_too_big(self, value: bytes | None) -> EngramError | None:
        if value is None:
            return None
        try:
            n = int(value)
        except ValueError:
            return InvalidArgument("Content-Length is not a number", code="invalid_argument")
        return self._too_large() if n > self.max_body else None

    def _too_large(self) -> PayloadTooLarge:
        mb = self.max_body // (1024 * 1024)
        return PayloadTooLarge(f"the request body is larger than {mb} MB (server.max_request_mb); split the batch")

    def _limited(self, receive: Receive) -> Receive:
        # Chunked bodies carry no Content-Length: count as they arrive.
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large()
            return message

        return limited

    def _finish(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        template = route_template(scope)
        self.http_metrics.observe(scope["method"], template, status, seconds)
        path = scope.get("path", "")
        level = logging.DEBUG if path in _QUIET_PATHS and status < 400 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        ctx: RequestContext | None = state.get("ctx")
        fields = {
            "method": scope["method"],
            "path": path,  # never the query string: it could hold a credential
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": state.get("request_id"),
            "tenant": ctx.acting_tenant if ctx is not None else None,
            "key_id": ctx.principal.key_id if ctx is not None and ctx.principal is not None else None,
            "client_ip": ctx.client_ip if ctx is not None else _client_ip(scope),
        }
        access_log.log(level, "request", extra=fields)


def route_template(scope: Scope) -> str:
    """The path template of the route that served a request (``/v1/collections/{coll}/search``), or ``unmatched``.

    FastAPI's router, unlike Starlette's, does not put plain routes in
    ``scope["route"]``; it does put their endpoint in ``scope["endpoint"]``,
    which :func:`create_app` labels with its template.
    """
    route = scope.get("route")
    return getattr(route, "path", None) or getattr(scope.get("endpoint"), _TEMPLATE_ATTR, None) or "unmatched"


_TEMPLATE_ATTR = "engramdb_route_template"


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# ---------------------------------------------------------------- endpoints
def request_context(request: Request, allowed_query: tuple[str, ...] = ()) -> RequestContext:
    """The transport facts of a request; refuses credentials and unknown names in the query string."""
    scope = request.scope
    if scope.get("query_string"):  # most requests have none: skip parsing
        for name in request.query_params:
            values = request.query_params.getlist(name)
            if name.lower() in _CREDENTIAL_PARAMS or any(v.startswith("edb_") for v in values):
                raise InvalidArgument(
                    "API keys are not accepted in the URL (they end up in logs); send 'Authorization: Bearer <key>'",
                    code="credential_in_query",
                )
            if name not in allowed_query:
                raise InvalidArgument(f"unknown query parameter {name!r}", code="invalid_argument")
    # One pass over the raw list (ASGI lowercases names). A repeated header is noted, not resolved:
    # the service refuses the request, as gRPC's does (which copy counts differs between stacks).
    authorization = tenant = duplicate = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            if authorization is not None:
                duplicate = "authorization"
            authorization = value.decode("latin-1")
        elif key == _TENANT_HEADER:
            if tenant is not None:
                duplicate = duplicate or TENANT_HEADER
            tenant = value.decode("latin-1")
    ctx = RequestContext(
        authorization=authorization,
        client_ip=_client_ip(scope),
        request_id=scope.get("state", {}).get("request_id") or new_request_id(),
        tenant=tenant,
        transport="rest",
        duplicate_header=duplicate,
    )
    request.state.ctx = ctx
    return ctx


async def read_params(request: Request) -> dict[str, Any]:
    """The JSON object in the body ({} when empty)."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        # Integers beyond 64 bits stay integers, so the engine refuses them instead of storing floats.
        data = json_loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidArgument(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("the body must be a JSON object", code="invalid_json")
    return data


def _query_params(request: Request, spec: RouteSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "include" in spec.query and "include" in request.query_params:
        # Repeated (?include=a&include=b) or comma-separated (?include=a,b); empty means no fields.
        out["include"] = [p for v in request.query_params.getlist("include") for p in v.split(",") if p]
    if "consistency" in spec.query and "consistency" in request.query_params:
        levels = request.query_params.getlist("consistency")
        # Given twice, the list itself goes on, for the service to refuse (invalid_consistency) instead of picking one.
        out["consistency"] = levels[0] if len(levels) == 1 else levels
    if "limit" in spec.query and "limit" in request.query_params:
        given = request.query_params.getlist("limit")
        # A few digits become the number; anything else goes on as text, for the service to refuse (invalid_limit).
        value = given[0] if len(given) == 1 else None
        if value is None:
            out["limit"] = given
        else:
            out["limit"] = int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else value
    return out


def make_endpoint(
    service: Service, specs: list[RouteSpec], run_blocking: BlockingRunner
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of one path: picks the operation by method, then context + params → ``service.execute``.

    One endpoint per path (not per operation) so a wrong method gets a 405
    whose ``Allow`` header lists every method of the path.
    """
    by_method = {s.method: s for s in specs}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])

    async def endpoint(request: Request) -> Response:
        spec = by_method[request.method]
        ctx = request_context(request, spec.query)
        params = await read_params(require_json(request)) if spec.body is not None else {}
        for name, value in request.path_params.items():
            if name in params:
                raise InvalidArgument(f"give {name!r} in the URL path only, not in the body", code="invalid_argument")
            params[name] = value
        params.update(_query_params(request, spec))
        # Engine calls block (RocksDB, fsync, index search): keep them off the event loop.
        result = await run_blocking(service.execute, ctx, spec.op, params)
        return ORJSONResponse(result, status_code=spec.status)

    endpoint.__name__ = "_".join(s.op for s in specs)
    return endpoint


# --------------------------------------------------------------------- app
def create_app(service: Service) -> FastAPI:
    """The REST application for ``service`` (see docs/server.md)."""
    app = FastAPI(
        title="EngramDB",
        version=__version__,
        default_response_class=ORJSONResponse,
        openapi_url=None,  # served below, generated from the service models
        # A redirect would name the request's own Host: an open redirect for a forged one (a 404 says why).
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        **_NO_TELEMETRY,
    )
    app.state.service = service
    run_blocking = BlockingRunner()
    app.state.run_blocking = run_blocking  # run_server shuts its threads down after serving
    http_metrics = server_metrics.install(service)
    openapi_doc: dict[str, Any] = {}

    by_path: dict[str, list[RouteSpec]] = {}
    for spec in ROUTES:
        by_path.setdefault(spec.path, []).append(spec)
    for path, specs in sorted(by_path.items(), key=lambda item: _route_rank(item[1])):
        app.router.add_route(path, make_endpoint(service, specs, run_blocking), methods=[s.method for s in specs])

    async def health(request: Request) -> Response:
        report = service.health_report()  # an attribute read: no thread needed
        return ORJSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    async def ready(request: Request) -> Response:
        report = await run_blocking(service.ready_report)
        return ORJSONResponse(report, status_code=200 if report["status"] == "ready" else 503)

    async def metrics(request: Request) -> Response:
        ctx = request_context(request)
        await run_blocking(service.check_access, ctx, "metrics")
        body = await run_blocking(server_metrics.render, service)
        return Response(body, media_type=server_metrics.CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        if not openapi_doc:
            openapi_doc.update(build_openapi(__version__))
        return ORJSONResponse(openapi_doc)

    async def docs(request: Request) -> Response:
        html: HTMLResponse = get_swagger_ui_html(openapi_url="/openapi.json", title="EngramDB API")
        return html

    for path, fn in (
        ("/health", health),
        ("/ready", ready),
        ("/metrics", metrics),
        ("/openapi.json", openapi),
        ("/docs", docs),
    ):
        app.router.add_route(path, fn, methods=["GET"], name=path.strip("/"))

    for r in app.router.routes:
        endpoint, template = getattr(r, "endpoint", None), getattr(r, "path", None)
        if endpoint is not None and isinstance(template, str):
            setattr(endpoint, _TEMPLATE_ATTR, template)
    _install_error_handlers(app)
    hosts = allowed_hosts(service.settings.server)
    if hosts is not None:  # inside RequestMiddleware: refusals get request ids, access logs and metrics
        app.add_middleware(BrowserGuard, matcher=HostMatcher(hosts))
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=service.settings.server.max_request_mb * 1024 * 1024,
        http_metrics=http_metrics,
    )
    return app


def _route_rank(specs: list[RouteSpec]) -> int:
    """Where a path goes in the routing table: hot operations first, the rest in ROUTES order.

    Starlette takes the first route matching path and method, else the first
    matching the path only (a 405 with that route's ``Allow``). Paths that can
    match the same URL (``records/get``, ``records/delete`` ... and
    ``records/{id:path}``) keep their relative order, and no other two overlap
    (``{coll}`` and ``{key_id}`` never match a slash), so the order changes the
    time to find a route, never the route or the 405.
    """
    ranks = [_HOT_OPS.index(s.op) for s in specs if s.op in _HOT_OPS]
    return min(ranks) if ranks else len(_HOT_OPS)


# Recent FastAPI (0.165 here) instruments requests for OpenTelemetry when global providers are
# set, checking them on every request even when none are; EngramDB's telemetry is its own.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def _install_error_handlers(app: FastAPI) -> None:
    async def engram_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EngramError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(
                NotFound(f"no endpoint {request.method} {request.url.path}; see /openapi.json", code="no_such_endpoint")
            )
        if exc.status_code == 405:
            # Every route matching the path, not only the first: paths like records/get overlap records/{id}.
            allow = ", ".join(allowed_methods(request.app, request.scope))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            return error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed on {request.url.path}",
                    details={"allow": allow} if allow else None,
                )
            )
        err = EngramError(str(exc.detail), code="http_error")
        resp = error_response(err)
        resp.status_code = exc.status_code
        return resp

    async def validation_error(request: Request, exc: Exception) -> Response:
        # Routes take raw requests, so FastAPI should never validate; if it does, keep the contract (400, not 422).
        return error_response(InvalidArgument(f"invalid request: {exc}", code="invalid_argument"))

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client closed mid-body (or the body stalled and the server closed it): nothing to log as an error.
        logging.getLogger("engramdb.rest").debug("client disconnected before the request body was read")
        return error_response(InvalidArgument("the client disconnected before sending the whole body"))

    async def unexpected(request: Request, exc: Exception) -> Response:
        logging.getLogger("engramdb.rest").error("unhandled error", exc_info=exc)
        return error_response(EngramError("internal error; the server log has the details"))

    app.add_exception_handler(EngramError, engram_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ClientDisconnect, client_gone)


# ------------------------------------------------------- browsers and HTTP semantics
def require_json(request: Request) -> Request:
    """Refuse a request to a JSON endpoint unless it says ``Content-Type: application/json`` (even when empty).

    Web pages can send form and text bodies to any site without asking it
    first; parsing those as JSON would let any page drive the API (CSRF).
    """
    value = None
    for key, v in request.scope["headers"]:
        if key == b"content-type":
            if value is not None:
                value = None  # two Content-Type headers: ambiguous, refused
                break
            value = v
    if value is None or not _is_json_type(value):
        raise UnsupportedMediaType(
            "send the body as JSON with the header 'Content-Type: application/json' (also for an empty body)"
        )
    return request


def _is_json_type(value: bytes) -> bool:
    media, _, params = value.decode("latin-1").partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False  # JSON is UTF-8 (RFC 8259); anything else would be misread
    return True


class BrowserGuard:
    """Host and Origin checks (see :mod:`.guards`) before routing, so no refused request reaches an endpoint."""

    def __init__(self, app: ASGIApp, *, matcher: HostMatcher):
        self.app = app
        self.matcher = matcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = origin = None
            for key, value in scope["headers"]:
                if key == b"host":
                    host = value
                elif key == b"origin":
                    origin = value
            refused = check_request(self.matcher, scope["path"], host, origin)
            if refused is not None:
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route answers on this path (HEAD with GET, and OPTIONS), for ``Allow``."""
    from starlette.routing import Match, Route

    methods = {"OPTIONS"}
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods.update(route.methods)
    return sorted(methods)
