"""Alternating rounds: how every benchmark here turns timings into ratios that hold still.

On a shared 2-core machine, one run of "A then B" measures the load as much
as A and B: three comparisons of the same two models within twenty minutes
gave 0.54x, 0.58x and 1.16x. So a comparison runs its candidates in turn,
one call each per round, for at least `MIN_ROUNDS` rounds; each round gives
one ratio (load changes slowly next to one call, so it hits both sides of a
round alike), and the report is the median ratio with its interquartile
range, next to the load average the run saw.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

MIN_ROUNDS = 10  # issue 22: every ratio from at least 10 short alternating rounds


def alternate(
    candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """name -> seconds of each timed call, calling every candidate once per round.

    Args:
      candidates: name -> a function doing one unit of work (a step, a
        batch); its result is discarded, so it must block until done (call
        `.numpy()` on tensors).
      rounds: timed rounds.
      warmup: untimed first rounds (tracing, compilation, caches).
    """
    times = {name: [] for name in candidates}
    for index in range(warmup + rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float], digits: int = 3) -> dict:
    """{"median", "q1", "q3"} of `values`: the figure and its interquartile range."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {
        "median": round(float(median), digits),
        "q1": round(float(q1), digits),
        "q3": round(float(q3), digits),
    }


def ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratio numerator / denominator, as `spread` (pair the same rounds)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"rounds differ: {len(numerator)} vs {len(denominator)}")
    return {**spread([a / b for a, b in zip(numerator, denominator)]), "rounds": len(numerator)}


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (what else shared the cores)."""
    return [round(x, 2) for x in os.getloadavg()]
