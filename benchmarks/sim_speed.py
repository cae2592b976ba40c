"""How fast the virtual-time simulator runs (a plain script; prints figures, asserts nothing).

    python benchmarks/sim_speed.py [--repeat 3]

The reference point: gpt-oss-120b on 8 x MI300X (TP8), 2,560 requests of 1k in / 1k out
at concurrency 256 (the target is under 1 s on one core). A few harder points follow:
spread inputs under a Poisson load (every step differs), P/D, and KV preemption.
Last, every point of the reference suites in ``suites/`` through the ``sim`` target, as
``pytest suites/`` runs them but without pytest (target: under 60 s and 1 GiB).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_pdslo.sim.engine import ClusterSpec, InstanceSpec, LoadSpec, WorkloadSpec, simulate  # noqa: E402

POINTS: list[tuple[str, ClusterSpec, WorkloadSpec, LoadSpec]] = [
    (
        "reference: gpt-oss-120b mi300x TP8, 1k/1k, c=256, 2560 req",
        ClusterSpec("openai/gpt-oss-120b", "mi300x", aggregated=InstanceSpec(8)),
        WorkloadSpec(1024, 1024, 2560),
        LoadSpec(concurrency=256),
    ),
    (
        "spread 0.2, Poisson 24 req/s, cap 256, 2560 req",
        ClusterSpec("openai/gpt-oss-120b", "mi300x", aggregated=InstanceSpec(8)),
        WorkloadSpec(1024, 1024, 2560, input_len_spread=0.2),
        LoadSpec(request_rate=24.0, max_concurrency=256),
    ),
    (
        "TP2 x 4 replicas, spread 0.2, c=256, 2560 req",
        ClusterSpec("openai/gpt-oss-120b", "mi300x", aggregated=InstanceSpec(2, 4)),
        WorkloadSpec(1024, 1024, 2560, input_len_spread=0.2),
        LoadSpec(concurrency=256),
    ),
    (
        "P/D 2xTP2 prefill + 1xTP4 decode, 8k/1k, c=64, 640 req",
        ClusterSpec(
            "openai/gpt-oss-120b", "mi300x", mode="disaggregated",
            prefill=InstanceSpec(2, 2), decode=InstanceSpec(4, 1),
        ),  # fmt: skip
        WorkloadSpec(8192, 1024, 640, input_len_spread=0.2),
        LoadSpec(concurrency=64),
    ),
    (
        "llama-70b-fp8 TP1 (KV-bound, preempts), 1k/1k, c=256, 2560 req",
        ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1)),
        WorkloadSpec(1024, 1024, 2560, input_len_spread=0.2),
        LoadSpec(concurrency=256),
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the best is reported")
    parser.add_argument("--no-suites", action="store_true", help="skip the suites/ equivalent")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}, one process")
    t = time.perf_counter()
    simulate(POINTS[0][1], WorkloadSpec(64, 4, 4), LoadSpec(concurrency=4))
    print(f"first call (imports done, profiles loaded): {time.perf_counter() - t:.3f} s")
    for label, cluster, workload, load in POINTS:
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = simulate(cluster, workload, load, seed=0)
            best = min(best, time.perf_counter() - t)
        tokens = sum(len(r.chunk_times) for r in res.records)
        print(
            f"{label}\n    wall {best:.3f} s  |  {len(res.records) / best:,.0f} simulated requests/s  |  "
            f"{tokens / best / 1e6:.1f} M tokens/s  |  {res.stats['steps']:,} steps, "
            f"{res.stats['preemptions']:,} preemptions, {res.stats['virtual_duration_s']:.0f} virtual s"
        )
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"peak RSS: {rss_mib:.0f} MiB")
    if not args.no_suites:
        suites_equivalent()
    return 0


def suites_equivalent() -> None:
    """Every point of ``suites/*.yaml`` on the virtual-time target, one after the other."""
    from pytest_pdslo.errors import TargetError
    from pytest_pdslo.sim.target import VirtualSimTarget
    from pytest_pdslo.suite import load_suite
    from pytest_pdslo.targets import RunOptions

    root = Path(__file__).resolve().parents[1] / "suites"
    target = VirtualSimTarget()
    options = RunOptions()
    total = 0.0
    requests = points = errors = 0
    for path in sorted(root.glob("*.yaml")):
        loaded = load_suite(path)
        t = time.perf_counter()
        n = 0
        slowest = (0.0, "")
        for point in loaded.points():
            t1 = time.perf_counter()
            try:
                requests += len(target.run(point, loaded.suite, options).records)
            except TargetError:
                errors += 1  # a deployment that does not fit: reported as a failed item by pytest
            dt = time.perf_counter() - t1
            slowest = max(slowest, (dt, point.id))
            n += 1
        wall = time.perf_counter() - t
        total += wall
        points += n
        print(f"suite {path.name}: {n} points in {wall:.2f} s (slowest {slowest[1]}: {slowest[0]:.2f} s)")
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    verdict = "OK" if total < 60 and rss_mib < 1024 else "OVER TARGET"
    print(
        f"suites/ equivalent: {points} points ({errors} configuration errors), {requests:,} simulated requests, "
        f"wall {total:.2f} s, "
        f"peak RSS {rss_mib:.0f} MiB (target < 60 s, < 1024 MiB: {verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
