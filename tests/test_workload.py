"""Synthetic prompts: deterministic, unique from the first words, lengths in range."""

from __future__ import annotations

import pytest

from pytest_pdslo.workload import SALT_WORDS, WORDS, RequestSpec, make_prompts, make_requests


def test_deterministic_by_seed() -> None:
    assert make_prompts(50, 64, spread=0.3, seed=7) == make_prompts(50, 64, spread=0.3, seed=7)
    assert make_prompts(50, 64, seed=7) != make_prompts(50, 64, seed=8)


def test_prefixes_unique_within_and_across_seeds() -> None:
    prompts = make_prompts(3000, 32, seed=1) + make_prompts(3000, 32, seed=2)
    prefixes = {" ".join(p.split()[:SALT_WORDS]) for p in prompts}
    assert len(prefixes) == len(prompts)


@pytest.mark.parametrize("spread", [0.0, 0.2, 1.0])
def test_lengths_in_range(spread: float) -> None:
    prompts = make_prompts(400, 100, spread=spread, seed=3)
    lengths = [len(p.split()) for p in prompts]
    assert min(lengths) >= max(1, int((1 - spread) * 100)) and max(lengths) <= 100
    if spread == 0.0:
        assert set(lengths) == {100}
    else:
        assert len(set(lengths)) > 1


def test_only_known_words() -> None:
    words = {w for p in make_prompts(20, 200, seed=5) for w in p.split()}
    assert words <= set(WORDS)
    assert len(set(WORDS)) == len(WORDS)


def test_make_requests_fields() -> None:
    requests = make_requests(20, 50, 16, spread=0.5, seed=4, ignore_eos=False)
    assert all(isinstance(r, RequestSpec) for r in requests)
    assert all(r.max_tokens == 16 and not r.ignore_eos for r in requests)
    assert all(r.input_len == len(r.prompt.split()) for r in requests)
    assert [r.prompt for r in requests] == make_prompts(20, 50, spread=0.5, seed=4)


def test_output_spread() -> None:
    outs = {r.max_tokens for r in make_requests(200, 10, 100, output_spread=0.5, seed=1)}
    assert min(outs) >= 50 and max(outs) <= 100 and len(outs) > 1


def test_large_workload_shape() -> None:
    prompts = make_prompts(1000, 8192, spread=0.2, seed=0)
    assert len(prompts) == 1000 and len(set(prompts)) == 1000


@pytest.mark.parametrize(("args", "kwargs"), [
    ((-1, 10), {}), ((1, 0), {}), ((1, 10), {"spread": 1.5}), ((1, 10), {"spread": -0.1}),
])
def test_invalid_arguments(args: tuple[int, int], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make_prompts(*args, **kwargs)


def test_point_requests_honour_both_spreads() -> None:
    from pytest_pdslo.suite import expand, parse_suite
    from pytest_pdslo.workload import point_requests

    suite = parse_suite({
        "name": "s", "model": "openai/gpt-oss-120b", "hardware": "mi300x", "deployments": {"a": {"tp": 8}},
        "benchmarks": {"serving": {"input_len": 100, "output_len": 200, "concurrency": [4], "warmup": 3,
                                   "input_len_spread": 0.2, "output_len_spread": 0.5}},
    }, "s.yaml")  # fmt: skip
    (point,) = expand(suite)
    reqs = point_requests(point, seed=3)
    assert len(reqs) == point.num_requests + 3
    outs = [r.max_tokens for r in reqs]
    assert min(outs) >= 100 and max(outs) <= 200 and len(set(outs)) > 5
    assert all(80 <= r.input_len <= 100 for r in reqs)
    # the prompts do not depend on the output spread
    same = make_requests(len(reqs), 100, 200, spread=0.2, seed=3)
    assert [r.prompt for r in reqs] == [r.prompt for r in same]
    assert all(r.max_tokens == 200 for r in same)
