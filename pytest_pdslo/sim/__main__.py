"""``python -m pytest_pdslo.sim``: serve the simulator over HTTP, or simulate one point.

``serve --model M --hardware H --tp N ...`` serves the calibrated engine in real
time (the same engine and scheduler as the virtual-time target); without
``--hardware`` it serves the simple latency model (``--ttft-ms``, ``--itl-ms``).
``--fault KIND --fault-rate R`` injects failures into a share of generation
requests (``pytest_pdslo.sim.faults``): refused connections, HTTP 500/503/429,
streams cut, malformed events, stalls, a slow first byte, a huge chunk.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web


def _fault_plan(args: argparse.Namespace):  # noqa: ANN202 - FaultPlan | None, imported lazily
    from .faults import FaultPlan

    if not args.fault:
        return None
    return FaultPlan(
        tuple(args.fault),
        rate=args.fault_rate,
        after_tokens=args.fault_after,
        stall_s=args.fault_stall_s,
        first_byte_s=args.fault_first_byte_s,
        huge_bytes=args.fault_huge_bytes,
        retry_after_s=args.fault_retry_after,
    )


def _raise_nofile() -> None:
    """Best effort: lift the soft open-files limit to the hard one (a connection is a descriptor)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _serve(args: argparse.Namespace) -> int:
    from .engine.cli import cluster_from_args
    from .engine.errors import SimConfigError
    from .latency import LatencyParams
    from .server import EngineBackend, SimHttpServer

    try:
        faults = _fault_plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _raise_nofile()
    if args.hardware:
        try:
            server = SimHttpServer(model=args.model, cluster=cluster_from_args(args, name="serve"),
                                   max_model_len=args.max_model_len, seed=args.seed, faults=faults)
        except SimConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        assert isinstance(server.default, EngineBackend)
        eng = server.default.engine
        what = (
            f"engine: {args.model} on {eng.gpus} x {args.hardware} "
            f"({server.default.cluster.mode}), max_model_len {eng.max_model_len}"
        )
    else:
        params = LatencyParams(
            ttft_ms=args.ttft_ms,
            itl_ms=args.itl_ms,
            prefill_ms_per_1k_tokens=args.prefill_ms_per_1k,
            jitter=args.jitter,
            load_factor=args.load_factor,
        )
        server = SimHttpServer(model=args.model, params=params, seed=args.seed, faults=faults)
        what = f"latency model: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms"
    if faults is not None:
        what += f"; FAULTS {', '.join(faults.kinds)} on {faults.rate:.0%} of generation requests"
    print(
        f"pdslo simulator (SIMULATED latencies; {what}) serving model {args.model!r} "
        f"on http://{args.host}:{args.port}",
        flush=True,
    )
    try:
        web.run_app(server.app, host=args.host, port=args.port, print=None, access_log=None,
                    backlog=args.backlog, handler_cancellation=True, shutdown_timeout=1.0)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_pdslo.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI API in real time (engine, or a simple latency model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default="sim", help="served model name; with --hardware also its profile")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--backlog", type=int, default=4096, help="listen backlog (connections waiting for accept)")
    eng = serve.add_argument_group("engine (selected by --hardware)")
    eng.add_argument("--hardware", default=None, help="GPU profile, e.g. mi300x: serve the calibrated engine")
    eng.add_argument("--profile", default=None, help="model profile overriding the name's resolution")
    eng.add_argument("--tp", type=int, default=1, help="tensor parallel size of an aggregated instance")
    eng.add_argument("--replicas", type=int, default=1, help="aggregated instances behind the router")
    eng.add_argument("--prefill-tp", type=int, default=None, help="P/D: prefill instance TP (selects P/D)")
    eng.add_argument("--prefill-replicas", type=int, default=1)
    eng.add_argument("--decode-tp", type=int, default=None, help="P/D: decode instance TP (default: prefill TP)")
    eng.add_argument("--decode-replicas", type=int, default=1)
    eng.add_argument("--max-num-batched-tokens", type=int, default=8192)
    eng.add_argument("--max-num-seqs", type=int, default=1024)
    eng.add_argument("--max-model-len", type=int, default=None,
                     help="longest prompt + output (default: 32768, or what the KV cache holds)")  # fmt: skip
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    eng.add_argument("--block-size", type=int, default=16)
    eng.add_argument("--kv-cache-dtype", default=None, help="auto (the profile's), bf16 or fp8")
    eng.add_argument("--router", default="least_loaded", choices=("least_loaded", "round_robin"))
    lat = serve.add_argument_group("latency model (without --hardware)")
    lat.add_argument("--ttft-ms", type=float, default=30.0)
    lat.add_argument("--itl-ms", type=float, default=8.0)
    lat.add_argument("--prefill-ms-per-1k", type=float, default=10.0)
    lat.add_argument("--jitter", type=float, default=0.05)
    lat.add_argument("--load-factor", type=float, default=0.002)
    from .faults import FAULTS

    flt = serve.add_argument_group("fault injection (tests of the client; see pytest_pdslo.sim.faults)")
    flt.add_argument("--fault", action="append", default=[], choices=list(FAULTS), metavar="KIND",
                     help="inject this fault (repeatable; several take turns): " + ", ".join(FAULTS))
    flt.add_argument("--fault-rate", type=float, default=1.0, help="share of generation requests faulted (default 1)")
    flt.add_argument("--fault-after", type=int, default=1, help="tokens sent before an in-stream fault (default 1)")
    flt.add_argument("--fault-stall-s", type=float, default=3600.0, help="length of a stall (default 3600)")
    flt.add_argument("--fault-first-byte-s", type=float, default=10.0, help="delay of slow_first_byte (default 10)")
    flt.add_argument("--fault-huge-bytes", type=int, default=8 << 20, help="size of huge_chunk's event (default 8 MiB)")
    flt.add_argument("--fault-retry-after", type=int, default=1, help="Retry-After of HTTP 429/503, seconds (default 1)")
    serve.set_defaults(func=_serve)
    run = sub.add_parser("run", help="simulate one benchmark point in virtual time and print its result")
    from .engine.cli import add_run_arguments, run_main

    add_run_arguments(run)
    run.set_defaults(func=run_main)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
