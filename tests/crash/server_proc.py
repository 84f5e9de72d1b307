"""An ``engramdb serve`` subprocess for the server kill -9 loop (``tests/crash/test_kill9_server.py``).

:func:`launch` starts the real CLI (``python -m engramdb.cli serve``, this
checkout's sources) on two free loopback ports with its own log file and
returns at once; :meth:`ServerProc.wait_ready` polls ``/ready`` until it
answers 200 and returns how long after the launch that was. :func:`start`
does both, and launches again on new ports when the chosen ones were taken by
someone else in between (the only start failure that is retried: any other
exit of the server is an error). The caller owns the process and must
:meth:`ServerProc.kill` it (every path of the tests does, in ``finally``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from server_env import server_env

HOST = "127.0.0.1"
READY_TIMEOUT = 180.0  # generous: a loaded 2-core CI machine, an index rebuild after a kill
POLL_SECONDS = 0.02
START_ATTEMPTS = 5
EXIT_TIMEOUT = 60.0
# Log lines that mean "a port we picked was taken by someone else in between".
_PORT_TAKEN = ("address already in use", "errno 98", "bind_failed", "cannot listen for grpc", "failed to bind")


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message holds the end of its log."""


def free_port(exclude: tuple[int, ...] = ()) -> int:
    """A loopback port that was free a moment ago (the OS does not hand it out again at once)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port
    raise RuntimeError("no free loopback port found")


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log_path: Path
    launched_at: float  # time.perf_counter() just before Popen

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll ``/ready`` until it answers 200; seconds since the launch. Raises ServerStartError."""
        deadline = time.monotonic() + timeout
        last: object = None
        with httpx.Client(timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerStartError(
                        f"server (pid {self.pid}) exited with {self.proc.returncode} before it was ready:\n"
                        + self.log_tail()
                    )
                try:
                    r = http.get(self.base_url + "/ready")
                    if r.status_code == 200 and r.json().get("status") == "ready":
                        return time.perf_counter() - self.launched_at
                    last = (r.status_code, r.text[:200])
                except (httpx.HTTPError, ValueError) as e:
                    last = e
                time.sleep(POLL_SECONDS)
        raise ServerStartError(f"server not ready after {timeout}s (last answer: {last!r}):\n{self.log_tail()}")

    def kill(self) -> int | None:
        """SIGKILL the server (if it still runs) and reap it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        return self.proc.returncode

    def port_was_taken(self) -> bool:
        log = self.log_tail(20_000).lower()
        return any(s in log for s in _PORT_TAKEN)


def launch(data_dir: Path, log_dir: Path, *, env: dict[str, str] | None = None, tag: str = "") -> ServerProc:
    """Start ``engramdb serve`` on new free ports and return at once (not ready yet)."""
    port = free_port()
    grpc_port = free_port(exclude=(port,))
    log_path = log_dir / f"server{tag}-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "engramdb.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
    ]
    with open(log_path, "ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=server_env(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir
        )
    return ServerProc(proc, port, grpc_port, log_path, t0)


def start(
    data_dir: Path, log_dir: Path, *, env: dict[str, str] | None = None, tag: str = "", timeout: float = READY_TIMEOUT
) -> tuple[ServerProc, float]:
    """Launch and wait until ready; ``(server, seconds from launch to /ready 200)``.

    A launch that fails because a port was taken is retried on new ports (up to
    ``START_ATTEMPTS`` times); any other failure raises ServerStartError.
    """
    for attempt in range(START_ATTEMPTS):
        srv = launch(data_dir, log_dir, env=env, tag=tag)
        try:
            return srv, srv.wait_ready(timeout)
        except ServerStartError:
            srv.kill()
            if attempt + 1 < START_ATTEMPTS and srv.port_was_taken():
                continue
            raise
        except BaseException:
            srv.kill()
            raise
    raise AssertionError("unreachable")  # pragma: no cover
