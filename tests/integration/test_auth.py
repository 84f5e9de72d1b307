"""Authentication, authorization, tenancy and limits, over every route of a real server."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import ADMIN_KEY, ServerProcess, unique_name
from engramdb.server.rest.routes import ROUTES, RouteSpec

# A valid body for every operation, so that statuses below come from auth and tenancy, not validation.
BODIES: dict[str, dict[str, Any] | None] = {
    "create_collection": {"name": "PLACEHOLDER", "dimension": 3},
    "list_collections": None,
    "get_collection": None,
    "delete_collection": None,
    "upsert": {"records": [{"id": "r1", "vector": [1, 0, 0]}]},
    "get": {"ids": ["r1"]},
    "get_one": None,
    "patch": {"metadata": {"x": 1}},
    "delete": {"ids": ["zz"]},
    "delete_one": None,
    "scan": {},
    "count": {},
    "refresh_ttl": {"ids": ["r1"]},
    "search": {"vector": [1, 0, 0]},
    "list_namespaces": {},
    "link": {"edges": [{"src": "r1", "relation": "self", "dst": "r1"}]},
    "unlink": {"edges": [{"src": "r1", "relation": "self", "dst": "r1"}]},
    "edges": {"id": "r1"},
    "neighbors": {"id": "r1"},
    "subgraph": {"ids": ["r1"]},
    "extract": {"text": "Ada Lovelace wrote about the Analytical Engine."},
    "create_key": {"role": "reader"},
    "erase_tenant": {"confirm": "not-the-tenant"},  # never erases: the matrix's tenants stay
    "alter_collection": {"ef_search": 64},
    "create_backup": {"name": "matrix"},
    "list_backups": None,
    "verify_backup": None,
    "list_keys": None,
    "revoke_key": None,
    "rotate_key": {},
    "stats": None,
}
WRITER_OPS = {
    "create_collection", "delete_collection", "upsert", "patch", "delete", "delete_one", "refresh_ttl", "link",
    "unlink", "extract", "alter_collection",
}  # fmt: skip
ADMIN_OPS = {
    "create_key", "list_keys", "revoke_key", "rotate_key", "erase_tenant", "create_backup", "list_backups",
    "verify_backup", "stats",
}  # fmt: skip
COLLECTION_OPS = [r for r in ROUTES if "{coll}" in r.path]


@dataclass
class World:
    """Two tenants with keys of every kind, created through the admin API."""

    server: ServerProcess
    tenant_a: str
    coll_a: str
    coll_a2: str
    keys: dict[str, str]  # label -> secret
    ids: dict[str, str]  # label -> key id
    http: httpx.Client  # one keep-alive connection pool for the whole matrix

    def url(self, r: RouteSpec, coll: str | None = None, key_id: str | None = None) -> str:
        path = (
            r.path.replace("{coll}", coll or self.coll_a)
            .replace("{id:path}", "r1")
            .replace("{tenant}", self.tenant_a)
            .replace("{name}", "matrix")
        )
        return self.server.base_url + path.replace("{key_id}", key_id or self.ids["a_reader"])

    def call(self, r: RouteSpec, key: str | None, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        body = BODIES[r.op]
        if r.op == "create_collection":
            body = {"name": kw.pop("coll", None) or unique_name("new"), "dimension": 3}
        url = self.url(r, kw.pop("coll", None), kw.pop("key_id", None)) + kw.pop("query", "")
        return self.http.request(r.method, url, json=body, headers=headers)


def _make_key(admin: httpx.Client, **body: Any) -> tuple[str, str]:
    r = admin.post("/v1/admin/keys", json=body)
    assert r.status_code == 200, r.text
    return r.json()["key"], r.json()["id"]


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> Iterator[World]:
    ta, tb = unique_name("ta"), unique_name("tb")
    coll_a, coll_a2 = unique_name("ca"), unique_name("ca2")
    keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    expires = time.time() + 3.0  # created first, expired by the time the tests run
    specs: dict[str, dict[str, Any]] = {
        "a_expired": {"role": "admin", "tenant": ta, "expires_at": expires},
        "a_admin": {"role": "admin", "tenant": ta},
        "a_writer": {"role": "writer", "tenant": ta},
        "a_reader": {"role": "reader", "tenant": ta},
        "a_scoped": {"role": "writer", "tenant": ta, "collections": [coll_a]},
        "a_revoked": {"role": "admin", "tenant": ta},
        "b_admin": {"role": "admin", "tenant": tb},
    }
    with server.client() as admin:
        for label, body in specs.items():
            keys[label], ids[label] = _make_key(admin, **body)
        assert admin.delete(f"/v1/admin/keys/{ids['a_revoked']}", headers={"X-EngramDB-Tenant": ta}).status_code == 200
    with server.client(keys["a_writer"]) as w:
        for c in (coll_a, coll_a2):
            assert w.post("/v1/collections", json={"name": c, "dimension": 3}).status_code == 201
            w.post(f"/v1/collections/{c}/records", json={"records": [{"id": "r1", "vector": [1, 0, 0]}]})
    time.sleep(max(0.0, expires - time.time() + 0.05))
    with httpx.Client(timeout=30) as http:
        yield World(server, ta, coll_a, coll_a2, keys, ids, http)


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


# --------------------------------------------------------------- credentials
@pytest.mark.parametrize(
    ("cred", "code"),
    [
        (None, "missing_api_key"),
        ("edb_" + "x" * 43, "invalid_api_key"),
        ("not-even-a-key", "invalid_api_key"),
        ("a_revoked", "api_key_revoked"),
        ("a_expired", "api_key_expired"),
    ],
)
def test_bad_credentials_get_401_on_every_route(world: World, cred: str | None, code: str) -> None:
    key = world.keys.get(cred, cred) if cred else None
    for r in ROUTES:
        resp = world.call(r, key)
        assert resp.status_code == 401, (r.op, resp.text)
        assert _code(resp) == code
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_malformed_authorization_headers(world: World) -> None:
    url = world.server.base_url + "/v1/collections"
    key = world.keys["a_reader"]
    for value in (f"Basic {key}", key, "Bearer", f"Bearer {key} extra", f"Token {key}"):
        r = httpx.get(url, headers={"Authorization": value})
        assert r.status_code == 401, value
        assert _code(r) == "invalid_authorization"
    for value in (f"bearer {key}", f"BEARER {key}", f"Bearer   {key}"):
        assert httpx.get(url, headers={"Authorization": value}).status_code == 200, value


@pytest.mark.parametrize("name", ["authorization", "AUTHORIZATION", "Authorization", "aUtHoRiZaTiOn"])
def test_authorization_header_name_is_case_insensitive(world: World, name: str) -> None:
    # Raw HTTP so the header name reaches the server exactly as written.
    s = world.server
    req = (
        f"GET /v1/collections HTTP/1.1\r\nHost: {s.host}\r\n{name}: Bearer {world.keys['a_reader']}\r\n"
        "Connection: close\r\n\r\n"
    )
    with socket.create_connection((s.host, s.port), timeout=10) as sock:
        sock.sendall(req.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_keys_in_query_string_are_refused(world: World) -> None:
    key = world.keys["a_admin"]
    for r in ROUTES:
        for q in (f"?api_key={key}", f"?token={key}", f"?Authorization=Bearer%20{key}", f"?x={key}"):
            resp = world.call(r, None, query=q)
            assert resp.status_code == 400, (r.op, q, resp.text)
            assert _code(resp) == "credential_in_query"
            assert key not in resp.text
    # Even with a valid header, a key in the URL is refused.
    r0 = ROUTES[1]
    assert world.call(r0, key, query=f"?api_key={key}").status_code == 400
    assert httpx.get(world.server.base_url + f"/metrics?api_key={key}").status_code == 400


# ------------------------------------------------------------------- roles
def test_reader_cannot_write_or_administer(world: World) -> None:
    for r in ROUTES:
        resp = world.call(r, world.keys["a_reader"])
        if r.op in WRITER_OPS | ADMIN_OPS:
            assert resp.status_code == 403, (r.op, resp.text)
            assert _code(resp) == "permission_denied"
        else:
            assert resp.status_code == 200, (r.op, resp.text)


def test_writer_cannot_administer(world: World) -> None:
    for r in ROUTES:
        if r.op in ADMIN_OPS:
            resp = world.call(r, world.keys["a_writer"])
            assert resp.status_code == 403, (r.op, resp.text)
    assert httpx.get(world.server.base_url + "/metrics", headers=world.server.headers(world.keys["a_writer"])) \
        .status_code == 403  # fmt: skip


# ----------------------------------------------------------------- tenancy
def test_other_tenants_collections_are_invisible(world: World) -> None:
    key = world.keys["b_admin"]
    for r in COLLECTION_OPS:
        resp = world.call(r, key)
        assert resp.status_code == 404, (r.op, resp.text)
        assert _code(resp) == "collection_not_found"
    for r in ROUTES:
        if r.op in ("revoke_key", "rotate_key"):  # tenant A's key id, named by tenant B's admin
            resp = world.call(r, key)
            assert resp.status_code == 404 and _code(resp) == "key_not_found", resp.text
    with world.server.client(key) as b:
        assert world.coll_a not in [c["name"] for c in b.get("/v1/collections").json()["collections"]]
        keys_b = b.get("/v1/admin/keys").json()["keys"]
        assert all(k["tenant"] != world.tenant_a for k in keys_b)
        ids_b = {k["id"] for k in keys_b}
        assert world.ids["a_reader"] not in ids_b and world.ids["b_admin"] in ids_b
    # And tenant A's collection is still intact.
    with world.server.client(world.keys["a_reader"]) as a:
        assert a.get(f"/v1/collections/{world.coll_a}/records/r1").status_code == 200


def test_tenant_header(world: World) -> None:
    s = world.server
    tenant_a = world.tenant_a
    # The bootstrap admin key picks the tenant per request.
    r = httpx.get(s.base_url + "/v1/collections", headers={**s.headers(), "X-EngramDB-Tenant": tenant_a})
    assert {world.coll_a, world.coll_a2} <= {c["name"] for c in r.json()["collections"]}
    assert world.coll_a not in [c["name"] for c in httpx.get(s.base_url + "/v1/collections",
                                                               headers=s.headers()).json()["collections"]]  # fmt: skip
    # A tenant's key naming another tenant is refused; naming its own is fine.
    h = s.headers(world.keys["a_writer"])
    assert httpx.get(s.base_url + "/v1/collections", headers={**h, "X-EngramDB-Tenant": "default"}).status_code == 403
    assert httpx.get(s.base_url + "/v1/collections", headers={**h, "X-EngramDB-Tenant": tenant_a}).status_code == 200
    assert httpx.get(s.base_url + "/v1/collections", headers={**h, "X-EngramDB-Tenant": "bad name"}).status_code == 400
    # A tenant admin creates keys only for its own tenant.
    ha = s.headers(world.keys["a_admin"])
    assert httpx.post(s.base_url + "/v1/admin/keys", json={"role": "reader", "tenant": "default"}, headers=ha) \
        .status_code == 403  # fmt: skip


def test_collection_scope(world: World) -> None:
    with world.server.client(world.keys["a_scoped"]) as c:
        assert c.get(f"/v1/collections/{world.coll_a}/records/r1").status_code == 200
        r = c.get(f"/v1/collections/{world.coll_a2}/records/r1")
        assert r.status_code == 403 and _code(r) == "collection_not_in_scope"
        names = [x["name"] for x in c.get("/v1/collections").json()["collections"]]
        assert names == [world.coll_a]
        assert c.post("/v1/collections", json={"name": unique_name(), "dimension": 3}).status_code == 403


def test_rotation_grace(world: World) -> None:
    s = world.server
    with s.client() as admin:
        tenant = unique_name("rot")
        old, old_id = _make_key(admin, role="reader", tenant=tenant)
        h = {"X-EngramDB-Tenant": tenant}
        graceful = admin.post(f"/v1/admin/keys/{old_id}/rotate", json={"grace_seconds": 60}, headers=h).json()
        for k in (old, graceful["key"]):
            assert httpx.get(s.base_url + "/v1/collections", headers=s.headers(k)).status_code == 200
        immediate = admin.post(f"/v1/admin/keys/{graceful['id']}/rotate", json={"grace_seconds": 0}, headers=h)
        assert immediate.status_code == 200
    r = httpx.get(s.base_url + "/v1/collections", headers=s.headers(graceful["key"]))
    assert r.status_code == 401 and _code(r) == "api_key_expired"
    assert httpx.get(s.base_url + "/v1/collections", headers=s.headers(immediate.json()["key"])).status_code == 200


# ------------------------------------------------------------------- limits
def _client_from(s: ServerProcess, ip: str, key: str | None) -> httpx.Client:
    # Every 127.0.0.0/8 address is loopback on Linux: a distinct source address per test.
    return httpx.Client(
        base_url=s.base_url,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        transport=httpx.HTTPTransport(local_address=ip),
        timeout=30,
    )


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import start_server

    sp = start_server(
        tmp_path_factory.mktemp("limited") / "data",
        env={
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "5",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "10",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "10",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "20",
            "ENGRAMDB_SERVER__RATE_LIMITS__AUTH_FAILURES_PER_MINUTE": "5",
        },
        wait="health",
    )
    yield sp
    sp.stop()


def _burst(client: httpx.Client, n: int, call: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    return [call(client) for _ in range(n)]


def test_key_rate_limit(limited: ServerProcess) -> None:
    with _client_from(limited, "127.0.0.10", ADMIN_KEY) as admin:
        key, _ = _make_key(admin, role="reader")  # its own bucket, so other tests keep the admin key's tokens
    with _client_from(limited, "127.0.0.11", key) as c:
        got = _burst(c, 18, lambda c: c.get("/v1/collections"))
        statuses = [r.status_code for r in got]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 10 and 429 in statuses, statuses
        limited_resp = next(r for r in got if r.status_code == 429)
        assert _code(limited_resp) == "rate_limited"
        retry = int(limited_resp.headers["retry-after"])
        assert 1 <= retry <= 2 and limited_resp.json()["error"]["details"]["retry_after"] >= 1
        time.sleep(retry)
        assert c.get("/v1/collections").status_code == 200


def test_ip_rate_limit(limited: ServerProcess) -> None:
    with _client_from(limited, "127.0.0.12", None) as c:
        statuses = [r.status_code for r in _burst(c, 30, lambda c: c.get("/v1/collections"))]
    # Unauthenticated requests count against the address: 401s first, then 429s; never a 5xx.
    assert set(statuses) <= {401, 429} and statuses[:20] == [401] * 20 and 429 in statuses, statuses


def test_auth_failures_are_throttled(limited: ServerProcess) -> None:
    with _client_from(limited, "127.0.0.13", "edb_wrong" + "x" * 30) as bad:
        statuses = [r.status_code for r in _burst(bad, 7, lambda c: c.get("/v1/collections"))]
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
        r = bad.get("/v1/collections")
        assert _code(r) == "auth_throttled" and int(r.headers["retry-after"]) >= 1
    # The throttled address is blocked even with a valid key; other addresses are not.
    with _client_from(limited, "127.0.0.13", ADMIN_KEY) as same_ip:
        assert same_ip.get("/v1/collections").status_code == 429
    with _client_from(limited, "127.0.0.14", ADMIN_KEY) as other_ip:
        assert other_ip.get("/v1/collections").status_code == 200


# ------------------------------------------------------------------ secrets
def test_canary_secret_never_leaks(server: ServerProcess) -> None:
    with server.client() as admin:
        canary, canary_id = _make_key(admin, role="writer", name="canary")
        revoked_canary, rid = _make_key(admin, role="reader")
        admin.delete(f"/v1/admin/keys/{rid}").raise_for_status()
    fake_canary = "edb_CANARY_" + "z" * 32
    bodies: list[str] = []
    with server.client(canary) as c:
        coll = unique_name("canary")
        c.post("/v1/collections", json={"name": coll, "dimension": 3}).raise_for_status()
        for r in (
            c.post(f"/v1/collections/{coll}/records", json={"records": [{"id": "x", "vector": [1, 2]}]}),
            c.get(f"/v1/collections/{coll}/records/nope"),
            c.get("/v1/admin/keys"),
            c.get(f"/v1/collections?api_key={canary}"),
            c.post(
                f"/v1/collections/{coll}/records", content=b"{bad json", headers={"Content-Type": "application/json"}
            ),
        ):
            assert r.status_code >= 400
            bodies.append(r.text)
    for secret in (fake_canary, revoked_canary, f"Basic {canary}"):
        r = httpx.get(server.base_url + "/v1/collections", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401
        bodies.append(r.text)
    metrics = httpx.get(server.base_url + "/metrics", headers=server.headers()).text
    time.sleep(0.2)  # let the last log lines reach the file
    logs = server.log_text()
    assert canary_id in logs  # the key id may be logged; the secret may not
    for secret in (canary, fake_canary, revoked_canary, ADMIN_KEY):
        assert secret not in logs
        assert secret not in metrics
        assert all(secret not in b for b in bodies)
