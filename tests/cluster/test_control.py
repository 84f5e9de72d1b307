"""The control plane client against a real etcd (tests/cluster/conftest.py): membership under leases,
schema and placement transactions, the watched view, losing etcd and getting it back.

Waits are bounded by generous deadlines; nothing asserts how fast etcd is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engramdb.cluster.control import ControlPlane, KeySpace, MemberInfo, View, _shutdown
from engramdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable

TTL = 2  # seconds: short, so expiry tests stay quick
DEADLINE = 20.0  # seconds: far beyond anything a healthy machine needs


def wait_until(cond: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def node(etcd: Any) -> Iterator[Callable[..., ControlPlane]]:
    """``node("n1")``: a started ControlPlane for node n1 of cluster "test", registered unless told not to."""
    made: list[ControlPlane] = []

    def make(node_id: str, *, register: bool = True, **kw: Any) -> ControlPlane:
        kw.setdefault("lease_ttl_seconds", TTL)
        kw.setdefault("request_timeout_seconds", 1.0)
        kw.setdefault("watch_idle_seconds", 5.0)
        cp = ControlPlane(cluster="test", node_id=node_id, endpoints=[etcd.endpoint], **kw)
        made.append(cp)
        cp.start()
        if register:
            cp.register(MemberInfo(node_id=node_id, address=f"127.0.0.1:{7000 + len(made)}", state="up"))
        return cp

    yield make
    for cp in made:
        cp.close()


def members(cp: ControlPlane) -> set[str]:
    return set(cp.view.members)


def test_two_nodes_see_each_others_membership(node: Callable[..., ControlPlane]) -> None:
    a, b = node("n1"), node("n2")
    for cp in (a, b):
        cp.wait_for(lambda v: {"n1", "n2"} <= set(v.members), DEADLINE)
    info = b.view.member("n1")
    assert info is not None and info.state == "up" and info.address == "127.0.0.1:7001"
    assert a.session_ok and b.session_ok


def test_member_key_expires_with_the_lease_when_a_node_stops_without_deregistering(
    node: Callable[..., ControlPlane],
) -> None:
    a, b = node("n1"), node("n2")
    b.wait_for(lambda v: "n1" in v.members, DEADLINE)
    # Wait a few keepalive rounds first: the key must outlive the TTL while the keepalive runs.
    time.sleep(TTL * 1.5)
    assert "n1" in b.view.members and a.keepalive_state == "ok"
    a.close()  # a crash, as far as etcd can tell: no revoke, the keepalive just stops
    assert not a.session_ok
    b.wait_for(lambda v: "n1" not in v.members, TTL + DEADLINE)
    assert "n2" in b.view.members


def test_deregister_removes_the_member_at_once(node: Callable[..., ControlPlane]) -> None:
    a, b = node("n1", lease_ttl_seconds=60, request_timeout_seconds=5.0), node("n2")
    b.wait_for(lambda v: "n1" in v.members, DEADLINE)
    a.deregister()
    assert not a.session_ok
    # Well before the 60 s lease would have run out.
    b.wait_for(lambda v: "n1" not in v.members, DEADLINE)


def test_schema_is_created_only_if_absent(node: Callable[..., ControlPlane]) -> None:
    a, b = node("n1"), node("n2")
    rev = a.create_collection("acme", "docs", {"dim": 4, "shards": 8, "replication_factor": 3})
    with pytest.raises(AlreadyExists):
        b.create_collection("acme", "docs", {"dim": 8, "shards": 2, "replication_factor": 1})
    view = b.wait_for_revision(rev, DEADLINE)
    entry = view.collections[("acme", "docs")]
    assert dict(entry.value) == {"dim": 4, "shards": 8, "replication_factor": 3}  # the first one won, untouched
    assert entry.create_revision == entry.mod_revision == rev
    b.create_tenant("acme", {"created_by": "n2"})
    with pytest.raises(AlreadyExists):
        a.create_tenant("acme", {"created_by": "n1"})
    a.wait_for(lambda v: "acme" in v.tenants, DEADLINE)
    assert a.view.tenants["acme"].value["created_by"] == "n2"


def test_placement_compare_and_swap_refuses_a_stale_revision(node: Callable[..., ControlPlane]) -> None:
    a, b = node("n1"), node("n2")
    first = a.set_placement("acme", "docs", 3, {"replicas": ["n1", "n2"], "epoch": 1}, expected_mod_revision=0)
    with pytest.raises(FailedPrecondition) as exc:  # "absent" is stale now too
        b.set_placement("acme", "docs", 3, {"replicas": ["n2"], "epoch": 1}, expected_mod_revision=0)
    assert exc.value.code == "placement_conflict"
    assert exc.value.details == {"expected_mod_revision": 0, "current_mod_revision": first}
    second = b.set_placement("acme", "docs", 3, {"replicas": ["n2", "n1"], "epoch": 2}, expected_mod_revision=first)
    with pytest.raises(FailedPrecondition) as exc:
        a.set_placement("acme", "docs", 3, {"replicas": ["n1"], "epoch": 2}, expected_mod_revision=first)
    assert exc.value.details["current_mod_revision"] == second
    view = a.wait_for_revision(second, DEADLINE)
    entry = view.placement[("acme", "docs", 3)]
    assert entry.value["replicas"] == ["n2", "n1"] and entry.mod_revision == second


def test_the_watch_updates_the_other_nodes_view(node: Callable[..., ControlPlane]) -> None:
    a, b = node("n1"), node("n2")
    b.wait_for(lambda v: "n1" in v.members, DEADLINE)
    reloads = b.watch_reloads
    rev = a.create_collection("acme", "notes", {"dim": 3})
    view = b.wait_for(lambda v: ("acme", "notes") in v.collections, DEADLINE)
    assert view.revision >= rev
    # It came through the watch stream, not a re-read of the whole prefix.
    assert b.watch_reloads == reloads
    # A member changing its state is seen too.
    a.register(MemberInfo(node_id="n1", address="127.0.0.1:7001", state="draining"))
    b.wait_for(lambda v: v.member("n1") is not None and v.member("n1").state == "draining", DEADLINE)  # type: ignore[union-attr]


def test_losing_etcd_ends_the_session_and_its_return_registers_again(
    node: Callable[..., ControlPlane], etcd: Any
) -> None:
    a = node("n1")
    assert a.session_ok
    generation = a.lease_generation
    etcd.stop()
    wait_until(lambda: not a.session_ok, TTL + DEADLINE, "session lost")
    assert a.keepalive_state == "retrying" and a.keepalive_failures > 0
    assert a.keepalive_thread_alive
    etcd.start()
    wait_until(lambda: a.session_ok, DEADLINE, "session back")
    assert a.lease_generation > generation  # a new lease, not the old one revived
    # The member key is back, under the new lease, and the watch resumed: another node sees n1.
    b = node("n2")
    b.wait_for(lambda v: "n1" in v.members, DEADLINE)
    rev = b.create_collection("acme", "after", {"dim": 2})
    a.wait_for_revision(rev, DEADLINE)


def test_a_node_that_starts_while_etcd_is_down_registers_when_it_comes_back(
    node: Callable[..., ControlPlane], etcd: Any
) -> None:
    etcd.stop()
    a = node("n1", register=False)
    with pytest.raises(Unavailable) as exc:
        a.register(MemberInfo(node_id="n1", address="127.0.0.1:7001"))
    assert exc.value.code == "etcd_unavailable" and not a.session_ok
    etcd.start()
    wait_until(lambda: a.session_ok, DEADLINE, "registered by the keepalive thread")
    a.wait_for(lambda v: "n1" in v.members, DEADLINE)


def test_a_failing_keepalive_logs_and_retries_instead_of_dying(
    node: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    a = node("n1")
    real = a._keepalive_once
    failures = 3
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise RuntimeError("injected keepalive failure")
        real()

    a._keepalive_once = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="engramdb.cluster"):
        wait_until(lambda: calls > failures and a.keepalive_state == "ok", DEADLINE, "keepalive recovered")
    assert a.keepalive_thread_alive and a.session_ok
    assert a.keepalive_last_error == "RuntimeError: injected keepalive failure"
    assert "injected keepalive failure" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit, on purpose
def test_a_keepalive_thread_that_must_stop_says_so(
    node: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    a = node("n1")

    def exit_thread() -> None:
        raise SystemExit  # not a failure (errors.is_failure): the thread ends, but never silently

    a._keepalive_once = exit_thread  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="engramdb.cluster"):
        wait_until(lambda: not a.keepalive_thread_alive, DEADLINE, "keepalive thread stopped")
    assert a.keepalive_state == "dead"
    assert "keepalive thread of node n1 stops" in caplog.text
    wait_until(lambda: not a.session_ok, TTL + DEADLINE, "session reported lost")


def test_a_failing_watch_logs_and_retries_instead_of_dying(
    node: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = node("n1"), node("n2")
    real = b._stream
    calls = 0

    def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected watch failure")
        return real()

    b._stream = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="engramdb.cluster"):
        # Break the open stream (as a dropped connection would): the loop reopens it through flaky().
        wait_until(lambda: b._watch_response is not None, DEADLINE, "watch stream open")
        resp = b._watch_response
        assert resp is not None
        _shutdown(resp)
        wait_until(lambda: calls >= 1, DEADLINE, "watch reopened")
        rev = a.create_collection("acme", "seen", {"dim": 1})
        b.wait_for_revision(rev, DEADLINE)
    assert b.watch_failures == 0 and b.watch_last_error == "RuntimeError: injected watch failure"
    assert "injected watch failure" in caplog.text
    assert ("acme", "seen") in b.view.collections


# ------------------------------------------------------------------ without etcd: inputs and keys


def test_keys_are_laid_out_in_one_place_and_parse_back() -> None:
    keys = KeySpace("prod")
    assert keys.member("n1") == "/engramdb/prod/members/n1"
    assert keys.tenant("acme") == "/engramdb/prod/schema/tenants/acme"
    assert keys.collection("acme", "docs") == "/engramdb/prod/schema/collections/acme/docs"
    assert keys.placement("acme", "docs", 5) == "/engramdb/prod/placement/acme/docs/5"
    assert keys.parse(keys.member("n1")) == ("member", ("n1",))
    assert keys.parse(keys.collection("acme", "docs")) == ("collection", ("acme", "docs"))
    assert keys.parse(keys.placement("acme", "docs", 5)) == ("placement", ("acme", "docs", "5"))
    assert keys.parse("/engramdb/other/members/n1") is None
    assert keys.parse("/engramdb/prod/members/a/b") is None
    assert keys.parse("/engramdb/prod/members/..") is None  # written by hand: not a name, not an entry
    assert keys.parse("/engramdb/prod/schema/tenants/") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda k: KeySpace("a/b"),
        lambda k: k.member("../x"),
        lambda k: k.collection("acme", "a/b"),
        lambda k: k.tenant(""),
        lambda k: k.placement("acme", "docs", -1),
        lambda k: k.placement("acme", "docs", True),
    ],
)
def test_a_name_that_could_break_a_key_is_refused(call: Callable[[KeySpace], Any]) -> None:
    with pytest.raises(InvalidArgument):
        call(KeySpace("prod"))


@pytest.mark.parametrize("endpoint", ["127.0.0.1:2379", "ftp://h:1", "http://h:1/v3", "http://:2379", "http://h:x"])
def test_a_bad_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument):
        ControlPlane(cluster="c", node_id="n", endpoints=[endpoint])


def test_bad_lease_settings_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        ControlPlane(cluster="c", node_id="n", endpoints=["http://127.0.0.1:1"], lease_ttl_seconds=1)
    with pytest.raises(InvalidArgument):
        ControlPlane(
            cluster="c", node_id="n", endpoints=["http://127.0.0.1:1"], lease_ttl_seconds=2, request_timeout_seconds=3
        )


def test_an_empty_view_knows_no_member() -> None:
    assert View().member("n1") is None and View().revision == 0


def test_threads_are_not_left_behind_by_close(etcd: Any) -> None:
    before = {t.name for t in threading.enumerate()}
    cp = ControlPlane(
        cluster="c", node_id="n", endpoints=[etcd.endpoint], lease_ttl_seconds=2, request_timeout_seconds=1
    )
    cp.start()
    cp.register(MemberInfo(node_id="n", address="127.0.0.1:1"))
    cp.wait_for(lambda v: "n" in v.members, DEADLINE)
    cp.close()
    left = {t.name for t in threading.enumerate()} - before
    assert not {n for n in left if n.startswith("engramdb-etcd")}
