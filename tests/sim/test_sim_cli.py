"""The one-point command line of the simulator engine."""

from __future__ import annotations

import argparse
import json

import pytest

from pytest_pdslo.sim.engine.cli import add_run_arguments, run_main


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return run_main(parser.parse_args(argv))


def test_json_has_vllm_bench_keys(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(
        "--model openai/gpt-oss-120b --hardware mi300x --tp 8 --input-len 1024 --output-len 64 "
        "--input-len-spread 0.2 --concurrency 8 --requests 32 --seed 1 --json".split()
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "completed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
        "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms",
    ):  # fmt: skip
        assert isinstance(out[key], (int, float)), key
    assert out["simulated"] is True and out["gpus"] == 8
    assert out["completed"] == 32 and out["failed"] == 0
    assert out["total_output_tokens"] == 32 * 64
    assert 0 < out["median_ttft_ms"] <= out["p99_ttft_ms"]


def test_disaggregated_and_decode_bench_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--model gpt-oss-120b --prefill-tp 2 --decode-tp 4 --decode-replicas 2 "
               "--input-len 4096 --output-len 32 --concurrency 4 --json".split()) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["gpus"] == 2 + 4 * 2
    assert run("--model gpt-oss-120b --tp 8 --decode-bench --input-len 8192 --output-len 32 "
               "--concurrency 4 --json".split()) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["completed"] == 40


def test_config_error_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run("--model RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic --hardware h100 --tp 1 "
             "--input-len 1024 --output-len 1024 --concurrency 4 --json".split())  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert "does not fit" in captured.err and "Traceback" not in captured.err
    assert run("--model nope --input-len 8 --output-len 8 --concurrency 1".split()) == 2
    assert "known: gpt-oss-120b" in capsys.readouterr().err


def test_async_scheduling_and_output_spread_flags(capsys: pytest.CaptureFixture[str]) -> None:
    base = "--model gpt-oss-120b --hardware h100 --tp 2 --input-len 256 --output-len 64 --concurrency 4 --requests 40 --json"
    assert run(base.split()) == 0
    plain = json.loads(capsys.readouterr().out)
    assert run([*base.split(), "--async-scheduling", "--output-len-spread", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed"] == 40 and 40 * 32 <= out["total_output_tokens"] < 40 * 64
    assert run([*base.split(), "--async-scheduling"]) == 0
    assert json.loads(capsys.readouterr().out)["median_tpot_ms"] < plain["median_tpot_ms"]
