"""Container health check: exit 0 when the server's ``/health`` answers 200, else 1.

Used by the image's HEALTHCHECK, with nothing but the standard library (no curl in the image).
It asks the REST port on loopback (``ENGRAMDB_SERVER__PORT`` when that is set, else 7878): over
plain HTTP first and, when the server speaks TLS, over HTTPS without checking the certificate,
because the certificate names the public host, never 127.0.0.1, and the answer carries no data.

``healthcheck.py /ready`` asks ``/ready`` instead (the probes of deploy/kubernetes-cluster). When
``ENGRAMDB_SERVER__TLS__CERT_FILE`` and ``..._KEY_FILE`` are set it presents that certificate as
its client certificate: a cluster node with TLS requires one from every client (the kubelet's
HTTPS probes have none, so the cluster's probes run this script in the pod).
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

TIMEOUT_SECONDS = 3.0
PATHS = ("/health", "/ready")


def _status(port: int, tls: bool, path: str) -> int:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        cert, key = os.environ.get("ENGRAMDB_SERVER__TLS__CERT_FILE"), os.environ.get("ENGRAMDB_SERVER__TLS__KEY_FILE")
        if cert and key:
            ctx.load_cert_chain(cert, key)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=TIMEOUT_SECONDS, context=ctx
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/health"
    if path not in PATHS or len(argv) > 1:
        print(f"usage: healthcheck.py [{' | '.join(PATHS)}]")
        return 2
    port = int(os.environ.get("ENGRAMDB_SERVER__PORT") or 7878)
    for tls in (False, True):
        try:
            status = _status(port, tls, path)
        except (OSError, http.client.HTTPException):
            continue  # refused, or the other protocol: try the next one
        print(f"{path} answered {status}")
        return 0 if status == 200 else 1
    print(f"nothing answers {path} on 127.0.0.1:{port}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
