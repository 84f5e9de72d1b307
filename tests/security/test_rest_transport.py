"""Attacks on the REST transport itself, with real sockets against real servers on loopback.

Each test names the guard it covers; removing the guard makes it fail:

- browsers: JSON endpoints need ``Content-Type: application/json`` (415), the
  ``Host`` header must be an allowed name (421; ``/health`` and ``/ready``
  exempt for probes), a foreign ``Origin`` is refused (403) —
  ``server/rest/app.py`` (``require_json``, ``BrowserGuard``) and ``guards.py``;
- connections: a dripping or silent client is cut off after
  ``server.header_timeout_seconds``, a stalled body too, connections beyond
  ``server.max_connections`` evict idle/half-sent ones or are refused with
  503, a head over ``server.max_header_kb`` gets 431 and the connection
  closes — ``server/rest/transport.py``;
- no redirect names a caller-chosen host, and every error (404, 405, 415,
  421, 431, malformed HTTP) is JSON; ``OPTIONS`` and every 405 carry the full
  ``Allow`` of the path — ``app.py``;
- REST TLS 1.2 offers AEAD suites only (no CBC), and TLS 1.1 stays refused —
  ``server/lifecycle.py`` (``tls_context``).

gRPC is not covered here: browsers cannot speak gRPC (no trailers, no control
of HTTP/2 framing), so neither CSRF nor DNS rebinding reaches it; its
connections and message sizes are bounded by gRPC's own settings.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engramdb.server.rest.routes import ROUTES
from integration.conftest import ServerProcess, unique_name
from tls_certs import self_signed

ServerFactory = Callable[..., ServerProcess]


# ------------------------------------------------------------------ helpers
def _err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def _connect(sp: ServerProcess, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", sp.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit`` seconds pass), and when the close came."""
    start = time.monotonic()
    data = b""
    while time.monotonic() - start < limit:
        s.settimeout(max(0.05, limit - (time.monotonic() - start)))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset: closed too
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, float("inf")


def _status_and_json(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def _is_closed(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _request(sp: ServerProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=sp.base_url, headers=sp.headers(), timeout=10.0) as c:
        return c.request(method, path, **kw)


def _collection_exists(sp: ServerProcess, name: str) -> bool:
    return _request(sp, "GET", f"/v1/collections/{name}").status_code == 200


# ---------------------------------------------------------------- browsers
def _example_path(path: str, coll: str) -> str:
    return path.replace("{coll}", coll).replace("{id:path}", "rec-1").replace("{key_id}", "0123456789abcdef")


def test_json_endpoints_refuse_other_content_types(server: ServerProcess) -> None:
    coll = unique_name("ct")
    body = json.dumps({"name": coll, "dimension": 2}).encode()
    # What a web page can send to any site without a CORS preflight: form, multipart and text bodies.
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None):
        headers = {"content-type": ctype} if ctype else {}
        r = _request(server, "POST", "/v1/collections", content=body, headers=headers)
        _err(r, 415, "unsupported_media_type")
    # Near misses are refused as well: a charset other than UTF-8, a JSON-ish type, two headers.
    for ctype in ("application/json; charset=latin-1", "application/jsonx", "text/json"):
        _err(
            _request(server, "POST", "/v1/collections", content=body, headers={"content-type": ctype}),
            415,
            "unsupported_media_type",
        )
    two = [("content-type", "application/json"), ("content-type", "text/plain")]
    _err(_request(server, "POST", "/v1/collections", content=body, headers=two), 415, "unsupported_media_type")
    assert not _collection_exists(server, coll)  # refused before any work
    # Every route that takes a body applies the rule, before authentication (no key here).
    for spec in ROUTES:
        if spec.body is None:
            continue
        r = httpx.request(
            spec.method,
            server.base_url + _example_path(spec.path, coll),
            content=b"{}",
            headers={"content-type": "text/plain"},
        )
        _err(r, 415, "unsupported_media_type")
    # The accepted forms.
    ok = _request(
        server, "POST", "/v1/collections", content=body, headers={"content-type": "Application/JSON; charset=UTF-8"}
    )
    assert ok.status_code == 201, ok.text
    r = _request(server, "POST", f"/v1/collections/{coll}/count", headers={"content-type": "application/json"})
    assert r.json() == {"count": 0}  # an empty JSON body still means "no parameters"


def test_host_header_must_name_an_allowed_host(server: ServerProcess) -> None:
    coll = unique_name("host")
    # DNS rebinding: the browser sends the attacker's name as Host.
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "localhost.evil", ""):
        r = _request(server, "POST", "/v1/collections", json={"name": coll, "dimension": 2}, headers={"host": host})
        _err(r, 421, "host_not_allowed")
        assert "evil" not in r.text  # the name is not reflected
    assert not _collection_exists(server, coll)
    # The loopback names, any port.
    for host in ("localhost", "LOCALHOST:1", f"127.0.0.1:{server.port}", "[::1]:8080", "localhost."):
        assert _request(server, "GET", "/v1/collections", headers={"host": host}).status_code == 200, host
    # Probes keep working whatever Host they send (Kubernetes sends the pod's IP).
    for path in ("/health", "/ready"):
        assert httpx.get(server.base_url + path, headers={"host": "10.1.2.3:7878"}).status_code == 200


