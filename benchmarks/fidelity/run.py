"""Simulator fidelity: every published vLLM point of ``published.yaml`` against the engine.

    python benchmarks/fidelity/run.py [--json out.json] [--only SUBSTRING] [--quiet]

Each entry is mapped onto the engine's ``ClusterSpec`` / ``WorkloadSpec`` / ``LoadSpec``
(rules below), simulated in virtual time (seed 0) and compared metric by metric:
error = (predicted - published) / published. Points are split deterministically
into a calibration set and a held-out set: the entry at position ``i`` of the file
(0-based, skipped entries included) is held out when ``i % 3 == 2``. ``calibrate.py``
fits the efficiency factors on the calibration set only; the held-out errors are
the honest estimate of fidelity.

Mapping rules (each applied point lists the ones it used):

* model ``llama-3.1-70b-fp8`` runs on the ``llama-3.3-70b-fp8`` profile (same architecture);
* ``--kv-cache-dtype fp8`` in the settings, or an ``...-FP8-KV`` checkpoint, gives an FP8 KV cache;
* ``--gpu-memory-utilization``, ``--max-num-batched-tokens``, ``--max-num-seqs``,
  ``--block-size`` and ``--async-scheduling`` are read from the settings (following "same as <id>" references);
  otherwise vLLM's defaults: 0.9, 8192 for serving (16384 for offline ``LLM`` runs),
  1024, 16;
* ``--random-range-ratio r`` (the InferenceX / older ``benchmark_serving`` meaning: lengths
  uniform in [r X, X]) spreads input and output by ``1 - r``;
* runs without ``--ignore-eos`` whose settings say how many tokens were generated use
  that mean as a fixed output length;
* ``concurrency`` -> closed loop, ``num_prompts`` default 10 x concurrency (InferenceX);
  ``request_rate: inf`` -> every request at once; static batches (``batch_size``) ->
  that many requests at once and the batch latency is the time to the last token;
  offline throughput runs without ``num_prompts`` use the amd.com harness's count for
  the same shape (3200 / 2000 / 1500) and ``max_num_seqs`` = that count;
* metrics: ``reported_throughput_tok_s`` (basis not stated) is compared with the output
  throughput (the ROCm blog's output figure for the same shape agrees with it);
  ``throughput_per_gpu_as_reported`` with (input + output) tokens/s per GPU;
  ``interactivity`` with 1000 / median TPOT; ``reported_latency_ms`` is not compared.

* ShareGPT runs at a fixed concurrency use the mean input / output lengths of the
  published token totals (at small concurrency TPOT and throughput are close to
  linear in the lengths); ShareGPT at an unbounded rate, or without totals, is skipped.

Skipped with a reason: the ShareGPT runs above, entries without input/output lengths,
unknown models or GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pytest_pdslo.sim.engine import ClusterSpec, InstanceSpec, LoadSpec, SimConfigError, WorkloadSpec, simulate  # noqa: E402
from pytest_pdslo.metrics import summarize  # noqa: E402
from pytest_pdslo.sim.engine.profiles import known_hardware, resolve_model  # noqa: E402

PUBLISHED = Path(__file__).with_name("published.yaml")
MODEL_MAP = {"llama-3.1-70b-fp8": "llama-3.3-70b-fp8"}  # Llama 3.1 70B and 3.3 70B share the architecture
OFFLINE_PROMPTS = {(128, 2048): 3200, (2048, 2048): 1500, (500, 2000): 2000, (128, 4096): 1500}
HELD_OUT_EVERY = 3  # entry i is held out when i % 3 == 2

# metric -> group; the target (median <= 15 %, max <= 35 %) is set on throughput and TPOT
GROUPS = {
    "output_throughput": "throughput",
    "total_token_throughput": "throughput",
    "reported_throughput_tok_s": "throughput",
    "throughput_per_gpu_as_reported": "throughput",
    "median_tpot_ms": "tpot",
    "interactivity": "tpot",
    "batch_latency_ms": "batch_latency",
    "batch_latency_s": "batch_latency",
    "median_itl_ms": "itl",
    "median_ttft_ms": "ttft",
    "median_e2el_ms": "e2el",
}
TARGET_GROUPS = ("throughput", "tpot")
FAMILIES = {"amd": ("mi300x", "mi325x", "mi355x"), "nvidia": ("h100", "h200")}
TARGET_MEDIAN, TARGET_MAX = 0.15, 0.35


@dataclass
class Case:
    """One published point mapped onto the engine."""

    entry: dict[str, Any]
    index: int
    cluster: ClusterSpec
    workload: WorkloadSpec
    load: LoadSpec
    kind: str  # serving, offline-throughput, static-batch
    rules: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.entry["id"])

    @property
    def held_out(self) -> bool:
        return is_held_out(self.index)


@dataclass
class Skip:
    entry: dict[str, Any]
    index: int
    reason: str


def is_held_out(index: int) -> bool:
    return index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def load_entries(path: Path = PUBLISHED) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, list):
        raise SystemExit(f"{path}: expected a list of entries")
    return data


def _settings(entry: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    """The entry's settings text, followed by those of the entries it refers to ("same as <id>")."""
    text, seen = "", set()
    cur: dict[str, Any] | None = entry
    while cur is not None and cur["id"] not in seen:
        seen.add(cur["id"])
        s = str(cur.get("settings") or "")
        text += " " + s
        ref = re.search(r"\b(?:same as|as|server as in|same setup as)\s+([a-z0-9][a-z0-9.-]+)", s)
        cur = by_id.get(ref.group(1)) if ref else None
    return text


