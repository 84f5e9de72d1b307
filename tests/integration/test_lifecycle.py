"""Start-up, readiness, configuration checks, TLS, key CLI and graceful shutdown of real servers."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN_KEY, SRC, ServerProcess, free_port, server_env
from tls_certs import self_signed

ServerFactory = Callable[..., ServerProcess]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real ``engramdb`` command in a subprocess (for exit statuses and start-up behaviour)."""
    return subprocess.run(
        [sys.executable, "-m", "engramdb.cli", *args],
        env=server_env(env, admin_key=None),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(SRC.parent),
    )


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``engramdb`` run in this process (fast): returns (exit status, stdout, stderr)."""
    from engramdb.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as m:
            for k in [k for k in os.environ if k.startswith("ENGRAMDB_")]:
                m.delenv(k)
            for k, v in (env or {}).items():
                m.setenv(k, v)
            capsys.readouterr()
            status = main(list(args))
            out = capsys.readouterr()
        return status, out.out, out.err

    return run


# ---------------------------------------------------------------- readiness
def test_ready_is_503_until_collections_are_loaded(tmp_path: Path, server_factory: ServerFactory) -> None:
    import numpy as np

    import engramdb

    data = tmp_path / "data"
    n = 6000
    db = engramdb.open(data, storage={"sync_writes": False})
    coll = db.create_collection("big", 8, text_index=False)
    vecs = np.random.default_rng(0).standard_normal((n, 8)).astype("float32")
    coll.upsert([{"id": f"r{i}", "vector": vecs[i].tolist()} for i in range(n)])
    db.close()
    shutil.rmtree(data / "indexes")  # no snapshot: the server must rebuild the index before it is ready

    sp = server_factory(data, wait=None)
    seen: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.get(sp.base_url + "/ready", timeout=5)
        except httpx.TransportError:
            assert sp.proc.poll() is None, sp.log_text()
            time.sleep(0.02)
            continue
        seen.append((r.status_code, r.json()))
        assert httpx.get(sp.base_url + "/health").status_code == 200  # alive throughout
        if r.status_code == 200:
            break
        time.sleep(0.02)
    assert seen and seen[-1] == (200, {"status": "ready"}), seen[-3:]
    status, body = seen[0]
    assert status == 503 and body["status"] == "loading", seen[:3]
    assert body["progress"]["collections_total"] == 1 and body["progress"]["collections_loaded"] == 0
    with sp.client() as c:
        assert c.get("/v1/collections/big").json()["count"] == n


# ---------------------------------------------------------------- shutdown
def test_sigterm_during_writes_exits_0_and_keeps_every_acknowledged_write(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    data = tmp_path / "data"
    sp = server_factory(data, env={"ENGRAMDB_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "10"})
    with sp.client() as c:
        assert c.post("/v1/collections", json={"name": "w", "dimension": 4}).status_code == 201
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with sp.client() as c:
            i = 0
            while not stop.is_set():
                rid = f"w{w}-{i}"
                try:
                    r = c.post("/v1/collections/w/records", json={"records": [{"id": rid, "vector": [1, w, i, 1]}]})
                except httpx.TransportError:
                    return  # the server stopped accepting: this write was not acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.append(rid)
                elif r.status_code != 503:
                    raise AssertionError(r.text)
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(60) == 0, sp.log_text()[-3000:]
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 50
    log = sp.log_text()
    assert "SIGTERM received" in log and "EngramDB stopped" in log

    # Reopen the data directory (embedded: the same files a restarted server would read).
    import engramdb

    with engramdb.open(data) as db:
        coll = db.get_collection("w")
        found = {r.id for i in range(0, len(acked), 1000) for r in coll.get_many(acked[i : i + 1000], include=[])}
    assert found == set(acked)


# ------------------------------------------------------------------ config
def test_config_check_reports_every_problem(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server:\n  port: -1\n  auth: sometimes\nstorage:\n  write_buffer_mb: 0\n  bogus: 1\n")
    r = _cli("config", "check", "--config", str(cfg))  # the real command once, for its exit status
    assert r.returncode == 1
    for needle in ("server.port", "server.auth", "storage.write_buffer_mb", "storage.bogus"):
        assert needle in r.stderr, r.stderr

    files = tmp_path / "files.yaml"
    files.write_text(
        f"data_dir: {tmp_path / 'd'}\nserver:\n  admin_key_file: {tmp_path / 'nokey'}\n"
        f"  tls:\n    cert_file: {tmp_path / 'no.crt'}\n    key_file: {tmp_path / 'no.key'}\n"
    )
    status, _, err = cli("config", "check", "--config", str(files))
    assert status == 1
    for needle in ("server.tls.cert_file", "server.tls.key_file", "server.admin_key_file"):
        assert needle in err, err

    status, _, err = cli("config", "check", "--data-dir", str(tmp_path / "ok"), env={"ENGRAMDB_ADMIN_KEY": "short"})
    assert status == 1 and "ENGRAMDB_ADMIN_KEY" in err and "short" not in err

    status, out, err = cli("config", "check", "--data-dir", str(tmp_path / "ok"), env={"ENGRAMDB_ADMIN_KEY": ADMIN_KEY})
    assert status == 0, err
    assert "configuration OK" in out and ADMIN_KEY not in out + err


# --------------------------------------------------------------------- TLS


def _serve_cmd(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--grpc-port", str(free_port())]
    return _cli(*args, env={"ENGRAMDB_ADMIN_KEY": ADMIN_KEY, **env}, timeout=60)


def test_refuses_to_start_with_missing_or_invalid_tls_files(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    r = _serve_cmd(
        tmp_path,
        {"ENGRAMDB_SERVER__TLS__CERT_FILE": str(tmp_path / "no.crt"), "ENGRAMDB_SERVER__TLS__KEY_FILE": "/no/key"},
    )
    assert r.returncode == 1
    assert "refusing to start" in r.stderr and "server.tls.cert_file" in r.stderr and "server.tls.key_file" in r.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything

    serve = ("serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--grpc-port", str(free_port()))
    bad_cert, bad_key = tmp_path / "bad.crt", tmp_path / "bad.key"
    bad_cert.write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    bad_key.write_text("garbage")
    env = {"ENGRAMDB_ADMIN_KEY": ADMIN_KEY}
    status, _, err = cli(
        *serve,
        env={**env, "ENGRAMDB_SERVER__TLS__CERT_FILE": str(bad_cert), "ENGRAMDB_SERVER__TLS__KEY_FILE": str(bad_key)},
    )
    assert status == 1 and "cannot load certificate" in err, err
    cert, _ = self_signed(tmp_path)
    status, _, err = cli(*serve, env={**env, "ENGRAMDB_SERVER__TLS__CERT_FILE": str(cert)})  # key missing
    assert status == 1 and "must be given together" in err


def test_tls_serves_1_2_plus_and_rejects_1_1(tmp_path: Path, server_factory: ServerFactory) -> None:
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    env = {"ENGRAMDB_SERVER__TLS__CERT_FILE": str(cert), "ENGRAMDB_SERVER__TLS__KEY_FILE": str(key)}
    sp = server_factory(env=env, wait=None, scheme="https")
    trust = ssl.create_default_context(cafile=str(cert))
    sp.wait("ready", verify=trust)
    with httpx.Client(base_url=sp.base_url, verify=trust, headers=sp.headers()) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.post("/v1/collections", json={"name": "tls", "dimension": 2}).status_code == 201
    tls12 = ssl.create_default_context(cafile=str(cert))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(sp.base_url + "/health", verify=tls12).status_code == 200

    # A client that speaks at most TLS 1.1 (and would accept weak settings) must be refused by the server.
    # A client willing to speak TLS 1.0-1.1 with weak settings is refused; the same client allowed
    # TLS 1.2 connects, so the protocol version is the only reason (asyncio closes without an alert).
    def weak_client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cafile=str(cert))
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = max_version
        return ctx

    with pytest.raises(httpx.ConnectError):
        httpx.get(sp.base_url + "/health", verify=weak_client(ssl.TLSVersion.TLSv1_1))
    assert httpx.get(sp.base_url + "/health", verify=weak_client(ssl.TLSVersion.TLSv1_2)).status_code == 200
    from engramdb.config import TLSSettings
    from engramdb.server.lifecycle import tls_context

    assert tls_context(TLSSettings(cert_file=cert, key_file=key)).minimum_version == ssl.TLSVersion.TLSv1_2
    # Plain HTTP to the TLS port does not get a response either.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{sp.port}/health", timeout=5)


# -------------------------------------------------------------------- keys
def test_keys_cli_on_a_stopped_data_dir(
    tmp_path: Path, server_factory: ServerFactory, cli: Callable[..., tuple[int, str, str]]
) -> None:
    data = str(tmp_path / "data")
    status, out, err = cli(
        "keys",
        "create",
        "--data-dir",
        data,
        "--role",
        "writer",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--expires-in",
        "1d",
    )
    assert status == 0, err
    secret = out.strip()
    assert secret.startswith("edb_") and "store the key now" in err
    status, listed, _ = cli("keys", "list", "--data-dir", data)
    assert status == 0 and "acme" in listed and "writer" in listed and secret not in listed
    key_id = listed.split()[0]

    sp = server_factory(tmp_path / "data")
    with sp.client(secret) as c:
        assert c.post("/v1/collections", json={"name": "k", "dimension": 2}).status_code == 201
    # The data dir is locked while the server runs.
    status, _, err = cli("keys", "list", "--data-dir", data)
    assert status == 1 and "is a server running" in err
    assert sp.stop() == 0

    assert cli("keys", "revoke", "--data-dir", data, key_id)[0] == 0
    status, listed, _ = cli("keys", "list", "--data-dir", data)
    assert status == 0 and " revoked " in listed
    rotated = cli("keys", "rotate", "--data-dir", data, key_id)
    assert rotated[0] == 1 and "revoked or expired" in rotated[2]  # a revoked key cannot be rotated
    status, out, _ = cli("keys", "generate")
    assert status == 0 and out.startswith("edb_") and len(out.strip()) > 40
