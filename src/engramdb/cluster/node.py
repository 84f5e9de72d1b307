"""One node of a cluster: its control-plane session, node-to-node service, replicas and coordinator.

``engramdb serve`` with ``cluster.enabled`` builds a :class:`ClusterNode` around the opened
database and serves the public API from :attr:`ClusterNode.coordinator` (and API keys from
:attr:`ClusterNode.metadata`, rows in etcd) instead of the local engine. Start-up order: the
node-to-node service listens, the etcd watch loads the view, then the node registers as ``up``
under its lease. A follower thread keeps the peer channels in step with the membership and drops
local replicas of deleted collections; like every background thread it logs, counts and retries
failures instead of dying.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engramdb._version import __version__
from engramdb.cluster.control import ControlPlane, EtcdTLS, MemberInfo, View
from engramdb.cluster.coordinator import Coordinator
from engramdb.cluster.peers import PeerMetrics, Peers, PeerServer, PeerTLS
from engramdb.cluster.replica import Replicas
from engramdb.errors import EngramError, is_failure

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from engramdb.config import Settings
    from engramdb.engine.database import Database

log = logging.getLogger("engramdb.cluster")


class EtcdMetadata:
    """The engine's :class:`~engramdb.engine.metadata.Metadata` interface over etcd, for rows every node shares.

    Today: API keys (``keys/<key_id>``), so a key created through any node works on every node.
    Reads come from the watched view; writes are etcd puts, visible here once the watch delivers
    them (waited for, so a key works at once on the node that created it).
    """

    NAMESPACE = "api_keys"
    shared = True  # written by every node: the key store asks instead of caching "no keys yet"

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    def _check(self, namespace: str) -> None:
        if namespace != self.NAMESPACE:
            raise KeyError(namespace)

    def get(self, namespace: str, key: str) -> Any | None:
        self._check(namespace)
        e = self.control.view.keys.get(key)
        return None if e is None else dict(e.value)

    def put(self, namespace: str, key: str, value: Any) -> None:
        self._check(namespace)
        rev = self.control.put_key(key, value)
        self.control.wait_for_revision(rev, self.control.request_timeout)

    def scan(self, namespace: str) -> list[tuple[str, Any]]:
        self._check(namespace)
        return [(k, dict(e.value)) for k, e in sorted(self.control.view.keys.items())]

    def has_rows(self, namespace: str) -> bool:
        self._check(namespace)
        return bool(self.control.view.keys)

    def forget_history(self) -> None:
        """After rows were rewritten to erase them: drop etcd's older revisions of every key."""
        self.control.compact()


