"""Partitioning and placement: which shard holds a record, which nodes hold a shard.

Pure and deterministic: no I/O, no clock, no randomness and no Python ``hash()``
(which is salted per process), so every node and every process computes the same
answers from the same inputs.

**Shards.** A collection has ``shards`` = S, a power of two. A record's shard is
the top log2(S) bits of xxh3_64 of its id (UTF-8). Edges live in the shard of
their *source* id, so a node's out-edges sit next to the node. Because the shard
is a prefix of the hash, doubling S splits shard ``s`` into exactly ``2s`` and
``2s + 1`` (:func:`split`): a split never moves a record between parents.

**Placement.** A token ring with ``vnodes`` virtual nodes per node: node ``n``'s
tokens are xxh3_64 of ``"n#0"``, ``"n#1"``, ... A shard's token is xxh3_64 of
``"tenant/collection/shard"``; its replicas are the first RF *distinct* nodes met
walking clockwise (increasing tokens, wrapping) from the first vnode token at or
after the shard token. The first replica is the preferred one. Adding a node can
only put that node into a replica set (displacing one node); removing a node only
takes it out (the next distinct node takes its place): the ring moves the least
data it can.

The computed placement is meant to be *stored* (in etcd, :meth:`Placement.to_dict`)
and changed only through :func:`moves`, so a ring change moves only shards whose
replica set changed. After a split both children keep the parent's replicas (a
local split copies nothing); computing the placement for 2S and diffing it with
:func:`moves` tells what a later rebalance would stream.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from engramdb import validation
from engramdb.errors import InvalidArgument

MAX_SHARDS = validation.MAX_SHARDS
# 256 vnodes keep every node within about ±25% of the mean share of replicas for 3-10 nodes (measured in
# tests/unit/test_ring.py; docs/decisions.md); building the ring stays well under a millisecond per node.
DEFAULT_VNODES = 256
MAX_VNODES = 1024
MAX_NODES = 1024
PLACEMENT_FORMAT = 1


def _h64(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def _check_shards(shards: Any, where: str = "shards") -> int:
    # The rule API callers meet at create_collection: one definition (validation.py).
    return validation.shards(shards, where)


def _check_shard(shard: Any, shards: int) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise InvalidArgument(f"shard must be an integer from 0 to {shards - 1}, got {shard!r}", code="invalid_shard")
    return shard


def shard_of(record_id: str, shards: int) -> int:
    """The shard (0..shards-1) of a record, or of an edge by its source id."""
    _check_shards(shards)
    validation.record_ref(record_id)
    # A prefix of the hash (not a modulo): shard s of S is exactly shards 2s and 2s+1 of 2S.
    return _h64(record_id) >> (64 - shards.bit_length() + 1)


def split(shard: int, shards: int) -> tuple[int, int]:
    """The two shards of ``2 * shards`` that shard ``shard`` of ``shards`` splits into."""
    _check_shards(shards)
    _check_shard(shard, shards)
    if shards * 2 > MAX_SHARDS:
        raise InvalidArgument(
            f"a collection has at most {MAX_SHARDS} shards; it has {shards}, so it cannot split further",
            code="invalid_shards",
        )
    return 2 * shard, 2 * shard + 1


def shard_token(tenant: str, collection: str, shard: int) -> int:
    """The ring position of one shard of one collection."""
    # Names cannot contain '/', so the key is unambiguous.
    return _h64(f"{tenant}/{collection}/{shard}")


def _check_nodes(nodes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Iterable):
        raise InvalidArgument("nodes must be a list of node ids", code="invalid_nodes")
    out = tuple(nodes)
    if not 1 <= len(out) <= MAX_NODES:
        raise InvalidArgument(f"nodes must list 1 to {MAX_NODES} node ids, got {len(out)}", code="invalid_nodes")
    for n in out:
        validation.name(n, "node id")
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise InvalidArgument(f"nodes lists {dup} more than once; list each node once", code="invalid_nodes")
    # Order-independent: the ring depends on the set of nodes, not on how a caller listed them.
    return tuple(sorted(out))


def _check_rf(rf: Any, n_nodes: int) -> int:
    validation.replication_factor(rf)
    if rf > n_nodes:
        raise InvalidArgument(
            f"replication_factor {rf} exceeds the {n_nodes} node(s) available; lower it or add nodes",
            code="invalid_replication_factor",
        )
    return rf


@dataclass(frozen=True)
class Ring:
    """Nodes on a token ring, ``vnodes`` tokens each. Build with :meth:`build`."""

    nodes: tuple[str, ...]
    vnodes: int
    _tokens: tuple[int, ...]
    _owners: tuple[int, ...]  # index into ``nodes`` of each token's node

    @classmethod
    def build(cls, nodes: Iterable[str], vnodes: int = DEFAULT_VNODES) -> Ring:
        ids = _check_nodes(nodes)
        validation.int_in_range(vnodes, "vnodes", 1, MAX_VNODES, "invalid_vnodes")
        # Ties between equal 64-bit tokens (vanishingly rare) break by node id, so the order stays total.
        points = sorted((_h64(f"{node}#{i}"), k) for k, node in enumerate(ids) for i in range(vnodes))
        return cls(ids, vnodes, tuple(t for t, _ in points), tuple(k for _, k in points))

    def replicas_for(self, token: int, rf: int) -> list[str]:
        """The first ``rf`` distinct nodes clockwise from ``token``; the first is the preferred replica."""
        _check_rf(rf, len(self.nodes))
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < 1 << 64:
            raise InvalidArgument(f"token must be an integer from 0 to 2**64-1, got {token!r}", code="invalid_token")
        start = bisect.bisect_left(self._tokens, token)
        size = len(self._tokens)
        seen: list[int] = []
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == rf:
                    break
        return [self.nodes[k] for k in seen]

    def placement(self, tenant: str, collection: str, shards: int, rf: int) -> dict[int, list[str]]:
        """``{shard: [node ids]}`` for every shard of one collection."""
        validation.name(tenant, "tenant")
        validation.name(collection, "collection")
        _check_shards(shards)
        _check_rf(rf, len(self.nodes))
        return {s: self.replicas_for(shard_token(tenant, collection, s), rf) for s in range(shards)}


def placement(
    tenant: str, collection: str, shards: int, rf: int, nodes: Iterable[str], *, vnodes: int = DEFAULT_VNODES
) -> dict[int, list[str]]:
    """``{shard: [node ids]}`` with ``rf`` distinct nodes each, the preferred replica first."""
    return Ring.build(nodes, vnodes).placement(tenant, collection, shards, rf)


@dataclass(frozen=True)
class ShardMove:
    """How one shard's replica set changes: ``added`` must be streamed before ``removed`` drop their copy."""

    shard: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]  # replicas in both; any of them (or a removed one, until retired) can be a source


