"""Stateful property test: the engine against a plain-dict model.

Upserts, patches, deletes (by id and by filter), TTL expiry (with a fake
"now" handled by giving records already-past or far-future expiries) and
reopen, checking get/count/scan/search after every step.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import engramdb

IDS = st.sampled_from([f"r{i}" for i in range(12)])
VEC = st.lists(st.integers(-3, 3), min_size=3, max_size=3).filter(lambda v: any(v))
COLOR = st.sampled_from(["red", "green", "blue"])


class EngineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="engram-model-")
        self.db = engramdb.open(self.dir, storage={"sync_writes": False})
        self.coll = self.db.create_collection("m", dimension=3, indexed_fields={"color": "keyword"})
        self.model: dict[str, dict] = {}

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(rid=IDS, vec=VEC, color=COLOR, n=st.integers(0, 5), expired=st.booleans())
    def upsert(self, rid, vec, color, n, expired):
        rec = {"id": rid, "vector": [float(x) for x in vec], "metadata": {"color": color, "n": n}}
        if expired:
            rec["expires_at"] = time.time() - 1  # already expired: must be invisible at once
        self.coll.upsert(rec)
        if expired:
            self.model.pop(rid, None)
        else:
            self.model[rid] = {"vector": rec["vector"], "metadata": rec["metadata"]}

    @rule(rid=IDS, n=st.integers(0, 5))
    def patch(self, rid, n):
        if rid in self.model:
            self.coll.patch(rid, metadata={"n": n})
            self.model[rid]["metadata"]["n"] = n
        else:
            try:
                self.coll.patch(rid, metadata={"n": n})
                raise AssertionError("patch of a missing record must fail")
            except engramdb.NotFound:
                pass

    @rule(rid=IDS)
    def delete(self, rid):
        assert self.coll.delete(rid) == (1 if rid in self.model else 0)
        self.model.pop(rid, None)

    @rule(color=COLOR)
    def delete_by_filter(self, color):
        expected = [r for r, v in self.model.items() if v["metadata"]["color"] == color]
        assert self.coll.delete(filter={"color": color}) == len(expected)
        for r in expected:
            del self.model[r]

    @precondition(lambda self: True)
    @rule()
    def reopen(self):
        self.db.close()
        self.db = engramdb.open(self.dir, storage={"sync_writes": False})
        self.coll = self.db.get_collection("m")

    @invariant()
    def agrees(self):
        assert self.coll.count() == len(self.model)
        got = {r.id: r for r in self.coll.scan(limit=100).records}
        assert set(got) == set(self.model)
        for rid, want in self.model.items():
            assert got[rid].metadata == want["metadata"]
        hits = self.coll.search([1.0, 0.0, 0.0], k=20, include=[])
        assert {h.id for h in hits} == set(self.model)
        for color in ("red", "blue"):
            hits = self.coll.search([1.0, 0.0, 0.0], k=20, filter={"color": color}, include=[])
            assert {h.id for h in hits} == {r for r, v in self.model.items() if v["metadata"]["color"] == color}


TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