def _flag(text: str, name: str) -> str | None:
    m = re.search(rf"--{name.replace('-', '[-_]')}[ =]([A-Za-z0-9_]+(?:\.[0-9]+)?)", text)
    return m.group(1) if m else None


def build_case(entry: dict[str, Any], index: int, by_id: dict[str, dict[str, Any]],
               hardware_paths: dict[str, str] | None = None) -> Case | Skip:  # fmt: skip
    """Map one entry onto the engine, or say why it cannot be simulated."""
    rules: list[str] = []
    model = str(entry.get("model", ""))
    if model in MODEL_MAP:
        rules.append(f"model {model} -> profile {MODEL_MAP[model]} (same architecture)")
        model = MODEL_MAP[model]
    try:
        resolve_model(model)
    except SimConfigError:
        return Skip(entry, index, f"no model profile for {model!r}")
    hw = str(entry.get("hardware", "")).lower()
    if hw not in known_hardware():
        return Skip(entry, index, f"no hardware profile for {hw!r}")
    settings = _settings(entry, by_id)
    isl, osl = entry.get("input_len"), entry.get("output_len")
    sharegpt = entry.get("dataset") == "sharegpt"
    if sharegpt:
        totals = re.search(r"total input (\d+) tok, generated (\d+) tok", settings)
        n = entry.get("num_prompts")
        if not entry.get("concurrency"):
            return Skip(entry, index, "ShareGPT at an unbounded rate: its length distribution (not modelled) decides")
        if not (totals and n):
            return Skip(entry, index, "ShareGPT without published token totals: mean lengths unknown")
        isl, osl = round(int(totals.group(1)) / n), round(int(totals.group(2)) / n)
        rules.append(f"ShareGPT at concurrency {entry['concurrency']}: fixed mean lengths {isl} in / {osl} out "
                     "from the published totals")  # fmt: skip
    if not isl or not osl:
        return Skip(entry, index, "input/output lengths not published")
    bench = str(entry.get("benchmark") or "")
    batch = entry.get("batch_size")
    kind = "static-batch" if batch else ("offline-throughput" if "throughput" in bench else "serving")

    kv = _flag(settings, "kv-cache-dtype")
    if kv is None and "FP8-KV" in settings:
        kv = "fp8"
        rules.append("FP8-KV checkpoint -> FP8 KV cache")
    elif kv is not None:
        rules.append(f"--kv-cache-dtype {kv}")
    gmu = float(_flag(settings, "gpu-memory-utilization") or 0.9)
    mbt_default = 8192 if kind == "serving" else 16384
    mbt = int(_flag(settings, "max-num-batched-tokens") or mbt_default)
    mns = entry.get("max_num_seqs") or _flag(settings, "max-num-seqs")
    bs = int(_flag(settings, "block-size") or 16)

    spread = 0.0
    rr = _flag(settings, "random-range-ratio")
    if rr is not None and float(rr) < 1.0:
        spread = 1.0 - float(rr)
        rules.append(f"--random-range-ratio {rr}: input and output uniform in [{rr} X, X]")
    out_len, out_spread = int(osl), spread
    n_prompts = entry.get("num_prompts")
    gen = re.search(r"\(?(\d+) tokens generated", settings)
    if gen and n_prompts and not sharegpt and "ignore-eos" not in settings.replace("no --ignore-eos", ""):
        out_len = max(1, round(int(gen.group(1)) / int(n_prompts)))
        out_spread = 0.0
        rules.append(f"no --ignore-eos: mean output {out_len} tokens (of {osl} asked)")

    concurrency = entry.get("concurrency")
    rate = str(entry.get("request_rate") or "")
    if kind == "static-batch":
        load = LoadSpec()
        n_prompts = int(batch)
        rules.append(f"static batch of {batch}: all at once, latency = time to the last token")
    elif concurrency:
        load = LoadSpec(concurrency=int(concurrency))
        if not n_prompts:
            n_prompts = 10 * int(concurrency)
            rules.append("num_prompts not published: 10 x concurrency")
    elif rate.startswith("inf"):
        load = LoadSpec()
        if not n_prompts:
            n_prompts = OFFLINE_PROMPTS.get((int(isl), int(osl)))
            if not n_prompts:
                return Skip(entry, index, "request rate inf without num_prompts")
            rules.append(f"num_prompts not published: {n_prompts} (amd.com harness, same shape)")
            if not mns:
                mns = n_prompts
                rules.append(f"max_num_seqs {mns} (amd.com harness)")
    else:
        return Skip(entry, index, "neither concurrency, request rate nor batch size")
    mns = int(mns or 1024)
    mbt = max(mbt, mns)
    async_sched = "--async-scheduling" in settings
    if async_sched:
        rules.append("--async-scheduling: the profile's per-step cost with async scheduling")
    tp = int(entry.get("tp") or 1)
    cluster = ClusterSpec(
        model=model,
        hardware=(hardware_paths or {}).get(hw, hw),
        name=str(entry["id"]),
        aggregated=InstanceSpec(tp, int(entry.get("replicas") or 1)),
        max_num_batched_tokens=mbt,
        max_num_seqs=mns,
        gpu_memory_utilization=gmu,
        block_size=bs,
        kv_cache_dtype=kv,
        async_scheduling=async_sched,
    )
    workload = WorkloadSpec(
        input_len=int(isl),
        output_len=out_len,
        num_requests=int(n_prompts),
        input_len_spread=spread,
        output_len_spread=out_spread,
    )
    return Case(entry, index, cluster, workload, load, kind, rules)


