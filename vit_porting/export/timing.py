"""Timing calls: one runtime's calls (the benchmarks), and candidate graphs of one artifact side by
side (the port chooses its serving graphs by timing them).

numpy and the standard library only: every worker process uses it, whatever framework it loads.
On a shared machine one call can take twice another for reasons outside the process, so
candidates are timed alternately (A B A B ...): a burst of load then falls on every candidate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np


def time_calls(fn: Callable[[np.ndarray], object], images: np.ndarray, warmup: int, repeats: int) -> dict:
    """``fn(images)`` ``warmup`` times untimed, then ``repeats`` times timed; median, min, samples."""
    for _ in range(warmup):
        fn(images)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        samples.append(time.perf_counter() - start)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}


def time_alternating(fns: Mapping[str, Callable[[np.ndarray], object]], images: np.ndarray, warmup: int = 1,
                     repeats: int = 3) -> dict[str, dict]:
    """Each of ``fns`` on ``images``: every one warmed up, then one timed call of each in turn,
    ``repeats`` rounds; {name: {median_s, min_s, samples_s}}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(images)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(images)
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": s} for name, s in samples.items()}


def choose_fastest(fns: Mapping[str, Callable[[np.ndarray], object]], batches: list[np.ndarray], warmup: int = 1,
                   repeats: int = 3, margin: float = 0.0, budget_s: float = 30.0) -> dict:
    """Time ``fns`` alternately at each batch of ``batches`` and pick one.

    The score of a candidate is the geometric mean over the batches of its median time divided by
    the first candidate's: ``fns`` are listed in order of preference (the most portable first), and a
    later one is chosen only when it is faster than the one chosen before it by more than ``margin``. A
    batch whose calls would take the first candidate past ``budget_s`` in all is not timed (the
    first batch always is), so a large model is timed at batch 1 only.
    """
    names = list(fns)
    timed: dict[str, dict] = {}
    per_call = None
    for images in batches:
        if per_call is not None and per_call * len(images) * (warmup + repeats) * len(fns) > budget_s:
            continue  # per_call: the first candidate's seconds per image at the first batch
        result = time_alternating(fns, images, warmup, repeats)
        timed[str(len(images))] = {name: result[name] for name in names}
        if per_call is None:
            per_call = result[names[0]]["median_s"] / len(images)
    ratios = {name: float(np.exp(np.mean([np.log(t[name]["median_s"] / t[names[0]]["median_s"])
                                          for t in timed.values()]))) for name in names}
    return {"chosen": pick(ratios, names, margin), "relative_time": ratios, "margin": margin, "warmup": warmup,
            "repeats": repeats, "median_ms": {batch: {name: round(t[name]["median_s"] * 1000, 2) for name in names}
                                              for batch, t in timed.items()}}


def pick(relative_time: Mapping[str, float], allowed: list[str], margin: float) -> str:
    """Of ``allowed`` (in order of preference), the first unless a later one is faster than the one
    chosen so far by more than ``margin`` (``relative_time``: lower is faster)."""
    chosen = allowed[0]
    for name in allowed[1:]:
        if relative_time[name] < relative_time[chosen] * (1 - margin):
            chosen = name
    return chosen