def test_foreign_origin_is_refused(server: ServerProcess) -> None:
    coll = unique_name("origin")
    for origin in (
        "http://evil.example",
        "https://evil.example:443",
        "null",
        "file://",
        "http://localhost.evil.example",
    ):
        r = _request(server, "POST", "/v1/collections", json={"name": coll, "dimension": 2}, headers={"origin": origin})
        _err(r, 403, "origin_not_allowed")
    assert not _collection_exists(server, coll)
    # Pages served from an allowed host (Swagger UI at /docs is same-origin) may call the API.
    for origin in (server.base_url, "http://localhost:5173"):
        r = _request(
            server,
            "POST",
            "/v1/collections",
            json={"name": coll, "dimension": 2, "exist_ok": True},
            headers={"origin": origin},
        )
        assert r.status_code == 201, r.text


def test_configured_allowed_hosts(server_factory: ServerFactory) -> None:
    sp = server_factory(env={"ENGRAMDB_SERVER__ALLOWED_HOSTS": "db.example, *.corp.example"}, wait="health")
    assert _request(sp, "GET", "/v1/collections", headers={"host": "db.example"}).status_code == 200
    assert _request(sp, "GET", "/v1/collections", headers={"host": "a.b.corp.example:443"}).status_code == 200
    _err(_request(sp, "GET", "/v1/collections", headers={"host": "corp.example"}), 421, "host_not_allowed")
    _err(_request(sp, "GET", "/v1/collections"), 421, "host_not_allowed")  # 127.0.0.1 is not listed any more
    r = _request(sp, "GET", "/v1/collections", headers={"host": "db.example", "origin": "https://x.corp.example"})
    assert r.status_code == 200
    r = _request(sp, "GET", "/v1/collections", headers={"host": "db.example", "origin": "https://evil.example"})
    _err(r, 403, "origin_not_allowed")
    assert httpx.get(sp.base_url + "/health").status_code == 200  # probes by IP


# ------------------------------------------------------- redirects and errors
def test_trailing_slash_never_redirects(server: ServerProcess, server_factory: ServerFactory) -> None:
    r = _request(server, "GET", "/v1/collections/")
    assert "location" not in r.headers
    _err(r, 404, "no_such_endpoint")
    # Even where any Host is accepted, no answer sends the client to the host it named.
    sp = server_factory(env={"ENGRAMDB_SERVER__ALLOWED_HOSTS": "*"}, wait="health")
    for method, path in (("GET", "/v1/collections/"), ("POST", "/v1/collections/"), ("GET", "/health/")):
        r = _request(sp, method, path, headers={"host": "evil.example", "content-type": "application/json"})
        assert not 300 <= r.status_code < 400 and "location" not in r.headers, (r.status_code, r.headers)
        _err(r, 404, "no_such_endpoint")


