"""Time budgets for queries that may read many records (count, scan, search).

A server gives each such query a budget (``server.query_timeout_seconds``) so one expensive
request cannot hold a worker, and the CPU other tenants share, for minutes. The engine checks
the budget inside its loops, every ``CHECK_EVERY`` items, so the clock is read rarely and the
hot paths stay as fast as without one.

The budget is set around the calls it applies to (``with query_budget(5.0): coll.count(...)``)
rather than passed as an argument, so the embedded ``Collection`` keeps the exact signatures of
the remote clients (tests/integration/test_api_parity.py). Without one, queries are unbounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

from engramdb.errors import DeadlineExceeded, InvalidArgument

__all__ = ["CHECK_EVERY", "Deadline", "current_deadline", "query_budget"]

CHECK_EVERY: Final = 256  # loop iterations between two reads of the clock (a power of two: ``i & MASK``)
MASK: Final = CHECK_EVERY - 1

_HINT: Final = (
    "narrow the query: declare the fields you filter on in the collection's indexed_fields, "
    "add a namespace_prefix or id_prefix, or use a more selective filter"
)


class Deadline:
    """A point in time after which ``check`` raises :class:`DeadlineExceeded`."""

    __slots__ = ("_at", "op", "seconds")

    def __init__(self, seconds: float, op: str) -> None:
        self.seconds = seconds
        self.op = op
        self._at = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() > self._at

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise DeadlineExceeded(
                f"{self.op} took longer than its time budget of {self.seconds:g} s; {_HINT}",
                code="deadline_exceeded",
                details={"timeout_seconds": self.seconds},
            )


_BUDGET: ContextVar[float | None] = ContextVar("engramdb_query_budget", default=None)


@contextmanager
def query_budget(seconds: float | None) -> Iterator[None]:
    """Give each count, scan and search started inside the block ``seconds`` (None: no budget)."""
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600
    ):
        raise InvalidArgument("a query budget must be a number of seconds from 0 to 3600", code="invalid_timeout")
    token = _BUDGET.set(None if seconds is None else float(seconds))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def current_deadline(op: str) -> Deadline | None:
    """The deadline of a query ``op`` starting now under the current budget, or None."""
    seconds = _BUDGET.get()
    return None if seconds is None else Deadline(seconds, op)
