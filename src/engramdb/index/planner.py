"""Chooses how a filtered vector search runs, from the filter's cardinality.

Strategies (thresholds measured with ``bench/bench_search.py``):

- ``exact``: few candidates (≤ ``exact_threshold``) — brute force over just
  them; recall 1.0 and cheaper than walking the graph.
- ``postfilter``: many candidates (selectivity ≥ ``postfilter_min_selectivity``)
  — ask HNSW for ``k / selectivity`` neighbours with a matching ``ef`` and keep
  the matching ones, widening if too few survive.
- ``traverse``: in between — HNSW with the filter pushed into the traversal
  (hnswlib's filter hook), so the graph walk skips non-matching nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["exact", "postfilter", "traverse"]


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    fetch_k: int
    ef: int


def plan(
    k: int,
    candidates: int,
    total: int,
    ef: int,
    *,
    exact_threshold: int = 2048,
    postfilter_min_selectivity: float = 0.05,
    oversample: float = 1.0,
) -> Plan:
    """Pick a strategy for a filter matching ``candidates`` of ``total`` vectors."""
    if candidates <= exact_threshold or candidates <= k:
        return Plan("exact", k, ef)
    selectivity = candidates / max(total, 1)
    if selectivity >= postfilter_min_selectivity:
        fetch = min(total, math.ceil(k / selectivity * oversample) + k)
        return Plan("postfilter", fetch, max(ef, fetch))
    return Plan("traverse", k, max(ef, k))
