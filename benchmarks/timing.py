"""Timing for the benchmark scripts: median of synchronised repeats, rounds of several callables whose
order alternates, per-round ratios with their spread, and the machine's load average.

No tensors are built here (the scripts document their own shapes).  Re-exported by ``common``.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["RatioStats", "Timing", "load_average", "median_ci", "paired_ratios", "synchronize", "time_callable",
           "time_interleaved"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds per call of ``repeats`` timed calls (after warm-up)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)

    def quantile(self, q: float) -> float:
        s = sorted(self.times)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.minimum, "p25_s": self.quantile(0.25),
                "p75_s": self.quantile(0.75), "repeats": len(self.times)}


def time_callable(fn: Callable[[], Any], *, device: torch.device, warmup: int = 2, repeats: int = 5) -> Timing:
    """Median-of-repeats timing: ``warmup`` untimed calls, then ``repeats`` calls each bracketed by a
    device synchronisation (``torch.cuda.synchronize`` on CUDA) and ``time.perf_counter``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, device: torch.device, warmup: int = 2,
                     repeats: int = 5, max_repeats: int | None = None, ratio: tuple[str, str] | None = None,
                     rel_ci: float = 0.02) -> dict[str, Timing]:
    """Like :func:`time_callable` for several callables, in rounds: each round times every callable once,
    in the given order on even rounds and in reverse order on odd ones (A B, B A, A B, ...), so a load
    change on a shared machine hits all of them alike and neither always runs first (after the other's
    caches) or last.  ``warmup`` untimed rounds, in the same alternation, come first.

    Adaptive length: with ``max_repeats > repeats`` and ``ratio=(a, b)``, rounds continue after
    ``repeats`` until the 95 % confidence interval of the median of the per-round ratios ``a / b``
    (:func:`median_ci`) is within ``rel_ci`` (relative) of that median on both sides, or ``max_repeats``
    rounds have run.  Returns ``{name: Timing}`` whose ``times`` are aligned by round.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    if max_repeats is not None and max_repeats < repeats:
        raise ValueError(f"max_repeats must be >= repeats ({repeats}), got {max_repeats!r}")
    if ratio is not None and not set(ratio) <= set(fns):
        raise ValueError(f"ratio {ratio!r} names a callable not in {sorted(fns)}")
    names = list(fns)
    for r in range(warmup):
        for name in names if r % 2 == 0 else names[::-1]:
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    limit = max_repeats if (max_repeats is not None and ratio is not None) else repeats
    for r in range(limit):
        if r >= repeats:
            lo, hi = median_ci([a / b for a, b in zip(times[ratio[0]], times[ratio[1]])])
            mid = statistics.median(a / b for a, b in zip(times[ratio[0]], times[ratio[1]]))
            if hi <= mid * (1 + rel_ci) and lo >= mid * (1 - rel_ci):
                break
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(t) for name, t in times.items()}


def median_ci(values: Sequence[float], conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics of the binomial(n, 1/2)
    normal approximation); the whole range when n is too small for ``conf``."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        raise ValueError("median_ci of no values")
    z = statistics.NormalDist().inv_cdf(0.5 + conf / 2)
    half = z * math.sqrt(n) / 2
    lo, hi = math.floor(n / 2 - half), math.ceil(1 + n / 2 + half)  # 1-based ranks
    return s[max(0, lo - 1)], s[min(n - 1, hi - 1)]


@dataclass
class RatioStats:
    """Per-round ratios ``a / b`` of two aligned timings: median with its spread."""

    ratios: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def quantile(self, q: float) -> float:
        s = sorted(self.ratios)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    def as_dict(self) -> dict[str, Any]:
        lo, hi = median_ci(self.ratios)
        return {"median": self.median, "p25": self.quantile(0.25), "p75": self.quantile(0.75),
                "min": min(self.ratios), "max": max(self.ratios), "ci95_low": lo, "ci95_high": hi,
                "rounds": len(self.ratios)}


def paired_ratios(a: Timing, b: Timing) -> RatioStats:
    """Round-by-round ratios ``a / b`` of two timings from one :func:`time_interleaved` call."""
    if len(a.times) != len(b.times):
        raise ValueError(f"timings are not aligned by round: {len(a.times)} vs {len(b.times)} calls")
    return RatioStats([x / y for x, y in zip(a.times, b.times)])


def load_average() -> list[float] | None:
    """The machine's 1 / 5 / 15-minute load average (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