def build_cases(entries: list[dict[str, Any]], hardware_paths: dict[str, str] | None = None) -> list[Case | Skip]:
    by_id = {str(e["id"]): e for e in entries}
    return [build_case(e, i, by_id, hardware_paths) for i, e in enumerate(entries)]


def predict(case: Case) -> dict[str, float]:
    """The published metrics of a case, as the engine predicts them."""
    res = simulate(case.cluster, case.workload, case.load, seed=0)
    s, _ = summarize(res.records, gpus=res.gpus, simulated=True)
    out: dict[str, float] = {}
    for key in case.entry.get("metrics", {}):
        if key in ("output_throughput", "total_token_throughput", "median_ttft_ms", "median_tpot_ms",
                   "median_itl_ms", "median_e2el_ms", "interactivity"):  # fmt: skip
            out[key] = float(s[key])
        elif key == "reported_throughput_tok_s":
            out[key] = float(s["output_throughput"])
        elif key == "throughput_per_gpu_as_reported":
            out[key] = float(s["total_token_throughput"]) / res.gpus
        elif key == "batch_latency_ms":
            out[key] = float(s["duration"]) * 1e3
        elif key == "batch_latency_s":
            out[key] = float(s["duration"])
    return out


@dataclass
class Row:
    id: str
    split: str  # calibration | held-out
    metric: str
    group: str
    published: float
    predicted: float

    @property
    def error(self) -> float:
        return (self.predicted - self.published) / self.published


def evaluate(cases: list[Case | Skip]) -> tuple[list[Row], list[Skip], dict[str, float]]:
    rows: list[Row] = []
    skips: list[Skip] = []
    seconds: dict[str, float] = {}
    cache: dict[tuple[Any, ...], dict[str, float]] = {}  # identical runs (e.g. one shape on five builds)
    for case in cases:
        if isinstance(case, Skip):
            skips.append(case)
            continue
        t = time.perf_counter()
        key = (case.cluster.__class__(**{**case.cluster.__dict__, "name": ""}), case.workload, case.load,
               tuple(case.entry["metrics"]))  # fmt: skip
        try:
            pred = cache[key] if key in cache else predict(case)
        except SimConfigError as exc:
            skips.append(Skip(case.entry, case.index, f"does not simulate: {exc}"))
            continue
        cache[key] = pred
        seconds[case.id] = time.perf_counter() - t
        split = "held-out" if case.held_out else "calibration"
        for key, value in case.entry["metrics"].items():
            if key in pred and value:
                rows.append(Row(case.id, split, key, GROUPS[key], float(value), pred[key]))
    return rows, skips, seconds


