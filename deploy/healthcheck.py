"""Container health check: exit 0 when the server's ``/health`` answers 200, else 1.

Used by the image's HEALTHCHECK, with nothing but the standard library (no curl in the image).
It asks the REST port on loopback (``ENGRAMDB_SERVER__PORT`` when that is set, else 7878): over
plain HTTP first and, when the server speaks TLS, over HTTPS without checking the certificate,
because the certificate names the public host, never 127.0.0.1, and the answer carries no data.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

TIMEOUT_SECONDS = 3.0


def _status(port: int, tls: bool) -> int:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=TIMEOUT_SECONDS, context=ctx
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def main() -> int:
    port = int(os.environ.get("ENGRAMDB_SERVER__PORT") or 7878)
    for tls in (False, True):
        try:
            status = _status(port, tls)
        except (OSError, http.client.HTTPException):
            continue  # refused, or the other protocol: try the next one
        print(f"/health answered {status}")
        return 0 if status == 200 else 1
    print(f"nothing answers /health on 127.0.0.1:{port}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
