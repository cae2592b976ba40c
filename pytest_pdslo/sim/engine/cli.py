"""Command line for one simulated serving point (``python -m pytest_pdslo.sim run ...``).

``add_run_arguments`` fills a parser, ``run_main`` runs the point and prints the
result with ``vllm bench serve``'s keys (plus ``simulated`` and ``gpus``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pytest_pdslo.metrics import summarize
from pytest_pdslo.sim.engine.errors import SimConfigError
from pytest_pdslo.sim.engine.spec import ClusterSpec, InstanceSpec, LoadSpec, WorkloadSpec
from pytest_pdslo.sim.engine.virtual import simulate


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for one serving point."""
    dep = parser.add_argument_group("deployment")
    dep.add_argument("--model", required=True, help="served name, profile name or path to a config.json")
    dep.add_argument("--profile", default=None, help="model profile overriding the name's resolution")
    dep.add_argument("--hardware", default="mi300x", help="GPU profile (default: mi300x)")
    dep.add_argument("--tp", type=int, default=1, help="tensor parallel size of an aggregated instance")
    dep.add_argument("--replicas", type=int, default=1, help="aggregated instances behind the router")
    dep.add_argument("--prefill-tp", type=int, default=None, help="P/D: prefill instance TP (selects P/D)")
    dep.add_argument("--prefill-replicas", type=int, default=1)
    dep.add_argument("--decode-tp", type=int, default=None, help="P/D: decode instance TP (default: prefill TP)")
    dep.add_argument("--decode-replicas", type=int, default=1)
    dep.add_argument("--decode-bench", action="store_true", help="emulate DecodeBenchConnector: no prefill compute")
    dep.add_argument("--max-num-batched-tokens", type=int, default=8192)
    dep.add_argument("--max-num-seqs", type=int, default=1024)
    dep.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    dep.add_argument("--block-size", type=int, default=16)
    dep.add_argument("--kv-cache-dtype", default=None, help="auto (the profile's), bf16 or fp8")
    dep.add_argument("--router", default="least_loaded", choices=("least_loaded", "round_robin"))
    dep.add_argument("--async-scheduling", action="store_true",
                     help="vLLM's --async-scheduling: the GPU profile's per-step cost with async scheduling")
    wl = parser.add_argument_group("workload and load")
    wl.add_argument("--input-len", type=int, required=True, help="input tokens (decode bench: context length)")
    wl.add_argument("--output-len", type=int, required=True)
    wl.add_argument("--input-len-spread", type=float, default=0.0, help="input length uniform in [(1-s)*I, I]")
    wl.add_argument("--output-len-spread", type=float, default=0.0, help="output length uniform in [(1-s)*O, O]")
    wl.add_argument("--concurrency", type=int, default=None, help="closed loop; with --request-rate: the cap")
    wl.add_argument("--request-rate", type=float, default=None, help="open loop, requests/s (Poisson)")
    wl.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the inter-arrival times")
    wl.add_argument("--requests", type=int, default=None, help="requests to send (default: 10 x concurrency)")
    wl.add_argument("--warmup", type=int, default=0, help="extra requests first, excluded from the figures")
    wl.add_argument("--deadline", type=float, default=None, help="virtual seconds; unfinished requests fail")
    wl.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cluster_from_args(args: argparse.Namespace, name: str = "cli") -> ClusterSpec:
    """The deployment the ``run``/``serve`` arguments describe (shared by both commands)."""
    common: dict[str, Any] = {
        "model": args.model,
        "hardware": args.hardware,
        "name": name,
        "profile": args.profile,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "decode_bench": bool(getattr(args, "decode_bench", False)),
        "block_size": args.block_size,
        "router": args.router,
        "kv_cache_dtype": args.kv_cache_dtype,
        "async_scheduling": bool(getattr(args, "async_scheduling", False)),
    }
    if args.prefill_tp is not None or args.decode_tp is not None:
        ptp = args.prefill_tp if args.prefill_tp is not None else args.decode_tp
        dtp = args.decode_tp if args.decode_tp is not None else ptp
        return ClusterSpec(
            mode="disaggregated",
            prefill=InstanceSpec(ptp, args.prefill_replicas),
            decode=InstanceSpec(dtp, args.decode_replicas),
            **common,
        )
    return ClusterSpec(mode="aggregated", aggregated=InstanceSpec(args.tp, args.replicas), **common)


def run_main(args: argparse.Namespace) -> int:
    """Simulate the point the arguments describe; 0 on success, 2 on a configuration error."""
    try:
        cluster = cluster_from_args(args)
        requests = args.requests
        if requests is None:
            requests = 10 * args.concurrency if args.concurrency else 100
        workload = WorkloadSpec(
            input_len=args.input_len,
            output_len=args.output_len,
            num_requests=requests,
            input_len_spread=args.input_len_spread,
            output_len_spread=args.output_len_spread,
            warmup=args.warmup,
        )
        load = LoadSpec(
            concurrency=args.concurrency,
            request_rate=args.request_rate,
            burstiness=args.burstiness,
            deadline_s=args.deadline,
        )
        result = simulate(cluster, workload, load, seed=args.seed)
    except SimConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary, _ = summarize(result.records, gpus=result.gpus, simulated=True)
    # NaN (e.g. no TPOT for one-token requests) is not JSON
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    summary.update({
        "model": args.model,
        "hardware": args.hardware,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "concurrency": args.concurrency,
        "request_rate": args.request_rate,
        "num_prompts": requests,
        "engine_stats": {k: v for k, v in result.stats.items() if k != "instances"},
    })
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    width = max(len(k) for k in summary)
    for key in sorted(summary):
        value = summary[key]
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest_pdslo.sim.engine.cli", description=__doc__)
    add_run_arguments(parser)
    return run_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
