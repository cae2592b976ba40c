"""Baseline comparison: the decision rule, as pure functions (data in, verdicts out).

For each gated metric the comparison estimates a statistic (e.g. p90 TTFT) on
both sides with a standard error of its logarithm, and judges the relative
change ``now / baseline - 1``:

- **regression**: worse than the tolerance *and* statistically significant: the
  confidence interval of the change excludes zero on the worse side, or, for
  per-request latencies, a Mann-Whitney U test (normal approximation, ties
  corrected) finds the requests as a whole slower (asv's test) by more than the
  tolerance (their Hodges-Lehmann shift). Each test is
  one-sided at half the level. For a latency percentile (p90 TTFT, median
  TPOT) the interval counts only together with a test that more of "now"'s
  requests than the percentile's level allows lie above the baseline's
  percentile (``exceedance_shift``): at a gap between two modes the
  percentile jumps while the share of slow requests barely moves, and that
  is noise;
- **improvement**: the same, on the better side;
- **inconclusive**: too few samples, or no change beyond tolerance could be
  shown while the interval is wider than the tolerance (the run cannot resolve
  a change of that size);
- **unchanged**: everything else.

Requests of one run are not independent (neighbours share batches and
queues): every per-request standard error, and the rank test's variance, is
scaled by the run's design effect, estimated from the autocorrelation of the
values in send order and stored with the sample (``sample.design_effect``).
Without it, a second run with other prompts or arrival times looks like a
significant change far more often than the confidence level promises.

Every standard error also carries ``RUN_NOISE`` (1% per side): runs of the same
software drift by about that much overall, which no within-run statistic shows.

Standard errors, without resampling (a 1,000-item session compares in well
under a second):

- a percentile (median, p90, ...) of n values: the Harrell-Davis estimate (a
  Beta-weighted average of the order statistics around the quantile, steadier
  than one order statistic in a sparse tail) with the larger of its
  Maritz-Jarrett standard error and that of the distribution-free rank
  interval, the quantiles at ``q ± z·sqrt(q(1-q)/n)`` (Woodruff); the figures
  compared may differ slightly from the summary's ``np.percentile`` values;
- a mean: ``std / (mean·sqrt(n))``;
- whole-run rates (tokens/s, requests/s): one value per run, so the error is
  borrowed from the requests that produced it: the mean end-to-end latency
  (throughput of a closed loop is concurrency / mean latency, Little's law),
  plus the arrival process of an open loop (``cv²/n`` of the inter-arrival
  gaps: a Poisson run of n requests spans its duration with relative
  variance 1/n), plus, for goodput and SLO attainment, the binomial error of
  the share of good requests.

"Worse" is up for latencies and down for throughputs, goodput, interactivity
and SLO attainment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import slo as slo_mod
from .sample import sketch

DEFAULT_TOLERANCE = 0.05
DEFAULT_CONFIDENCE = 0.99
#: Fewer values than this on either side: inconclusive.
MIN_SAMPLES = 10
#: Relative changes up to this are storage rounding (4 significant digits): unchanged.
RESOLUTION = 0.001
#: Run-to-run drift one run cannot see in itself (clocks, thermals, co-tenants), as a
#: relative standard deviation added to every estimate's error, per side.
RUN_NOISE = 0.01

HIGHER_IS_WORSE = frozenset(slo_mod.LATENCY_METRICS)
LOWER_IS_WORSE = frozenset(slo_mod.FLOOR_METRICS) | {"total_token_throughput_per_gpu"}
#: Whole-run rates; their error is borrowed from end-to-end latency and arrivals.
RATE_METRICS = frozenset(
    {
        "output_throughput",
        "total_token_throughput",
        "input_throughput",
        "request_throughput",
        "output_throughput_per_gpu",
        "total_token_throughput_per_gpu",
    }
)
#: The per-request sample a whole-run metric borrows its error from.
SAMPLE_FOR = {**{m: "e2el_ms" for m in RATE_METRICS}, "request_goodput": "e2el_ms", "interactivity": "tpot_ms"}

VERDICTS = ("regression", "improvement", "unchanged", "inconclusive")


@dataclass(frozen=True)
class Sample:
    """A compact per-request sample: sorted sketch values standing for ``n`` values.

    ``deff``: the run's design effect (``sample.design_effect``): its ``n``
    values are worth ``n / deff`` independent ones.
    """

    values: np.ndarray
    n: int
    deff: float = 1.0

    @cached_property
    def moments(self) -> tuple[float, float]:
        """(mean, standard deviation) of the sketch."""
        k = self.values.size
        if k == 0:
            return math.nan, math.nan
        mean = float(self.values.sum()) / k
        var = float(np.dot(self.values, self.values)) / k - mean * mean
        return mean, math.sqrt(max(var, 0.0))

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray, n: int | None = None, deff: float = 1.0) -> "Sample":
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        return cls(sketch(arr), int(arr.size if n is None else n), max(float(deff), 1.0))

    @property
    def n_eff(self) -> float:
        """Independent values' worth."""
        return self.n / self.deff


@dataclass(frozen=True)
class Observation:
    """One side of a comparison: an item's summary metrics and per-request samples."""

    metrics: Mapping[str, Any]
    samples: Mapping[str, Sample]
    requests: int  # measured requests (completed + failed)
    arrival_cv2: float = 0.0  # squared CV of inter-arrival gaps: 0 closed loop, 1 Poisson

    @classmethod
    def from_values(
        cls, values: Mapping[str, Iterable[float]], metrics: Mapping[str, Any] | None = None, arrival_cv2: float = 0.0
    ) -> "Observation":
        """Hand-built observation (tests, scripts): per-request values per latency metric."""
        samples = {k: Sample.of(np.asarray(list(v), dtype=np.float64)) for k, v in values.items()}
        requests = max((s.n for s in samples.values()), default=0)
        return cls(dict(metrics or {}), samples, requests, arrival_cv2)


@dataclass(frozen=True)
class Gate:
    """One gated figure: ``metric``'s ``statistic`` may worsen by ``tolerance`` (a fraction)."""

    metric: str
    statistic: str  # a latency statistic ("p90", "median", "mean") or "value" for whole-run figures
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def worse(self) -> str:
        return "higher" if self.metric in HIGHER_IS_WORSE else "lower"


@dataclass(frozen=True)
class Estimate:
    """A statistic, the standard error of its log, and how many values it rests on."""

    value: float
    se: float
    n: int
    problem: str = ""


@dataclass(frozen=True)
class MetricVerdict:
    """The comparison of one gated figure."""

    metric: str
    statistic: str
    baseline: float | None
    now: float | None
    change: float | None  # now / baseline - 1
    low: float | None  # confidence interval of the change
    high: float | None
    tolerance: float
    worse: str  # "higher" or "lower"
    verdict: str  # one of VERDICTS
    reason: str = ""
    n_baseline: int = 0
    n_now: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    p_value: float | None = None  # two-sided Mann-Whitney U p of the per-request values (latencies)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@lru_cache(maxsize=32)
