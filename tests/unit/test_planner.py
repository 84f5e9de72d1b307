"""Unit tests of the filtered-search planner (``engramdb.index.planner.plan``).

Expected decisions are derived from the module's own constants (``EXACT_COST``,
``TRAVERSE_EF_RATIO``) and the cost model its docstring describes, so a retuned
constant moves the expectations with it; only the structure of the decision is
pinned here.
"""

from __future__ import annotations

import inspect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramdb.index.planner import EXACT_COST, TRAVERSE_EF_RATIO, Plan, plan

DEFAULT_THRESHOLD = inspect.signature(plan).parameters["exact_threshold"].default
STRATEGIES = {"exact", "postfilter", "traverse"}


def ef_walk(k: int, ef: int) -> int:
    """The traversal ef the planner documents: a fraction of the query's ef, never below k."""
    return max(k, math.ceil(ef * TRAVERSE_EF_RATIO))


def postfilter_fetch(k: int, candidates: int, total: int) -> int:
    """Neighbours a post-filtered search must fetch to expect k matches, plus k of slack."""
    return min(total, math.ceil(k / (candidates / total)) + k)


def exact_is_cheaper(k: int, candidates: int, total: int, ef: int) -> bool:
    return candidates * EXACT_COST <= ef_walk(k, ef) / (candidates / total)


# --------------------------------------------------------------- the module itself


def test_constants_are_sane():
    assert EXACT_COST > 0
    assert 0 < TRAVERSE_EF_RATIO <= 1
    assert DEFAULT_THRESHOLD >= 0


def test_plan_is_immutable():
    p = plan(10, 5, 100, 64)
    with pytest.raises(AttributeError):
        p.strategy = "traverse"  # type: ignore[misc]


# --------------------------------------------------------------- tiny candidate sets


@pytest.mark.parametrize("candidates", [0, 1, 9, 10])
@pytest.mark.parametrize("exact_filter", [True, False])
def test_at_most_k_candidates_always_go_exact(candidates, exact_filter):
    # Whatever the collection size, ef and threshold: with no more candidates than k,
    # brute force over them is the whole answer.
    p = plan(10, candidates, 1_000_000, 64, exact_threshold=0, exact_filter=exact_filter)
    assert p == Plan("exact", 10, 64)


def test_empty_collection_goes_exact():
    assert plan(10, 0, 0, 64).strategy == "exact"


@pytest.mark.parametrize("candidates", [11, 20, 100])
def test_few_candidates_in_a_big_collection_go_exact(candidates):
    total = 1_000_000
    assert exact_is_cheaper(10, candidates, total, 64)  # precondition of the case
    p = plan(10, candidates, total, 64)
    assert p == Plan("exact", 10, 64)


# ------------------------------------------------------------------- postfilter


def test_broad_filter_whose_fetch_fits_in_ef_goes_postfilter():
    k, candidates, total, ef = 10, 50_000, 100_000, 64
    fetch = postfilter_fetch(k, candidates, total)
    assert fetch <= ef and not exact_is_cheaper(k, candidates, total, ef)  # preconditions
    assert plan(k, candidates, total, ef) == Plan("postfilter", fetch, ef)


def test_unfiltered_search_through_the_planner_is_a_postfilter_of_2k():
    # Selectivity 1 (the unfiltered path when some records carry a TTL): fetch k + k.
    k, total, ef = 10, 100_000, 64
    assert plan(k, total, total, ef) == Plan("postfilter", 2 * k, ef)


def test_postfilter_fetch_never_exceeds_the_collection():
    # A small collection with a broad filter: ceil(k/s)+k would exceed total.
    k, total = 50, 60
    p = plan(k, 55, total, 10_000, exact_threshold=0)
    assert p.strategy == "postfilter"
    assert p.fetch_k == total


def test_postfilter_traverse_boundary_is_where_the_fetch_stops_fitting_in_ef():
    k, total, ef = 10, 100_000, 64
    # The smallest candidate count whose post-filter fetch fits in ef.
    lo, hi = k + 1, total
    while lo < hi:
        mid = (lo + hi) // 2
        if postfilter_fetch(k, mid, total) <= ef:
            hi = mid
        else:
            lo = mid + 1
    boundary = lo
    assert postfilter_fetch(k, boundary, total) <= ef < postfilter_fetch(k, boundary - 1, total)
    assert boundary > DEFAULT_THRESHOLD  # so exact cannot interfere on either side
    assert plan(k, boundary, total, ef) == Plan("postfilter", postfilter_fetch(k, boundary, total), ef)
    assert plan(k, boundary - 1, total, ef) == Plan("traverse", k, ef_walk(k, ef))


# --------------------------------------------------------------------- traverse


@pytest.mark.parametrize("k", [10, 13, 20, 100])
def test_ten_percent_of_100k_with_ef_64_traverses_with_a_fraction_of_ef(k):
    # (k=1 would post-filter: ceil(1/0.1)+1 = 11 fits in ef 64; see the next test.)
    candidates, total, ef = 10_000, 100_000, 64
    assert postfilter_fetch(k, candidates, total) > ef  # precondition: postfilter does not fit
    p = plan(k, candidates, total, ef)
    assert p.strategy == "traverse"
    assert p.fetch_k == k
    assert p.ef == max(k, math.ceil(ef * TRAVERSE_EF_RATIO))
    assert p.ef >= k


def test_ten_percent_with_k_1_postfilters_because_the_fetch_fits():
    assert plan(1, 10_000, 100_000, 64) == Plan("postfilter", postfilter_fetch(1, 10_000, 100_000), 64)


def test_traverse_ef_scales_with_the_query_ef():
    # 1 % of a million: too many candidates for exact, a fetch (1010) larger than every ef.
    efs = [64, 128, 256, 512]
    assert all(postfilter_fetch(10, 10_000, 1_000_000) > ef for ef in efs)
    plans = [plan(10, 10_000, 1_000_000, ef) for ef in efs]
    assert all(p.strategy == "traverse" for p in plans)
    assert [p.ef for p in plans] == [ef_walk(10, ef) for ef in efs]
    assert plans[0].ef < plans[-1].ef


# ------------------------------------------------- exact versus traverse by cost


@pytest.mark.parametrize("ef", [1, 16, 32, 64, 65, 70, 75, 80, 100, 128, 200, 500])
def test_one_percent_of_100k_compares_exact_and_traverse_cost(ef):
    k, candidates, total = 10, 1_000, 100_000
    selectivity = candidates / total
    walk = max(k, math.ceil(ef * TRAVERSE_EF_RATIO))
    exact_cost = candidates * EXACT_COST
    traverse_cost = walk / selectivity
    assert candidates <= DEFAULT_THRESHOLD and postfilter_fetch(k, candidates, total) > ef
    p = plan(k, candidates, total, ef)
    if exact_cost <= traverse_cost:
        assert p == Plan("exact", k, ef)
    else:
        assert p == Plan("traverse", k, walk)


def test_one_percent_of_100k_flips_from_traverse_to_exact_as_ef_grows():
    k, candidates, total = 10, 1_000, 100_000
    strategies = [plan(k, candidates, total, ef).strategy for ef in range(1, 1001)]
    # Both outcomes occur, and once exact wins it keeps winning (the traversal only gets dearer).
    assert "traverse" in strategies and "exact" in strategies
    first_exact = strategies.index("exact")
    assert set(strategies[:first_exact]) == {"traverse"}
    assert set(strategies[first_exact:]) == {"exact"}
    ef = first_exact + 1
    assert exact_is_cheaper(k, candidates, total, ef) and not exact_is_cheaper(k, candidates, total, ef - 1)


def test_default_ef_at_one_percent_of_100k():
    # The documented example: ef 64 -> walk 13 -> traverse cost 1300 < exact cost 1700.
    k, candidates, total, ef = 10, 1_000, 100_000, 64
    expected = "exact" if exact_is_cheaper(k, candidates, total, ef) else "traverse"
    assert plan(k, candidates, total, ef).strategy == expected


# -------------------------------------------------------------- exact_threshold


def test_exact_threshold_caps_exact():
    k, candidates, total, ef = 10, 1_000, 100_000, 1_000
    assert exact_is_cheaper(k, candidates, total, ef)  # cost alone says exact
    assert plan(k, candidates, total, ef, exact_threshold=candidates).strategy == "exact"
    capped = plan(k, candidates, total, ef, exact_threshold=candidates - 1)
    assert capped.strategy != "exact"
    # The fetch (ceil(k/0.01)+k = 1010) does not fit in ef 1000: traverse.
    assert capped == Plan("traverse", k, ef_walk(k, ef))


@pytest.mark.parametrize("exact_filter", [True, False])
def test_exact_threshold_zero_leaves_only_the_at_most_k_rule(exact_filter):
    assert plan(10, 11, 1_000_000, 64, exact_threshold=0, exact_filter=exact_filter).strategy != "exact"
    assert plan(10, 10, 1_000_000, 64, exact_threshold=0, exact_filter=exact_filter).strategy == "exact"


# -------------------------------------------------------------- inexact filters


@pytest.mark.parametrize("candidates", [11, 500, DEFAULT_THRESHOLD])
def test_inexact_filter_with_few_candidates_goes_exact(candidates):
    p = plan(10, candidates, 1_000_000, 64, exact_filter=False)
    assert p == Plan("exact", 10, 64)


def test_inexact_broad_filter_postfilters_with_ef_at_least_the_fetch():
    k, candidates, total, ef = 10, 50_000, 100_000, 8
    fetch = postfilter_fetch(k, candidates, total)
    p = plan(k, candidates, total, ef, exact_filter=False)
    assert p == Plan("postfilter", fetch, max(ef, fetch))
    assert p.ef >= p.fetch_k


def test_inexact_narrow_filter_traverses_with_four_k():
    k, candidates, total, ef = 10, 3_000, 1_000_000, 64
    p = plan(k, candidates, total, ef, exact_filter=False)
    assert p == Plan("traverse", 4 * k, max(ef, 4 * k))


# Random planner inputs: k, collection size, filter selectivity, ef and exact threshold.
plan_inputs = given(
    k=st.integers(1, 200),
    total=st.integers(1, 2_000_000),
    frac=st.floats(0.0, 1.0),
    ef=st.integers(1, 10_000),
    threshold=st.integers(0, 5_000),
)


@settings(max_examples=400, deadline=None)
@plan_inputs
def test_inexact_filters_never_traverse_with_fewer_than_4k(k, total, frac, ef, threshold):
    candidates = round(total * frac)
    p = plan(k, candidates, total, ef, exact_threshold=threshold, exact_filter=False)
    assert p.strategy in STRATEGIES
    if p.strategy == "traverse":
        assert p.fetch_k >= 4 * k
        assert p.ef >= p.fetch_k
    if p.strategy == "exact":
        assert candidates <= max(k, threshold)


# ------------------------------------------------------------------ invariants


@settings(max_examples=400, deadline=None)
@plan_inputs
def test_exact_filter_decisions_follow_the_cost_model(k, total, frac, ef, threshold):
    candidates = round(total * frac)
    p = plan(k, candidates, total, ef, exact_threshold=threshold)
    assert p.strategy in STRATEGIES
    assert p.fetch_k >= min(k, total) or p.strategy != "postfilter"
    if candidates <= k:
        assert p == Plan("exact", k, ef)
        return
    cheap_exact = candidates <= threshold and exact_is_cheaper(k, candidates, total, ef)
    fetch = postfilter_fetch(k, candidates, total)
    if cheap_exact:
        assert p == Plan("exact", k, ef)
    elif fetch <= ef:
        assert p == Plan("postfilter", fetch, ef)
        assert k <= p.fetch_k <= total
    else:
        assert p == Plan("traverse", k, ef_walk(k, ef))
        assert p.ef >= k
