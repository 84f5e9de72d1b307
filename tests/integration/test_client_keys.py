"""Key management through the Python clients, against a real server."""

from __future__ import annotations

import asyncio
import time

import pytest

import engramdb
from conftest import ServerProcess, unique_name
from engramdb.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated


def test_sync_client_creates_lists_rotates_and_revokes_keys(server: ServerProcess) -> None:
    tenant = unique_name("keys")
    with engramdb.connect(server.base_url, server.admin_key, tenant=tenant, retries=0) as admin:
        admin.create_collection("mine", dimension=2)
        admin.create_collection("other", dimension=2)
        new = admin.create_key("writer", collections=["mine"], name="ingest")
        assert new.key.startswith("edb_") and new.key not in repr(new)
        assert (new.tenant, new.role, new.collections, new.name) == (tenant, "writer", ["mine"], "ingest")
        listed = {k.id: k for k in admin.list_keys()}
        assert listed[new.id].role == "writer" and not listed[new.id].revoked

        with engramdb.connect(server.base_url, new.key, retries=0) as writer:
            writer.get_collection("mine").upsert({"id": "a", "vector": [1.0, 0.0]})
            with pytest.raises(PermissionDenied):
                writer.get_collection("other").upsert({"id": "a", "vector": [1.0, 0.0]})
            with pytest.raises(PermissionDenied):  # a writer cannot manage keys
                writer.list_keys()

        rotated = admin.rotate_key(new.id, grace_seconds=0)
        assert rotated.id != new.id and rotated.collections == ["mine"]
        time.sleep(0.01)
        with engramdb.connect(server.base_url, new.key, retries=0) as old, pytest.raises(Unauthenticated):
            old.list_collections()
        assert {k.id: k for k in admin.list_keys()}[new.id].replaced_by == rotated.id

        admin.revoke_key(rotated.id)
        with engramdb.connect(server.base_url, rotated.key, retries=0) as gone, pytest.raises(Unauthenticated):
            gone.list_collections()
        with pytest.raises(NotFound):
            admin.revoke_key("0000000000000000")
        with pytest.raises(InvalidArgument):
            admin.create_key("superuser")
        with pytest.raises(InvalidArgument):
            admin.create_key("reader", expires_at=float("nan"))


def test_async_client_manages_keys(server: ServerProcess) -> None:
    tenant = unique_name("akeys")

    async def run() -> None:
        async with engramdb.AsyncClient(server.base_url, server.admin_key, tenant=tenant, retries=0) as admin:
            new = await admin.create_key("reader", expires_at=time.time() + 3600)
            assert new.tenant == tenant and new.expires_at is not None
            assert new.id in {k.id for k in await admin.list_keys()}
            rotated = await admin.rotate_key(new.id)
            await admin.revoke_key(rotated.id)
            assert {k.id: k.revoked for k in await admin.list_keys()}[rotated.id] is True

    asyncio.run(run())
