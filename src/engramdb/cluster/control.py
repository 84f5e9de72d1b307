"""One node's client of the control plane: etcd.

etcd holds what every node must agree on, and only etcd decides it (Raft); this module never
elects, gossips or votes. A node

- **registers** under a lease: ``members/<node_id>`` lives only as long as the lease, which a
  keepalive thread refreshes every ``lease_ttl / 3`` seconds. A node that dies, hangs or loses
  etcd for longer than the TTL disappears from every view by itself;
- **watches** the cluster's prefix and keeps an in-memory :class:`View` (members, schema,
  placement) with the etcd revision it reflects, so requests are served from memory, never with an
  etcd round trip each;
- **changes** schema and placement only through transactions: a collection is created only if its
  key is absent, a placement is replaced only if its ``mod_revision`` is the one the writer read;
- knows whether its **session** is good (:attr:`ControlPlane.session_ok`): False once etcd has not
  answered a keepalive for a whole lease TTL (the lease may be gone, so other nodes may think this
  one is down); on recovery the node registers again under a new lease and the session is good
  again. A node must not coordinate writes while its session is not ok.

Client: ``etcd3gw`` (etcd's HTTP/JSON gateway, blocking; see docs/decisions.md "Cluster control
plane"). Its own watch iterator blocks forever when etcd dies (measured), so the watch stream is
read here, with a read timeout, resuming from the last revision seen and reloading after a
compaction.

Every etcd call has a timeout (``request_timeout_seconds``); endpoints come from the operator's
settings only. Background threads never die silently: a failure is logged, counted, exposed as a
state and retried with back-off (``errors.is_failure``).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from engramdb import validation
from engramdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable, is_failure

log = logging.getLogger("engramdb.cluster")

T = TypeVar("T")

MEMBER_STATES: Final = ("joining", "up", "draining", "left")
MAX_TXN_OPS: Final = 128  # etcd's default --max-txn-ops
MAX_VALUE_BYTES: Final = 1 << 20  # etcd refuses requests over 1.5 MiB by default; stay clearly below
_MAX_ADDRESS = 255  # host:port (a DNS name is at most 253 characters)


# --------------------------------------------------------------------------------------- keyspace
@dataclass(frozen=True)
class KeySpace:
    """Every etcd key of one cluster, in one place.

    ``/engramdb/<cluster>/`` then::

        members/<node_id>                    a node's MemberInfo, under its lease
        schema/tenants/<tenant>              a tenant's record, created only if absent
        schema/collections/<tenant>/<name>   a collection's config, created only if absent
        placement/<tenant>/<name>/<shard>    a shard's replica set, replaced by compare-and-swap
        keys/<key_id>                        an API key's record (digest, tenant, role, scope, expiry)
        dropped/<tenant>/<name>/<rev>        a deleted collection's replicas (named by rev) may be erased

    (``ops/`` follows with the membership changes that write it.) Every name in a key obeys
    the name rule of ``validation.py`` (no ``/``), so a key parses back unambiguously.
    """

    cluster: str

    def __post_init__(self) -> None:
        validation.name(self.cluster, "cluster name")

    @property
    def root(self) -> str:
        return f"/engramdb/{self.cluster}/"

    @property
    def members(self) -> str:
        return self.root + "members/"

    def member(self, node_id: str) -> str:
        return self.members + validation.name(node_id, "node id")

    def tenant(self, tenant: str) -> str:
        return f"{self.root}schema/tenants/{validation.name(tenant, 'tenant')}"

    def collection(self, tenant: str, collection: str) -> str:
        t, c = validation.name(tenant, "tenant"), validation.name(collection, "collection")
        return f"{self.root}schema/collections/{t}/{c}"

    def placement(self, tenant: str, collection: str, shard: int) -> str:
        t, c = validation.name(tenant, "tenant"), validation.name(collection, "collection")
        if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
            raise InvalidArgument(f"shard must be a non-negative integer, got {shard!r}", code="invalid_shard")
        return f"{self.root}placement/{t}/{c}/{shard}"

    @property
    def keys(self) -> str:
        return self.root + "keys/"

    def key(self, key_id: str) -> str:
        return self.keys + validation.name(key_id, "key id")

    def dropped(self, tenant: str, collection: str, rev: int) -> str:
        t, c = validation.name(tenant, "tenant"), validation.name(collection, "collection")
        return f"{self.root}dropped/{t}/{c}/{int(rev)}"

    def parse(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        """``(kind, parts)`` for a key of this cluster: ``("member", (node,))``, ``("tenant", (t,))``,
        ``("collection", (t, c))``, ``("placement", (t, c, shard))``; None for any other key."""
        if not key.startswith(self.root):
            return None
        parts = tuple(key[len(self.root) :].split("/"))
        if not all(validation.NAME_RE.fullmatch(p) for p in parts[1:]):
            return None
        match parts:
            case ("members", node):
                return "member", (node,)
            case ("schema", "tenants", tenant):
                return "tenant", (tenant,)
            case ("schema", "collections", tenant, name):
                return "collection", (tenant, name)
            case ("placement", tenant, name, shard) if shard.isdigit():
                return "placement", (tenant, name, shard)
            case ("keys", key_id):
                return "key", (key_id,)
            case ("dropped", tenant, name, rev) if rev.isdigit():
                return "dropped", (tenant, name, rev)
        return None


# ----------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class MemberInfo:
    """What a node publishes about itself in ``members/<node_id>``."""

    node_id: str
    address: str  # host:port of the node-to-node service
    state: str = "joining"
    version: str = ""
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        validation.name(self.node_id, "node id")
        if not isinstance(self.address, str) or not 0 < len(self.address) <= _MAX_ADDRESS:
            raise InvalidArgument(f"member address must be host:port, got {self.address!r}", code="invalid_address")
        if self.state not in MEMBER_STATES:
            raise InvalidArgument(
                f"member state must be one of {', '.join(MEMBER_STATES)}, got {self.state!r}", code="invalid_state"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "state": self.state,
            "version": self.version,
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> MemberInfo:
        return cls(
            node_id=str(value["node_id"]),
            address=str(value["address"]),
            state=str(value["state"]),
            version=str(value.get("version", "")),
            started_at=float(value.get("started_at", 0.0)),
        )


@dataclass(frozen=True)
class Entry:
    """One key's value as the view holds it, with the revisions a transaction compares."""

    value: Mapping[str, Any]
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class View:
    """An immutable snapshot of the cluster's state as of etcd revision ``revision``.

    Replaced as a whole on every change, so a reader holding one sees a consistent state.
    """

    revision: int = 0
    members: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))
    tenants: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))
    collections: Mapping[tuple[str, str], Entry] = field(default_factory=lambda: MappingProxyType({}))
    placement: Mapping[tuple[str, str, int], Entry] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))
    dropped: Mapping[tuple[str, str, int], Entry] = field(default_factory=lambda: MappingProxyType({}))

    def member(self, node_id: str) -> MemberInfo | None:
        e = self.members.get(node_id)
        return None if e is None else MemberInfo.from_json(e.value)


