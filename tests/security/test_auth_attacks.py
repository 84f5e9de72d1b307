"""Authentication and tenancy attacks on a real server, over REST and gRPC.

Each test names the guard it covers; removing that guard from the service
(src/engramdb/service/executor.py) or the transports makes it fail:

- anonymous callers exist only in development mode (``auth: auto`` on
  loopback with no key configured or stored, or ``auth: disabled``) and are
  confined to tenant ``default``; the first stored key switches auth on;
- a tenant's key (admin included) never acts on another tenant through
  ``X-EngramDB-Tenant``, nor creates keys for one;
- ``/metrics`` (every tenant's collection names) is for the bootstrap key and
  the metrics key only; the metrics key opens nothing else;
- revoked and expired keys, and repeated failures (throttle), over gRPC too;
- malformed protobuf is parsed only after authentication and the per-IP limit,
  answers INVALID_ARGUMENT, and is logged at most once per interval;
- duplicate ``authorization`` / tenant headers are refused on both transports.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.servicer import SERVICE_NAME
from integration.conftest import ADMIN_KEY, ServerProcess, start_server, unique_name

SC = grpc.StatusCode
METRICS_KEY = "edb_test_metrics_" + secrets.token_urlsafe(24)
RELAXED = {
    "ENGRAMDB_SERVER__RATE_LIMITS__AUTH_FAILURES_PER_MINUTE": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "100000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "100000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "100000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "100000",
}
GARBAGE = b"\xff\xff garbage"
ServerFactory = Callable[..., ServerProcess]


# -------------------------------------------------------------------- helpers
def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def _md(key: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return ((("authorization", f"Bearer {key}"),) if key else ()) + extra


def _grpc_error(fn: Callable[[], Any], status: grpc.StatusCode, code: str | None = None) -> dict[str, Any]:
    """Call ``fn``; assert the gRPC status and the error code of the JSON body and trailer."""
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    body: dict[str, Any] = json.loads(err.details())
    if code is not None:
        assert body["code"] == code, body
        assert dict(err.trailing_metadata() or ())["engramdb-error-code"] == code
    return body


@pytest.fixture
def grpc_channel() -> Iterator[Callable[[ServerProcess], grpc.Channel]]:
    """Channels to servers of a test, closed after it."""
    opened: list[grpc.Channel] = []

    def make(s: ServerProcess) -> grpc.Channel:
        ch = grpc.insecure_channel(s.grpc_address)
        grpc.channel_ready_future(ch).result(timeout=30)
        opened.append(ch)
        return ch

    yield make
    for ch in opened:
        ch.close()


def _stub(ch: grpc.Channel) -> Any:
    return pb_grpc.EngramDBStub(ch)


def _raw(ch: grpc.Channel, method: str) -> Any:
    """A call that sends bytes as they are (no serializer), to reach the server's parser."""
    return ch.unary_unary(f"/{SERVICE_NAME}/{method}")


