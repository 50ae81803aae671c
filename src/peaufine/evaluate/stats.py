"""Numbers with their uncertainty: Wilson and bootstrap intervals for a rate or a mean, and paired
comparisons on the same examples (McNemar's exact test, a paired bootstrap) with their wording."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

# Bisection on a binomial tail to this width: far below the 4 decimals any report prints, and well
# inside the gap between a McNemar p-value and 1 - confidence for every table a test can build.
_BISECTION_TOLERANCE = 1e-13


@dataclass(frozen=True)
class Estimate:
    """A rate or a mean over n examples with its interval (values in the metric's own scale: rates in
    [0, 1], losses in nats); method is "wilson" or "bootstrap"."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "method": self.method}


@dataclass(frozen=True)
class PairedComparison:
    """b minus a on the same n examples, with the difference's interval; method is "mcnemar" (p is the
    exact two-sided test) or "paired_bootstrap" (p_value None: the interval is the verdict)."""

    difference: float
    low: float
    high: float
    n: int
    p_value: float | None
    method: str

    @property
    def measurable(self) -> bool:
        """The interval excludes 0: only then may a report say better or worse."""
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "p_value": self.p_value,
            "method": self.method,
            "measurable": self.measurable,
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """The share successes / n with Wilson's score interval, which (unlike the normal approximation)
    stays inside [0, 1] and does not collapse to a point at 0 or n successes (Wilson 1927)."""
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError("a rate needs at least one example (n >= 1)")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound on that side is exactly 0 or 1; floating point would leave 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(value=p, low=low, high=high, n=n, method="wilson")


# Indices drawn per chunk of resamples: 2,000 resamples of 100,000 rows at once would take 1.6 GB.
_INDICES_PER_CHUNK = 4_000_000


