"""Scale of the client: 5,000 concurrent streams against the simulator's HTTP face.

Starts ``python -m pytest_pdslo.sim serve`` (latency model, no load factor, so
every stream lasts the same: a long first token so all of them are open at
once, then a few tokens), runs one closed-loop item of ``--concurrency`` streams
through the plugin (``pytest --pdslo-target http://...``, as a user runs it) and
prints the largest concurrency the client held, from the item's own in-flight
diagnostics, with what completed and failed. The plugin raises the soft
open-files limit when it is too low (or fails up front saying what it needs).

    python benchmarks/scale_5000.py                  # 5,000 streams
    python benchmarks/scale_5000.py --concurrency 1000 --ttft-ms 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

SUITE = """
name: scale
model: sim
hardware: mi300x
deployments:
  agg: {{tp: 1}}
slo:
  ttft_ms: {{p90: 600000}}
benchmarks:
  serving: {{input_len: 4, output_len: {tokens}, concurrency: {c}, requests: {c}}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=5000)
    ap.add_argument("--tokens", type=int, default=4, help="output tokens per stream")
    ap.add_argument("--ttft-ms", type=float, default=5000.0, help="long enough for every stream to open first")
    ap.add_argument("--itl-ms", type=float, default=500.0)
    ap.add_argument("--timeout", type=float, default=300.0, help="deadline of the item, seconds")
    args = ap.parse_args()

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_pdslo.sim", "serve", "--port", str(port), "--model", "sim",
         "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--jitter", "0", "--load-factor", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("simulator did not start:", server.stderr.read() if server.stderr else "", file=sys.stderr)
                return 1
            time.sleep(0.2)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "suites").mkdir()
            (root / "suites" / "scale.yaml").write_text(
                SUITE.format(c=args.concurrency, tokens=args.tokens)
            )
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            print(f"open-files limit: soft {soft}, hard {hard}; {args.concurrency} streams of {args.tokens} tokens "
                  f"(TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms) against {url}", flush=True)
            start = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                 "--pdslo-target", url, "--pdslo-report", "out", "--pdslo-item-timeout", str(args.timeout)],
                cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            wall = time.monotonic() - start
            results = root / "out" / "results.json"
            if not results.exists():
                print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
                return 1
            entry = json.loads(results.read_text())["tests"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    m, d = entry["metrics"], entry["diagnostics"]
    print(f"largest concurrency held: {d['in_flight_max']} of {args.concurrency} "
          f"(time-weighted mean {d['in_flight_mean']:.0f})")
    print(f"completed {m['completed']}, failed {m['failed']}; item {entry['outcome']} in {wall:.1f} s wall "
          f"(run {m['duration']:.1f} s); client loop lag p99 {d['loop_lag_p99_ms']:.1f} ms")
    for reason, n in entry["failures"].items():
        print(f"  {n} x {reason}")
    for note in entry["notes"]:
        print(f"  note: {note}")
    return 0 if m["failed"] == 0 and d["in_flight_max"] == args.concurrency else 1


if __name__ == "__main__":
    sys.exit(main())
