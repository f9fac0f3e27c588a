"""bench.stats: nearest-rank percentiles, medians across rounds, spread."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import median, median_interval, percentile, spread


def test_percentile_is_nearest_rank_so_it_is_a_real_sample() -> None:
    samples = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 0.999) == 100.0
    assert percentile(samples, 1.0) == 100.0


def test_percentile_does_not_depend_on_input_order() -> None:
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_percentile_rejects_a_fraction_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], 50)


def test_median_of_even_count_is_mean_of_middle_two() -> None:
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([7.0, 1.0, 3.0]) == 3.0


def test_median_ignores_one_wild_round() -> None:
    assert median([10.0, 11.0, 9.5, 10.5, 1000.0]) == 10.5


def test_spread_is_range_over_median() -> None:
    assert spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)
    assert spread([5.0]) == 0.0


@given(st.lists(st.floats(min_value=0, max_value=1e9), min_size=1, max_size=200))
def test_percentiles_are_samples_and_ordered(samples: list[float]) -> None:
    p50, p99, p999 = (percentile(samples, f) for f in (0.5, 0.99, 0.999))
    assert p50 in samples
    assert p50 <= p99 <= p999 <= max(samples)
    assert min(samples) <= median(samples) <= max(samples)


def test_median_interval_uses_the_binomial_order_statistics() -> None:
    # The textbook ranks at 95%: n=15 -> 4th and 12th, n=20 -> 6th and 15th (1-based).
    assert median_interval([float(v) for v in range(1, 16)]) == (4.0, 12.0)
    assert median_interval([float(v) for v in reversed(range(1, 21))]) == (6.0, 15.0)


def test_median_interval_of_too_few_values_is_their_range() -> None:
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60))
def test_median_interval_contains_the_median(values: list[float]) -> None:
    low, high = median_interval(values)
    assert low <= median(values) <= high
