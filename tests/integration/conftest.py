"""Real servers for integration tests: `engramdb serve` subprocesses on free loopback ports.

Fixtures:

- ``server`` (session): one shared server with auth required, the bootstrap
  admin key set and relaxed rate limits. It has attributes ``base_url``,
  ``admin_key``, ``port``, ``grpc_port``, ``grpc_address``, ``data_dir`` and
  ``log_text()``. Tests sharing it must use unique collection names
  (``unique_name()``).
- ``server_factory`` (function): ``server_factory(env={...}, args=[...],
  data_dir=..., wait="ready"|"health"|None)`` starts an extra server with its
  own settings; every server it started is stopped at the end of the test.

The servers run the real CLI (``python -m engramdb.cli serve``) on real
RocksDB data directories, so these tests cover start-up, config and shutdown
exactly as users run them.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_env import TEST_ADMIN_KEY
from server_env import server_env as _server_env

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
ADMIN_KEY = TEST_ADMIN_KEY
START_TIMEOUT = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS does not reuse it immediately)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def server_env(extra: dict[str, str] | None = None, admin_key: str | None = ADMIN_KEY) -> dict[str, str]:
    """The environment of a test server (see tests/server_env.py), with the suite's admin key by default."""
    return _server_env(extra, admin_key)


@dataclass
class ServerProcess:
    """A running ``engramdb serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    data_dir: Path
    log_path: Path
    admin_key: str | None
    scheme: str = "http"
    host: str = "127.0.0.1"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def headers(self, key: str | None = None) -> dict[str, str]:
        k = key if key is not None else self.admin_key
        return {"Authorization": f"Bearer {k}"} if k else {}

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(key), timeout=30.0, **kw)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, until: str = "ready", timeout: float = START_TIMEOUT, verify: Any = True) -> None:
        """Wait for ``/health`` (process up) or ``/ready`` (collections loaded) to answer 200."""
        path = "/ready" if until == "ready" else "/health"
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                r = httpx.get(self.base_url + path, timeout=2.0, verify=verify)
                if r.status_code == 200:
                    return
                last = r.status_code
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"server not {until} after {timeout}s (last: {last!r}):\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait for it to exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_server(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    admin_key: str | None = ADMIN_KEY,
    wait: str | None = "ready",
    scheme: str = "http",
    port: int | None = None,
    grpc_port: int | None = None,
    log_path: Path | None = None,
) -> ServerProcess:
    port = port or free_port()
    grpc_port = grpc_port or free_port()
    log_path = log_path or data_dir.parent / f"{data_dir.name}-server-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "engramdb.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        *(args or []),
    ]
    full_env = server_env({"ENGRAMDB_SERVER__AUTH": "required", **(env or {})}, admin_key=admin_key)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(data_dir.parent))
    sp = ServerProcess(proc, port, grpc_port, data_dir, log_path, admin_key, scheme=scheme)
    if wait is not None:
        try:
            sp.wait(wait)
        except Exception:
            sp.stop(signal.SIGKILL)
            raise
    return sp


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server (auth required, admin key set, limits relaxed) for the whole session."""
    root = tmp_path_factory.mktemp("shared-server")
    sp = start_server(
        root / "data",
        env={
            "ENGRAMDB_SERVER__RATE_LIMITS__AUTH_FAILURES_PER_MINUTE": "1000000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "100000",
            "ENGRAMDB_SERVER__MAX_REQUEST_MB": "8",
        },
    )
    yield sp
    sp.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra servers with their own settings; all are stopped after the test."""
    started: list[ServerProcess] = []

    def make(data_dir: Path | None = None, **kw: Any) -> ServerProcess:
        sp = start_server(data_dir or tmp_path / f"data-{len(started)}", **kw)
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client of the shared server with the bootstrap admin key."""
    with server.client() as c:
        yield c
