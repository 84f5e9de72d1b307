"""Adapters that let agent frameworks use EngramDB as their storage.

* :mod:`engramdb.integrations.langgraph` — ``EngramStore``, a LangGraph ``BaseStore``
  (long-term memory with namespaces, semantic search and TTL). Needs ``engramdb[langgraph]``.
* :mod:`engramdb.integrations.langchain` — ``EngramVectorStore``, a LangChain ``VectorStore``.
  Needs ``engramdb[langchain]``.

Nothing is imported here on purpose: each submodule pulls in its framework, and
``import engramdb`` must not depend on (or pay for) either of them.
"""
