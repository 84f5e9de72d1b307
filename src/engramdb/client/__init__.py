"""HTTP clients for an EngramDB server, with the embedded engine's API.

``engramdb.connect(url, api_key=...)`` returns a blocking :class:`Client`;
``engramdb.AsyncClient(url, api_key=...)`` is the asyncio twin. Both return the
engine's types (Record, Hit, ScanPage, Edge, CollectionConfig) and raise the
engine's exceptions (see ``docs/client.md``).
"""

from __future__ import annotations

from engramdb.client.asyncio import AsyncClient, AsyncRemoteCollection
from engramdb.client.sync import Client, RemoteCollection, connect

__all__ = ["AsyncClient", "AsyncRemoteCollection", "Client", "RemoteCollection", "connect"]
