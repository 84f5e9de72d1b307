"""Physical erase (GDPR): deleted records, collections and tenants leave no byte on disk.

Each test writes records whose id, text, metadata and vector carry a canary,
shows that the data directory holds it (so the check can fail), deletes,
runs the erase, closes the database and reads every file under the data
directory for the canary. Text-index terms are compressed in tantivy's files,
so for them the index itself is asked: no segment may still count a document
with the canary term (``doc_freq`` counts deleted documents until a merge).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import engramdb
from conftest import ADMIN_KEY, server_env
from engramdb.config import load as load_settings
from engramdb.engine.database import Database
from engramdb.service.api_keys import KeyStore
from engramdb.storage import store as store_module
from engramdb.storage.store import Store
from engramdb.types import TenantErased

ID_CANARY = b"zq7idcanary4242"
TEXT_CANARY = "zq7txtcanary4242"
META_CANARY = "zq7metacanary4242"
# A float32 pattern no real embedding holds.
VEC = np.array([1234.5678, -8765.4321, 3.14159e-3, 2.71828e5], dtype=np.float32)
CANARIES = {
    "id": ID_CANARY,
    "text": TEXT_CANARY.encode(),
    "metadata": META_CANARY.encode(),
    "vector": VEC.tobytes(),
}


@pytest.fixture(autouse=True)
def _uncompressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """RocksDB without block compression, so that a canary in an SST file is visible to a byte search."""
    from rocksdict import DBCompressionType, Options

    def plain(*args: object, **kwargs: object) -> Options:
        o = Options(*args, **kwargs)  # type: ignore[arg-type]
        o.set_compression_type(DBCompressionType.none())
        return o

    monkeypatch.setattr(store_module, "Options", plain)


def _files_with(root: Path) -> dict[str, list[str]]:
    """For each canary, the files under ``root`` whose raw bytes contain it."""
    found: dict[str, list[str]] = {name: [] for name in CANARIES}
    for dirpath, _, files in os.walk(root):
        for f in files:
            data = (Path(dirpath) / f).read_bytes()
            for name, canary in CANARIES.items():
                if canary in data:
                    found[name].append(str(Path(dirpath, f).relative_to(root)))
    return {k: v for k, v in found.items() if v}


def _open(path: Path, **storage: object) -> Database:
    settings = load_settings(data_dir=str(path), storage={"erase_within_seconds": 3600, **storage})
    return Database(path, settings)


def _fill(db: Database, name: str = "c", tenant: str = "default") -> None:
    coll = db.create_collection(name, 4, metric="l2", tenant=tenant, indexed_fields={"who": "keyword"})
    rng = np.random.default_rng(1)
    coll.upsert([{"id": f"r{i}", "vector": rng.random(4).tolist(), "text": f"plain words {i}"} for i in range(50)])
    coll.upsert(
        {
            "id": ID_CANARY.decode(),
            "vector": VEC.tolist(),
            "text": f"private {TEXT_CANARY} note",
            "metadata": {"who": META_CANARY},
            "namespace": ["user", ID_CANARY.decode()],
        }
    )
    coll.link({"src": ID_CANARY.decode(), "relation": "knows", "dst": "r1"})
    db.snapshot()  # the canary is in the index snapshots too
    db.store.flush()  # and in SST files, as data written a while ago is


def _text_freq(db: Database, name: str = "c") -> int:
    text = db.get_collection(name).indexes.text_index
    assert text is not None
    return int(text._index.searcher().doc_freq("text", TEXT_CANARY))


def test_deleted_record_is_erased_from_every_file(tmp_path: Path) -> None:
    db = _open(tmp_path)
    _fill(db)
    db.get_collection("c").delete(ID_CANARY.decode())
    db.snapshot()
    assert _text_freq(db) == 1  # deleted, but still in a segment
    db.close()
    # Without the erase the canary survives the delete: the check below can fail.
    assert set(_files_with(tmp_path)) == set(CANARIES)

    db = _open(tmp_path)
    # The erase mark falls due with the tombstone purge, half the bound after the delete.
    assert db.erase_due() == 0
    assert db.erase_due(now=time.time() + 3600) >= 1
    assert _text_freq(db) == 0
    coll = db.get_collection("c")
    assert coll.count() == 50 and coll.get(ID_CANARY.decode()) is None
    assert [h.id for h in coll.search([0.5] * 4, k=3)]  # still searchable
    db.close()
    assert _files_with(tmp_path) == {}
    db = _open(tmp_path)  # and it opens and serves afterwards
    assert db.get_collection("c").count() == 50
    db.close()


def test_a_replaced_vector_kept_in_the_changelog_is_erased(tmp_path: Path) -> None:
    """A change that replaces a vector keeps the old one in its changelog entry (for the graph-only
    snapshot's load). Another collection's older snapshot keeps that entry from being trimmed; the
    erase still takes the vector out of it."""
    db = _open(tmp_path)
    other = db.create_collection("other", 4, metric="l2")
    other.upsert({"id": "a", "vector": [0.1, 0.2, 0.3, 0.4]})
    db.snapshot()
    other.upsert({"id": "b", "vector": [0.4, 0.3, 0.2, 0.1]})  # not snapshotted: the changelog stays
    coll = db.create_collection("c", 4, metric="l2")
    coll.upsert({"id": "moved", "vector": VEC.tolist()})
    coll.upsert({"id": "moved", "vector": [1.0, 2.0, 3.0, 4.0]})  # its entry holds VEC
    db.store.flush()
    assert "vector" in _files_with(tmp_path)  # the check below can fail
    db.erase({coll.prefix})
    assert [h.id for h in coll.search([1.0, 2.0, 3.0, 4.0], k=1, include=[])] == ["moved"]
    db.close()
    assert "vector" not in _files_with(tmp_path)
    db = _open(tmp_path)  # the snapshots and what is left of the changelog load
    assert db.get_collection("c").search([1.0, 2.0, 3.0, 4.0], k=1, include=[])[0].id == "moved"
    assert db.get_collection("other").count() == 2
    db.close()


def test_dropped_collection_is_erased_at_once(tmp_path: Path) -> None:
    db = _open(tmp_path, erase_within_seconds=0)  # no bound: a drop erases anyway
    _fill(db, "gone")
    _fill(db, "kept")
    db.get_collection("kept").delete(ID_CANARY.decode())
    db.close()
    assert set(_files_with(tmp_path)) == set(CANARIES)
    db = _open(tmp_path, erase_within_seconds=0)
    db.delete_collection("gone")
    db.delete_collection("kept")
    db.close()
    assert _files_with(tmp_path) == {}


def test_erased_tenant_leaves_nothing(tmp_path: Path) -> None:
    db = _open(tmp_path)
    _fill(db, "a", tenant=ID_CANARY.decode())
    _fill(db, "b", tenant=ID_CANARY.decode())
    _fill(db, "other", tenant="keep")
    db.get_collection("other", tenant="keep").delete(ID_CANARY.decode())
    db.close()
    db = _open(tmp_path)
    assert db.erase_tenant(ID_CANARY.decode()) == 2
    assert ID_CANARY.decode() not in db.list_tenants()
    with pytest.raises(engramdb.NotFound):
        db.erase_tenant(ID_CANARY.decode())
    db.erase_due(now=time.time() + 3600)  # the other tenant's deleted record, once its tombstone is due
    db.close()
    assert _files_with(tmp_path) == {}


@pytest.mark.parametrize("op", ["upsert", "link", "delete"])
@pytest.mark.parametrize("drop", ["delete_collection", "erase_tenant"])
def test_write_racing_a_drop_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, drop: str
) -> None:
    """A write that passed its collection's open check before the drop lands before the erase or not at all."""
    db = _open(tmp_path)
    tenant = "t1"
    _fill(db, tenant=tenant)
    coll = db.get_collection("c", tenant=tenant)
    prefix = coll.prefix
    reached, go = threading.Event(), threading.Event()
    original = Store.apply

    def paused_apply(store: Store, mutations: list[Any]) -> Any:
        if threading.current_thread().name == "racer":  # between the open check and the write
            reached.set()
            go.wait(30)
        return original(store, mutations)

    monkeypatch.setattr(Store, "apply", paused_apply)
    rid = ID_CANARY.decode()
    writes = {
        "upsert": lambda: coll.upsert({"id": rid, "vector": VEC.tolist(), "text": f"again {TEXT_CANARY}"}),
        "link": lambda: coll.link({"src": rid, "relation": "likes", "dst": "r2"}),
        "delete": lambda: coll.delete(rid),
    }
    outcome: list[BaseException | None] = []

    def racer() -> None:
        try:
            writes[op]()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=racer, name="racer")
    t.start()
    assert reached.wait(30)
    if drop == "delete_collection":
        db.delete_collection("c", tenant=tenant)
    else:
        assert db.erase_tenant(tenant) == 1
    go.set()
    t.join(30)
    assert len(outcome) == 1
    err = outcome[0]
    assert isinstance(err, engramdb.NotFound) and err.code == "collection_not_found", err
    for cf in ("records", "vectors", "edges_out", "edges_in"):
        assert list(db.store.iter_prefix(cf, prefix)) == [], cf
    # Collection ids are never reused: the same name again is a new prefix, which takes writes.
    again = db.create_collection("c", 4, metric="l2", tenant=tenant)
    assert again.prefix != prefix
    again.upsert({"id": "r0", "vector": [0.0, 1.0, 2.0, 3.0]})
    assert again.count() == 1
    db.close()
    assert _files_with(tmp_path) == {}