def _encode(value: Mapping[str, Any], what: str) -> str:
    raw = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(raw) > MAX_VALUE_BYTES:
        raise InvalidArgument(f"{what} is {len(raw)} bytes encoded; the limit is {MAX_VALUE_BYTES}", code="too_large")
    return base64.b64encode(raw).decode()


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _prefix_end(prefix: str) -> str:
    # The key range [prefix, prefix_end) is every key starting with prefix; the prefix ends in "/".
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# ----------------------------------------------------------------------------------------- client
def _endpoint(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidArgument(f"etcd endpoint must be http(s)://host:port, got {url!r}", code="invalid_endpoint")
    try:
        port = parts.port or 2379
    except ValueError as e:
        raise InvalidArgument(f"etcd endpoint {url!r} has an invalid port", code="invalid_endpoint") from e
    return parts.scheme, parts.hostname, port


@dataclass(frozen=True)
class EtcdTLS:
    """Client TLS to etcd: files from the operator's settings."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class _Etcd:
    """etcd3gw clients for the operator's endpoints; a call goes to the first that answers."""

    def __init__(self, endpoints: Sequence[str], timeout: float, tls: EtcdTLS | None) -> None:
        if not endpoints:
            raise InvalidArgument("at least one etcd endpoint is needed", code="invalid_endpoint")
        tls = tls or EtcdTLS()
        self.timeout = timeout
        self.clients = [
            etcd3gw.Etcd3Client(
                host=host,
                port=port,
                protocol=scheme,
                ca_cert=tls.ca_file,
                cert_cert=tls.cert_file,
                cert_key=tls.key_file,
                timeout=timeout,
                api_path="/v3/",  # etcd >= 3.4; no discovery round trip that could hang or fail on its own
            )
            for scheme, host, port in map(_endpoint, endpoints)
        ]
        self._current = 0
        self._lock = threading.Lock()

    def call(self, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` on the current endpoint, then on each other one; Unavailable if none answers."""
        with self._lock:
            start = self._current
        errors = []
        for i in range(len(self.clients)):
            idx = (start + i) % len(self.clients)
            client = self.clients[idx]
            try:
                result = fn(client)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as e:
                errors.append(f"{client.base_url}: {type(e).__name__}")
                continue
            with self._lock:
                self._current = idx
            return result
        raise Unavailable(
            f"etcd is unreachable ({'; '.join(errors)}); check that etcd runs and the cluster's etcd endpoints",
            code="etcd_unavailable",
        )

    def close(self) -> None:
        for c in self.clients:
            c.session.close()


# ----------------------------------------------------------------------------------- the control plane
class ControlPlane:
    """The control plane as one node sees it. Thread-safe.

    ``start()`` loads the view and starts the watch; ``register(member)`` grants the lease, writes
    the member key and starts the keepalive; ``deregister()`` revokes the lease (the key goes at
    once); ``close()`` stops the threads without deregistering, so the member key expires with
    the lease, as after a crash.
    """

    def __init__(
        self,
        *,
        cluster: str,
        node_id: str,
        endpoints: Sequence[str],
        lease_ttl_seconds: int = 10,
        request_timeout_seconds: float = 5.0,
        watch_idle_seconds: float = 30.0,
        tls: EtcdTLS | None = None,
    ) -> None:
        if isinstance(lease_ttl_seconds, bool) or not isinstance(lease_ttl_seconds, int) or lease_ttl_seconds < 2:
            raise InvalidArgument("lease_ttl_seconds must be an integer >= 2 (etcd leases count whole seconds)")
        if not 0 < request_timeout_seconds < lease_ttl_seconds:
            raise InvalidArgument("request_timeout_seconds must be positive and shorter than the lease TTL")
        self.keys = KeySpace(cluster)
        self.node_id = validation.name(node_id, "node id")
        self.lease_ttl = lease_ttl_seconds
        self.keepalive_interval = lease_ttl_seconds / 3
        self.request_timeout = request_timeout_seconds
        # No event for this long: reopen the stream from the last revision. Also how long a silently
        # dead connection (no RST, e.g. a partition) can hold the watch.
        self.watch_idle = watch_idle_seconds
        self._etcd = _Etcd(endpoints, request_timeout_seconds, tls)

        self._lock = threading.RLock()  # lease and member; held across etcd calls, so readers never take it
        self._stop = threading.Event()
        self._keepalive_wake = threading.Event()
        self._view = View()
        self._view_changed = threading.Condition(threading.RLock())
        self._member: MemberInfo | None = None
        self._lease_id: int | None = None
        self._last_contact = 0.0  # monotonic time a keepalive last went out and was answered
        self.lease_generation = 0  # how many leases this node has been registered under

        self._keepalive_thread: threading.Thread | None = None
        self.keepalive_state = "stopped"  # stopped | ok | retrying | dead
        self.keepalive_failures = 0
        self.keepalive_last_error: str | None = None

        self._watch_thread: threading.Thread | None = None
        self._watch_response: requests.Response | None = None
        self.watch_state = "stopped"  # stopped | ok | retrying | dead
        self.watch_failures = 0
        self.watch_last_error: str | None = None
        self.watch_reloads = 0

    # ------------------------------------------------------------------ state
    @property
    def view(self) -> View:
        return self._view

    @property
    def session_ok(self) -> bool:
        """True while this node is registered and etcd has answered a keepalive within the lease TTL."""
        # No lock: the keepalive thread holds it across etcd calls, and this must answer at once.
        if self._stop.is_set() or self._member is None or self._lease_id is None:
            return False
        return time.monotonic() - self._last_contact < self.lease_ttl

    @property
    def keepalive_thread_alive(self) -> bool:
        t = self._keepalive_thread
        return t is not None and t.is_alive()

    def wait_for(self, predicate: Callable[[View], bool], timeout: float) -> View:
        """Wait until ``predicate(view)`` holds; the view, or Unavailable after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._view_changed:
            while not predicate(self._view):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(
                        f"the control plane view did not reach the expected state within {timeout} s "
                        f"(at revision {self._view.revision}, watch {self.watch_state})",
                        code="etcd_unavailable",
                    )
                self._view_changed.wait(left)
            return self._view

    def wait_for_revision(self, revision: int, timeout: float) -> View:
        return self.wait_for(lambda v: v.revision >= revision, timeout)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the watch (it loads the view first, and keeps retrying while etcd is unreachable)."""
        with self._lock:
            if self._watch_thread is not None:
                return
            self._watch_thread = threading.Thread(target=self._watch_loop, name="engramdb-etcd-watch", daemon=True)
            self._watch_thread.start()

    def register(self, member: MemberInfo) -> None:
        """Publish ``member`` under this node's lease (granting one if needed) and keep the lease alive.

        Calling it again replaces the published info (e.g. a new state). Raises Unavailable if etcd
        does not answer now; the keepalive thread keeps trying to register meanwhile.
        """
        if member.node_id != self.node_id:
            raise InvalidArgument(f"member node id {member.node_id!r} is not this node's ({self.node_id!r})")
        with self._lock:
            if self._stop.is_set():
                raise Unavailable("the control plane client is closed", code="closed")
            self._member = member
            if self._keepalive_thread is None:
                self._keepalive_thread = threading.Thread(
                    target=self._keepalive_loop, name="engramdb-etcd-keepalive", daemon=True
                )
                self._keepalive_thread.start()
            if self._lease_id is None:
                self._new_lease()
            else:
                self._put_member()

    def deregister(self) -> None:
        """Leave: revoke the lease, so the member key goes at once rather than after the TTL."""
        with self._lock:
            self._member = None
            lease, self._lease_id = self._lease_id, None
        self._join_keepalive()
        if lease is not None:
            self._etcd.call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease}))

    def close(self) -> None:
        """Stop both threads without deregistering (the member key expires with the lease)."""
        self._stop.set()
        resp = self._watch_response
        if resp is not None:
            _shutdown(resp)
        self._join_keepalive()
        t = self._watch_thread
        if t is not None:
            t.join(timeout=self.request_timeout + 1)
        self._etcd.close()

    def _join_keepalive(self) -> None:
        with self._lock:
            t, self._keepalive_thread = self._keepalive_thread, None
        if t is not None and t is not threading.current_thread():
            self._keepalive_wake.set()
            t.join(timeout=self.request_timeout + 1)
            self._keepalive_wake.clear()

    # ----------------------------------------------------------------- writes
    def create_tenant(self, tenant: str, record: Mapping[str, Any]) -> int:
        """Create ``schema/tenants/<tenant>`` if absent; its revision. AlreadyExists if it is there."""
        return self._create_if_absent(self.keys.tenant(tenant), record, f"tenant {tenant!r}")

    def create_collection(self, tenant: str, collection: str, config: Mapping[str, Any]) -> int:
        """Create ``schema/collections/<tenant>/<collection>`` if absent; its revision.

        AlreadyExists if another coordinator created it first (etcd decides who was first).
        """
        return self._create_if_absent(
            self.keys.collection(tenant, collection), config, f"collection {collection!r} of tenant {tenant!r}"
        )

    def set_placement(
        self, tenant: str, collection: str, shard: int, placement: Mapping[str, Any], *, expected_mod_revision: int
    ) -> int:
        """Write a shard's placement if its key still has ``expected_mod_revision`` (0: the key is absent).

        Returns the new mod_revision. FailedPrecondition ``placement_conflict`` when someone changed it
        since the caller read it: re-read the view and decide again.
        """
        key = self.keys.placement(tenant, collection, shard)
        if isinstance(expected_mod_revision, bool) or not isinstance(expected_mod_revision, int):
            raise InvalidArgument("expected_mod_revision must be an integer")
        value = _encode(placement, "placement")
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": expected_mod_revision}],
            "success": [{"request_put": {"key": _b64(key), "value": value}}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        result = self._etcd.call(lambda c: c.transaction(txn))
        if not result.get("succeeded"):
            kvs = result.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
            current = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            raise FailedPrecondition(
                f"placement of shard {shard} of {tenant}/{collection} changed since revision {expected_mod_revision} "
                f"(now {current}); read it again and retry",
                code="placement_conflict",
                details={"expected_mod_revision": expected_mod_revision, "current_mod_revision": current},
            )
        return int(result["header"]["revision"])

    def create_collection_placed(
        self,
        tenant: str,
        collection: str,
        config: Mapping[str, Any],
        placements: Mapping[int, Mapping[str, Any]],
    ) -> int:
        """Create a collection and every shard's placement in one transaction, if the collection is absent.

        Returns the revision (the collection's ``create_revision``, which names its shard replicas on
        the nodes). AlreadyExists when another coordinator created it first. Placement keys left by
        an earlier collection of the same name are overwritten in the same transaction.
        """
        key = self.keys.collection(tenant, collection)
        if len(placements) + 1 > MAX_TXN_OPS:
            raise InvalidArgument(
                f"a collection can have at most {MAX_TXN_OPS - 1} shards in this version (one etcd transaction)",
                code="invalid_shards",
            )
        puts = [{"request_put": {"key": _b64(key), "value": _encode(config, f"collection {collection!r}")}}]
        for shard, value in sorted(placements.items()):
            pkey = self.keys.placement(tenant, collection, shard)
            puts.append({"request_put": {"key": _b64(pkey), "value": _encode(value, "placement")}})
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": puts,
            "failure": [],
        }
        result = self._etcd.call(lambda c: c.transaction(txn))
        if not result.get("succeeded"):
            raise AlreadyExists(
                f"collection {collection!r} already exists in tenant {tenant!r}", code="collection_exists"
            )
        return int(result["header"]["revision"])

    def replace_collection(
        self, tenant: str, collection: str, config: Mapping[str, Any], *, create_revision: int
    ) -> int:
        """Replace a collection's config if it is still the one created at ``create_revision``."""
        key = self.keys.collection(tenant, collection)
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": create_revision}],
            "success": [{"request_put": {"key": _b64(key), "value": _encode(config, f"collection {collection!r}")}}],
            "failure": [],
        }
        result = self._etcd.call(lambda c: c.transaction(txn))
        if not result.get("succeeded"):
            raise FailedPrecondition(
                f"collection {collection!r} was deleted or re-created meanwhile; read it again", code="conflict"
            )
        return int(result["header"]["revision"])

    def delete_collection(
        self, tenant: str, collection: str, *, create_revision: int, replica_rev: int | None = None
    ) -> int:
        """Delete a collection's schema and placement keys if it is still the one created at ``create_revision``.

        Every node sees the deletion in its watch and drops its shard replicas. NotFound when the
        collection is gone (or was re-created) already.
        """
        key = self.keys.collection(tenant, collection)
        pprefix = self.keys.root + f"placement/{tenant}/{collection}/"
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": create_revision}],
            "success": [
                {"request_delete_range": {"key": _b64(key)}},
                {"request_delete_range": {"key": _b64(pprefix), "range_end": _b64(_prefix_end(pprefix))}},
                # Nodes erase replicas only on this positive mark, never because etcd lacks a collection
                # (an empty or older etcd after a restore must not make them delete data).
                {
                    "request_put": {
                        "key": _b64(self.keys.dropped(tenant, collection, replica_rev or create_revision)),
                        "value": _encode({"at": time.time()}, "drop mark"),
                    }
                },
            ],
            "failure": [],
        }
        result = self._etcd.call(lambda c: c.transaction(txn))
        if not result.get("succeeded"):
            raise NotFound(f"collection {collection!r} does not exist", code="collection_not_found")
        return int(result["header"]["revision"])

    def put_key(self, key_id: str, record: Mapping[str, Any]) -> int:
        """Write an API key's record (the key store serialises its own read-modify-writes)."""
        key, value = self.keys.key(key_id), _encode(record, "API key")
        result = self._etcd.call(lambda c: c.post(c.get_url("/kv/put"), json={"key": _b64(key), "value": value}))
        return int(result["header"]["revision"])

    def compact(self) -> int:
        """Drop etcd's history before the current revision (after an erase: old values of erased rows).

        Compaction removes old revisions from etcd's keyspace; the freed pages leave its file at
        the next ``etcdctl defrag`` (docs/cluster.md, "Operating").
        """
        header = self._etcd.call(lambda c: c.post(c.get_url("/kv/range"), json={"key": _b64(self.keys.root)}))
        rev = int(header["header"]["revision"])
        self._etcd.call(lambda c: c.post(c.get_url("/kv/compaction"), json={"revision": rev, "physical": True}))
        return rev

    def _create_if_absent(self, key: str, value: Mapping[str, Any], what: str) -> int:
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": _b64(key), "value": _encode(value, what)}}],
            "failure": [],
        }
        result = self._etcd.call(lambda c: c.transaction(txn))
        if not result.get("succeeded"):
            raise AlreadyExists(f"{what} already exists in the cluster")
        return int(result["header"]["revision"])

    # -------------------------------------------------------------- keepalive
    def _put_member(self) -> None:
        assert self._member is not None and self._lease_id is not None
        key, value, lease = self.keys.member(self.node_id), _encode(self._member.to_json(), "member"), self._lease_id
        self._etcd.call(lambda c: c.post(c.get_url("/kv/put"), json={"key": _b64(key), "value": value, "lease": lease}))

    def _new_lease(self) -> None:
        """Grant a lease and write the member key under it (the old lease, if any, is abandoned)."""
        sent = time.monotonic()
        granted = self._etcd.call(lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": self.lease_ttl, "ID": 0}))
        self._lease_id = int(granted["ID"])
        self._put_member()
        self._last_contact = sent
        self.lease_generation += 1
        log.info(
            "registered node %s under lease %x (generation %d)", self.node_id, self._lease_id, self.lease_generation
        )

    def _keepalive_once(self) -> None:
        with self._lock:
            if self._member is None:
                return
            lease = self._lease_id
            lost = lease is None or time.monotonic() - self._last_contact >= self.lease_ttl
        if lost:
            # Etcd was out of reach for a whole TTL: others may have seen this node go. Register anew
            # rather than revive the old lease, so every view sees one clean leave-and-join.
            log.warning("etcd session of node %s was lost; registering again under a new lease", self.node_id)
            with self._lock:
                self._new_lease()
            if lease is not None:
                try:
                    self._etcd.call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease}))
                except Exception as e:  # the old lease expires by itself anyway
                    log.info("could not revoke the old lease %x: %s", lease, e)
            return
        sent = time.monotonic()
        result = self._etcd.call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": lease}))
        ttl = int(result.get("result", {}).get("TTL", -1))
        with self._lock:
            if self._lease_id != lease:
                return  # deregistered or re-registered meanwhile
            if ttl <= 0:
                log.warning("lease %x of node %s expired in etcd; registering again", lease, self.node_id)
                self._new_lease()
            else:
                self._last_contact = sent

    def _keepalive_loop(self) -> None:
        backoff = 0.0
        while True:
            wait = backoff or self.keepalive_interval
            if self._keepalive_wake.wait(wait) or self._stop.is_set():
                break
            with self._lock:
                if self._member is None:
                    break
            try:
                self._keepalive_once()
            except BaseException as e:
                if not is_failure(e):
                    self.keepalive_state = "dead"
                    log.critical("the etcd keepalive thread of node %s stops: %r", self.node_id, e)
                    raise
                self.keepalive_failures += 1
                self.keepalive_last_error = f"{type(e).__name__}: {e}"
                self.keepalive_state = "retrying"
                # Quick retries first: the session must come back soon after etcd does.
                backoff = min(0.1 * 2 ** min(self.keepalive_failures, 10), self.keepalive_interval)
                log.warning(
                    "etcd keepalive of node %s failed (%d in a row), retrying in %.1f s: %s",
                    self.node_id,
                    self.keepalive_failures,
                    backoff,
                    self.keepalive_last_error,
                )
                continue
            if self.keepalive_state != "ok":
                log.info("etcd keepalive of node %s is ok", self.node_id)
            self.keepalive_state = "ok"
            self.keepalive_failures = 0
            backoff = 0.0
        self.keepalive_state = "stopped"

    # ------------------------------------------------------------------ watch
    def _reload(self) -> None:
        """Read the whole prefix at one revision and replace the view."""
        prefix = self.keys.root
        body = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        result = self._etcd.call(lambda c: c.post(c.get_url("/kv/range"), json=body))
        view = _Building(self.keys, View(revision=int(result["header"]["revision"])))
        for kv in result.get("kvs", []):
            view.put(kv)
        self._publish(view.freeze(int(result["header"]["revision"])))
        self.watch_reloads += 1

    def _publish(self, view: View) -> None:
        with self._view_changed:
            self._view = view
            self._view_changed.notify_all()

    def _stream(self) -> bool:
        """Follow the watch stream from the view's revision; True if the view must be reloaded."""
        prefix = self.keys.root
        create = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(_prefix_end(prefix)),
                "start_revision": self._view.revision + 1,
            }
        }

        def open_stream(c: Any) -> requests.Response:
            try:
                return c.session.post(
                    c.get_url("/watch"), json=create, stream=True, timeout=(self.request_timeout, self.watch_idle)
                )
            except requests.exceptions.Timeout as e:
                raise etcd_exc.ConnectionTimeoutError(str(e)) from e
            except requests.exceptions.ConnectionError as e:
                raise etcd_exc.ConnectionFailedError(str(e)) from e

        resp = self._etcd.call(open_stream)
        self._watch_response = resp
        try:
            if resp.status_code != 200:
                raise Unavailable(f"etcd refused the watch: HTTP {resp.status_code} {resp.text[:200]}")
            if self._stop.is_set():
                return False
            for message in _lines(resp):
                result = message.get("result")
                if result is None:
                    raise Unavailable(f"etcd watch failed: {str(message.get('error', message))[:300]}")
                if result.get("canceled"):
                    if int(result.get("compact_revision", 0)):
                        log.info("watch revision compacted (now %s); reloading the view", result["compact_revision"])
                        return True
                    raise Unavailable(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
                events = result.get("events", [])
                if events:
                    with self._view_changed:
                        building = _Building(self.keys, self._view)
                        revision = self._view.revision
                        for ev in events:
                            kv = ev["kv"]
                            revision = max(revision, int(kv["mod_revision"]))
                            if ev.get("type") == "DELETE":
                                building.delete(kv)
                            else:
                                building.put(kv)
                        self._publish(building.freeze(revision))
                elif not result.get("created") and "header" in result:
                    # A progress notification: every event up to this revision has been sent.
                    with self._view_changed:
                        rev = int(result["header"].get("revision", 0))
                        if rev > self._view.revision:
                            self._publish(_Building(self.keys, self._view).freeze(rev))
                self.watch_state = "ok"
                self.watch_failures = 0
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            if self._stop.is_set():
                return False
            # A read timeout (no event for watch_idle) or a broken stream: reopen from the last
            # revision; if etcd is really gone, opening fails and counts as a failure.
            log.debug("etcd watch stream ended (%s); reopening", type(e).__name__)
        finally:
            self._watch_response = None
            resp.close()
        return False

    def _watch_loop(self) -> None:
        reload = True
        while not self._stop.is_set():
            try:
                if reload:
                    self._reload()
                    self.watch_state = "ok"
                    self.watch_failures = 0
                    reload = False
                reload = self._stream()
                continue
            except BaseException as e:
                if not is_failure(e):
                    self.watch_state = "dead"
                    log.critical("the etcd watch thread of node %s stops: %r", self.node_id, e)
                    raise
                if self._stop.is_set():
                    break
                self.watch_failures += 1
                self.watch_last_error = f"{type(e).__name__}: {e}"
                self.watch_state = "retrying"
                backoff = min(0.1 * 2 ** min(self.watch_failures, 10), self.keepalive_interval)
                log.warning(
                    "etcd watch of node %s failed (%d in a row), retrying in %.1f s: %s",
                    self.node_id,
                    self.watch_failures,
                    backoff,
                    self.watch_last_error,
                )
                self._stop.wait(backoff)
        self.watch_state = "stopped"


class _Building:
    """A mutable copy of a view, for applying a batch of changes before publishing it."""

    def __init__(self, keys: KeySpace, base: View) -> None:
        self.keys = keys
        self.members = dict(base.members)
        self.tenants = dict(base.tenants)
        self.collections = dict(base.collections)
        self.placement = dict(base.placement)
        self.keys_ = dict(base.keys)
        self.dropped = dict(base.dropped)

    def _target(self, key: str) -> tuple[dict[Any, Entry], Any] | None:
        parsed = self.keys.parse(key)
        if parsed is None:
            return None
        kind, parts = parsed
        if kind == "member":
            return self.members, parts[0]
        if kind == "tenant":
            return self.tenants, parts[0]
        if kind == "collection":
            return self.collections, (parts[0], parts[1])
        if kind == "key":
            return self.keys_, parts[0]
        if kind == "dropped":
            return self.dropped, (parts[0], parts[1], int(parts[2]))
        return self.placement, (parts[0], parts[1], int(parts[2]))

    def put(self, kv: Mapping[str, Any]) -> None:
        key = base64.b64decode(kv["key"]).decode(errors="replace")
        target = self._target(key)
        if target is None:
            return
        try:
            value = json.loads(base64.b64decode(kv.get("value", "")))
            if not isinstance(value, dict):
                raise ValueError("not an object")
            if target[0] is self.members:
                MemberInfo.from_json(value)
        except Exception as e:
            # Someone wrote this key by hand; serving a half-understood entry would be worse than none.
            log.error("ignoring etcd key %s: its value is not valid (%s)", key, e)
            target[0].pop(target[1], None)
            return
        target[0][target[1]] = Entry(
            MappingProxyType(value), int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0))
        )

    def delete(self, kv: Mapping[str, Any]) -> None:
        target = self._target(base64.b64decode(kv["key"]).decode(errors="replace"))
        if target is not None:
            target[0].pop(target[1], None)

    def freeze(self, revision: int) -> View:
        return View(
            revision=revision,
            members=MappingProxyType(self.members),
            tenants=MappingProxyType(self.tenants),
            collections=MappingProxyType(self.collections),
            placement=MappingProxyType(self.placement),
            keys=MappingProxyType(self.keys_),
            dropped=MappingProxyType(self.dropped),
        )


def _lines(resp: requests.Response) -> Iterator[dict[str, Any]]:
    """The gateway's newline-delimited JSON messages; a message may span several chunks."""
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                message = json.loads(line)
                if isinstance(message, dict):
                    yield message
        if len(buf) > 4 * MAX_VALUE_BYTES:
            raise Unavailable("etcd sent a watch message larger than any value this cluster writes")


def _shutdown(resp: requests.Response) -> None:
    """Wake a thread blocked reading ``resp`` (closing the socket alone does not wake a recv on Linux)."""
    try:
        sock = resp.raw.connection.sock  # urllib3 2.x
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass
