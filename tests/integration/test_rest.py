"""Every REST operation end to end against a real server, with its errors and statuses."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, unique_name
from engramdb.server.rest.routes import ROUTES

JSON = {"Content-Type": "application/json"}


def _err(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def coll(admin: httpx.Client) -> str:
    name = unique_name("rest")
    r = admin.post("/v1/collections", json={"name": name, "dimension": 3, "indexed_fields": {"kind": "keyword"}})
    assert r.status_code == 201, r.text
    return name


def _records() -> list[dict[str, Any]]:
    return [
        {"id": "a", "vector": [1, 0, 0], "text": "the quick brown fox", "metadata": {"kind": "x", "n": 1}},
        {"id": "b", "vector": [0, 1, 0], "text": "lazy dogs sleep", "metadata": {"kind": "y", "n": 2},
         "namespace": ["u1", "mem"]},
        {"id": "c", "vector": [0, 0, 1], "text": "a brown dog", "metadata": {"kind": "x", "n": 3},
         "namespace": ["u1", "notes"], "ttl_seconds": 3600},
        {"id": "dir/with slash", "vector": [1, 1, 0], "metadata": {"kind": "z"}, "namespace": ["u2"]},
    ]  # fmt: skip


# ---------------------------------------------------------------- service endpoints
def test_health_ready_openapi(server: ServerProcess) -> None:
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.base_url + "/ready").json() == {"status": "ready"}
    doc = httpx.get(server.base_url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        op = doc["paths"][r.openapi_path][r.method.lower()]
        assert op["operationId"] == r.op
        assert str(r.status) in op["responses"]
        if r.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert httpx.get(server.base_url + "/docs").status_code == 200


def test_metrics_show_operations_and_storage(server: ServerProcess, admin: httpx.Client, coll: str) -> None:
    admin.post(f"/v1/collections/{coll}/records", json={"records": _records()}).raise_for_status()
    admin.post(f"/v1/collections/{coll}/search", json={"vector": [1, 0, 0]}).raise_for_status()
    text = admin.get("/metrics").text
    assert 'engramdb_operation_duration_seconds_bucket{le="0.005",op="upsert",status="ok"}' in text
    assert 'engramdb_operations_total{op="search",status="ok"}' in text
    assert f'engramdb_collection_records{{collection="{coll}",tenant="default"}} 4.0' in text
    assert "engramdb_http_requests_total{" in text
    assert "engramdb_ready 1.0" in text
    # Without a key: auth is required on this server.
    assert httpx.get(server.base_url + "/metrics").status_code == 401


# --------------------------------------------------------------------- collections
def test_collection_lifecycle(admin: httpx.Client) -> None:
    name = unique_name("life")
    r = admin.post("/v1/collections", json={"name": name, "dimension": 4, "metric": "l2", "index": {"m": 8}})
    assert r.status_code == 201
    cfg = r.json()["collection"]
    assert cfg["name"] == name and cfg["dimension"] == 4 and cfg["metric"] == "l2" and cfg["index"]["m"] == 8
    _err(admin.post("/v1/collections", json={"name": name, "dimension": 4}), 409, "collection_exists")
    same = {"name": name, "dimension": 4, "metric": "l2", "index": {"m": 8}, "exist_ok": True}
    assert admin.post("/v1/collections", json=same).status_code == 201
    assert name in [c["name"] for c in admin.get("/v1/collections").json()["collections"]]
    got = admin.get(f"/v1/collections/{name}").json()
    assert got["count"] == 0 and got["collection"] == cfg
    assert admin.delete(f"/v1/collections/{name}").json() == {"deleted": True}
    _err(admin.get(f"/v1/collections/{name}"), 404, "collection_not_found")
    _err(admin.delete(f"/v1/collections/{name}"), 404, "collection_not_found")


def test_create_collection_validation(admin: httpx.Client) -> None:
    _err(admin.post("/v1/collections", json={"name": "bad name!", "dimension": 3}), 400, "invalid_config")
    _err(admin.post("/v1/collections", json={"name": unique_name(), "dimension": 0}), 400)
    _err(admin.post("/v1/collections", json={"name": unique_name(), "dimension": "3"}), 400)
    _err(admin.post("/v1/collections", json={"name": unique_name(), "dimension": 3, "metrik": "l2"}), 400)
    _err(admin.post("/v1/collections", json={"name": unique_name(), "dimension": 3, "index": {"m": "16"}}), 400)
    _err(admin.post("/v1/collections", json={"name": unique_name()}), 400)  # no dimension, no embedder


# ------------------------------------------------------------------------- records
def test_records_roundtrip(admin: httpx.Client, coll: str) -> None:
    base = f"/v1/collections/{coll}"
    r = admin.post(base + "/records", json={"records": _records()})
    assert r.status_code == 200 and len(r.json()["versions"]) == 4

    got = admin.post(base + "/records/get", json={"ids": ["a", "missing", "b"], "include": ["metadata"]}).json()
    assert [x["id"] for x in got["records"]] == ["a", "b"]
    assert got["records"][0]["metadata"] == {"kind": "x", "n": 1} and got["records"][0]["vector"] is None

    one = admin.get(base + "/records/a").json()["record"]
    assert one["vector"] == [1.0, 0.0, 0.0] and one["text"] == "the quick brown fox" and one["created_at"]
    assert admin.get(base + "/records/c").json()["record"]["ttl_seconds"] == 3600
    slim = admin.get(base + "/records/a", params=[("include", "text"), ("include", "namespace")]).json()["record"]
    assert slim["text"] and slim["vector"] is None and slim["metadata"] == {}
    assert admin.get(base + "/records/a?include=metadata,text").json()["record"]["metadata"]["n"] == 1
    assert admin.get(base + "/records/dir%2Fwith%20slash").json()["record"]["id"] == "dir/with slash"
    _err(admin.get(base + "/records/nope"), 404, "record_not_found")
    _err(admin.get(base + "/records/a?include=bogus"), 400)

    patched = admin.patch(base + "/records/a", json={"metadata": {"n": None, "new": True}, "importance": 0.5})
    assert patched.status_code == 200
    rec = patched.json()["record"]
    assert rec["metadata"] == {"kind": "x", "new": True} and rec["importance"] == 0.5
    _err(admin.patch(base + "/records/nope", json={"text": "x"}), 404, "record_not_found")

    assert admin.post(base + "/count", json={}).json() == {"count": 4}
    assert admin.post(base + "/count", json={"filter": {"kind": "x"}}).json() == {"count": 2}
    # An empty body = no parameters (still declared JSON: JSON endpoints refuse other content types).
    assert admin.post(base + "/count", headers=JSON).json() == {"count": 4}

    page1 = admin.post(base + "/records/scan", json={"limit": 3, "include": []}).json()
    assert len(page1["records"]) == 3 and page1["next_cursor"]
    page2 = admin.post(base + "/records/scan", json={"limit": 3, "cursor": page1["next_cursor"]}).json()
    assert len(page2["records"]) == 1 and page2["next_cursor"] is None
    ids = sorted(x["id"] for x in page1["records"] + page2["records"])
    assert ids == ["a", "b", "c", "dir/with slash"]
    ns = admin.post(base + "/records/scan", json={"namespace_prefix": ["u1"]}).json()["records"]
    assert sorted(x["id"] for x in ns) == ["b", "c"]

    spaces = admin.post(base + "/namespaces", json={"prefix": ["u1"]}).json()["namespaces"]
    assert spaces == [["u1", "mem"], ["u1", "notes"]]
    assert admin.post(base + "/namespaces", json={"max_depth": 1}).json()["namespaces"] == [["u1"], ["u2"]]

    before = admin.get(base + "/records/c?include=expires_at").json()["record"]["expires_at"]
    time.sleep(0.01)
    assert admin.post(base + "/records/refresh_ttl", json={"ids": ["c", "a", "zz"]}).json() == {"refreshed": 1}
    assert admin.get(base + "/records/c?include=expires_at").json()["record"]["expires_at"] > before

    assert admin.request("DELETE", base + "/records/b").json() == {"deleted": 1}
    assert admin.request("DELETE", base + "/records/b").json() == {"deleted": 0}
    assert admin.post(base + "/records/delete", json={"filter": {"kind": "z"}}).json() == {"deleted": 1}
    assert admin.post(base + "/records/delete", json={"ids": ["a", "c", "q"]}).json() == {"deleted": 2}
    assert admin.post(base + "/count", json={}).json() == {"count": 0}
    _err(admin.post(base + "/records/delete", json={}), 400)


def test_record_errors(admin: httpx.Client, coll: str) -> None:
    base = f"/v1/collections/{coll}"
    _err(admin.post(base + "/records", json={"records": [{"id": "x", "vector": [1, 0]}]}), 400, "dimension_mismatch")
    _err(admin.post(base + "/records", json={"records": [{"id": "x", "vector": [0, 0, 0]}]}), 400, "invalid_vector")
    _err(admin.post(base + "/records", json={"records": [{"id": "x"}]}), 400, "missing_vector")
    e = _err(admin.post(base + "/records", json={"records": [{"id": 1, "vector": ["a", 0, 0]}]}), 400)
    assert {p["field"] for p in e["details"]["errors"]} == {"records.0.id", "records.0.vector.0"}
    # Codes match what the embedded engine raises for the same mistake.
    _err(admin.post(base + "/records", json={"records": [{"id": "x", "vector": [1, 0, 0], "colour": 1}]}), 400,
         "invalid_record")  # fmt: skip
    _err(admin.post(base + "/records", json={"records": [{"id": "x", "vector": [1, 0, 0], "namespace": "a/b"}]}),
         400, "invalid_namespace")  # fmt: skip
    _err(admin.post(base + "/search", json={"vector": [1, 0, 0], "k": 0}), 400, "invalid_k")
    _err(admin.post(base + "/records/get", json={"ids": ["x"], "include": ["vectors"]}), 400, "invalid_include")
    _err(admin.post(base + "/records/get", json={"ids": ["x"] * 10_001}), 400, "batch_too_large")
    _err(admin.post(base + "/count", json={"filter": [1]}), 400, "invalid_filter")
    _err(admin.post(base + "/records", content=b"{not json", headers=JSON), 400, "invalid_json")
    _err(admin.post(base + "/records", content=b"[1, 2]", headers=JSON), 400, "invalid_json")
    _err(admin.post(base + "/records", json={"coll": "other", "records": []}), 400)
    _err(admin.post(base + "/count", json={"filter": {"n": {"$regex": "x"}}}), 400, "invalid_filter")
    _err(admin.post(base + "/records/scan", json={"cursor": "abc"}), 400, "invalid_cursor")
    _err(admin.post(base + "/records/scan", json={"limit": 0}), 400)
    _err(admin.post(base + "/count?x=1", json={}), 400)
    _err(admin.post("/v1/collections/nope-" + coll + "/records", json={"records": []}), 404, "collection_not_found")
    # Nothing of a rejected batch was written.
    assert admin.post(base + "/count", json={}).json() == {"count": 0}


def test_search_modes(admin: httpx.Client, coll: str) -> None:
    base = f"/v1/collections/{coll}"
    admin.post(base + "/records", json={"records": _records()}).raise_for_status()
    hits = admin.post(base + "/search", json={"vector": [1, 0.1, 0], "k": 2}).json()["hits"]
    assert [h["id"] for h in hits] == ["a", "dir/with slash"]
    assert hits[0]["record"]["text"] == "the quick brown fox" and hits[0]["record"]["vector"] is None
    flt = admin.post(base + "/search", json={"vector": [1, 0, 0], "k": 5, "filter": {"kind": "y"}}).json()["hits"]
    assert [h["id"] for h in flt] == ["b"]
    exact = admin.post(base + "/search", json={"vector": [0, 0, 1], "k": 1, "exact": True, "include": ["vector"]})
    assert exact.json()["hits"][0]["record"]["vector"] == [0.0, 0.0, 1.0]
    deadline = time.monotonic() + 5  # text search is near-real-time
    while True:
        text = admin.post(base + "/search", json={"text": "brown", "mode": "text", "k": 5}).json()["hits"]
        if len(text) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(h["id"] for h in text) == ["a", "c"]
    hyb = admin.post(base + "/search", json={"text": "brown dog", "vector": [0, 0, 1], "mode": "hybrid", "k": 3})
    assert hyb.json()["hits"][0]["id"] == "c"
    _err(admin.post(base + "/search", json={"vector": [1, 0, 0], "k": 0}), 400)
    _err(admin.post(base + "/search", json={"vector": [1, 0, 0], "mode": "magic"}), 400)
    _err(admin.post(base + "/search", json={"mode": "text"}), 400, "missing_text")
    _err(admin.post(base + "/search", json={"vector": [1, 0, 0], "expand": {"hops": 9}}), 400)


def test_graph(admin: httpx.Client, coll: str) -> None:
    base = f"/v1/collections/{coll}"
    admin.post(base + "/records", json={"records": _records()}).raise_for_status()
    edges = [
        {"src": "a", "relation": "knows", "dst": "b", "weight": 0.5},
        {"src": "b", "relation": "knows", "dst": "c", "properties": {"since": 2020}},
    ]
    r = admin.post(base + "/edges", json={"edges": edges})
    assert r.status_code == 200 and len(r.json()["versions"]) == 2
    _err(admin.post(base + "/edges", json={"edges": [{"src": "a", "relation": "r", "dst": "ghost"}]}), 404)
    assert admin.post(base + "/edges", json={"edges": [{"src": "a", "relation": "r", "dst": "ghost"}],
                                             "create_missing": True}).status_code == 200  # fmt: skip

    out = admin.post(base + "/edges/list", json={"id": "b", "direction": "both"}).json()["edges"]
    assert {(e["src"], e["dst"]) for e in out} == {("a", "b"), ("b", "c")}
    assert out[0]["version"]
    _err(admin.post(base + "/edges/list", json={"id": "nope"}), 404, "record_not_found")

    nb = admin.post(base + "/neighbors", json={"id": "a", "hops": 2}).json()["hits"]
    assert [(h["id"], h["hop"]) for h in nb] == [("b", 1), ("c", 2)]
    assert nb[1]["path"][0]["src"] == "a"
    sub = admin.post(base + "/subgraph", json={"ids": ["a"], "hops": 2}).json()
    assert sorted(n["id"] for n in sub["nodes"]) == ["a", "b", "c"] and len(sub["edges"]) == 2

    exp = admin.post(base + "/search", json={"vector": [1, 0, 0], "k": 1, "expand": {"hops": 1}}).json()["hits"]
    assert [h["id"] for h in exp][:2] == ["a", "b"]

    assert admin.post(base + "/edges/delete", json={"edges": [{"src": "a", "relation": "knows", "dst": "b"}]}).json() \
        == {"deleted": 1}  # fmt: skip
    assert admin.post(base + "/neighbors", json={"id": "a"}).json()["hits"] == []


# --------------------------------------------------------------------- transport
def test_routing_errors_are_json(server: ServerProcess, admin: httpx.Client) -> None:
    _err(admin.get("/v1/nothing-here"), 404, "no_such_endpoint")
    r = admin.put("/v1/collections")
    _err(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


def test_request_size_limit(admin: httpx.Client, coll: str) -> None:
    big = b'{"records": [' + b" " * (9 * 1024 * 1024) + b"]}"
    _err(admin.post(f"/v1/collections/{coll}/records", content=big, headers=JSON), 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: the limit applies while streaming
        yield b'{"records": ['
        for _ in range(9):
            yield b" " * (1024 * 1024)
        yield b"]}"

    _err(admin.post(f"/v1/collections/{coll}/records", content=chunks(), headers=JSON), 413, "payload_too_large")


def test_request_id_is_echoed_and_logged(server: ServerProcess, admin: httpx.Client) -> None:
    r = admin.get("/v1/collections", headers={"X-Request-ID": "trace-123"})
    assert r.headers["x-request-id"] == "trace-123"
    assert admin.get("/v1/collections").headers["x-request-id"]
    deadline = time.monotonic() + 5
    while '"request_id":"trace-123"' not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in server.log_text().splitlines() if '"request_id":"trace-123"' in x)
    assert '"status":200' in line and '"tenant":"default"' in line and '"path":"/v1/collections"' in line


def test_key_admin_endpoints(admin: httpx.Client) -> None:
    tenant = unique_name("kt")
    r = admin.post("/v1/admin/keys", json={"role": "reader", "tenant": tenant, "name": "ci"})
    assert r.status_code == 200
    new = r.json()
    assert new["key"].startswith("edb_") and new["tenant"] == tenant and new["role"] == "reader"
    listed = admin.get("/v1/admin/keys", headers={"X-EngramDB-Tenant": tenant}).json()["keys"]
    assert [k["id"] for k in listed] == [new["id"]] and "key" not in listed[0] and "hash" not in listed[0]
    rot = admin.post(f"/v1/admin/keys/{new['id']}/rotate", json={"grace_seconds": 60},
                     headers={"X-EngramDB-Tenant": tenant})  # fmt: skip
    assert rot.status_code == 200 and rot.json()["id"] != new["id"]
    revoked = admin.delete(f"/v1/admin/keys/{rot.json()['id']}", headers={"X-EngramDB-Tenant": tenant})
    assert revoked.json() == {"revoked": True}
    _err(admin.delete("/v1/admin/keys/doesnotexist"), 404, "key_not_found")
    # Another tenant's key is invisible from the default tenant.
    _err(admin.delete(f"/v1/admin/keys/{new['id']}"), 404, "key_not_found")
    _err(admin.post("/v1/admin/keys", json={"role": "owner"}), 400)
    _err(admin.post("/v1/admin/keys", json={"role": "admin", "collections": ["x"]}), 400, "invalid_scope")