def _expected_allow(path: str) -> set[str]:
    """Methods of every route whose template matches ``path``, by Starlette's own path compiler."""
    from starlette.routing import compile_path

    methods = {"OPTIONS"}
    for spec in ROUTES:
        if compile_path(spec.path)[0].match(path):
            methods.add(spec.method)
            if spec.method == "GET":
                methods.add("HEAD")
    return methods


def test_options_and_405_list_every_method_of_the_path(server: ServerProcess) -> None:
    paths = sorted({_example_path(spec.path, "c1") for spec in ROUTES})
    paths += ["/v1/collections/c1/records/get", "/v1/collections/c1/records/delete", "/health", "/ready"]
    for path in paths:
        expected = _expected_allow(path) if path.startswith("/v1") else {"GET", "HEAD", "OPTIONS"}
        r = _request(server, "OPTIONS", path)
        assert r.status_code == 204, (path, r.status_code, r.text)
        assert set(r.headers["allow"].split(", ")) == expected, (path, r.headers["allow"])
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - expected:
            r = _request(server, method, path, headers={"content-type": "application/json"})
            _err(r, 405, "method_not_allowed")
            assert set(r.headers["allow"].split(", ")) == expected, (method, path, r.headers["allow"])
    # A path no route has: 404, not an empty Allow.
    _err(_request(server, "OPTIONS", "/v1/nothing"), 404, "no_such_endpoint")


def test_malformed_http_gets_a_json_error(server: ServerProcess) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Name: x\r\n\r\n")
        raw, closed_after = _read_until_closed(s, 5)
    status, body = _status_and_json(raw)
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert closed_after < 5