def _check_replica_map(value: Any, where: str) -> dict[int, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where} must map shard numbers to lists of node ids", code="invalid_placement")
    out: dict[int, tuple[str, ...]] = {}
    for shard, replicas in value.items():
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < MAX_SHARDS:
            raise InvalidArgument(f"{where} has shard {shard!r}, not a shard number", code="invalid_placement")
        if isinstance(replicas, str | bytes) or not isinstance(replicas, Sequence) or not replicas:
            raise InvalidArgument(f"{where}[{shard}] must be a non-empty list of node ids", code="invalid_placement")
        for n in replicas:
            validation.name(n, "node id")
        if len(set(replicas)) != len(replicas):
            raise InvalidArgument(f"{where}[{shard}] lists a node more than once", code="invalid_placement")
        out[shard] = tuple(replicas)
    return out


def moves(old: Mapping[int, Sequence[str]], new: Mapping[int, Sequence[str]]) -> dict[int, ShardMove]:
    """Per shard whose replica *set* changed, the replicas to add and to remove.

    A change of order alone (a different preferred replica) moves no data and is not listed. Both placements
    must cover the same shards; a split changes the shard count and is its own operation (:func:`split`).
    """
    a, b = _check_replica_map(old, "old placement"), _check_replica_map(new, "new placement")
    if a.keys() != b.keys():
        raise InvalidArgument(
            f"the placements cover different shards ({len(a)} and {len(b)}); compare placements of the same "
            "shard count (split first)",
            code="invalid_placement",
        )
    out: dict[int, ShardMove] = {}
    for shard in sorted(a):
        before, after = a[shard], b[shard]
        added = tuple(n for n in after if n not in before)
        removed = tuple(n for n in before if n not in after)
        if added or removed:
            out[shard] = ShardMove(shard, added, removed, tuple(n for n in before if n in after))
    return out


