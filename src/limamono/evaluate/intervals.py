"""Confidence intervals for the evaluation: Wilson for rates, a seeded bootstrap for Spearman.

A rate from a few dozen replies is a wide range, not a number: 1 impersonation in 18 replies
is 5.6 %, but anything from 1 % to 26 % fits it at 95 %. The report therefore judges each
target from the interval (``verdict``): *meets* when the whole interval is inside the target,
*misses* when the whole interval is outside, *cannot tell* otherwise.

The Wilson score interval (Wilson 1927; recommended over the normal "Wald" interval by
Brown, Cai & DasGupta 2001, Statistical Science 16(2)) stays inside [0, 1] and behaves at
0 and n successes, where the Wald interval collapses to a point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Literal

#: The two-sided 95 % normal quantile, Φ⁻¹(0.975).
Z95 = 1.959963984540054
#: Bootstrap resamples for the Spearman interval.
RESAMPLES = 2000

Verdict = Literal["meets", "misses", "cannot tell"]


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``.

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``0..n``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = wilson_half_width(p, n, z)
    # 0 and n successes give exactly 0 and 1 on paper; in floating point they come out as
    # 7e-18 or 0.9999999999999999, which put the point outside its own interval.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def wilson_half_width(rate: float, n: int, z: float = Z95) -> float:
    """Half the width of the Wilson interval at an observed ``rate`` over ``n`` trials."""
    return z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))


def trials_for_half_width(rate: float, half_width: float, z: float = Z95) -> int:
    """The fewest trials whose Wilson interval at ``rate`` is narrower than ±``half_width``.

    >>> trials_for_half_width(0.05, 0.05)  # the impersonation target, ±5 points
    83
    """
    if not 0.0 < half_width < 0.5 or not 0.0 <= rate <= 1.0:
        raise ValueError(f"need 0 <= rate <= 1 and 0 < half_width < 0.5, got {rate}, "
                         f"{half_width}")
    n = 1
    while wilson_half_width(rate, n, z) >= half_width:
        n += 1
    return n


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linear between order statistics (numpy's
    default "linear" method)."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def bootstrap_interval(statistic: Callable[[list[int]], float | None], n: int, seed: int,
                       resamples: int = RESAMPLES,
                       level: float = 0.95) -> tuple[float, float] | None:
    """A percentile bootstrap interval of ``statistic`` over ``n`` paired observations.

    Args:
        statistic: takes the indices of one resample (drawn with replacement) and returns
            the statistic, or None where it is undefined (e.g. all values tied).
        n: number of observations.
        seed: seeds the resampling, so a report is repeatable.
        resamples: number of resamples.
        level: coverage of the interval.

    Returns:
        (low, high), or None when fewer than half the resamples give a value.
    """
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        value = statistic([rng.randrange(n) for _ in range(n)])
        if value is not None:
            values.append(value)
    if len(values) < resamples / 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    return quantile(values, tail), quantile(values, 1 - tail)


def verdict(interval: tuple[float, float] | None,
            target: tuple[float | None, float | None]) -> Verdict:
    """Judge a target ``(low, high)`` (either may be None) from an interval.

    ``meets`` when the interval lies wholly inside the target, ``misses`` when it lies
    wholly outside, ``cannot tell`` when it straddles a bound or there is no interval.
    """
    if interval is None:
        return "cannot tell"
    lo, hi = interval
    low, high = target
    if (low is not None and hi < low) or (high is not None and lo > high):
        return "misses"
    if (low is None or lo >= low) and (high is None or hi <= high):
        return "meets"
    return "cannot tell"
