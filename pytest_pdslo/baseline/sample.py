"""Compact per-request samples and the rounding of stored numbers.

A stored sample is a *quantile sketch*: the sorted values themselves when there
are at most ``SKETCH_SIZE`` of them, else the values at ``SKETCH_SIZE`` evenly
spaced quantile levels (0 … 1, so the minimum and maximum are kept). Together
with ``n`` (how many values it stands for) it is enough to estimate any
percentile, the mean and their standard errors, which is all the comparison
needs, at a few kilobytes per item.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

#: Values kept per metric and item.
SKETCH_SIZE = 200
#: Significant digits of every stored float (keeps refresh diffs small).
DIGITS = 4
#: Magnitudes below this are floating-point noise (e.g. the std of identical values): stored as 0.
TINY = 1e-9


def sketch(values: np.ndarray, size: int = SKETCH_SIZE) -> np.ndarray:
    """Sorted values, or their quantiles at ``size`` evenly spaced levels when there are more."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if v.size <= size:
        return v
    # np.percentile's linear interpolation, on the sorted values
    return np.interp(np.linspace(0.0, v.size - 1.0, size), np.arange(v.size, dtype=np.float64), v)


def design_effect(values: np.ndarray) -> float:
    """How many requests' worth of information one request of a run carries, inverted.

    Requests of one run are not independent: neighbours in send order share
    batches, queues and prefill collisions, so a within-run standard error
    computed as if they were independent is too small, and a second run with
    other prompts or arrivals differs by more than it promises. The design
    effect ``1 + 2·Σρ_k`` (ρ_k: lag-k autocorrelation of the values' ranks in
    send order, summed with Geyer's initial positive sequence, which stops at
    the first non-positive pair) is the factor by which the variance of a
    mean or quantile grows; ``n / deff`` is the effective sample size. Ranks
    keep one outlier from dominating. At least 1, at most ``n``.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 4:
        return 1.0
    # mid-ranks: tied values (a lock-stepped batch) share one rank
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if uniq.size == 1:
        return 1.0
    starts = np.cumsum(counts) - counts
    r = (starts + (counts - 1) / 2.0)[inverse]
    r -= r.mean()
    var = float(np.dot(r, r))
    if var <= 0.0:
        return 1.0
    # autocovariances of all lags at once (FFT), then pairs (1,2), (3,4), ... while positive
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(r, size)
    acov = np.fft.irfft(f * np.conj(f), size)[: n // 2 + 1] / var
    total = 0.0
    k = 1
    while k + 1 < acov.size:
        pair = acov[k] + acov[k + 1]
        if pair <= 0.0:
            break
        total += pair
        k += 2
    return float(min(max(1.0 + 2.0 * total, 1.0), n))


def quantile(sk: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of a sketch; matches ``np.percentile`` of a full sample."""
    n = sk.size
    if n == 0:
        return float("nan")
    if n == 1:
        return float(sk[0])
    pos = min(max(q, 0.0), 1.0) * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return float(sk[lo] + (sk[hi] - sk[lo]) * (pos - lo))


def round_sig(x: float, digits: int = DIGITS) -> float | None:
    """``x`` to ``digits`` significant digits; NaN/inf become None (not JSON)."""
    if not math.isfinite(x):
        return None
    if abs(x) < TINY:
        return 0.0
    return float(f"{x:.{digits}g}")


def round_list(values: np.ndarray, digits: int = DIGITS) -> list[float]:
    """Finite values to ``digits`` significant digits, as a JSON-ready list (vectorised).

    Scaling by an exact power of ten keeps each result the double nearest to its
    short decimal, so it prints as, e.g., ``53.85``.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(x)
    big = np.abs(x) >= TINY
    if big.any():
        v = x[big]
        shift = (digits - 1) - np.floor(np.log10(np.abs(v)))
        r = np.empty_like(v)
        up = shift >= 0
        f = 10.0 ** shift[up]
        r[up] = np.round(v[up] * f) / f
        p = 10.0 ** (-shift[~up])
        r[~up] = np.round(v[~up] / p) * p
        out[big] = r
    return out.tolist()


def round_value(v: Any) -> Any:
    """Round floats (recursively through dicts and lists); leave ints, bools and strings."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return round_sig(v)
    if isinstance(v, (np.floating, np.integer)):
        return round_value(v.item())
    if isinstance(v, Mapping):
        return {str(k): round_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [round_value(x) for x in v]
    return v
