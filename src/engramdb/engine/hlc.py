"""Hybrid logical clock: the version of every write and the last-writer-wins rule.

A version is ``(hlc, node_id)`` where ``hlc = physical_ms << 16 | logical``.
Physical time keeps versions close to wall time (useful for humans and TTL);
the logical counter keeps them strictly increasing on one node even when the
clock stands still or steps back, and ``observe`` pulls a node's clock forward
past any version it receives from another node, so causally later writes
always win even with modest clock skew.
"""

from __future__ import annotations

import threading
import time

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
NODE_BITS = 16

Version = tuple[int, int]
ZERO: Version = (0, 0)


class HLC:
    """A thread-safe hybrid logical clock for one node."""

    def __init__(self, node_id: int = 0):
        if not 0 <= node_id < (1 << NODE_BITS):
            raise ValueError(f"node_id must be in [0, {1 << NODE_BITS}), got {node_id}")
        self.node_id = node_id
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> Version:
        """A new version, greater than every version this clock issued or observed."""
        wall = int(time.time() * 1000) << LOGICAL_BITS
        with self._lock:
            self._last = wall if wall > self._last else self._last + 1
            return (self._last, self.node_id)

    def observe(self, version: Version) -> None:
        """Move the clock past a version seen elsewhere (at open: the newest stored one)."""
        with self._lock:
            if version[0] > self._last:
                self._last = version[0]


def version_str(v: Version) -> str:
    """Fixed-width hex form that sorts like the version itself."""
    return f"{v[0]:016x}.{v[1]:04x}"


def parse_version(s: str) -> Version:
    hlc, _, node = s.partition(".")
    return (int(hlc, 16), int(node or "0", 16))


def physical_seconds(v: Version) -> float:
    """Wall-clock time (seconds) embedded in a version."""
    return (v[0] >> LOGICAL_BITS) / 1000.0
