"""The EngramDB server: REST (FastAPI/uvicorn) and gRPC over the service layer.

``run_server(settings)`` starts everything and blocks until SIGTERM/SIGINT;
``create_app(service)`` builds the REST app alone (for embedding or tests).
Imports are lazy so ``import engramdb.server`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engramdb.server.lifecycle import run_server
    from engramdb.server.rest.app import create_app

__all__ = ["create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "run_server":
        from engramdb.server.lifecycle import run_server

        return run_server
    if name == "create_app":
        from engramdb.server.rest.app import create_app

        return create_app
    raise AttributeError(f"module 'engramdb.server' has no attribute {name!r}")
