"""A real 3-node cluster on loopback: real etcd, real ``engramdb serve`` processes, kill -9.

One cluster serves the module (starting it costs seconds); the test that kills a node runs last
and the fixture's cluster is not reused after it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import engramdb
from engramdb.cluster.local import LocalCluster

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd (Debian etcd-server) is not installed")

KEY = "cluster-test-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("cluster")), 3, admin_key=KEY, default_shards=4)
    c.start()
    try:
        yield c
    finally:
        c.stop()


_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    # Closed here, not by the garbage collector in some later test (their sockets are descriptors).
    yield
    while _clients:
        _clients.pop().close()


def connect(c: LocalCluster, i: int, **kw: Any) -> Any:
    client = engramdb.connect(c.node(i).url, api_key=KEY, **kw)
    _clients.append(client)
    return client


def post(c: LocalCluster, i: int, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(c.node(i).url + path, json=body, headers=H, timeout=30)


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{i:03d}",
            "vector": [1.0, float(i), 0.5, float(i % 7)],
            "text": f"note number {i}",
            "metadata": {"i": i},
        }
        for i in range(start, start + n)
    ]


def test_any_node_serves_what_another_wrote(cluster: LocalCluster) -> None:
    assert post(cluster, 0, "/v1/collections", {"name": "shared", "dimension": 4}).status_code == 201
    r = post(cluster, 1, "/v1/collections/shared/records", {"records": records(40)})
    assert r.status_code == 200, r.text
    for i in range(3):
        got = httpx.get(cluster.node(i).url + "/v1/collections/shared/records/r007", headers=H)
        assert got.status_code == 200 and got.json()["record"]["metadata"] == {"i": 7}
        assert post(cluster, i, "/v1/collections/shared/count", {}).json() == {"count": 40}
    listed = httpx.get(cluster.node(2).url + "/v1/collections", headers=H).json()["collections"]
    assert [(c["name"], c["shards"], c["replication_factor"]) for c in listed] == [("shared", 4, 3)]


def test_scan_pages_cross_coordinators_in_id_order(cluster: LocalCluster) -> None:
    post(cluster, 0, "/v1/collections", {"name": "paged", "dimension": 4})
    assert post(cluster, 0, "/v1/collections/paged/records", {"records": records(25)}).status_code == 200
    seen: list[str] = []
    cursor = None
    for page in range(20):
        body: dict[str, Any] = {"limit": 6}
        if cursor:
            body["cursor"] = cursor
        j = post(cluster, page % 3, "/v1/collections/paged/records/scan", body).json()
        seen += [r["id"] for r in j["records"]]
        cursor = j["next_cursor"]
        if not cursor:
            break
    assert seen == [f"r{i:03d}" for i in range(25)]


def test_results_match_a_single_node(cluster: LocalCluster, tmp_path: Path) -> None:
    """The same data on an embedded database and on the cluster: same records, counts and top hits."""
    data = records(60)
    post(cluster, 0, "/v1/collections", {"name": "parity", "dimension": 4, "indexed_fields": {"i": "int"}})
    assert post(cluster, 2, "/v1/collections/parity/records", {"records": data}).status_code == 200
    with engramdb.open(tmp_path / "single") as db:
        one = db.create_collection("parity", 4, indexed_fields={"i": "int"})
        one.upsert(data)
        remote = connect(cluster, 1).get_collection("parity")
        flt = {"i": {"$gte": 10, "$lt": 40}}
        assert remote.count(flt) == one.count(flt) == 30
        q = [1.0, 20.0, 0.5, 6.0]
        for kw in ({}, {"filter": flt}, {"exact": True}):
            a = [(h.id, round(h.score, 5)) for h in one.search(q, k=8, include=[], **kw)]
            b = [(h.id, round(h.score, 5)) for h in remote.search(q, k=8, include=[], **kw)]
            assert a == b, kw
        got = remote.get_many(["r001", "r059", "missing"])
        assert [r.id for r in got] == ["r001", "r059"]
        assert got[0].text == one.get("r001").text  # type: ignore[union-attr]
        remote.delete(["r001"])
        one.delete(["r001"])
        assert remote.count() == one.count() == 59
        assert remote.get("r001") is None


def test_bad_input_is_refused_and_changes_nothing(cluster: LocalCluster) -> None:
    r = post(cluster, 0, "/v1/collections", {"name": "bad1", "dimension": 4, "shards": 3})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_shards"
    r = post(cluster, 0, "/v1/collections", {"name": "bad2", "dimension": 4, "replication_factor": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_replication_factor"
    assert "4" in r.json()["error"]["message"] and "3" in r.json()["error"]["message"]
    names = [c["name"] for c in httpx.get(cluster.node(1).url + "/v1/collections", headers=H).json()["collections"]]
    assert "bad1" not in names and "bad2" not in names
    post(cluster, 0, "/v1/collections", {"name": "strict", "dimension": 4})
    r = post(cluster, 1, "/v1/collections/strict/records", {"records": records(2), "consistency": "most"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_consistency"
    bad = [*records(2), {"id": "x", "vector": [1.0, 2.0]}]
    r = post(cluster, 1, "/v1/collections/strict/records", {"records": bad})
    assert r.status_code == 400 and r.json()["error"]["code"] == "dimension_mismatch"
    assert post(cluster, 2, "/v1/collections/strict/count", {}).json() == {"count": 0}


def test_keys_made_on_one_node_work_on_every_node(cluster: LocalCluster) -> None:
    r = httpx.post(cluster.node(0).url + "/v1/admin/keys", json={"role": "reader"}, headers=H)
    assert r.status_code in (200, 201), r.text
    key = r.json()["key"]
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(cluster.node(2).url + "/v1/collections", headers={"Authorization": f"Bearer {key}"})
        if got.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.status_code == 200
    denied = httpx.post(
        cluster.node(1).url + "/v1/collections",
        json={"name": "nope", "dimension": 4},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert denied.status_code == 403


def test_delete_collection_drops_it_everywhere(cluster: LocalCluster) -> None:
    post(cluster, 0, "/v1/collections", {"name": "gone", "dimension": 4})
    post(cluster, 0, "/v1/collections/gone/records", {"records": records(5)})
    assert httpx.delete(cluster.node(1).url + "/v1/collections/gone", headers=H).status_code == 200
    for i in range(3):
        assert httpx.get(cluster.node(i).url + "/v1/collections/gone", headers=H).status_code == 404
    post(cluster, 2, "/v1/collections", {"name": "gone", "dimension": 4})
    assert post(cluster, 0, "/v1/collections/gone/count", {}).json() == {"count": 0}


def test_grpc_on_any_node(cluster: LocalCluster) -> None:
    import grpc

    from engramdb.server.grpc import engramdb_pb2 as pb
    from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
    from engramdb.server.grpc.convert import pack_vector

    post(cluster, 0, "/v1/collections", {"name": "rpc", "dimension": 4})
    assert post(cluster, 0, "/v1/collections/rpc/records", {"records": records(12)}).status_code == 200
    meta = (("authorization", f"Bearer {KEY}"),)
    with grpc.insecure_channel(cluster.node(2).grpc_target) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        got = stub.Get(pb.GetRequest(coll="rpc", ids=["r003", "r011"], consistency="all"), metadata=meta, timeout=30)
        assert [r.id for r in got.records] == ["r003", "r011"]
        hits = stub.Search(
            pb.SearchRequest(coll="rpc", vector=pack_vector([1.0, 5.0, 0.5, 5.0]), k=3), metadata=meta, timeout=30
        )
        assert hits.hits[0].id == "r005"
        try:
            stub.Get(pb.GetRequest(coll="rpc", ids=["r003"], consistency="most"), metadata=meta, timeout=30)
            raise AssertionError("a bad consistency was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_graph_across_shards(cluster: LocalCluster) -> None:
    """Edges live in their source's shard: in-edges, walks and deletes must see every shard."""
    c = connect(cluster, 0).create_collection("g", 4)
    c.upsert(records(20))
    ids = [f"r{i:03d}" for i in range(20)]
    c.link([{"src": ids[i], "relation": "next", "dst": ids[(i + 1) % 20]} for i in range(20)])
    other = connect(cluster, 2).get_collection("g")
    assert [e.src for e in other.edges("r005", direction="in")] == ["r004"]
    assert [h.id for h in other.neighbors("r000", hops=3)] == ["r001", "r002", "r003"]
    sub = other.subgraph(["r010"], hops=1)
    assert sorted(n.id for n in sub["nodes"]) == ["r009", "r010", "r011"]
    c.delete(["r005"])  # takes r004 -> r005, stored in r004's shard, with it
    assert other.edges("r004") == []
    c.upsert(records(1, 5))
    assert other.edges("r004") == []  # a re-created record does not bring the old edge back
    hits = other.search([1.0, 10.0, 0.5, 3.0], k=1, include=[], expand={"hops": 1})
    assert {h.id for h in hits} >= {"r010", "r011"}
    assert other.unlink([{"src": "r010", "relation": "next", "dst": "r011"}]) == 1
    assert [e.dst for e in other.edges("r010")] == []


