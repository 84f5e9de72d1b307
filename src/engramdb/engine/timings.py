"""How long the engine's index maintenance takes (snapshots, changelog replays, rebuilds), for whoever listens.

The engine measures; the layers above decide what to do with it (the
service turns it into Prometheus histograms) without the engine importing
them: they register a listener here. A listener gets ``(kind, seconds,
store)`` and keeps the events of its own database by comparing ``store``
(several databases may be open in one process). Each event is also a span
when tracing is on (:func:`engramdb.tracing.record`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from engramdb import tracing

log = logging.getLogger("engramdb.database")

Kind = Literal["snapshot", "replay", "rebuild"]
Listener = Callable[[Kind, float, object], None]

_lock = threading.Lock()
_listeners: tuple[Listener, ...] = ()


def add_listener(fn: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = (*_listeners, fn)


def remove_listener(fn: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(f for f in _listeners if f != fn)  # bound methods are equal, not identical


def record(kind: Kind, started: float, store: object) -> None:
    """Report ``kind`` work that began at ``started`` (``time.perf_counter()``) and ended now.

    A failing listener is logged and skipped: measuring must never fail a snapshot.
    """
    seconds = time.perf_counter() - started
    for fn in _listeners:
        try:
            fn(kind, seconds, store)
        except Exception:
            log.exception("a %s timing listener failed", kind)
    tracing.record(f"engine.{kind}", started)