def resampled_rows(rows: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """`resamples` draws of `rows` row indices with replacement, as arrays of (some resamples, rows),
    a few megabytes each; the same seed gives the same draws, so two figures of the same rows are
    resampled together."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _INDICES_PER_CHUNK // max(rows, 1))
    for start in range(0, resamples, chunk):
        yield rng.integers(0, rows, size=(min(chunk, resamples - start), rows))


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` resamples of the rows of values (with replacement), in one fixed order."""
    return np.concatenate(
        [values[rows].mean(axis=1) for rows in resampled_rows(len(values), resamples, seed)]
    )


def _percentile_bounds(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """The mean of per-example values with a percentile bootstrap interval over examples (Efron &
    Tibshirani 1993, ch. 13): for F1, losses and rewards, which are not proportions."""
    _check_confidence(confidence)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError("a mean needs at least one value, in a flat sequence")
    mean = float(array.mean())
    low, high = _percentile_bounds(_bootstrap_means(array, resamples, seed), confidence)
    # The percentile interval of a constant sample is that constant; keep the mean inside it despite
    # the last-bit differences between a mean and a quantile of means.
    return Estimate(value=mean, low=min(low, mean), high=max(high, mean), n=len(array), method="bootstrap")


def _bootstrap_ratios(
    numerators: np.ndarray, denominators: np.ndarray, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """sum(numerators) and sum(denominators) of each resample of the rows (the same resamples as
    _bootstrap_means draws for the same seed and length)."""
    tops, bottoms = [], []
    for rows in resampled_rows(len(numerators), resamples, seed):
        tops.append(numerators[rows].sum(axis=1))
        bottoms.append(denominators[rows].sum(axis=1))
    return np.concatenate(tops), np.concatenate(bottoms)


def _ratio_arrays(
    numerators: Sequence[float], denominators: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    top = np.asarray(numerators, dtype=np.float64)
    bottom = np.asarray(denominators, dtype=np.float64)
    if top.ndim != 1 or top.shape != bottom.shape or len(top) == 0:
        raise ValueError("a ratio needs one numerator and one denominator per row, and at least one row")
    if bottom.sum() <= 0:
        raise ValueError("a ratio needs a positive total denominator")
    return top, bottom


def ratio_bootstrap(
    numerators: Sequence[float],
    denominators: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """sum(numerators) / sum(denominators) (a loss per target token over examples of different
    lengths) with a percentile bootstrap interval that resamples rows, numerator and denominator
    together. A resample whose denominators sum to 0 is left out."""
    _check_confidence(confidence)
    top, bottom = _ratio_arrays(numerators, denominators)
    value = float(top.sum() / bottom.sum())
    tops, bottoms = _bootstrap_ratios(top, bottom, resamples, seed)
    kept = bottoms > 0
    low, high = _percentile_bounds(tops[kept] / bottoms[kept], confidence)
    return Estimate(value=value, low=min(low, value), high=max(high, value), n=len(top), method="bootstrap")


def paired_ratio_bootstrap(
    a_numerators: Sequence[float],
    a_denominators: Sequence[float],
    b_numerators: Sequence[float],
    b_denominators: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """b's ratio minus a's (a loss per target token after minus before) on the same rows, with a
    paired percentile bootstrap: each resample takes the same rows for both."""
    _check_confidence(confidence)
    top_a, bottom_a = _ratio_arrays(a_numerators, a_denominators)
    top_b, bottom_b = _ratio_arrays(b_numerators, b_denominators)
    if len(top_a) != len(top_b):
        raise ValueError(f"paired outcomes need the same examples: {len(top_a)} against {len(top_b)}")
    value = float(top_b.sum() / bottom_b.sum() - top_a.sum() / bottom_a.sum())
    tops_a, bottoms_a = _bootstrap_ratios(top_a, bottom_a, resamples, seed)
    tops_b, bottoms_b = _bootstrap_ratios(top_b, bottom_b, resamples, seed)  # same seed: same rows
    kept = (bottoms_a > 0) & (bottoms_b > 0)
    low, high = _percentile_bounds(
        tops_b[kept] / bottoms_b[kept] - tops_a[kept] / bottoms_a[kept], confidence
    )
    return PairedComparison(
        difference=value,
        low=min(low, value),
        high=max(high, value),
        n=len(top_a),
        p_value=None,
        method="paired_bootstrap",
    )


def _binomial_pmfs(n: int, p: float) -> list[float]:
    """P(X = k) for k = 0..n, X ~ Binomial(n, p), through logs so that n in the thousands does not
    overflow the binomial coefficient."""
    if p <= 0.0:
        return [1.0] + [0.0] * n
    if p >= 1.0:
        return [0.0] * n + [1.0]
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    return [
        math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        for k in range(n + 1)
    ]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(_binomial_pmfs(n, p)[: k + 1]))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) (summed directly: 1 - cdf would lose the small tails)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.fsum(_binomial_pmfs(n, p)[k:]))


def _bisect(increasing: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] where increasing(p) crosses target."""
    low, high = 0.0, 1.0
    while high - low > _BISECTION_TOLERANCE:
        middle = (low + high) / 2
        if increasing(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson 1934) interval of a binomial proportion: the p whose upper and lower
    tails at the observed count are each (1 - confidence) / 2, found by bisection on the exact
    binomial tails (the beta quantiles, without scipy)."""
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError("a proportion needs at least one trial (n >= 1)")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    tail = (1.0 - confidence) / 2
    # P(X >= k | p) rises with p; P(X <= k | p) falls with p, so its negation rises.
    low = 0.0 if successes == 0 else _bisect(lambda p: binomial_sf(successes, n, p), tail)
    high = 1.0 if successes == n else _bisect(lambda p: -binomial_cdf(successes, n, p), -tail)
    return low, high


def _paired_lengths(a: Sequence[Any], b: Sequence[Any]) -> int:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same examples: {len(a)} against {len(b)}")
    if not a:
        raise ValueError("a paired comparison needs at least one example")
    return len(a)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> PairedComparison:
    """b's success rate minus a's on the same examples, with McNemar's exact test: under no difference
    the pairs where only b succeeds are Binomial(discordant, 1/2); p = min(1, 2 x the smaller tail).
    The difference's interval comes from the Clopper-Pearson interval of pi = b-only / discordant,
    difference = discordant / n x (2 pi - 1), so it excludes 0 exactly when p < 1 - confidence."""
    _check_confidence(confidence)
    n = _paired_lengths(a, b)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    discordant = only_a + only_b
    if discordant == 0:
        return PairedComparison(difference=0.0, low=0.0, high=0.0, n=n, p_value=1.0, method="mcnemar")
    # under the null every discordant pair is a fair coin: the tails are counts over 2^discordant, summed
    # in integers so that p is exact (0.25, not 0.25000000000000006)
    below = sum(math.comb(discordant, j) for j in range(only_b + 1))
    above = sum(math.comb(discordant, j) for j in range(only_b, discordant + 1))
    p_value = min(1.0, 2 * min(below, above) / 2**discordant)
    pi_low, pi_high = clopper_pearson(only_b, discordant, confidence)
    share = discordant / n
    return PairedComparison(
        difference=(only_b - only_a) / n,
        low=share * (2 * pi_low - 1),
        high=share * (2 * pi_high - 1),
        n=n,
        p_value=p_value,
        method="mcnemar",
    )


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> PairedComparison:
    """The mean of b - a over the same examples with a percentile bootstrap interval that resamples
    examples (pairs stay together, so what the examples share cancels out)."""
    _check_confidence(confidence)
    _paired_lengths(a, b)
    differences = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    estimate = bootstrap_interval(differences, confidence, resamples, seed)
    return PairedComparison(
        difference=estimate.value,
        low=estimate.low,
        high=estimate.high,
        n=estimate.n,
        p_value=None,
        method="paired_bootstrap",
    )


def _unit_scale(unit: str) -> tuple[float, int]:
    """Rates live in [0, 1] and print as points (x100, one decimal); other units print as they are."""
    return (100.0, 1) if unit == "points" else (1.0, 3)


def _format_p(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def describe_change(
    comparison: PairedComparison, *, what: str, unit: str = "points", higher_is_better: bool = True
) -> str:
    """One line a report can print: better or worse only when the interval excludes 0, else "no
    measurable difference", always with the interval and the number of examples it rests on."""
    scale, digits = _unit_scale(unit)
    low, high = comparison.low * scale, comparison.high * scale
    if comparison.method == "mcnemar" and comparison.p_value is not None:
        test = "McNemar " + _format_p(comparison.p_value)
    else:
        test = comparison.method.replace("_", " ")
    evidence = f"95% CI {low:+.{digits}f} to {high:+.{digits}f}, {test}, n={comparison.n}"
    difference = comparison.difference * scale
    suffix = f" {unit}" if unit else ""  # unit "": a number with no unit (a squared error)
    if not comparison.measurable:
        return f"{what}: no measurable difference ({difference:+.{digits}f}{suffix}, {evidence})"
    direction = "better" if (difference > 0) == higher_is_better else "worse"
    return f"{what}: {direction} by {abs(difference):.{digits}f}{suffix} ({evidence})"


def rate_text(value: float | None, interval: Sequence[float] | None = None, n: int | None = None) -> str:
    """A rate from eval.json's shape (value, its `..._ci` pair, n) as a report prints it:
    "86.7% [62.1, 96.3] (n=15)"; without an interval (a run from before intervals) "86.7% (n=15)"."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{100 * value:.1f}%"
    if interval is not None and len(interval) == 2:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text if n is None else f"{text} (n={n})"


def format_rate(estimate: Estimate) -> str:
    """A rate as a report prints it: "86.7% [62.1, 96.3] (n=15)"."""
    return rate_text(estimate.value, (estimate.low, estimate.high), estimate.n)


def format_mean(estimate: Estimate, digits: int = 3) -> str:
    """A mean (a loss, an F1 on its own scale) as a report prints it: "2.314 [2.201, 2.430] (n=40)"."""
    return (
        f"{estimate.value:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}] "
        f"(n={estimate.n})"
    )