def z_for(confidence: float) -> float:
    """Two-sided normal quantile for a confidence level (0.99 → 2.576)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _quantile_level(statistic: str) -> float | None:
    if statistic == "median":
        return 0.5
    parsed = slo_mod.parse_statistic(statistic)
    return parsed / 100.0 if isinstance(parsed, float) else None


def harrell_davis(s: Sample, q: float, grid: int = 201) -> tuple[float, float]:
    """Harrell-Davis estimate of the q-quantile and its Maritz-Jarrett standard error.

    The estimate is the mean of the sample's quantile function under a
    Beta(q(n+1), (1-q)(n+1)) weight, i.e. a weighted average of the order
    statistics around rank q·n rather than one or two of them: far steadier
    in a sparse tail (p90 of 80 requests) at the same scale behaviour (a 10%
    slowdown of every request moves it by exactly 10%). The weighted spread
    of the quantile function under the same weight is its standard error.
    Works on a sketch (the quantile function at evenly spaced levels) with the
    ``n`` it stands for.
    """
    n = s.n
    a, b = q * (n + 1), (1.0 - q) * (n + 1)
    width = 8.0 * math.sqrt(q * (1.0 - q) / (n + 2))
    u = np.linspace(max(0.0, q - width), min(1.0, q + width), grid)
    inner = (u > 0.0) & (u < 1.0)
    logw = np.full(grid, -np.inf)
    ui = u[inner]
    logw[inner] = (a - 1.0) * np.log(ui) + (b - 1.0) * np.log1p(-ui)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    k = s.values.size
    qf = np.interp(u, np.linspace(0.0, 1.0, k), s.values) if k > 1 else np.full(grid, float(s.values[0]))
    est = float(np.dot(w, qf))
    se = math.sqrt(max(float(np.dot(w, (qf - est) ** 2)), 0.0))
    return est, se


def rank_interval_se(s: Sample, q: float, z: float) -> float:
    """Standard error of the log q-quantile from its distribution-free rank interval.

    The interval runs between the quantiles at ``q ± z·sqrt(q(1-q)/n_eff)`` (the
    order statistics of a binomial confidence interval, Woodruff's interval;
    the effective count, since correlated requests bound a quantile less).
    NaN when it runs off the sample's end: too few values to bound that
    quantile (p90 needs about 60 at 99%, p99 about 660).
    """
    delta = z * math.sqrt(q * (1.0 - q) / s.n_eff)
    if q - delta < 0.0 or q + delta > 1.0:
        return math.nan
    levels = np.linspace(0.0, 1.0, s.values.size)
    x, lo, hi = np.interp([q, q - delta, q + delta], levels, s.values)
    if not (lo > 0 and x > 0):
        return math.nan
    return (math.log(hi / x) + math.log(x / lo)) / (2.0 * z)


def min_count(q: float, z: float) -> int:
    """Fewest values whose rank interval for the q-quantile stays inside the sample."""
    return math.ceil(z * z * max(q / (1.0 - q), (1.0 - q) / q))


def _quantile_estimate(s: Sample, q: float, z: float) -> tuple[float, float, str]:
    """(Harrell-Davis quantile, standard error of its log, problem).

    The error is the larger of Maritz-Jarrett's and the rank interval's: the
    former alone is too small in sparse tails of small samples.
    """
    est, se = harrell_davis(s, q)
    if not est > 0:
        return est, math.nan, "non-positive values"
    rank = rank_interval_se(s, q, z)
    if math.isnan(rank):
        worth = f"{s.n} values" + (f" worth {s.n_eff:.0f} independent ones" if s.deff > 1.0 else "")
        return est, math.nan, f"no interval for this percentile from {worth} (needs >= {min_count(q, z)})"
    return est, max(se / est * math.sqrt(s.deff), rank), ""


def _mean_se(s: Sample) -> tuple[float, float, str]:
    mean, std = s.moments
    if not mean > 0:
        return mean, math.nan, "non-positive values"
    return mean, std / (mean * math.sqrt(s.n_eff)), ""


def rank_shift(base: Sample, now: Sample) -> float:
    """z of the Mann-Whitney U test that ``now``'s values are higher than ``base``'s.

    U is computed on the sketches (they are quantile-representative, so
    U / (k1·k2) estimates P(now > base) + P(tie)/2), its variance from the
    numbers of requests they stand for, each side's term scaled by its design
    effect (correlated requests vary together), with the tie correction.
    """
    a, b = base.values, now.values  # sorted
    k1, k2 = a.size, b.size
    if k1 == 0 or k2 == 0 or base.n == 0 or now.n == 0:
        return 0.0
    # U of "now": for each of its values, base values below it, plus half of those equal
    below = np.searchsorted(a, b, "left")
    upto = np.searchsorted(a, b, "right")
    auc = float((below + upto).sum()) / (2.0 * k1 * k2)
    merged = np.sort(np.concatenate([a, b]))
    edges = np.flatnonzero(np.diff(merged)) + 1
    counts = np.diff(np.concatenate([[0], edges, [merged.size]])).astype(np.float64)
    total = float(merged.size)
    tie = 1.0 - float((counts**3 - counts).sum()) / (total**3 - total) if total > 1 else 0.0
    var = (now.deff * base.n + base.deff * now.n + 1) / (12.0 * base.n * now.n) * tie
    return (auc - 0.5) / math.sqrt(var) if var > 0 else 0.0


def _share_above(s: Sample, t: float) -> float:
    """Share of the sample above ``t`` (ties count half), from its sketch."""
    v = s.values
    below = int(np.searchsorted(v, t, "left"))
    upto = int(np.searchsorted(v, t, "right"))
    return 1.0 - (below + upto) / (2.0 * v.size)


def exceedance_shift(base: Sample, now: Sample, base_q: float, q: float) -> float:
    """z of the test that more than ``1 - q`` of ``now`` lies above the baseline's q-quantile.

    The quantile's own interval assumes a smooth density around it; at a gap
    between two modes (p90 where ~10% of requests meet another prefill) it can
    jump by 30% while the share of slow requests moved by a point, which is
    noise. Asking the question the gate means instead ("do more requests than
    before take longer than the baseline's p90?") needs no such assumption:
    the share of "now" above the baseline's quantile against ``1 - q``
    (compared on the arcsine-root scale), with the binomial variance of both
    sides (the baseline's quantile is itself a level estimated from its ``n``
    values), each scaled by its design effect.
    Positive when "now" is slower.
    """
    if not base_q > 0 or now.values.size == 0 or base.n == 0 or now.n == 0:
        return 0.0
    # on the arcsine-root scale a share's variance is 1/(4n) whatever the share: the plain
    # difference of a small share (p90: 10%) is right-skewed and would call noise a change
    share = _share_above(now, base_q)
    var = (base.deff / base.n + now.deff / now.n) / 4.0
    return (math.asin(math.sqrt(share)) - math.asin(math.sqrt(1.0 - q))) / math.sqrt(var)


def estimate(obs: Observation, metric: str, statistic: str, z: float) -> Estimate:
    """The gated statistic of one side, with the standard error of its log."""
    if metric in slo_mod.LATENCY_METRICS:
        s = obs.samples.get(metric)
        if s is None or s.n == 0 or s.values.size == 0:
            return Estimate(math.nan, math.nan, 0, f"no {metric} sample")
        if statistic == "mean":
            x, se, problem = _mean_se(s)
            stored = obs.metrics.get(f"mean_{metric}")
            return Estimate(float(stored) if _finite(stored) else x, se, s.n, problem)
        q = _quantile_level(statistic)
        if q is None:
            return Estimate(math.nan, math.nan, s.n, f"statistic {statistic!r} is not gated")
        x, se, problem = _quantile_estimate(s, q, z)
        return Estimate(x, se, s.n, problem)

    value = obs.metrics.get(metric)
    value = float(value) if _finite(value) else math.nan
    n = obs.requests
    if metric == "slo_attainment":
        se = math.sqrt((1.0 - value) / (value * n)) if n > 0 and value > 0 else math.nan
        return Estimate(value, se, n, "" if n > 0 else "no requests")
    source = SAMPLE_FOR.get(metric)
    s = obs.samples.get(source) if source else None
    if s is None or s.n == 0 or s.values.size == 0:
        return Estimate(value, math.nan, 0, f"no {source or 'per-request'} sample for {metric}")
    if metric == "interactivity":
        _, se, problem = _quantile_estimate(s, 0.5, z)
        return Estimate(value, se, s.n, problem)
    _, se, problem = _mean_se(s)
    var = se * se + (obs.arrival_cv2 / n if n > 0 else 0.0)
    if metric == "request_goodput":
        p = obs.metrics.get("slo_attainment")
        if _finite(p) and p > 0 and n > 0:
            var += (1.0 - float(p)) / (float(p) * n)
    return Estimate(value, math.sqrt(var), s.n, problem)


def _combined_se(base: Estimate, now: Estimate) -> float:
    """Standard error of log(now / base): both sides' errors plus the run-to-run drift."""
    return math.sqrt(base.se**2 + now.se**2 + 2.0 * RUN_NOISE**2)


def decide(
    base: Estimate,
    now: Estimate,
    gate: Gate,
    confidence: float = DEFAULT_CONFIDENCE,
    rank_z: float | None = None,
    tail_z: float | None = None,
    rank_size: float | None = None,
) -> MetricVerdict:
    """The verdict for one gated figure from the two sides' estimates.

    ``rank_z``: the Mann-Whitney z of the per-request values behind the figure,
    positive when "now" is *higher* (slower), or None for whole-run figures.
    ``rank_size``: the Hodges-Lehmann shift of the same values (a fraction,
    positive when slower); when given, the rank test is evidence only if that
    shift, too, is beyond the tolerance.
    ``tail_z``: for a latency percentile, the ``exceedance_shift`` z; where
    given, the percentile's interval is evidence only together with it (the
    rank test is evidence on its own, as for every latency).
    """
    z = z_for(confidence)
    p_value = 2.0 * (1.0 - NormalDist().cdf(abs(rank_z))) if rank_z is not None else None

    def verdict(v: str, reason: str = "", change: float | None = None, low: float | None = None, high: float | None = None) -> MetricVerdict:
        return MetricVerdict(
            metric=gate.metric,
            statistic=gate.statistic,
            baseline=base.value if math.isfinite(base.value) else None,
            now=now.value if math.isfinite(now.value) else None,
            change=change,
            low=low,
            high=high,
            tolerance=gate.tolerance,
            worse=gate.worse,
            verdict=v,
            reason=reason,
            n_baseline=base.n,
            n_now=now.n,
            confidence=confidence,
            p_value=p_value,
        )

    b, c = base.value, now.value
    if not (math.isfinite(b) and math.isfinite(c)):
        return verdict("inconclusive", "no value in the " + ("baseline" if not math.isfinite(b) else "run"))
    if b <= 0 or c <= 0:
        if b == c:
            return verdict("unchanged", "", 0.0)
        return verdict("inconclusive", "a zero value has no relative change")
    d = math.log(c / b)
    change = c / b - 1.0
    if abs(change) <= RESOLUTION:
        low = high = None
        if math.isfinite(base.se) and math.isfinite(now.se):
            se = _combined_se(base, now)
            low, high = math.expm1(d - z * se), math.expm1(d + z * se)
        return verdict("unchanged", "identical within storage rounding", change, low, high)
    n = min(base.n, now.n)
    if n < MIN_SAMPLES:
        return verdict("inconclusive", f"{n} samples (needs >= {MIN_SAMPLES})", change)
    problem = base.problem or now.problem
    if problem and not problem.startswith("no interval"):
        return verdict("inconclusive", problem, change)
    if problem or not (math.isfinite(base.se) and math.isfinite(now.se)):
        # no interval for the statistic itself: only the rank test can call a change
        lo, hi, low, high = -math.inf, math.inf, None, None
    else:
        se = _combined_se(base, now)
        lo, hi = d - z * se, d + z * se
        low, high = math.expm1(lo), math.expm1(hi)
    tol = gate.tolerance
    # positive: the per-request values moved the worse way (latency up; TPOT up for interactivity)
    plain = rank_z if rank_z is not None else 0.0
    # the rank test says "the requests moved", not "by more than the tolerance": at a few
    # hundred requests a 2% move of all of them is significant while a noisy p90 reads +8%
    slower = plain if rank_size is None or rank_size > tol else 0.0
    faster = plain if rank_size is None or rank_size < -tol else 0.0
    if tail_z is not None:  # a latency percentile (worse is higher): its interval counts only
        # where the share of slow requests agrees; the rank test counts on its own
        worse = change > tol and ((lo > 0 and tail_z > z) or slower > z)
        better = change < -tol and ((hi < 0 and tail_z < -z) or faster < -z)
    elif gate.worse == "higher":
        worse = change > tol and (lo > 0 or slower > z)
        better = change < -tol and (hi < 0 or faster < -z)
    else:
        worse = change < -tol and (hi < 0 or slower > z)
        better = change > tol and (lo > 0 or faster < -z)
    interval_says = (lo > 0 or hi < 0) and (tail_z is None or abs(tail_z) > z)

    def by_rank(zr: float) -> str:
        """The reason, when the rank test (not the interval) called the change."""
        if interval_says or rank_z is None:
            return ""
        p = 1.0 - NormalDist().cdf(abs(zr))
        size = f"requests {rank_size * 100:+.1f}% (Hodges-Lehmann), " if rank_size is not None else ""
        return f"rank test: {size}one-sided p={p:.1g}"

    if worse:
        return verdict("regression", by_rank(slower), change, low, high)
    if better:
        return verdict("improvement", by_rank(faster), change, low, high)
    if low is None or high is None:
        return verdict("inconclusive", problem or "no interval", change)
    half = (high - low) / 2.0
    if half > tol:
        return verdict("inconclusive", f"interval +-{half * 100:.1f}% is wider than the tolerance {tol * 100:g}%", change, low, high)
    return verdict("unchanged", "", change, low, high)


def compare(
    baseline: Observation, now: Observation, gates: Sequence[Gate], confidence: float = DEFAULT_CONFIDENCE
) -> list[MetricVerdict]:
    """Verdicts for every gate (a gate without data on both sides, e.g. TPOT of a prefill item, is left out)."""
    z = z_for(confidence)
    out: list[MetricVerdict] = []
    for gate in gates:
        b = estimate(baseline, gate.metric, gate.statistic, z)
        c = estimate(now, gate.metric, gate.statistic, z)
        if b.n == 0 and c.n == 0 and not math.isfinite(b.value) and not math.isfinite(c.value):
            continue
        rz = _rank_z(baseline, now, gate.metric)
        # the shift's size matters only where the rank test speaks
        size = _rank_size(baseline, now, gate.metric) if rz is not None and abs(rz) > z else None
        out.append(decide(b, c, gate, confidence, rz, _tail_z(baseline, now, gate, b), size))
    return out


def _tail_z(baseline: Observation, now: Observation, gate: Gate, b: Estimate) -> float | None:
    if gate.metric not in slo_mod.LATENCY_METRICS or not math.isfinite(b.value):
        return None
    q = _quantile_level(gate.statistic)
    if q is None:
        return None
    bs, cs = baseline.samples.get(gate.metric), now.samples.get(gate.metric)
    if bs is None or cs is None or bs.n == 0 or cs.n == 0:
        return None
    return exceedance_shift(bs, cs, b.value, q)


def _rank_samples(baseline: Observation, now: Observation, metric: str) -> tuple[Sample, Sample] | None:
    source = metric if metric in HIGHER_IS_WORSE else ("tpot_ms" if metric == "interactivity" else None)
    if source is None:
        return None
    b, c = baseline.samples.get(source), now.samples.get(source)
    if b is None or c is None:
        return None
    return b, c


def _rank_z(baseline: Observation, now: Observation, metric: str) -> float | None:
    pair = _rank_samples(baseline, now, metric)
    return rank_shift(*pair) if pair else None


def hodges_lehmann(base: Sample, now: Sample, k: int = 64) -> float:
    """The typical relative shift of "now" against the baseline (Hodges-Lehmann).

    The median of the pairwise log-ratios, on ``k``-point quantile thinnings of
    both sketches (4,096 pairs: microseconds, and the same estimate to a small
    fraction of a percent). NaN when a value is not positive.
    """
    if base.values.size == 0 or now.values.size == 0:
        return math.nan
    levels = np.linspace(0.0, 1.0, k)

    def thin(v: np.ndarray) -> np.ndarray:
        return np.interp(levels, np.linspace(0.0, 1.0, v.size), v) if v.size > 1 else np.full(k, float(v[0]))

    a, b = thin(base.values), thin(now.values)
    if not (a[0] > 0 and b[0] > 0):
        return math.nan
    return math.expm1(float(np.median(np.log(b)[:, None] - np.log(a)[None, :])))


def _rank_size(baseline: Observation, now: Observation, metric: str) -> float | None:
    pair = _rank_samples(baseline, now, metric)
    if pair is None:
        return None
    size = hodges_lehmann(*pair)
    return size if math.isfinite(size) else None


def compare_samples(
    baseline: Iterable[float],
    now: Iterable[float],
    metric: str = "ttft_ms",
    statistic: str = "median",
    tolerance: float = DEFAULT_TOLERANCE,
    confidence: float = DEFAULT_CONFIDENCE,
) -> MetricVerdict:
    """Compare two sets of per-request values of one latency metric (scripts and tests)."""
    b = Observation.from_values({metric: baseline})
    c = Observation.from_values({metric: now})
    gate = Gate(metric, statistic, tolerance)
    verdicts = compare(b, c, [gate], confidence)
    if verdicts:
        return verdicts[0]
    z = z_for(confidence)  # no data on either side: compare() leaves the gate out, say so here
    return decide(estimate(b, metric, statistic, z), estimate(c, metric, statistic, z), gate, confidence)


def worst(verdicts: Iterable[MetricVerdict]) -> str | None:
    """The item-level summary of its verdicts: regression > inconclusive > improvement > unchanged."""
    seen = {v.verdict for v in verdicts}
    for v in ("regression", "inconclusive", "improvement", "unchanged"):
        if v in seen:
            return v
    return None
