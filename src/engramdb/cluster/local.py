"""A cluster on this machine: one etcd and N ``engramdb serve`` processes on loopback ports.

The one launcher behind ``engramdb dev cluster``, the cluster tests and ``bench/bench_cluster.py``.
Everything runs as child processes of the caller, each in its own session (a Ctrl-C in the
terminal reaches the launcher only, which then stops the nodes before etcd). Ports are fixed
(from a base port) or free loopback ports picked at construction.

etcd is Debian's ``etcd`` (package ``etcd-server``) from ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx

ETCD_INSTALL_HINT: Final = "install etcd (Debian/Ubuntu: apt-get install etcd-server) or put its `etcd` on PATH"
ETCD_START_TIMEOUT: Final = 30.0  # a cold start on a loaded 2-core machine takes about a second
NODE_READY_TIMEOUT: Final = 120.0
STOP_TIMEOUT: Final = 30.0
# Settings of the parent's environment a launched node keeps (the rest of ENGRAMDB_* is dropped, so a
# developer's shell cannot change what the tests run).
INHERITED_ENV: Final = ("ENGRAMDB_INDEX__SNAPSHOT_IN_CHILD",)


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago (the kernel does not hand it out again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdNotFound(RuntimeError):
    """No ``etcd`` binary: the message says how to install it."""


def find_etcd() -> str:
    """The ``etcd`` binary on PATH; EtcdNotFound with the install hint if there is none."""
    found = shutil.which("etcd")
    if found is None:
        raise EtcdNotFound(f"etcd is not installed: {ETCD_INSTALL_HINT}")
    return found


def _clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(drop_prefixes)}


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(30)


class EtcdProcess:
    """One single-member etcd on loopback, with its data in ``data_dir`` and its log beside it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        binary: str | None = None,
        name: str = "engramdb-local",
        log_path: Path | None = None,
    ) -> None:
        self.binary = binary or find_etcd()
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.log_path = log_path or self.data_dir.parent / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = ETCD_START_TIMEOUT) -> None:
        """Start etcd (on the same ports and data after a stop) and wait until it is healthy."""
        if self.alive:
            raise RuntimeError("etcd is already running")
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # etcd reads ETCD_* variables as flags: a stray one in the caller's shell must not change it.
        env = _clean_env(("ETCD",))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_healthy(self, timeout: float = ETCD_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"etcd exited with {code}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.endpoint}/health", timeout=1.0)
                if r.status_code == 200 and r.json().get("health") == "true":
                    return
                last = r.text[:200]
            except (httpx.HTTPError, ValueError) as e:
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy within {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, timeout)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: etcd gone at once, as when its machine dies."""
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL, 0)
            self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        return _tail(self.log_path, n)


class NodeProcess:
    """One ``engramdb serve`` process: a node with its data directory and ports.

    ``env`` is its whole environment except what is the node's own (data directory, ports,
    node id), which this class sets.
    """

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        *,
        rest_port: int | None = None,
        grpc_port: int | None = None,
        peer_port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self.rest_port = rest_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.peer_port = peer_port or free_port()
        self.env = dict(env if env is not None else os.environ)
        self.log_path = log_path or self.data_dir.parent / f"{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "engramdb.cli", "serve"]

    def full_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            {
                "ENGRAMDB_DATA_DIR": str(self.data_dir),
                "ENGRAMDB_SERVER__HOST": "127.0.0.1",
                "ENGRAMDB_SERVER__PORT": str(self.rest_port),
                "ENGRAMDB_SERVER__GRPC_PORT": str(self.grpc_port),
                "ENGRAMDB_CLUSTER__NODE_ID": self.node_id,
                "ENGRAMDB_CLUSTER__PEER_HOST": "127.0.0.1",
                "ENGRAMDB_CLUSTER__PEER_PORT": str(self.peer_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start(self) -> None:
        """Start the process (without waiting: see :meth:`wait_ready`); its output goes to ``log_path``."""
        if self.alive:
            raise RuntimeError(f"node {self.node_id} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.full_env(),
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = NODE_READY_TIMEOUT) -> None:
        """Poll ``GET /ready`` until 200; RuntimeError with the log's tail if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise RuntimeError(f"node {self.node_id} exited with {code}:\n{self.log_tail()}")
                try:
                    r = http.get(self.url + "/ready")
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code} {r.text[:300]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"node {self.node_id} not ready within {timeout:.0f} s (last: {last}):\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (kill -9 by default) and, for SIGKILL, wait until the process is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(30)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.proc is None:
            return None
        return _stop_process(self.proc, signal.SIGTERM, timeout)

    def restart(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the process if it runs, then start it again on the same data and ports."""
        if self.alive:
            self.terminate(timeout)
        self.proc = None
        self.start()

    def log_tail(self, n: int = 4000) -> str:
        return _tail(self.log_path, n)


class LocalCluster:
    """etcd and ``nodes`` nodes under ``base_dir``: ``base_dir/etcd``, ``base_dir/n1`` ... with logs beside.

    Nodes are ``n1`` .. ``nN``. With ``base_port`` node ``n<i>`` serves REST on
    ``base_port + 10*(i-1)``, gRPC on the next port and the node-to-node service on the one after,
    and etcd listens on ``base_port - 2`` (clients) and ``base_port - 1`` (peers); without it every
    port is a free one. ``admin_key`` becomes every node's ``ENGRAMDB_ADMIN_KEY`` (None: no key,
    development mode on loopback). ``env`` adds settings for every node; the cluster's own (etcd,
    name, ports, ids) win over it.
    """

    def __init__(
        self,
        base_dir: Path,
        nodes: int = 3,
        *,
        admin_key: str | None = None,
        env: Mapping[str, str] | None = None,
        lease_ttl_seconds: int = 4,
        default_shards: int = 4,
        default_replication_factor: int = 3,
        name: str = "dev",
        base_port: int | None = None,
    ) -> None:
        if not 1 <= nodes <= 64:
            raise ValueError(f"nodes must be 1 to 64, got {nodes}")
        if base_port is not None and not (base_port >= 3 and base_port + 10 * (nodes - 1) + 2 <= 65535):
            raise ValueError(f"base port {base_port} leaves no room for etcd below it or {nodes} nodes above it")
        self.base_dir = Path(base_dir)
        self.name = name
        self.admin_key = admin_key
        self.lease_ttl_seconds = lease_ttl_seconds
        self.default_shards = default_shards
        self.default_replication_factor = default_replication_factor
        self.extra_env = dict(env or {})
        self.etcd = EtcdProcess(
            self.base_dir / "etcd",
            client_port=None if base_port is None else base_port - 2,
            peer_port=None if base_port is None else base_port - 1,
            name=f"{name}-etcd",
            log_path=self.base_dir / "etcd.log",
        )
        self._nodes: list[NodeProcess] = []
        for i in range(1, nodes + 1):
            node_id = f"n{i}"
            port = None if base_port is None else base_port + 10 * (i - 1)
            self._nodes.append(
                NodeProcess(
                    node_id,
                    self.base_dir / node_id,
                    rest_port=port,
                    grpc_port=None if port is None else port + 1,
                    peer_port=None if port is None else port + 2,
                    env=self.node_env(),
                    log_path=self.base_dir / f"{node_id}.log",
                )
            )

    @property
    def nodes(self) -> list[NodeProcess]:
        return list(self._nodes)

    def node(self, i: int) -> NodeProcess:
        """The i-th node, from 0 (``node(0)`` is ``n1``)."""
        return self._nodes[i]

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def node_env(self) -> dict[str, str]:
        """What every node's environment holds besides its own ports and id."""
        env = _clean_env(("ENGRAMDB_",))
        for name in INHERITED_ENV:
            if name in os.environ:
                env[name] = os.environ[name]
        # The nodes run the code the launcher imported, even from a source tree that is not installed.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        env.update(
            {
                "ENGRAMDB_CLUSTER__ENABLED": "true",
                "ENGRAMDB_CLUSTER__NAME": self.name,
                "ENGRAMDB_CLUSTER__ETCD_ENDPOINTS": self.etcd.endpoint,
                "ENGRAMDB_CLUSTER__LEASE_TTL_SECONDS": str(self.lease_ttl_seconds),
                "ENGRAMDB_CLUSTER__DEFAULT_SHARDS": str(self.default_shards),
                "ENGRAMDB_CLUSTER__DEFAULT_REPLICATION_FACTOR": str(self.default_replication_factor),
            }
        )
        if self.admin_key is not None:
            env["ENGRAMDB_ADMIN_KEY"] = self.admin_key
        return env

    def start(self, timeout: float = NODE_READY_TIMEOUT) -> None:
        """etcd, then every node; returns once every node answers ``/ready`` (stops everything if one fails)."""
        try:
            self.etcd.start()
            for n in self._nodes:
                n.start()
            deadline = time.monotonic() + timeout
            for n in self._nodes:
                n.wait_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Every node (SIGTERM together, SIGKILL after ``timeout``), then etcd."""
        for n in self._nodes:
            if n.alive:
                n.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self._nodes:
            n.terminate(max(0.0, deadline - time.monotonic()))
        self.etcd.stop(timeout)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
