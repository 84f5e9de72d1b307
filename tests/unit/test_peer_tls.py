"""Node-to-node calls over real gRPC on loopback: mutual TLS, member checks, errors, the circuit breaker."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from engramdb.cluster.peers import CircuitBreaker, PeerMetrics, Peers, PeerServer, PeerTLS
from engramdb.errors import InvalidArgument, PermissionDenied, Unavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tls_certs import cluster_ca

MEMBERS = {"n1", "n2"}


def _echo(msg: dict[str, Any], caller: str) -> dict[str, Any]:
    return {"echo": msg, "caller": caller}


def _bad(msg: dict[str, Any], caller: str) -> dict[str, Any]:
    raise InvalidArgument("nope", code="invalid_thing", details={"x": 1})


def _tls(certs: dict[str, tuple[Path, Path]], ca: Path, name: str) -> PeerTLS:
    cert, key = certs[name]
    return PeerTLS.from_files(cert, key, ca)


def _peers(self_id: str, tls: PeerTLS | None, port: int, target: str = "n2", **kw: Any) -> Peers:
    peers = Peers(
        self_id,
        tls=tls,
        timeout=3.0,
        breaker_failures=kw.get("failures", 2),
        breaker_open_seconds=30,
        metrics=PeerMetrics(),
    )
    peers.update({target: f"127.0.0.1:{port}"})
    return peers


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, Path]], Path, dict[str, tuple[Path, Path]]]:
    ca, certs = cluster_ca(tmp_path, ["n1", "n2", "n3", "intruder"])
    other_ca, other = cluster_ca(tmp_path, ["n1"], prefix="other-")
    return ca, certs, other_ca, other


def _server(tls: PeerTLS | None) -> PeerServer:
    return PeerServer(
        "127.0.0.1", 0, {"Echo": _echo, "Bad": _bad}, tls=tls, is_member=lambda n: n in MEMBERS, workers=4
    ).start()


def test_members_talk_over_mutual_tls(pki: Any) -> None:
    ca, certs, _, _ = pki
    srv = _server(_tls(certs, ca, "n2"))
    peers = _peers("n1", _tls(certs, ca, "n1"), srv.port)
    try:
        p = peers.get("n2")
        assert p is not None
        assert p.call("Echo", {"a": 1}) == {"echo": {"a": 1}, "caller": "n1"}
        # Application errors arrive as the same class and code, and do not count against the peer.
        for _ in range(3):
            with pytest.raises(InvalidArgument) as ei:
                p.call("Bad", {})
            assert ei.value.code == "invalid_thing" and ei.value.details == {"x": 1}
        assert p.breaker.state == "closed"
    finally:
        peers.close()
        srv.stop(0)


def test_a_certificate_of_another_ca_is_refused(pki: Any) -> None:
    ca, certs, other_ca, other = pki
    srv = _server(_tls(certs, ca, "n2"))
    peers = _peers("n1", PeerTLS.from_files(*other["n1"], other_ca), srv.port)
    try:
        with pytest.raises(Unavailable):
            peers.get("n2").call("Echo", {})  # type: ignore[union-attr]
    finally:
        peers.close()
        srv.stop(0)


def test_a_certificate_that_names_no_member_is_refused(pki: Any) -> None:
    ca, certs, _, _ = pki
    srv = _server(_tls(certs, ca, "n2"))
    peers = _peers("intruder", _tls(certs, ca, "intruder"), srv.port)
    try:
        with pytest.raises(PermissionDenied) as ei:
            peers.get("n2").call("Echo", {})  # type: ignore[union-attr]
        assert ei.value.code == "peer_not_allowed"
    finally:
        peers.close()
        srv.stop(0)


def test_claiming_another_members_id_is_refused(pki: Any) -> None:
    """n3 (a valid certificate, not a member) says it is n1: its certificate does not name n1."""
    ca, certs, _, _ = pki
    srv = _server(_tls(certs, ca, "n2"))
    peers = _peers("n1", _tls(certs, ca, "n3"), srv.port)
    try:
        with pytest.raises(PermissionDenied):
            peers.get("n2").call("Echo", {})  # type: ignore[union-attr]
    finally:
        peers.close()
        srv.stop(0)


def test_the_server_must_be_the_node_dialled(pki: Any) -> None:
    """Dialling n2 and reaching a server whose certificate names n3 fails the handshake."""
    ca, certs, _, _ = pki
    srv = _server(_tls(certs, ca, "n3"))
    peers = _peers("n1", _tls(certs, ca, "n1"), srv.port, target="n2")
    try:
        with pytest.raises(Unavailable):
            peers.get("n2").call("Echo", {})  # type: ignore[union-attr]
    finally:
        peers.close()
        srv.stop(0)


def test_repeated_failures_open_the_breaker_and_skip_the_peer() -> None:
    srv = _server(None)
    port = srv.port
    srv.stop(0)  # nothing listens there any more
    peers = _peers("n1", None, port, failures=2)
    try:
        p = peers.get("n2")
        assert p is not None
        for _ in range(2):
            with pytest.raises(Unavailable) as ei:
                p.call("Echo", {})
            assert ei.value.code == "peer_unavailable"
        assert p.breaker.state == "open" and not peers.usable("n2")
        with pytest.raises(Unavailable) as ei:
            p.call("Echo", {})
        assert "circuit breaker" in ei.value.message
    finally:
        peers.close()


def test_breaker_half_open_lets_one_trial_through() -> None:
    b = CircuitBreaker(1, 0.0)
    assert b.failure() is True
    assert b.allow() is True and b.allow() is False  # one trial call at a time
    assert b.success() is True and b.state == "closed"