def test_drop_interrupted_before_its_delete_is_finished_by_the_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _open(tmp_path)
    _fill(db, "gone")
    original = Store.delete_range

    def fail(store: Store, cf: str, start: bytes, end: bytes) -> None:
        raise engramdb.EngramError("simulated storage failure")

    monkeypatch.setattr(Store, "delete_range", fail)
    with pytest.raises(engramdb.EngramError):
        db.delete_collection("gone")  # the collection is gone, its rows are not (as after a crash there)
    monkeypatch.setattr(Store, "delete_range", original)
    db.close()
    assert set(_files_with(tmp_path)) == set(CANARIES)
    db = _open(tmp_path)
    assert db.erase_due() == 1  # the drop's erase mark
    db.close()
    assert _files_with(tmp_path) == {}


# ------------------------------------------------------- through the server
# A server subprocess compresses its files (there is no setting to turn that off), but
# RocksDB's block compression (Snappy/LZ4) leaves a string that occurs once in a block as
# literal bytes, and the write-ahead log is not compressed: each test first shows that the
# files hold every canary, so a canary that compression hid would fail the test, not pass it.
TENANT_CANARY = "zq7tenantcanary4242"
KEY_NAME_CANARY = "zq7keynamecanary4242"
SERVER_CANARIES = {**CANARIES, "tenant": TENANT_CANARY.encode(), "key name": KEY_NAME_CANARY.encode()}