def summary(rows: list[Row]) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {group or metric: {n, median_abs, max_abs}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in ("calibration", "held-out", "all"):
        sel = [r for r in rows if split == "all" or r.split == split]
        keys: dict[str, list[float]] = {}
        for r in sel:
            keys.setdefault(f"group:{r.group}", []).append(abs(r.error))
            keys.setdefault(r.metric, []).append(abs(r.error))
        out[split] = {
            k: {"n": len(v), "median_abs": float(np.median(v)), "max_abs": float(max(v))} for k, v in sorted(keys.items())
        }
    return out


def loss(rows: list[Row], groups: tuple[str, ...] = TARGET_GROUPS) -> float:
    """What calibration minimises: mean |log(pred / pub)| plus half the worst, over the target groups."""
    errs = [abs(math.log(max(r.predicted, 1e-9) / r.published)) for r in rows if r.group in groups]
    if not errs:
        return 0.0
    return float(np.mean(errs) + 0.5 * max(errs))


def print_report(rows: list[Row], skips: list[Skip], cases: list[Case | Skip], seconds: dict[str, float],
                 quiet: bool = False) -> None:  # fmt: skip
    print(f"published points: {len(cases)} ({len(cases) - len(skips)} simulated, {len(skips)} skipped)")
    print(f"split: entry i of published.yaml (0-based) is held out when i % {HELD_OUT_EVERY} == "
          f"{HELD_OUT_EVERY - 1}; calibrate.py fits on the calibration set only")  # fmt: skip
    if not quiet:
        print()
        print(f"{'id':<52} {'split':<5} {'metric':<31} {'published':>11} {'predicted':>11} {'error':>8}")
        for r in rows:
            print(f"{r.id:<52} {'held' if r.split == 'held-out' else 'cal':<5} {r.metric:<31} "
                  f"{r.published:>11.2f} {r.predicted:>11.2f} {r.error:>+8.1%}")  # fmt: skip
        print()
        by_case = {c.id: c for c in cases if isinstance(c, Case)}
        print("mapping rules used:")
        for cid, case in by_case.items():
            if case.rules:
                print(f"  {cid}: {'; '.join(case.rules)}")
        print()
    print("skipped:")
    for s in skips:
        print(f"  {s.entry['id']}: {s.reason}")
    print()
    summ = summary(rows)
    print(f"{'':<14} {'':<34} {'n':>3} {'median |err|':>13} {'max |err|':>10}")
    for split in ("calibration", "held-out", "all"):
        for key, v in summ[split].items():
            group = key.startswith("group:")
            label = key[6:] + " (all its metrics)" if group else "  " + key
            mark = ""
            if group and key[6:] in TARGET_GROUPS:
                ok = v["median_abs"] <= TARGET_MEDIAN and v["max_abs"] <= TARGET_MAX
                mark = "  target met" if ok else "  TARGET NOT MET"
            print(f"{split:<14} {label:<34} {int(v['n']):>3} {v['median_abs']:>13.1%} {v['max_abs']:>10.1%}{mark}")
        print()
    hw_of = {c.id: str(c.entry["hardware"]).lower() for c in cases if isinstance(c, Case)}
    print("by GPU family (calibration + held-out):")
    for fam, members in FAMILIES.items():
        for group in TARGET_GROUPS:
            errs = [abs(r.error) for r in rows if hw_of.get(r.id) in members and r.group == group]
            if errs:
                print(f"  {fam:<7} {group:<11} n={len(errs):<3} median {float(np.median(errs)):6.1%}  max {max(errs):6.1%}")
    print()
    print(f"target: median |error| <= {TARGET_MEDIAN:.0%} and max <= {TARGET_MAX:.0%} on throughput and TPOT")
    print(f"simulation wall time: {sum(seconds.values()):.1f} s over {len(seconds)} points")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write rows, skips and the summary to this file")
    parser.add_argument("--only", default=None, help="only entries whose id contains this")
    parser.add_argument("--quiet", action="store_true", help="summary and skips only")
    args = parser.parse_args(argv)
    entries = load_entries()
    cases = build_cases(entries)
    if args.only:
        cases = [c for c in cases if args.only in str(c.entry["id"])]
    rows, skips, seconds = evaluate(cases)
    print_report(rows, skips, cases, seconds, args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": [{**r.__dict__, "error": r.error} for r in rows],
            "skipped": [{"id": s.entry["id"], "reason": s.reason} for s in skips],
            "summary": summary(rows),
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
