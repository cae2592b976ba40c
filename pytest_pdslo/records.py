"""Per-request measurement records: the one shape every target produces.

The real HTTP client and the simulator both emit ``RequestRecord``; everything
downstream (metrics, SLOs, baselines, reports) reads only these, so a
simulated point and a measured point go through exactly the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """One streamed request.

    Times are seconds on one monotonic clock (``time.perf_counter`` for real
    runs, virtual seconds for the simulator). ``chunk_times[i]`` is when the
    i-th content chunk arrived and ``chunk_tokens[i]`` how many output tokens
    it carried (vLLM packs several tokens into one SSE chunk under load).
    ``chunk_times`` may be a numpy float array (the simulator's records are
    large); consumers convert with ``numpy.asarray``.
    """

    send_time: float
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ok: bool = False
    status: int = 0
    error: str = ""
    warmup: bool = False

    @property
    def ttft(self) -> float | None:
        """Seconds from send to the first content chunk."""
        if len(self.chunk_times) == 0:
            return None
        return self.chunk_times[0] - self.send_time

    @property
    def e2el(self) -> float | None:
        """Seconds from send to the last content chunk."""
        if len(self.chunk_times) == 0:
            return None
        return self.chunk_times[-1] - self.send_time

    @property
    def output_tokens(self) -> int:
        """Output tokens: the server's ``usage`` when given, else counted from chunks.

        An empty ``chunk_tokens`` means one token per chunk (the simulator's case).
        """
        if self.completion_tokens:
            return self.completion_tokens
        if len(self.chunk_tokens):
            return int(sum(self.chunk_tokens))
        return len(self.chunk_times)
