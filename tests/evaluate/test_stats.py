"""Intervals against hand-computed and published values; paired tests on constructed data with a
known answer; the wording never says better or worse when the interval includes 0."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peaufine.evaluate import stats
from peaufine.evaluate.stats import (
    Estimate,
    PairedComparison,
    binomial_cdf,
    binomial_sf,
    bootstrap_interval,
    clopper_pearson,
    describe_change,
    format_rate,
    mcnemar_exact,
    paired_bootstrap,
    rate_text,
    wilson_interval,
)

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_by_quadratic(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's bounds as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, a different route from the
    centre +- half-width form the module uses."""
    p_hat = successes / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(("successes", "n"), [(13, 15), (0, 15), (15, 15), (50, 100), (1, 29)])
def test_wilson_matches_the_roots_of_its_defining_quadratic(successes: int, n: int) -> None:
    estimate = wilson_interval(successes, n)
    low, high = wilson_by_quadratic(successes, n)
    assert estimate.value == pytest.approx(successes / n)
    assert estimate.low == pytest.approx(low, abs=1e-12)
    assert estimate.high == pytest.approx(high, abs=1e-12)
    assert (estimate.n, estimate.method) == (n, "wilson")


def test_wilson_by_hand_for_the_demo_and_the_edges() -> None:
    # 13/15: p = 0.8667, z^2 = 3.8415; centre = (0.8667 + 0.1280) / 1.2561 = 0.7919,
    # half = 1.96 / 1.2561 * sqrt(0.007704 + 0.004268) = 0.1707 -> [0.6212, 0.9626]
    demo = wilson_interval(13, 15)
    assert (round(demo.low, 4), round(demo.high, 4)) == (0.6212, 0.9626)
    assert format_rate(demo) == "86.7% [62.1, 96.3] (n=15)"
    # 0/15: the upper bound is z^2/(n + z^2) = 3.8415 / 18.8415 = 0.2039; the lower bound is exactly 0
    zero = wilson_interval(0, 15)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(Z95**2 / (15 + Z95**2), abs=1e-12)
    assert wilson_interval(15, 15).high == 1.0
    assert wilson_interval(15, 15).low == pytest.approx(15 / (15 + Z95**2), abs=1e-12)
    # 50/100 is symmetric about 0.5: 0.5 +- 1.96 * 0.05 / 1.0384 ... = [0.4038, 0.5962]
    half = wilson_interval(50, 100)
    assert (round(half.low, 4), round(half.high, 4)) == (0.4038, 0.5962)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857-872, table I, method 3 (score, no correction)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_newcombes_table(successes: int, n: int, low: float, high: float) -> None:
    estimate = wilson_interval(successes, n)
    assert (round(estimate.low, 4), round(estimate.high, 4)) == (low, high)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.3085),  # 1 - 0.025 ** (1 / 10)
        (5, 10, 0.1871, 0.8129),
        (10, 10, 0.6915, 1.0),
        # Newcombe (1998), table I, method 5 (exact)
        (81, 263, 0.2527, 0.3676),
        (15, 148, 0.0578, 0.1617),
        (1, 29, 0.0009, 0.1776),
    ],
)
def test_clopper_pearson_known_values(successes: int, n: int, low: float, high: float) -> None:
    got = clopper_pearson(successes, n)
    assert (round(got[0], 4), round(got[1], 4)) == (low, high)


def test_clopper_pearson_edges_in_closed_form() -> None:
    # with 0 of n the upper bound solves (1 - p)^n = 0.025; with n of n the lower bound solves p^n = 0.025
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-10)
    assert clopper_pearson(7, 7)[0] == pytest.approx(0.025 ** (1 / 7), abs=1e-10)


def test_binomial_tails_by_hand() -> None:
    # Binomial(4, 1/2): 1, 4, 6, 4, 1 over 16
    assert binomial_cdf(1, 4, 0.5) == pytest.approx(5 / 16)
    assert binomial_sf(3, 4, 0.5) == pytest.approx(5 / 16)
    assert binomial_cdf(4, 4, 0.3) == 1.0
    assert binomial_sf(0, 4, 0.3) == 1.0
    assert binomial_cdf(2, 5, 0.2) == pytest.approx(0.8**5 + 5 * 0.2 * 0.8**4 + 10 * 0.04 * 0.8**3)


def table(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Paired outcomes with the given counts of (a right, b right) cells."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_p_on_constructed_tables() -> None:
    # 6 discordant pairs, all won by b: p = 2 x (1/2)^6 = 2/64
    six = mcnemar_exact(*table(both=10, only_a=0, only_b=6, neither=4))
    assert six.p_value == pytest.approx(2 / 64)
    assert six.difference == pytest.approx(6 / 20)
    assert six.measurable and six.low > 0
    # 12 discordant, 10 won by b: p = 2 x (1 + 12 + 66) / 4096
    twelve = mcnemar_exact(*table(both=3, only_a=2, only_b=10, neither=5))
    assert twelve.p_value == pytest.approx(2 * 79 / 4096)
    assert twelve.difference == pytest.approx(8 / 20)
    # 5 discordant, all won by b: p = 2/32 = 0.0625, not measurable at 95%
    five = mcnemar_exact(*table(both=0, only_a=0, only_b=5, neither=0))
    assert five.p_value == pytest.approx(0.0625)
    assert not five.measurable
    # the direction is b minus a
    assert mcnemar_exact(*table(both=0, only_a=6, only_b=0, neither=0)).difference == -1.0


def test_mcnemar_interval_is_the_clopper_pearson_interval_scaled() -> None:
    comparison = mcnemar_exact(*table(both=20, only_a=3, only_b=7, neither=20))
    pi_low, pi_high = clopper_pearson(7, 10)
    assert comparison.low == pytest.approx(10 / 50 * (2 * pi_low - 1))
    assert comparison.high == pytest.approx(10 / 50 * (2 * pi_high - 1))


def test_mcnemar_without_discordant_pairs_is_zero_and_not_measurable() -> None:
    comparison = mcnemar_exact(*table(both=5, only_a=0, only_b=0, neither=5))
    assert (comparison.difference, comparison.low, comparison.high, comparison.p_value) == (0, 0, 0, 1)
    assert not comparison.measurable
    assert "no measurable difference" in describe_change(comparison, what="exact match")


@settings(max_examples=300, deadline=None)
@given(
    cells=st.tuples(*(st.integers(0, 40) for _ in range(4))).filter(lambda c: sum(c) > 0),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_mcnemar_measurable_agrees_with_its_p_value(
    cells: tuple[int, int, int, int], confidence: float
) -> None:
    comparison = mcnemar_exact(*table(*cells), confidence=confidence)
    assert comparison.p_value is not None
    assert comparison.measurable == (comparison.p_value < 1 - confidence)
    assert comparison.low <= comparison.difference <= comparison.high


def test_paired_bootstrap_a_constant_shift_is_measurable() -> None:
    a = [0.1 * (i % 7) for i in range(40)]
    b = [x + 0.05 for x in a]
    shift = paired_bootstrap(a, b)
    assert shift.difference == pytest.approx(0.05)
    assert shift.low == pytest.approx(0.05) and shift.high == pytest.approx(0.05)
    assert shift.measurable and shift.p_value is None and shift.method == "paired_bootstrap"
    # unpaired, the spread of a (0 to 0.6) would swamp the shift; paired, it cancels
    noisy = paired_bootstrap(a, [x + 0.05 + (0.01 if i % 2 else -0.01) for i, x in enumerate(a)])
    assert noisy.measurable


def test_paired_bootstrap_a_symmetric_zero_mean_difference_is_not_measurable() -> None:
    a = [0.5] * 60
    b = [0.5 + (0.3 if i % 2 else -0.3) for i in range(60)]
    comparison = paired_bootstrap(a, b)
    assert comparison.difference == pytest.approx(0.0)
    assert comparison.low < 0 < comparison.high
    assert not comparison.measurable


def test_bootstrap_interval_of_a_proportion_is_close_to_wilson_for_large_n() -> None:
    values = [1.0] * 150 + [0.0] * 150
    boot, wilson = bootstrap_interval(values), wilson_interval(150, 300)
    assert boot.value == pytest.approx(0.5)
    assert boot.low == pytest.approx(wilson.low, abs=0.01)
    assert boot.high == pytest.approx(wilson.high, abs=0.01)
    assert boot.method == "bootstrap" and boot.n == 300


def test_bootstrap_is_repeatable_and_seeded() -> None:
    values = [0.1 * (i % 5) for i in range(23)]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_the_verdict_flips_to_no_measurable_difference_when_n_shrinks() -> None:
    # the same rates, 40% -> 60% of the questions, on 15 questions and on 300
    small = mcnemar_exact(*table(both=5, only_a=1, only_b=4, neither=5))
    large = mcnemar_exact(*table(both=100, only_a=20, only_b=80, neither=100))
    assert small.difference == pytest.approx(large.difference) == pytest.approx(0.2)
    small_words = describe_change(small, what="exact match")
    assert small_words.startswith("exact match: no measurable difference (+20.0 points, 95% CI -")
    assert small_words.endswith(", McNemar p=0.375, n=15)")
    large_words = describe_change(large, what="exact match")
    assert large_words.startswith("exact match: better by 20.0 points (95% CI +")
    assert large_words.endswith(", McNemar p<0.001, n=300)")
    # the same for a mean through the paired bootstrap: differences of +0.5 on 3 of 5 examples, -0.5
    # on 2 (mean +0.1, standard error 0.13 on 15 examples, 0.03 on 300)
    steps = [1.0] * 3 + [-1.0] * 2
    small_f1 = paired_bootstrap([0.0] * 15, [x * 0.5 for x in steps * 3])
    large_f1 = paired_bootstrap([0.0] * 300, [x * 0.5 for x in steps * 60])
    assert not small_f1.measurable and large_f1.measurable
    assert "no measurable difference" in describe_change(small_f1, what="F1")
    assert describe_change(large_f1, what="F1").startswith("F1: better by 10.0 points")


def test_wording_by_hand() -> None:
    worse = PairedComparison(difference=-0.12, low=-0.199, high=-0.041, n=50, p_value=0.004, method="mcnemar")
    assert describe_change(worse, what="exact match") == (
        "exact match: worse by 12.0 points (95% CI -19.9 to -4.1, McNemar p=0.004, n=50)"
    )
    # a loss that fell is better when lower is better, and prints in its own unit
    loss = PairedComparison(
        difference=-0.25, low=-0.4, high=-0.1, n=40, p_value=None, method="paired_bootstrap"
    )
    assert describe_change(loss, what="task loss", unit="nats", higher_is_better=False) == (
        "task loss: better by 0.250 nats (95% CI -0.400 to -0.100, paired bootstrap, n=40)"
    )
    tie = PairedComparison(difference=0.033, low=-0.051, high=0.117, n=15, p_value=0.5, method="mcnemar")
    assert describe_change(tie, what="exact match") == (
        "exact match: no measurable difference (+3.3 points, 95% CI -5.1 to +11.7, McNemar p=0.500, n=15)"
    )


def test_as_dict_shapes() -> None:
    assert wilson_interval(3, 4).as_dict() == {
        "value": 0.75,
        "low": wilson_interval(3, 4).low,
        "high": wilson_interval(3, 4).high,
        "n": 4,
        "method": "wilson",
    }
    comparison = mcnemar_exact(*table(both=1, only_a=0, only_b=6, neither=1))
    assert set(comparison.as_dict()) == {"difference", "low", "high", "n", "p_value", "method", "measurable"}
    assert comparison.as_dict()["measurable"] is True
    assert isinstance(wilson_interval(1, 2), Estimate)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="same examples"):
        mcnemar_exact([True], [True, False])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0], confidence=1.0)


def test_rate_text_from_eval_json_shapes() -> None:
    assert rate_text(13 / 15, [0.6212, 0.9626], 15) == "86.7% [62.1, 96.3] (n=15)"
    assert rate_text(0.5, None, 4) == "50.0% (n=4)"  # a run written before intervals
    assert rate_text(0.5, [0.2, 0.8]) == "50.0% [20.0, 80.0]"
    assert rate_text(None) == "-" and rate_text(float("nan"), None, 3) == "-"


def test_mcnemar_p_is_exact_and_agrees_with_the_binomial_tails() -> None:
    # 3 discordant pairs, all won by b: p = 2 x 1/8 = 0.25 exactly
    assert mcnemar_exact(*table(both=5, only_a=0, only_b=3, neither=0)).p_value == 0.25
    for only_a, only_b in [(3, 9), (10, 4), (7, 7), (0, 30)]:
        d = only_a + only_b
        p = mcnemar_exact(*table(both=2, only_a=only_a, only_b=only_b, neither=2)).p_value
        tails = min(binomial_cdf(only_b, d, 0.5), binomial_sf(only_b, d, 0.5))
        assert p == pytest.approx(min(1.0, 2 * tails), rel=1e-12)


def test_resampling_in_chunks_draws_what_one_draw_would(monkeypatch) -> None:
    """Large sets are resampled a few megabytes at a time; the draws, hence the intervals, are those of
    one draw of all resamples at once."""
    values = [float(i % 7) for i in range(50)]
    whole = bootstrap_interval(values)
    monkeypatch.setattr(stats, "_INDICES_PER_CHUNK", 50 * 3)  # 3 resamples a chunk
    assert [len(rows) for rows in stats.resampled_rows(50, 10, 0)] == [3, 3, 3, 1]
    assert bootstrap_interval(values) == whole