def _new_key(s: ServerProcess, key: str | None, **body: Any) -> dict[str, Any]:
    r = httpx.post(s.base_url + "/v1/admin/keys", json=body, headers=s.headers(key) if key else {}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ------------------------------------------------------------- operator server
@pytest.fixture(scope="module")
def op_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth required, the bootstrap admin key and a metrics key set, limits relaxed."""
    sp = start_server(
        tmp_path_factory.mktemp("auth-attacks") / "data", env={**RELAXED, "ENGRAMDB_METRICS_KEY": METRICS_KEY}
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def tenants(op_server: ServerProcess) -> dict[str, Any]:
    """Tenants A and B, each with a collection holding one record, and keys of A."""
    s = op_server
    out: dict[str, Any] = {"a": unique_name("ta"), "b": unique_name("tb"), "coll": "shared-name"}
    for t in ("a", "b"):
        tenant = out[t]
        h = {**s.headers(), "X-EngramDB-Tenant": tenant}
        assert (
            httpx.post(
                s.base_url + "/v1/collections", json={"name": out["coll"], "dimension": 3}, headers=h
            ).status_code
            == 201
        )
        rec = {"records": [{"id": f"secret-of-{t}", "vector": [1, 0, 0]}]}
        assert httpx.post(f"{s.base_url}/v1/collections/{out['coll']}/records", json=rec, headers=h).status_code == 200
        out[f"{t}_admin"] = _new_key(s, s.admin_key, role="admin", tenant=tenant)["key"]
    out["a_reader"] = _new_key(s, s.admin_key, role="reader", tenant=out["a"])["key"]
    return out


def test_tenant_admin_cannot_act_on_another_tenant_through_the_header(
    op_server: ServerProcess, tenants: dict[str, Any], grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: _acting_tenant refuses a non-bootstrap key naming another tenant (the gap of issue 14)."""
    s, coll = op_server, tenants["coll"]
    ha = {**s.headers(tenants["a_admin"]), "X-EngramDB-Tenant": tenants["b"]}
    attempts = [
        ("GET", "/v1/collections", None),
        ("GET", f"/v1/collections/{coll}/records/secret-of-b", None),
        ("POST", f"/v1/collections/{coll}/records/scan", {}),
        ("POST", f"/v1/collections/{coll}/records", {"records": [{"id": "planted", "vector": [0, 1, 0]}]}),
        ("GET", "/v1/admin/keys", None),
        ("POST", "/v1/admin/keys", {"role": "admin"}),
    ]
    for method, path, body in attempts:
        r = httpx.request(method, s.base_url + path, json=body, headers=ha)
        assert r.status_code == 403 and _code(r) == "tenant_mismatch", (path, r.text)
        assert "secret-of-b" not in r.text
    # Its own tenant named explicitly is fine, and shows its own record only.
    own = httpx.get(
        f"{s.base_url}/v1/collections/{coll}/records/secret-of-a",
        headers={**s.headers(tenants["a_admin"]), "X-EngramDB-Tenant": tenants["a"]},
    )
    assert own.status_code == 200
    # Tenant B is untouched.
    hb = s.headers(tenants["b_admin"])
    assert httpx.get(f"{s.base_url}/v1/collections/{coll}/records/planted", headers=hb).status_code == 404

    stub = _stub(grpc_channel(s))
    md = _md(tenants["a_admin"], ("x-engramdb-tenant", tenants["b"]))
    _grpc_error(
        lambda: stub.Get(pb.GetRequest(coll=coll, ids=["secret-of-b"]), metadata=md, timeout=30),
        SC.PERMISSION_DENIED,
        "tenant_mismatch",
    )
    _grpc_error(
        lambda: stub.CreateKey(pb.CreateKeyRequest(role="admin"), metadata=md, timeout=30),
        SC.PERMISSION_DENIED,
        "tenant_mismatch",
    )
    _grpc_error(
        lambda: stub.ListKeys(pb.ListKeysRequest(), metadata=md, timeout=30), SC.PERMISSION_DENIED, "tenant_mismatch"
    )


def test_tenant_admin_cannot_create_keys_for_another_tenant(
    op_server: ServerProcess, tenants: dict[str, Any], grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: _key_tenant refuses a tenant in the create_key body other than the caller's."""
    s = op_server
    r = httpx.post(
        s.base_url + "/v1/admin/keys",
        json={"role": "admin", "tenant": tenants["b"]},
        headers=s.headers(tenants["a_admin"]),
    )
    assert r.status_code == 403 and _code(r) == "tenant_mismatch", r.text
    stub = _stub(grpc_channel(s))
    _grpc_error(
        lambda: stub.CreateKey(
            pb.CreateKeyRequest(role="admin", tenant=tenants["b"]), metadata=_md(tenants["a_admin"]), timeout=30
        ),
        SC.PERMISSION_DENIED,
        "tenant_mismatch",
    )


def test_metrics_are_for_the_operator_only(op_server: ServerProcess, tenants: dict[str, Any]) -> None:
    """Guard: check_access(ctx, "metrics") admits the bootstrap and metrics keys, not tenant keys."""
    s = op_server
    url = s.base_url + "/metrics"
    for label in ("a_admin", "a_reader"):
        r = httpx.get(url, headers=s.headers(tenants[label]))
        assert r.status_code == 403 and _code(r) == "permission_denied", (label, r.text)
        assert tenants["b"] not in r.text
    assert _code(httpx.get(url)) == "missing_api_key"
    assert httpx.get(url, headers=s.headers("edb_" + "x" * 43)).status_code == 401
    for key in (s.admin_key, METRICS_KEY):
        r = httpx.get(url, headers=s.headers(key))
        assert r.status_code == 200, r.text
        assert f'tenant="{tenants["b"]}"' in r.text  # the operator sees every tenant


def test_metrics_key_opens_nothing_else(
    op_server: ServerProcess, tenants: dict[str, Any], grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: check_access refuses the metrics principal for every operation."""
    s = op_server
    h = s.headers(METRICS_KEY)
    for method, path, body in (
        ("GET", "/v1/collections", None),
        ("GET", f"/v1/collections/{tenants['coll']}", None),
        ("GET", "/v1/admin/keys", None),
        ("POST", "/v1/admin/keys", {"role": "admin"}),
    ):
        r = httpx.request(method, s.base_url + path, json=body, headers=h)
        assert r.status_code == 403 and _code(r) == "permission_denied", (path, r.text)
    stub = _stub(grpc_channel(s))
    _grpc_error(
        lambda: stub.ListCollections(pb.ListCollectionsRequest(), metadata=_md(METRICS_KEY), timeout=30),
        SC.PERMISSION_DENIED,
        "permission_denied",
    )


def test_revoked_and_expired_keys_over_grpc(
    op_server: ServerProcess, grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guards: _verify refuses revoked and expired keys (REST is covered in tests/integration/test_auth.py)."""
    s = op_server
    revoked = _new_key(s, s.admin_key, role="admin")
    assert httpx.delete(f"{s.base_url}/v1/admin/keys/{revoked['id']}", headers=s.headers()).status_code == 200
    expiring = _new_key(s, s.admin_key, role="admin", expires_at=time.time() + 1.5)
    stub = _stub(grpc_channel(s))
    call = stub.ListCollections
    assert call(pb.ListCollectionsRequest(), metadata=_md(expiring["key"]), timeout=30) is not None
    _grpc_error(
        lambda: call(pb.ListCollectionsRequest(), metadata=_md(revoked["key"]), timeout=30),
        SC.UNAUTHENTICATED,
        "api_key_revoked",
    )
    time.sleep(max(0.0, expiring["expires_at"] - time.time() + 0.1))
    _grpc_error(
        lambda: call(pb.ListCollectionsRequest(), metadata=_md(expiring["key"]), timeout=30),
        SC.UNAUTHENTICATED,
        "api_key_expired",
    )


# ------------------------------------------------------------ duplicate headers
def test_duplicate_authorization_and_tenant_headers_are_refused_over_rest(
    op_server: ServerProcess, tenants: dict[str, Any]
) -> None:
    """Guard: a repeated Authorization or X-EngramDB-Tenant header is refused, whichever copy is valid."""
    s = op_server
    url = s.base_url + "/v1/collections"
    good, bad = f"Bearer {tenants['a_reader']}", "Bearer edb_" + "x" * 43
    for pair in ((good, good), (good, bad), (bad, good), (f"Bearer {s.admin_key}", good)):
        r = httpx.get(url, headers=[("Authorization", pair[0]), ("Authorization", pair[1])])
        assert r.status_code == 401 and _code(r) == "invalid_authorization", (pair, r.text)
    for pair in ((tenants["a"], tenants["a"]), (tenants["a"], tenants["b"]), (tenants["b"], tenants["a"])):
        r = httpx.get(
            url,
            headers=[
                ("Authorization", f"Bearer {s.admin_key}"),
                ("X-EngramDB-Tenant", pair[0]),
                ("x-engramdb-tenant", pair[1]),
            ],
        )
        assert r.status_code == 400 and _code(r) == "duplicate_header", (pair, r.text)
    assert httpx.get(url, headers=[("Authorization", good)]).status_code == 200


def test_duplicate_authorization_and_tenant_metadata_are_refused_over_grpc(
    op_server: ServerProcess, tenants: dict[str, Any], grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    s = op_server
    stub = _stub(grpc_channel(s))
    good, bad = f"Bearer {tenants['a_reader']}", "Bearer edb_" + "x" * 43
    for pair in ((good, good), (good, bad), (bad, good)):
        md = (("authorization", pair[0]), ("authorization", pair[1]))
        _grpc_error(
            lambda md=md: stub.ListCollections(pb.ListCollectionsRequest(), metadata=md, timeout=30),
            SC.UNAUTHENTICATED,
            "invalid_authorization",
        )
    md = _md(s.admin_key, ("x-engramdb-tenant", tenants["a"]), ("x-engramdb-tenant", tenants["b"]))
    _grpc_error(
        lambda: stub.ListCollections(pb.ListCollectionsRequest(), metadata=md, timeout=30),
        SC.INVALID_ARGUMENT,
        "duplicate_header",
    )


# ------------------------------------------------------------ malformed gRPC
def test_malformed_protobuf_is_parsed_after_auth_and_logged_once(
    op_server: ServerProcess, tenants: dict[str, Any], grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: the servicer parses after authentication; malformed → INVALID_ARGUMENT, no traceback flood."""
    s = op_server
    ch = grpc_channel(s)
    count, upsert = _raw(ch, "Count"), _raw(ch, "Upsert")
    # Before authentication: the caller learns nothing but that it needs a key.
    _grpc_error(lambda: count(GARBAGE, timeout=30), SC.UNAUTHENTICATED, "missing_api_key")
    _grpc_error(
        lambda: count(GARBAGE, metadata=_md("edb_" + "x" * 43), timeout=30), SC.UNAUTHENTICATED, "invalid_api_key"
    )
    # The role is checked before the message is even parsed.
    _grpc_error(
        lambda: upsert(GARBAGE, metadata=_md(tenants["a_reader"]), timeout=30),
        SC.PERMISSION_DENIED,
        "permission_denied",
    )
    # Authenticated: a clear INVALID_ARGUMENT, many times over.
    for _ in range(40):
        body = _grpc_error(
            lambda: count(GARBAGE, metadata=_md(tenants["a_reader"]), timeout=30),
            SC.INVALID_ARGUMENT,
            "malformed_request",
        )
    assert "CountRequest" in body["message"]
    # A well-formed message on the same raw path still works.
    ok = count(pb.CountRequest(coll=tenants["coll"]).SerializeToString(), metadata=_md(tenants["a_reader"]), timeout=30)
    assert pb.CountResponse.FromString(ok).count == 1
    time.sleep(0.3)  # let the log lines reach the file
    logs = s.log_text()
    assert "Traceback" not in logs and "Exception deserializing" not in logs
    assert logs.count("malformed /engramdb.v1.EngramDB/") == 1, logs[-3000:]


# ----------------------------------------------------------------- limits
def test_malformed_protobuf_counts_against_the_per_ip_limit(
    server_factory: ServerFactory, grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: the per-IP limit applies before parsing (a garbage flood gets RESOURCE_EXHAUSTED)."""
    s = server_factory(
        env={
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "1",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "10",
        },
        wait="health",
    )
    count = _raw(grpc_channel(s), "Count")
    statuses = []
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as info:
            count(GARBAGE, metadata=_md(s.admin_key), timeout=30)
        statuses.append(info.value.code())  # type: ignore[attr-defined]
    assert set(statuses) == {SC.INVALID_ARGUMENT, SC.RESOURCE_EXHAUSTED}, statuses
    assert statuses[-1] == SC.RESOURCE_EXHAUSTED


def test_auth_failures_are_throttled_over_grpc(
    server_factory: ServerFactory, grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: the auth-failure throttle (REST is covered in tests/integration/test_auth.py)."""
    s = server_factory(env={"ENGRAMDB_SERVER__RATE_LIMITS__AUTH_FAILURES_PER_MINUTE": "3"}, wait="health")
    stub = _stub(grpc_channel(s))

    def call(key: str) -> Any:
        return stub.ListCollections(pb.ListCollectionsRequest(), metadata=_md(key), timeout=30)

    for _ in range(3):
        _grpc_error(lambda: call("edb_" + "x" * 43), SC.UNAUTHENTICATED, "invalid_api_key")
    _grpc_error(lambda: call("edb_" + "x" * 43), SC.RESOURCE_EXHAUSTED, "auth_throttled")
    _grpc_error(lambda: call(ADMIN_KEY), SC.RESOURCE_EXHAUSTED, "auth_throttled")  # a valid key too


# ------------------------------------------------------- anonymous callers
def _auto(server_factory: ServerFactory, admin_key: str | None, **kw: Any) -> ServerProcess:
    return server_factory(
        env={"ENGRAMDB_SERVER__AUTH": "auto", **RELAXED, **kw.pop("env", {})}, admin_key=admin_key, wait="health", **kw
    )


def test_dev_mode_anonymous_is_confined_to_default_until_the_first_key(
    server_factory: ServerFactory, grpc_channel: Callable[[ServerProcess], grpc.Channel], tmp_path: Any
) -> None:
    """Guards: anonymous confinement to tenant default; no keys for other tenants; the first key turns auth on."""
    data = tmp_path / "dev"
    s = _auto(server_factory, None, data_dir=data)
    assert "development mode" in s.log_text()
    base = s.base_url
    stub = _stub(grpc_channel(s))
    # Anonymous works on tenant default (explicitly named too), over both transports.
    assert httpx.post(base + "/v1/collections", json={"name": "mine", "dimension": 3}).status_code == 201
    assert httpx.get(base + "/v1/collections", headers={"X-EngramDB-Tenant": "default"}).status_code == 200
    assert stub.Count(pb.CountRequest(coll="mine"), timeout=30).count == 0
    assert httpx.get(base + "/metrics").status_code == 200  # the local operator
    # ... and nowhere else.
    for method, path, body in (
        ("GET", "/v1/collections", None),
        ("POST", "/v1/collections", {"name": "theirs", "dimension": 3}),
        ("GET", "/v1/admin/keys", None),
        ("POST", "/v1/admin/keys", {"role": "admin"}),
    ):
        r = httpx.request(method, base + path, json=body, headers={"X-EngramDB-Tenant": "victim"})
        assert r.status_code == 403 and _code(r) == "tenant_not_allowed", (path, r.text)
    md = (("x-engramdb-tenant", "victim"),)
    _grpc_error(
        lambda: stub.ListCollections(pb.ListCollectionsRequest(), metadata=md, timeout=30),
        SC.PERMISSION_DENIED,
        "tenant_not_allowed",
    )
    r = httpx.post(base + "/v1/admin/keys", json={"role": "admin", "tenant": "victim"})
    assert r.status_code == 403 and _code(r) == "tenant_mismatch", r.text
    _grpc_error(
        lambda: stub.CreateKey(pb.CreateKeyRequest(role="admin", tenant="victim"), timeout=30),
        SC.PERMISSION_DENIED,
        "tenant_mismatch",
    )
    # A wrong key is still a 401 in development mode, never silently an admin.
    assert httpx.get(base + "/v1/collections", headers=s.headers("edb_" + "x" * 43)).status_code == 401

    # The first key (of tenant default) switches authentication on, over both transports.
    first = _new_key(s, None, role="admin")
    assert first["tenant"] == "default"
    for path in ("/v1/collections", "/metrics"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and _code(r) == "missing_api_key", (path, r.text)
    _grpc_error(lambda: stub.Count(pb.CountRequest(coll="mine"), timeout=30), SC.UNAUTHENTICATED, "missing_api_key")
    _grpc_error(lambda: _raw(grpc_channel(s), "Count")(GARBAGE, timeout=30), SC.UNAUTHENTICATED, "missing_api_key")
    assert httpx.get(base + "/v1/collections", headers=s.headers(first["key"])).status_code == 200
    # It is an admin of tenant default, not the operator.
    assert httpx.get(base + "/metrics", headers=s.headers(first["key"])).status_code == 403
    s.stop()

    # After a restart the stored key keeps authentication on.
    again = _auto(server_factory, None, data_dir=data)
    assert httpx.get(again.base_url + "/v1/collections").status_code == 401
    assert "API keys are stored" in again.log_text()
    _grpc_error(
        lambda: _stub(grpc_channel(again)).Count(pb.CountRequest(coll="mine"), timeout=30),
        SC.UNAUTHENTICATED,
        "missing_api_key",
    )


@pytest.mark.parametrize("which", ["admin", "metrics"])
def test_auto_on_loopback_requires_a_key_when_one_is_configured(
    server_factory: ServerFactory, grpc_channel: Callable[[ServerProcess], grpc.Channel], which: str
) -> None:
    """Guard: a configured bootstrap (or metrics) key turns authentication on, even on loopback."""
    if which == "admin":
        s = _auto(server_factory, ADMIN_KEY)
        assert "a bootstrap admin key is configured" in s.log_text()
    else:
        s = _auto(server_factory, None, env={"ENGRAMDB_METRICS_KEY": METRICS_KEY})
        assert "a metrics key is configured" in s.log_text()
    base = s.base_url
    for method, path, body in (
        ("GET", "/v1/collections", None),
        ("POST", "/v1/admin/keys", {"role": "admin"}),
        ("POST", "/v1/admin/keys", {"role": "admin", "tenant": "victim"}),
        ("GET", "/metrics", None),
    ):
        for headers in ({}, {"X-EngramDB-Tenant": "victim"}):
            r = httpx.request(method, base + path, json=body, headers=headers)
            assert r.status_code == 401 and _code(r) == "missing_api_key", (path, headers, r.text)
    stub = _stub(grpc_channel(s))
    _grpc_error(
        lambda: stub.CreateKey(pb.CreateKeyRequest(role="admin", tenant="victim"), timeout=30),
        SC.UNAUTHENTICATED,
        "missing_api_key",
    )
    if which == "admin":
        assert httpx.get(base + "/v1/collections", headers=s.headers(ADMIN_KEY)).status_code == 200


def test_auth_disabled_serves_tenant_default_only(
    server_factory: ServerFactory, grpc_channel: Callable[[ServerProcess], grpc.Channel]
) -> None:
    """Guard: with auth disabled, everyone is the admin of tenant default and of no other tenant."""
    s = server_factory(env={"ENGRAMDB_SERVER__AUTH": "disabled", **RELAXED}, admin_key=ADMIN_KEY, wait="health")
    base = s.base_url
    assert "auth disabled" in s.log_text()
    assert httpx.get(base + "/v1/collections").status_code == 200
    # Keys are ignored, the bootstrap key included: it cannot pick a tenant either.
    for headers in ({"X-EngramDB-Tenant": "victim"}, {**s.headers(ADMIN_KEY), "X-EngramDB-Tenant": "victim"}):
        r = httpx.get(base + "/v1/collections", headers=headers)
        assert r.status_code == 403 and _code(r) == "tenant_not_allowed", r.text
    r = httpx.post(base + "/v1/admin/keys", json={"role": "admin", "tenant": "victim"})
    assert r.status_code == 403 and _code(r) == "tenant_mismatch", r.text
    stub = _stub(grpc_channel(s))
    _grpc_error(
        lambda: stub.ListCollections(pb.ListCollectionsRequest(), metadata=(("x-engramdb-tenant", "v"),), timeout=30),
        SC.PERMISSION_DENIED,
        "tenant_not_allowed",
    )
    assert httpx.get(base + "/metrics").status_code == 200
