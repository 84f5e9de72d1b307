"""Rate limiting: token buckets per key and per client IP, and auth-failure throttling.

Both structures are bounded (least recently used entries are dropped), so a
flood of distinct addresses or keys cannot grow memory without limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_TRACKED = 100_000
AUTH_FAILURE_WINDOW_SECONDS = 60.0


class TokenBuckets:
    """One token bucket per name: ``rate`` tokens per second, up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_tracked: int = MAX_TRACKED):
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, name: str, now: float | None = None) -> float:
        """Take one token; returns 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[name] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
            return wait


class AuthFailureThrottle:
    """Blocks a client IP for the rest of a sliding minute after too many failed logins."""

    def __init__(self, per_minute: int, max_tracked: int = MAX_TRACKED):
        self.per_minute = per_minute
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - AUTH_FAILURE_WINDOW_SECONDS:
            q.popleft()

    def blocked_for(self, ip: str, now: float | None = None) -> float:
        """Seconds this IP must wait before trying again (0.0 when not throttled)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._failures.get(ip)
            if q is None:
                return 0.0
            self._prune(q, now)
            if not q:
                del self._failures[ip]
                return 0.0
            if len(q) < self.per_minute:
                return 0.0
            # Blocked until enough failures leave the window to go below the limit.
            return max(0.001, q[len(q) - self.per_minute] + AUTH_FAILURE_WINDOW_SECONDS - now)

    def record(self, ip: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._failures.pop(ip, None) or deque()
            self._prune(q, now)
            q.append(now)
            # Keep only what the limit needs; a blocked attacker cannot grow the deque.
            while len(q) > self.per_minute:
                q.popleft()
            self._failures[ip] = q
            if len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)