# ------------------------------------------------------------- connections
def test_huge_header_gets_431_and_the_connection_closes(server: ServerProcess) -> None:
    # 1 MB in one header: answered once the head passes server.max_header_kb, without reading it all.
    with _connect(server) as s:
        try:
            s.sendall(b"GET /v1/collections HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        except OSError:
            pass  # the server may stop reading before the whole megabyte is sent
        raw, closed_after = _read_until_closed(s, 5)
    status, body = _status_and_json(raw)
    assert status == 431 and body["error"]["code"] == "headers_too_large", raw[:300]
    assert closed_after < 5
    # A header that never ends is refused by its size so far, not buffered until it ends (or the head deadline).
    with _connect(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + b"a" * (256 * 1024))
        raw, closed_after = _read_until_closed(s, 5)
    status, body = _status_and_json(raw)
    assert status == 431 and closed_after < 5
    # A head just over the default 32 KB that arrives in one piece is measured exactly too.
    r = httpx.get(server.base_url + "/v1/collections", headers={**server.headers(), "X-Pad": "b" * 33 * 1024})
    _err(r, 431, "headers_too_large")
    # Many headers adding up count the same as one big one.
    many = {f"X-H{i}": "c" * 100 for i in range(400)}
    _err(httpx.get(server.base_url + "/health", headers=many), 431, "headers_too_large")
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_dripping_and_silent_clients_are_cut_off(server_factory: ServerFactory) -> None:
    sp = server_factory(env={"ENGRAMDB_SERVER__HEADER_TIMEOUT_SECONDS": "1"}, wait="health")
    # A head sent a header line at a time, never finished (slowloris).
    with _connect(sp) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        raw = b""
        closed = False
        while time.monotonic() - start < 6 and not closed:
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                chunk = s.recv(4096)
                raw += chunk
                closed = chunk == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
        elapsed = time.monotonic() - start
    assert closed and elapsed < 4, elapsed
    if raw:
        status, body = _status_and_json(raw)
        assert status == 408 and body["error"]["code"] == "request_timeout"
    # A connection that never sends a byte.
    with _connect(sp) as s:
        raw, closed_after = _read_until_closed(s, 6)
    assert raw == b"" and closed_after < 4
    # A body that stops arriving after its head (the head itself was quick).
    with _connect(sp) as s:
        head = (
            f"POST /v1/collections HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sp.admin_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        s.sendall(head.encode())
        raw, closed_after = _read_until_closed(s, 8)
    assert closed_after < 5, closed_after
    status, body = _status_and_json(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    # A normal request on a keep-alive connection is unaffected.
    with httpx.Client(base_url=sp.base_url) as c:
        assert c.get("/health").status_code == 200
        time.sleep(0.5)
        assert c.get("/health").status_code == 200


def test_half_open_sockets_beyond_the_cap_do_not_lock_clients_out(server_factory: ServerFactory) -> None:
    cap = 20
    sp = server_factory(
        env={"ENGRAMDB_SERVER__MAX_CONNECTIONS": str(cap), "ENGRAMDB_SERVER__HEADER_TIMEOUT_SECONDS": "60"},
        wait="health",
    )
    socks: list[socket.socket] = []
    try:
        for _ in range(2 * cap):
            s = _connect(sp)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            socks.append(s)
        time.sleep(0.5)
        closed = [i for i, s in enumerate(socks) if _is_closed(s)]
        # The longest-waiting half-sent heads made room for the newer connections: held sockets stay bounded.
        assert len(closed) >= cap, closed
        assert sum(not _is_closed(s) for s in socks) <= cap
        # A normal client is served at once, several times over.
        start = time.monotonic()
        for _ in range(5):
            assert httpx.get(sp.base_url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - start < 5
    finally:
        for s in socks:
            s.close()


def test_connections_beyond_the_cap_are_refused_when_all_are_busy(server_factory: ServerFactory) -> None:
    cap = 5
    sp = server_factory(
        env={"ENGRAMDB_SERVER__MAX_CONNECTIONS": str(cap), "ENGRAMDB_SERVER__HEADER_TIMEOUT_SECONDS": "60"},
        wait="health",
    )
    busy: list[socket.socket] = []
    head = (
        f"POST /v1/collections HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {sp.admin_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    try:
        for _ in range(cap):  # requests in progress (bodies still to come) are never evicted
            s = _connect(sp)
            s.sendall(head)
            busy.append(s)
        time.sleep(0.3)
        start = time.monotonic()
        with _connect(sp) as s:
            raw, closed_after = _read_until_closed(s, 5)
        assert time.monotonic() - start < 3 and closed_after < 3
        status, body = _status_and_json(raw)
        assert status == 503 and body["error"]["code"] == "too_many_connections", raw
        assert not any(_is_closed(s) for s in busy)
    finally:
        for s in busy:
            s.close()
    # Once they are gone, clients are served again.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if httpx.get(sp.base_url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server did not serve again after the busy connections closed")


# --------------------------------------------------------------------- TLS


def _client(cert: Path, ciphers: str, max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(cert))
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")  # the client would accept anything: the server must refuse
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
    return ctx


def _handshake(sp: ServerProcess, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", sp.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        cipher = s.cipher()
        assert cipher is not None
        return cipher[0]


def test_rest_tls_offers_aead_suites_only(tmp_path: Path, server_factory: ServerFactory) -> None:
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    env = {"ENGRAMDB_SERVER__TLS__CERT_FILE": str(cert), "ENGRAMDB_SERVER__TLS__KEY_FILE": str(key)}
    sp = server_factory(env=env, wait=None, scheme="https")
    sp.wait("health", verify=ssl.create_default_context(cafile=str(cert)))
    cbc = (
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
    )
    for suite in cbc:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(sp, _client(cert, suite))
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(sp, _client(cert, suite)) == suite
    # TLS 1.1 stays refused, even with a suite the server would take in TLS 1.2.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(sp, _client(cert, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256", ssl.TLSVersion.TLSv1_1))
    assert _handshake(sp, _client(cert, "DEFAULT", ssl.TLSVersion.TLSv1_3)).startswith("TLS_")