def _server_files_with(root: Path) -> set[str]:
    """The canaries (of SERVER_CANARIES) found in some file under ``root``."""
    found: set[str] = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                data = (Path(dirpath) / f).read_bytes()
            except FileNotFoundError:  # a running server removed it meanwhile
                continue
            found |= {name for name, canary in SERVER_CANARIES.items() if canary in data}
    return found


def _fill_tenant(base_url: str, tenant: str = TENANT_CANARY) -> dict[str, str]:
    """Two collections with canary records in ``tenant`` (bootstrap key); returns the tenant's new keys by role."""
    with engramdb.connect(base_url, ADMIN_KEY, tenant=tenant) as db:
        for name in ("a", "b"):
            coll = db.create_collection(name, 4, metric="l2", indexed_fields={"who": "keyword"})
            coll.upsert([{"id": f"r{i}", "vector": [float(i), 1.0, 2.0, 3.0], "text": f"plain {i}"} for i in range(20)])
            coll.upsert(
                {
                    "id": ID_CANARY.decode(),
                    "vector": VEC.tolist(),
                    "text": f"private {TEXT_CANARY} note",
                    "metadata": {"who": META_CANARY},
                    "namespace": ["user", ID_CANARY.decode()],
                }
            )
            coll.link({"src": ID_CANARY.decode(), "relation": "knows", "dst": "r1"})
        return {
            role: db.create_key(role, tenant=tenant, name=KEY_NAME_CANARY).key for role in ("admin", "writer", "reader")
        }


