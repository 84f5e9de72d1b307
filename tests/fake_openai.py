"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1 for tests.

It serves ``/v1/embeddings`` (deterministic vectors derived from a hash of each
text) and ``/v1/chat/completions`` (answers ``chat_content``) by default. A test
queues :class:`Reply` objects, or callables that build one from the request,
to script failures: each request takes the next queued reply, and falls back
to the default once the queue is empty. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np


def fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim)
    return [float(x) for x in vec / np.linalg.norm(vec)]


def embeddings_body(texts: list[str], dim: int, *, model: str = "fake-embed", reverse: bool = False) -> dict[str, Any]:
    """An ``/embeddings`` answer; ``reverse`` lists the items backwards (still with correct ``index``)."""
    data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, dim)} for i, t in enumerate(texts)]
    if reverse:
        data.reverse()
    return {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}}


def chat_body(content: str | None, *, finish_reason: str = "stop", model: str = "fake-chat") -> dict[str, Any]:
    """A ``/chat/completions`` answer whose message content is ``content``."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_port: int = 0  # equal ports across requests mean a reused keep-alive connection


@dataclass
class Reply:
    """What the server answers: a JSON-able ``body`` (or raw ``str``/``bytes``), after ``delay`` seconds."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = Reply | Callable[[Recorded], Reply]


class FakeOpenAI:
    """The server; use as a context manager. ``url`` is its base URL (without ``/v1``)."""

    def __init__(self, dim: int = 8, chat_content: str | None = None):
        self.dim = dim
        self.chat_content = chat_content
        self.requests: list[Recorded] = []
        self._queue: deque[Script] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised

            def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
                pass  # keep test output clean

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                req = Recorded(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, self.client_address[1]
                )
                reply = fake._next_reply(req)
                if reply.delay and fake._stop.wait(reply.delay):
                    return
                if isinstance(reply.body, bytes):
                    payload, ctype = reply.body, "application/octet-stream"
                elif isinstance(reply.body, str):
                    payload, ctype = reply.body.encode(), "text/plain"
                else:
                    payload, ctype = json.dumps(reply.body).encode(), "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test); nothing to report

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def enqueue(self, *replies: Script) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget queued replies and recorded requests (for a server shared by several tests)."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    def chat_requests(self) -> list[Recorded]:
        """The ``/chat/completions`` requests received so far."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next_reply(self, req: Recorded) -> Reply:
        with self._lock:
            self.requests.append(req)
            script = self._queue.popleft() if self._queue else None
        if script is None:
            return self._default(req)
        return script(req) if callable(script) else script

    def _default(self, req: Recorded) -> Reply:
        if req.path.endswith("/embeddings") and isinstance(req.body, dict):
            inputs = req.body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            return Reply(body=embeddings_body(texts, self.dim))
        if req.path.endswith("/chat/completions"):
            return Reply(body=chat_body(self.chat_content))
        return Reply(status=404, body={"error": {"message": f"no route {req.path}"}})

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()  # wakes handlers sleeping in a delay
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