class ClusterNode:
    """Everything cluster mode adds to one server process."""

    def __init__(self, db: Database, settings: Settings, node_id: str) -> None:
        cs = settings.cluster
        self.settings = settings
        self.node_id = node_id
        self.address = cs.advertised()
        tls_cfg = settings.server.tls
        self.tls: PeerTLS | None = None
        if tls_cfg.enabled:
            assert tls_cfg.cert_file and tls_cfg.key_file and tls_cfg.client_ca_file  # config.check requires them
            self.tls = PeerTLS.from_files(Path(tls_cfg.cert_file), Path(tls_cfg.key_file), Path(tls_cfg.client_ca_file))
        etcd_tls = None
        if cs.etcd_ca_file or cs.etcd_cert_file:
            etcd_tls = EtcdTLS(
                ca_file=str(cs.etcd_ca_file) if cs.etcd_ca_file else None,
                cert_file=str(cs.etcd_cert_file) if cs.etcd_cert_file else None,
                key_file=str(cs.etcd_key_file) if cs.etcd_key_file else None,
            )
        self.control = ControlPlane(
            cluster=cs.name,
            node_id=node_id,
            endpoints=cs.etcd_endpoints,
            lease_ttl_seconds=cs.lease_ttl_seconds,
            request_timeout_seconds=min(5.0, cs.lease_ttl_seconds / 2),
            tls=etcd_tls,
        )
        self.metrics = PeerMetrics()
        self.peers = Peers(
            node_id,
            tls=self.tls,
            timeout=cs.peer_timeout_seconds,
            breaker_failures=cs.breaker_failures,
            breaker_open_seconds=cs.breaker_open_seconds,
            metrics=self.metrics,
        )
        self.replicas = Replicas(
            db,
            self.control,
            node_id,
            settings.server.query_timeout_seconds,
            backup_dir=settings.backup.dir,
            min_free_mb=settings.server.min_free_disk_mb,
        )
        self.coordinator = Coordinator(
            db=db,
            control=self.control,
            peers=self.peers,
            replicas=self.replicas,
            node_id=node_id,
            settings=cs,
            hlc=db.hlc,
        )
        self.metadata = EtcdMetadata(self.control)
        self.server = PeerServer(
            cs.peer_host,
            cs.peer_port,
            self.replicas.handlers(),
            tls=self.tls,
            is_member=lambda n: self.control.view.member(n) is not None,
        )
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.follower_failures = 0
        self._unknown: list[str] = []

    def use_registry(self, registry: CollectorRegistry) -> None:
        """Export the per-peer and membership metrics with the service's (called once, before start)."""
        from prometheus_client import Gauge

        self.metrics = PeerMetrics(registry)
        self.peers.metrics = self.metrics
        Gauge(
            "engramdb_cluster_etcd_session",
            "1 while this node holds its etcd session (else it refuses writes)",
            registry=registry,
        ).set_function(lambda: 1.0 if self.control.session_ok else 0.0)
        Gauge(
            "engramdb_cluster_members",
            "Nodes registered in etcd (live leases), as this node's view has them",
            registry=registry,
        ).set_function(lambda: float(len(self.control.view.members)))

    def start(self, wait_seconds: float = 10.0) -> None:
        """Listen for peers, load the view and register as up (etcd may still be down: then it keeps trying)."""
        self.server.start()
        self.control.start()
        try:
            self.control.wait_for(lambda v: v.revision > 0, wait_seconds)
        except EngramError as e:
            log.warning("etcd has not answered yet (%s); this node keeps trying and refuses writes meanwhile", e)
        member = MemberInfo(self.node_id, self.address, state="up", version=__version__)
        try:
            self.control.register(member)
        except EngramError as e:
            log.warning("registering in etcd failed (%s); the keepalive keeps trying", e)
        self._follower = threading.Thread(target=self._follow, name="engramdb-cluster-follower", daemon=True)
        self._follower.start()
        log.info(
            "cluster %s: node %s serving node-to-node calls on %s",
            self.settings.cluster.name,
            self.node_id,
            self.address,
        )

    def _follow(self) -> None:
        seen = -1
        while not self._stop.is_set():
            try:
                last = seen

                def changed(v: View, last: int = last) -> bool:
                    return v.revision != last or self._stop.is_set()

                view = self.control.wait_for(changed, 5.0)
            except EngramError:
                continue
            if self._stop.is_set():
                return
            try:
                self._apply_view(view)
                seen = view.revision
            except BaseException as e:
                self.follower_failures += 1
                log.exception("applying the cluster view failed; retrying")
                if not is_failure(e):
                    raise
                self._stop.wait(1.0)

    def _apply_view(self, view: View) -> None:
        addresses = {}
        for node_id in view.members:
            m = view.member(node_id)
            if m is not None:
                addresses[node_id] = m.address
        self.peers.update(addresses)
        if view.revision > 0:
            self.replicas.drop_orphans(view)
            unknown = self.replicas.unknown(view)
            if unknown and unknown != self._unknown:
                log.warning(
                    "%d local replica(s) belong to collections etcd does not know (kept, not erased): %s; after a "
                    "restore, run engramdb cluster restore with the cluster manifest (docs/backup.md)",
                    len(unknown),
                    ", ".join(unknown[:5]),
                )
            self._unknown = unknown

    def backup(self, name: str) -> dict[str, Any]:
        """A backup of every node and the cluster manifest (:mod:`engramdb.cluster.backup`)."""
        from engramdb.cluster.backup import backup_cluster

        return backup_cluster(self.coordinator, name, self.settings.backup.dir)

    def problems(self) -> list[str]:
        """Why this node should not take traffic now (for /ready): etcd session, watch, unreachable peers."""
        out = []
        if not self.control.session_ok:
            out.append("cluster: no etcd session (writes are refused until etcd answers again)")
        if self.control.watch_state not in ("ok", "stopped"):
            out.append(f"cluster: the etcd watch is {self.control.watch_state}")
        # One peer down is the cluster's business (QUORUM goes on without it), not a reason to take
        # this node out of a load balancer; being cut off from every other member is.
        states = self.peers.states()
        if states and all(st["breaker"] == "open" for st in states.values()):
            out.append(f"cluster: none of the {len(states)} other node(s) answers (circuit breakers open)")
        t = self._follower
        if t is not None and not t.is_alive() and not self._stop.is_set():
            out.append("cluster: the view follower thread died")
        return out

    def status(self) -> dict[str, Any]:
        view = self.control.view
        return {
            "node_id": self.node_id,
            "session_ok": self.control.session_ok,
            "revision": view.revision,
            "members": sorted(view.members),
            "peers": self.peers.states(),
            "missed_writes": self.coordinator.missed_writes,
            "stale_reads": self.coordinator.stale_reads,
        }

    def close(self, grace: float = 5.0) -> None:
        """Leave (revoke the lease so others see this node down at once), stop serving peers, close channels."""
        self._stop.set()
        try:
            self.control.deregister()
        except EngramError as e:
            log.warning("leaving the cluster cleanly failed (%s); the lease expires by itself", e)
        self.server.stop(grace)
        self.control.close()
        self.peers.close()
        t = self._follower
        if t is not None:
            t.join(timeout=6.0)
