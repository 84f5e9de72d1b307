"""Real etcd and real nodes for the cluster tests, through the one launcher ``engramdb.cluster.local``.

Fixtures:

- ``etcd`` (function): an :class:`Etcd` (an ``EtcdProcess``) started with its data in ``tmp_path``,
  healthy before the test runs, killed at the end. ``etcd.endpoint`` is its client URL;
  ``etcd.stop()`` kills it (kill -9: the tests of losing etcd) and ``etcd.start()`` starts it again
  on the same ports and data.
- ``local_cluster_factory`` (function): ``local_cluster_factory(nodes=3, admin_key=..., env=...,
  start=True, **kw)`` makes a :class:`LocalCluster` (etcd and ``engramdb serve`` nodes on free
  loopback ports) under ``tmp_path``, started and ready unless ``start=False``; every cluster it
  made is stopped at the end of the test.

The tests skip when ``etcd`` is not installed, like the promtool tests: ``.ci/run`` installs it
(``apt-get install etcd-server``), so CI always runs them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engramdb.cluster.local import EtcdProcess, LocalCluster, free_port

ETCD = shutil.which("etcd")
__all__ = ["ETCD", "Etcd", "free_port"]


class Etcd(EtcdProcess):
    """The test etcd: ``stop()`` is kill -9, etcd gone at once as when its machine dies."""

    def stop(self, timeout: float = 0.0) -> None:
        self.kill()


def _need_etcd() -> str:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package `etcd-server`; .ci/run installs it)")
    return ETCD


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(tmp_path / "etcd-data", binary=_need_etcd(), name="test")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def local_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    _need_etcd()
    made: list[LocalCluster] = []

    def make(nodes: int = 3, *, start: bool = True, **kw: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", nodes, **kw)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