def _status(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    if code is not None:
        assert r.json()["error"]["code"] == code, r.text


def _count(base_url: str, key: str, tenant: str = TENANT_CANARY) -> int:
    r = httpx.post(
        f"{base_url}/v1/collections/a/count",
        json={},
        headers={"Authorization": f"Bearer {key}", "X-EngramDB-Tenant": tenant},
        timeout=30,
    )
    _status(r, 200)
    return int(r.json()["count"])


def test_erase_tenant_over_rest(server_factory: Any, tmp_path: Path) -> None:
    """Guards: roles, own tenant only, confirm; the tenant's keys stop working; no canary left in any file."""
    data = tmp_path / "data"
    s = server_factory(data_dir=data)
    keys = _fill_tenant(s.base_url)
    with engramdb.connect(s.base_url, ADMIN_KEY, tenant="keep") as db:
        db.create_collection("kept", 4)
        other_admin = db.create_key("admin", tenant="keep").key
    url = f"{s.base_url}/v1/admin/tenants/{TENANT_CANARY}/erase"

    def erase(key: str, body: Any) -> httpx.Response:
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    assert _server_files_with(data) == set(SERVER_CANARIES)  # so the check at the end can fail
    # Refused, and nothing changes: another tenant's admin, readers and writers, no or a wrong confirmation.
    _status(erase(other_admin, {"confirm": TENANT_CANARY}), 403, "tenant_mismatch")
    _status(erase(keys["writer"], {"confirm": TENANT_CANARY}), 403, "permission_denied")
    _status(erase(keys["reader"], {"confirm": TENANT_CANARY}), 403, "permission_denied")
    _status(erase(keys["admin"], {}), 400, "erase_not_confirmed")
    _status(erase(keys["admin"], {"confirm": "keep"}), 400, "erase_not_confirmed")
    _status(erase(keys["admin"], {"confirm": 1}), 400, "erase_not_confirmed")
    _status(erase(ADMIN_KEY, {"confirm": TENANT_CANARY.upper()}), 400, "erase_not_confirmed")
    assert _count(s.base_url, keys["reader"]) == 21
    # The tenant's own admin may erase it.
    r = erase(keys["admin"], {"confirm": TENANT_CANARY})
    _status(r, 200)
    assert r.json() == {"tenant": TENANT_CANARY, "collections": 2, "keys": 3}
    for key in keys.values():  # every key of the tenant stops working at once
        r = httpx.get(f"{s.base_url}/v1/collections", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        _status(r, 401, "invalid_api_key")
    _status(erase(ADMIN_KEY, {"confirm": TENANT_CANARY}), 404, "tenant_not_found")
    # The other tenant is untouched.
    r = httpx.get(f"{s.base_url}/v1/collections", headers={"Authorization": f"Bearer {other_admin}"}, timeout=30)
    _status(r, 200)
    assert [c["name"] for c in r.json()["collections"]] == ["kept"]
    assert s.stop() == 0
    assert _server_files_with(data) == set()


def test_erase_tenant_over_grpc_and_the_clients(server_factory: Any, tmp_path: Path) -> None:
    import asyncio

    import grpc

    from engramdb.server.grpc import engramdb_pb2 as pb
    from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc

    data = tmp_path / "data"
    s = server_factory(data_dir=data)
    by_grpc, by_client, by_async = (TENANT_CANARY + suffix for suffix in ("-grpc", "-sync", "-async"))
    keys = {t: _fill_tenant(s.base_url, t) for t in (by_grpc, by_client, by_async)}
    assert _server_files_with(data) == set(SERVER_CANARIES)

    with grpc.insecure_channel(s.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)

        def erase(key: str, **fields: Any) -> Any:
            md = (("authorization", f"Bearer {key}"),)
            return stub.EraseTenant(pb.EraseTenantRequest(**fields), metadata=md, timeout=120)

        def refused(status: grpc.StatusCode, code: str, key: str, **fields: Any) -> None:
            with pytest.raises(grpc.RpcError) as info:
                erase(key, **fields)
            err: Any = info.value
            assert err.code() == status, err.details()
            assert dict(err.trailing_metadata() or ())["engramdb-error-code"] == code

        SC = grpc.StatusCode
        refused(SC.PERMISSION_DENIED, "tenant_mismatch", keys[by_client]["admin"], tenant=by_grpc, confirm=by_grpc)
        refused(SC.PERMISSION_DENIED, "permission_denied", keys[by_grpc]["writer"], tenant=by_grpc, confirm=by_grpc)
        refused(SC.INVALID_ARGUMENT, "erase_not_confirmed", ADMIN_KEY, tenant=by_grpc)
        refused(SC.INVALID_ARGUMENT, "erase_not_confirmed", ADMIN_KEY, tenant=by_grpc, confirm=by_client)
        refused(SC.INVALID_ARGUMENT, "invalid_name", ADMIN_KEY, tenant="../x", confirm="../x")
        assert _count(s.base_url, keys[by_grpc]["reader"], by_grpc) == 21
        got = erase(ADMIN_KEY, tenant=by_grpc, confirm=by_grpc)
        assert (got.tenant, got.collections, got.keys) == (by_grpc, 2, 3)
        refused(SC.UNAUTHENTICATED, "invalid_api_key", keys[by_grpc]["admin"], tenant=by_grpc, confirm=by_grpc)
        refused(SC.NOT_FOUND, "tenant_not_found", ADMIN_KEY, tenant=by_grpc, confirm=by_grpc)

    with engramdb.connect(s.base_url, keys[by_client]["admin"]) as db:
        with pytest.raises(engramdb.InvalidArgument) as bad:
            db.erase_tenant(by_client, confirm="")
        assert bad.value.code == "erase_not_confirmed"
        with pytest.raises(engramdb.PermissionDenied):
            db.erase_tenant(by_async, confirm=by_async)
        assert db.erase_tenant(by_client, confirm=by_client) == TenantErased(by_client, 2, 3)
        with pytest.raises(engramdb.Unauthenticated):
            db.list_keys()

    async def erase_async() -> Any:
        async with engramdb.AsyncClient(s.base_url, ADMIN_KEY) as db:
            return await db.erase_tenant(by_async, confirm=by_async)

    assert asyncio.run(erase_async()) == TenantErased(by_async, 2, 3)
    assert s.stop() == 0
    assert _server_files_with(data) == set()


def test_erasing_every_key_keeps_authentication_on(server_factory: Any, tmp_path: Path) -> None:
    """Guard: the erased keys' rows stay (anonymous, revoked), so a server in auth auto does not fall back
    to development mode, neither at once nor after a restart."""
    data = tmp_path / "dev"
    env = {"ENGRAMDB_SERVER__AUTH": "auto"}
    s = server_factory(data_dir=data, env=env, admin_key=None)
    base = s.base_url
    # Development mode: anonymous acts on tenant default only, and may not erase another tenant.
    _status(httpx.post(base + "/v1/collections", json={"name": "mine", "dimension": 3}, timeout=30), 201)
    r = httpx.post(base + "/v1/admin/tenants/other/erase", json={"confirm": "other"}, timeout=30)
    _status(r, 403, "tenant_not_allowed")
    r = httpx.post(base + "/v1/admin/keys", json={"role": "admin", "name": KEY_NAME_CANARY}, timeout=30)
    _status(r, 200)
    key = r.json()["key"]
    _status(httpx.get(base + "/v1/collections", timeout=30), 401, "missing_api_key")  # the key turned auth on
    r = httpx.post(
        base + "/v1/admin/tenants/default/erase",
        json={"confirm": "default"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    _status(r, 200)
    assert r.json() == {"tenant": "default", "collections": 1, "keys": 1}
    _status(httpx.get(base + "/v1/collections", timeout=30), 401, "missing_api_key")
    assert s.stop() == 0
    s = server_factory(data_dir=data, env=env, admin_key=None)
    _status(httpx.get(s.base_url + "/v1/collections", timeout=30), 401, "missing_api_key")
    assert "development mode" not in s.log_text()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engramdb.cli", "erase", "tenant", *args],
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_erases_a_tenant_offline(tmp_path: Path) -> None:
    """Guards: refused while the directory is in use and without --yes (not a terminal); then nothing left."""
    db = _open(tmp_path)
    _fill(db, "a", tenant=TENANT_CANARY)
    _fill(db, "b", tenant=TENANT_CANARY)
    _fill(db, "kept", tenant="keep")
    db.get_collection("kept", tenant="keep").delete(ID_CANARY.decode())
    keys = KeyStore(db.metadata)
    keys.create(tenant=TENANT_CANARY, role="admin", name=KEY_NAME_CANARY)
    kept_secret, _ = keys.create(tenant="keep", role="reader")
    db.erase_due(now=time.time() + 3600)  # the other tenant's deleted record
    d = str(tmp_path)
    # While the directory is open (as by a running server): refused, pointing to the API.
    r = _cli(TENANT_CANARY, "--data-dir", d, "--yes")
    assert r.returncode == 1 and "in use by a running server" in r.stderr and "/erase" in r.stderr, r.stderr
    db.close()
    assert _server_files_with(tmp_path) == set(SERVER_CANARIES)
    r = _cli(TENANT_CANARY, "--data-dir", d)  # no terminal to type the name into, no --yes
    assert r.returncode == 1 and "--yes" in r.stderr, r.stderr
    r = _cli("nobody", "--data-dir", d, "--yes")
    assert r.returncode == 1 and "tenant_not_found" in r.stderr, r.stderr
    assert _server_files_with(tmp_path) == set(SERVER_CANARIES)

    r = _cli(TENANT_CANARY, "--data-dir", d, "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"tenant": TENANT_CANARY, "collections": 2, "keys": 1}
    assert _server_files_with(tmp_path) == set()
    db = _open(tmp_path)
    keys = KeyStore(db.metadata)
    assert keys.has_keys() and keys.list_keys(TENANT_CANARY) == []
    assert keys.lookup(kept_secret) is not None  # the other tenant keeps its keys and data
    assert TENANT_CANARY not in db.list_tenants() and db.get_collection("kept", tenant="keep").count() == 50
    db.close()
