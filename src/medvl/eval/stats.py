"""How sure a score is: 95% intervals for one run, paired tests for two runs over the same items.

- `wilson_interval(successes, n)`: the Wilson score interval of an accuracy (scipy's binomtest).
- `bootstrap_mean_interval(values)`: a percentile bootstrap interval of a mean (recall, F1, BLEU),
  10,000 resamples from a fixed seed, so the same values always give the same interval.
- `mcnemar_exact(a_only, b_only)`: the exact (binomial) two-sided McNemar p-value from the two
  discordant counts of a paired 2x2 table.
- `paired_bootstrap_difference(a, b)`: mean(a − b) and the bootstrap interval of the paired
  differences (item i of `a` and of `b` are the same question).

Every function returns None (or a None interval) where there is nothing to measure, never 0.
`METHODS` says in words which method gives which interval; reports print it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "METHODS",
    "bootstrap_mean_interval",
    "mcnemar_exact",
    "paired_bootstrap_difference",
    "wilson_interval",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
METHODS = {
    "confidence": CONFIDENCE,
    "accuracy": "Wilson score interval",
    "mean": f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
    "paired accuracy": "exact McNemar test (two-sided binomial on the discordant pairs); difference interval "
                       "by paired bootstrap",
    "paired mean": "paired bootstrap of the per-item differences",
}
_MAX_RESAMPLED_VALUES = 20_000_000  # resamples x items held in memory at once


Interval = tuple[float, float]


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval | None:
    """The Wilson score interval of `successes` out of `n`; None when n is 0."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_mean_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval | None:
    """A percentile bootstrap interval of the mean of `values`; None when empty, a point when all are equal."""
    if not values:
        return None
    if len(set(values)) == 1:
        return float(values[0]), float(values[0])
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    result = bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                       vectorized=True, batch=max(1, _MAX_RESAMPLED_VALUES // len(data)),
                       rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: items right only under A (`a_only`) vs only under B (`b_only`)."""
    if a_only + b_only == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(a_only, a_only + b_only, 0.5).pvalue)


def paired_bootstrap_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                                resamples: int = BOOTSTRAP_RESAMPLES,
                                seed: int = BOOTSTRAP_SEED) -> tuple[float, Interval] | None:
    """(mean(a) − mean(b), its paired bootstrap interval); a[i] and b[i] must score the same item."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    interval = bootstrap_mean_interval(differences, confidence, resamples, seed)
    if interval is None:
        return None
    return sum(differences) / len(differences), interval
