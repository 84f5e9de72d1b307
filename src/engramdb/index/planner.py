"""Chooses how a filtered vector search runs, from the filter's cardinality.

Strategies, compared by an estimated cost in "visited nodes" (one distance
computation with its graph bookkeeping; constants measured with
``bench/bench_search.py`` and the planner's own benchmark notes in
docs/benchmarks.md):

- ``exact``: brute force over just the candidates. Costs about
  ``EXACT_COST`` per candidate (its vector is read from storage); recall 1.0.
- ``postfilter``: an ordinary HNSW search for ``k / selectivity`` neighbours,
  keeping the matching ones (widening if too few survive). Chosen when that
  fetch fits in the query's ``ef``, i.e. when it costs no more than the same
  query without a filter.
- ``traverse``: HNSW with the filter pushed into the graph walk (hnswlib's
  filter hook). hnswlib's ``ef`` then counts only *matching* candidates, each
  found among about ``1 / selectivity`` visited nodes, so the walk uses a
  fraction (``TRAVERSE_EF_RATIO``) of the query's ``ef``: on the benchmark
  data that keeps recall at or above the unfiltered search's at 10 %, 1 % and
  0.1 % selectivity. Cost about ``ef_traverse / selectivity``.

Filters the payload index cannot answer exactly (undeclared fields,
namespace or id prefixes) give only a superset; their true selectivity is
unknown, so they post-filter generously or traverse with a wider ``k`` and
every survivor is checked against its stored row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["exact", "postfilter", "traverse"]

EXACT_COST = 1.7  # visited-node equivalents per candidate of an exact search
# 0.25: at the default ef 64 the 10 % walk keeps 16 matches; with 13 (0.2) recall@10 was 0.972-0.975 on
# two query sets, too near the 0.97 target; 16 gives 0.980-0.986 (bench/bench_filtered.py). An unfiltered
# walk 180 deep with the matches kept was measured too: faster as a bare hnswlib call, 0.9x as a whole search.
TRAVERSE_EF_RATIO = 0.25


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
    exact_filter: bool = True,
) -> Plan:
    """Pick a strategy for a filter matching ``candidates`` of ``total`` vectors.

    ``exact_filter`` says whether ``candidates`` is the filter's true match
    count (True) or only an upper bound that rows must confirm (False).
    """
    if candidates <= k:
        return Plan("exact", k, ef)
    selectivity = candidates / max(total, 1)
    if not exact_filter:
        if candidates <= exact_threshold:
            return Plan("exact", k, ef)
        if selectivity >= 0.05:
            fetch = min(total, math.ceil(k / selectivity) + k)
            return Plan("postfilter", fetch, max(ef, fetch))
        return Plan("traverse", k * 4, max(ef, k * 4))
    ef_walk = max(k, math.ceil(ef * TRAVERSE_EF_RATIO))
    if candidates <= exact_threshold and candidates * EXACT_COST <= ef_walk / selectivity:
        return Plan("exact", k, ef)
    fetch = min(total, math.ceil(k / selectivity) + k)
    if fetch <= ef:
        return Plan("postfilter", fetch, ef)
    return Plan("traverse", k, ef_walk)