@dataclass(frozen=True)
class Placement:
    """A collection's stored placement with its ``epoch`` (bumped by whoever stores a changed one)."""

    tenant: str
    collection: str
    shards: int
    replication_factor: int
    epoch: int
    replicas: Mapping[int, tuple[str, ...]]

    @classmethod
    def compute(
        cls,
        tenant: str,
        collection: str,
        shards: int,
        rf: int,
        nodes: Iterable[str] | Ring,
        *,
        vnodes: int = DEFAULT_VNODES,
        epoch: int = 0,
    ) -> Placement:
        ring = nodes if isinstance(nodes, Ring) else Ring.build(nodes, vnodes)
        computed = ring.placement(tenant, collection, shards, rf)
        return cls.from_dict(
            {
                "format": PLACEMENT_FORMAT,
                "epoch": epoch,
                "tenant": tenant,
                "collection": collection,
                "shards": shards,
                "replication_factor": rf,
                "replicas": {str(s): r for s, r in computed.items()},
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (shard keys are strings, as JSON objects require)."""
        return {
            "format": PLACEMENT_FORMAT,
            "epoch": self.epoch,
            "tenant": self.tenant,
            "collection": self.collection,
            "shards": self.shards,
            "replication_factor": self.replication_factor,
            "replicas": {str(s): list(self.replicas[s]) for s in range(self.shards)},
        }

    @classmethod
    def from_dict(cls, value: Any) -> Placement:
        """Parse and check a stored placement; anything malformed is ``invalid_placement``, never half-read."""
        if not isinstance(value, Mapping):
            raise InvalidArgument("a placement must be a JSON object", code="invalid_placement")
        keys = {"format", "epoch", "tenant", "collection", "shards", "replication_factor", "replicas"}
        if set(value) != keys:
            raise InvalidArgument(f"a placement has exactly the fields {sorted(keys)}", code="invalid_placement")
        if value["format"] != PLACEMENT_FORMAT:
            raise InvalidArgument(
                f"placement format {value['format']!r} is not {PLACEMENT_FORMAT}; upgrade this node",
                code="invalid_placement",
            )
        epoch = value["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 1 << 63:
            raise InvalidArgument(f"placement epoch must be an integer >= 0, got {epoch!r}", code="invalid_placement")
        tenant = validation.name(value["tenant"], "tenant")
        collection = validation.name(value["collection"], "collection")
        shards = _check_shards(value["shards"])
        rf = value["replication_factor"]
        if isinstance(rf, bool) or not isinstance(rf, int) or not 1 <= rf <= MAX_NODES:
            raise InvalidArgument(f"replication_factor must be an integer >= 1, got {rf!r}", code="invalid_placement")
        raw = value["replicas"]
        if not isinstance(raw, Mapping) or set(raw) != {str(s) for s in range(shards)}:
            raise InvalidArgument(
                f"placement replicas must have exactly the keys '0' to '{shards - 1}'", code="invalid_placement"
            )
        replicas = _check_replica_map({int(k): v for k, v in raw.items()}, "placement replicas")
        short = [s for s, r in replicas.items() if len(r) != rf]
        if short:
            raise InvalidArgument(
                f"placement shards {sorted(short)[:8]} do not have exactly {rf} replicas", code="invalid_placement"
            )
        return cls(tenant, collection, shards, rf, epoch, {s: replicas[s] for s in range(shards)})