def test_zy_losing_etcd_stops_writes_until_it_is_back(cluster: LocalCluster) -> None:
    """No etcd for longer than the lease: writes 503 etcd_session_lost, /ready 503; back by itself after."""
    post(cluster, 0, "/v1/collections", {"name": "etcdloss", "dimension": 4})
    assert post(cluster, 0, "/v1/collections/etcdloss/records", {"records": records(3)}).status_code == 200
    cluster.etcd.kill()
    try:
        deadline = time.monotonic() + 30
        written = 3
        while True:
            r = post(cluster, 1, "/v1/collections/etcdloss/records", {"records": records(1, 50)})
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            written = 4  # acknowledged before the session ran out
            time.sleep(0.5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "etcd_session_lost", r.text
        assert httpx.get(cluster.node(1).url + "/ready").status_code == 503
        # Reads are served from the replicas meanwhile.
        assert post(cluster, 1, "/v1/collections/etcdloss/count", {}).json() == {"count": written}
    finally:
        cluster.etcd.start()
    deadline = time.monotonic() + 60
    while True:
        r = post(cluster, 1, "/v1/collections/etcdloss/records", {"records": records(1, 50)})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    for i in range(3):
        deadline = time.monotonic() + 60
        while httpx.get(cluster.node(i).url + "/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert httpx.get(cluster.node(i).url + "/ready").status_code == 200


def test_zz_consistency_levels_with_a_node_killed(cluster: LocalCluster) -> None:
    """RF=3, one node kill -9'd: ONE and QUORUM keep working, ALL fails cleanly with 503."""
    created = post(cluster, 0, "/v1/collections", {"name": "cl", "dimension": 4})
    assert created.status_code == 201, created.text
    assert post(cluster, 0, "/v1/collections/cl/records", {"records": records(30)}).status_code == 200
    cluster.node(2).kill()
    for level in ("one", "quorum"):
        r = post(cluster, 0, "/v1/collections/cl/records", {"records": records(10, 100), "consistency": level})
        assert r.status_code == 200, (level, r.text)
        # Read at QUORUM: after a write at ONE the other live replica may still be applying it.
        r = post(cluster, 1, "/v1/collections/cl/count", {"consistency": "quorum"})
        assert r.json() == {"count": 40}, level
    r = post(cluster, 1, "/v1/collections/cl/records", {"records": records(1, 200), "consistency": "all"})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "not_enough_replicas"
    assert err["details"]["required"] == 3 and err["details"]["acked"] == 2
    r = post(cluster, 0, "/v1/collections/cl/count", {"consistency": "all"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_enough_replicas"
    # Every record acknowledged at QUORUM is readable at QUORUM from either surviving node.
    remote = connect(cluster, 1).get_collection("cl")
    assert len(remote.get_many([f"r{i:03d}" for i in range(100, 110)])) == 10
    ready = httpx.get(cluster.node(0).url + "/ready")
    assert ready.status_code == 200, ready.text  # one peer down does not take the others out of service
    from prometheus_client.parser import text_string_to_metric_families

    from engramdb.server.metrics import CLUSTER_METRICS

    text = httpx.get(cluster.node(0).url + "/metrics", headers=H).text
    found = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(CLUSTER_METRICS) <= set(found)
    peers = {s.labels.get("peer") for name in CLUSTER_METRICS for s in found[name].samples}
    assert {"n2", "n3"} <= peers  # per peer; the dead n3 has errors, and a breaker state


CANARIES = {"id": b"zq7clusteridcanary", "text": b"zq7clustertextcanary", "metadata": b"zq7clustermetacanary"}


def _node_files_with(c: LocalCluster) -> set[str]:
    found: set[str] = set()
    for node in c.nodes:
        for path in Path(node.data_dir).rglob("*"):
            try:
                data = path.read_bytes() if path.is_file() else b""
            except (FileNotFoundError, IsADirectoryError):
                continue
            found |= {name for name, canary in CANARIES.items() if canary in data}
    return found


def test_erase_tenant_cluster_wide(local_cluster_factory: Any) -> None:
    """One call erases a tenant on every node: collections gone everywhere, no canary left in any node's files."""
    c = local_cluster_factory(3, admin_key=KEY, default_shards=2)
    tenant = "victim"
    db = connect(c, 0, tenant=tenant)
    coll = db.create_collection("secrets", 4)
    coll.upsert(records(10))
    coll.upsert(
        {
            "id": CANARIES["id"].decode(),
            "vector": [1.0, 2.0, 3.0, 4.0],
            "text": f"private {CANARIES['text'].decode()} note",
            "metadata": {"who": CANARIES["metadata"].decode()},
        }
    )
    connect(c, 0, tenant="keep").create_collection("kept", 4)
    db.create_key("reader", tenant=tenant, name="zq7clusterkeycanary")
    assert _node_files_with(c) == set(CANARIES)  # so the check at the end can fail
    r = httpx.post(
        c.node(1).url + f"/v1/admin/tenants/{tenant}/erase", json={"confirm": tenant}, headers=H, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.json()["collections"] == 1 and r.json()["keys"] == 1
    # etcd's history of the rewritten key rows (the key's name, the tenant's) is compacted away.
    old = httpx.post(c.etcd.endpoint + "/v3/kv/range", json={"key": "Lw==", "revision": 2}, timeout=10)
    assert "compacted" in old.text
    for i in range(3):
        got = httpx.get(c.node(i).url + "/v1/collections", headers={**H, "X-EngramDB-Tenant": tenant})
        assert got.json()["collections"] == []
    kept = httpx.get(c.node(2).url + "/v1/collections", headers={**H, "X-EngramDB-Tenant": "keep"})
    assert [x["name"] for x in kept.json()["collections"]] == ["kept"]
    deadline = time.monotonic() + 60  # every node erases its replicas when its watch shows the deletion
    while _node_files_with(c) and time.monotonic() < deadline:
        time.sleep(0.5)
    c.stop()
    assert _node_files_with(c) == set()
