"""REST server: a FastAPI app over the service layer (see docs/server.md)."""

from __future__ import annotations

from engramdb.server.rest.app import create_app

__all__ = ["create_app"]
