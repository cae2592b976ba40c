"""``python -m pytest_pdslo.sim``: serve the simulator over HTTP, or simulate one point."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web


def _serve(args: argparse.Namespace) -> int:
    from .latency import LatencyParams
    from .server import SimHttpServer

    params = LatencyParams(
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        prefill_ms_per_1k_tokens=args.prefill_ms_per_1k,
        jitter=args.jitter,
        load_factor=args.load_factor,
    )
    server = SimHttpServer(model=args.model, params=params, seed=args.seed)
    print(
        f"pdslo simulator (SIMULATED latencies) serving model {args.model!r} on http://{args.host}:{args.port}",
        flush=True,
    )
    try:
        web.run_app(server.app, host=args.host, port=args.port, print=None, access_log=None)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_pdslo.sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI API with simulated latencies")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default="sim", help="model name reported by /v1/models")
    serve.add_argument("--ttft-ms", type=float, default=30.0)
    serve.add_argument("--itl-ms", type=float, default=8.0)
    serve.add_argument("--prefill-ms-per-1k", type=float, default=10.0)
    serve.add_argument("--jitter", type=float, default=0.05)
    serve.add_argument("--load-factor", type=float, default=0.002)
    serve.add_argument("--seed", type=int, default=0)
    serve.set_defaults(func=_serve)
    run = sub.add_parser("run", help="simulate one benchmark point in virtual time and print its result")
    from .engine.cli import add_run_arguments, run_main

    add_run_arguments(run)
    run.set_defaults(func=run_main)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
