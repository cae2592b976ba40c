"""Generate the ``pdslo_arith`` lm-eval task: two-digit additions, deterministic, offline.

    python scripts/make_arith_task.py [--out DIR] [--n 300] [--seed 0]

Writes ``DIR/pdslo_arith.jsonl`` (default DIR: ``pytest_pdslo/accuracy/tasks/pdslo_arith``),
one question per line, ``{"a": 37, "b": 48, "question": "37+48", "answer": "85"}``; the task
YAML next to it turns a line into the prompt ``"Q: 37+48=\\nA:"`` and expects ``"85"``.
Pairs are drawn without repetition from a, b in 10..99 by ``random.Random(seed)``, so the
file is byte-identical on every run; ``scripts/train_arith_model.py`` keeps these pairs out
of its training data (they are the held-out set).

Only the standard library: it runs under any Python.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "pytest_pdslo" / "accuracy" / "tasks" / "pdslo_arith"
FILE_NAME = "pdslo_arith.jsonl"
LOW, HIGH = 10, 99


def prompt(a: int, b: int) -> str:
    """The text the model sees (the task YAML's ``doc_to_text`` says the same)."""
    return f"Q: {a}+{b}=\nA:"


def questions(n: int = 300, seed: int = 0) -> list[dict]:
    """``n`` distinct pairs (a, b), a and b two-digit, in a seed-determined order."""
    pairs = [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1)]
    if not 0 < n <= len(pairs):
        raise ValueError(f"n must be in 1..{len(pairs)}, got {n}")
    rng = random.Random(seed)
    chosen = rng.sample(pairs, n)
    return [{"a": a, "b": b, "question": f"{a}+{b}", "answer": str(a + b)} for a, b in chosen]


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--n", type=int, default=300, help="number of questions (default 300)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    text = render(questions(args.n, args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / FILE_NAME
    if path.exists() and path.read_text() == text:
        print(f"{path}: up to date ({args.n} questions)")
        return 0
    path.write_text(text)
    print(f"{path}: wrote {args.n} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
