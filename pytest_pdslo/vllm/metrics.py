"""vLLM's Prometheus ``/metrics``: scrape, diff, and what the server saw of a run.

Parsing is prometheus-client's text parser. A ``Scrape`` is a flat map of
``(sample name, sorted labels) -> value``; two scrapes taken before and after an item
give server-side means (delta sum / delta count of a histogram), counter deltas, and
the decode-only check of the DecodeBenchConnector (prompt tokens by source).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

#: Client and server mean TTFT may differ by this fraction before a note is added ...
TTFT_DISAGREEMENT = 0.5
#: ... and by at least this many ms (HTTP, tokenisation and the API server's own work are
#: outside the engine's TTFT; on a millisecond-scale model they alone exceed 50%).
TTFT_DISAGREEMENT_MIN_MS = 25.0
#: Decode-only mode holds when KV-transferred prompt tokens are at least this many
#: times the locally computed ones (or local compute is one token per request).
DECODE_ONLY_RATIO = 10.0

#: Histograms whose delta mean is reported: (vLLM metric, diagnostics key stem).
HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", "ttft"),
    ("vllm:inter_token_latency_seconds", "itl"),
    ("vllm:request_time_per_output_token_seconds", "tpot"),
    ("vllm:e2e_request_latency_seconds", "e2el"),
    ("vllm:request_queue_time_seconds", "queue"),
    ("vllm:request_prefill_time_seconds", "prefill"),
    ("vllm:request_decode_time_seconds", "decode"),
)
COUNTERS = (
    ("vllm:num_preemptions_total", "preemptions"),
    ("vllm:prompt_tokens_total", "prompt_tokens"),
    ("vllm:generation_tokens_total", "generation_tokens"),
)
BY_SOURCE = "vllm:prompt_tokens_by_source_total"

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """One ``/metrics`` reading: sample values by name and labels."""

    samples: Mapping[Key, float] = field(default_factory=dict)

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of ``name`` over every label set that includes ``labels``; None when absent."""
        found = False
        total = 0.0
        for (n, lbls), v in self.samples.items():
            if n != name:
                continue
            d = dict(lbls)
            if all(d.get(k) == val for k, val in labels.items()):
                found = True
                total += v
        return total if found else None

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def parse(text: str) -> Scrape:
    """Parse Prometheus text exposition; raises ``ValueError`` on malformed text."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted((str(k), str(v)) for k, v in s.labels.items())))
            samples[key] = float(s.value)
    return Scrape(samples)


def scrape(base_url: str, timeout_s: float = 10.0) -> Scrape | None:
    """GET ``/metrics`` and parse it; None when the server has none or it is unreadable."""
    try:
        r = requests.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s)
        if r.status_code != 200:
            return None
        return parse(r.text)
    except (requests.RequestException, ValueError):
        return None


def merge(scrapes: Iterable[Scrape]) -> Scrape:
    """Several instances' scrapes as one: each sample gets an ``instance`` label, totals add up."""
    samples: dict[Key, float] = {}
    for i, sc in enumerate(scrapes):
        for (name, labels), v in sc.samples.items():
            samples[(name, tuple(sorted(labels + (("pdslo_instance", str(i)),))))] = v
    return Scrape(samples)


def scrape_all(urls: Iterable[str], timeout_s: float = 10.0) -> Scrape | None:
    """One merged scrape of every instance; None if any has no readable ``/metrics``
    (a partial sum would under-count)."""
    got = [scrape(u, timeout_s) for u in urls]
    if not got or any(g is None for g in got):
        return None
    return merge(g for g in got if g is not None)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float | None:
    a = after.total(name, **labels)
    if a is None:
        return None
    b = before.total(name, **labels) or 0.0
    return a - b


def histogram_mean_ms(before: Scrape, after: Scrape, name: str) -> float | None:
    """Mean of the observations made between the two scrapes, in ms (None if none)."""
    s = delta(before, after, name + "_sum")
    c = delta(before, after, name + "_count")
    if s is None or c is None or c <= 0:
        return None
    return 1000.0 * s / c


def server_side(before: Scrape, after: Scrape, prefix: str = "server_") -> dict[str, float]:
    """Diagnostics from two scrapes: ``server_mean_ttft_ms``, ..., ``server_preemptions``."""
    out: dict[str, float] = {}
    for name, stem in HISTOGRAMS:
        m = histogram_mean_ms(before, after, name)
        if m is not None:
            out[f"{prefix}mean_{stem}_ms"] = m
    n = delta(before, after, "vllm:e2e_request_latency_seconds_count")
    if n is not None:
        out[f"{prefix}requests"] = n
    for name, stem in COUNTERS:
        d = delta(before, after, name)
        if d is not None:
            out[f"{prefix}{stem}"] = d
    for source in ("local_compute", "local_cache_hit", "external_kv_transfer"):
        d = delta(before, after, BY_SOURCE, source=source)
        if d is not None:
            out[f"{prefix}prompt_tokens_{source}"] = d
    return out


@dataclass(frozen=True)
class DecodeOnlyCheck:
    """Whether a run's prompts were filled by KV transfer rather than computed."""

    verified: bool
    external: float | None
    local: float | None
    reason: str


def decode_only(before: Scrape, after: Scrape, requests_sent: int) -> DecodeOnlyCheck:
    """Decode-only mode: external KV-transfer prompt tokens ≫ locally computed ones.

    The DecodeBenchConnector fills all prompt tokens but the last, so local compute is
    about one token per request; accept that, or a ratio of ``DECODE_ONLY_RATIO``.
    """
    ext = delta(before, after, BY_SOURCE, source="external_kv_transfer")
    loc = delta(before, after, BY_SOURCE, source="local_compute")
    if ext is None and loc is None:
        return DecodeOnlyCheck(False, None, None, f"the server exports no {BY_SOURCE}")
    ext = ext or 0.0
    loc = loc or 0.0
    if ext <= 0:
        return DecodeOnlyCheck(False, ext, loc, f"no prompt tokens came from KV transfer ({loc:g} computed locally)")
    if ext >= DECODE_ONLY_RATIO * loc or loc <= max(1, requests_sent):
        return DecodeOnlyCheck(True, ext, loc, f"{ext:g} prompt tokens from KV transfer, {loc:g} computed")
    return DecodeOnlyCheck(False, ext, loc, f"only {ext:g} prompt tokens from KV transfer vs {loc:g} computed locally")


def ttft_disagreement(client_ms: float | None, server_ms: float | None,
                      tolerance: float = TTFT_DISAGREEMENT,
                      min_ms: float = TTFT_DISAGREEMENT_MIN_MS) -> str | None:
    """A note when the client's and the server's mean TTFT differ by more than ``tolerance``
    (relative to the smaller) and by more than ``min_ms``."""
    if client_ms is None or server_ms is None or client_ms <= 0 or server_ms <= 0:
        return None
    rel = abs(client_ms - server_ms) / min(client_ms, server_ms)
    if rel <= tolerance or abs(client_ms - server_ms) <= min_ms:
        return None
    return (f"client and server disagree on TTFT: client mean {client_ms:.1f} ms, server mean "
            f"{server_ms:.1f} ms ({rel:.0%} apart, > {tolerance:.0%})")


def client_mean_ttft_ms(records: Iterable[Any]) -> float | None:
    """Mean TTFT (ms) of completed, measured records."""
    vals = [r.ttft for r in records if r.ok and not r.warmup and r.ttft is not None]
    if not vals:
        return None
    return 1000.0 * sum(vals) / len(vals)
