"""Train a tiny character-level Llama that really adds two-digit numbers (accuracy-gate tests).

    .venv-vllm/bin/python scripts/train_arith_model.py train [--out DIR] [--steps 800]
    .venv-vllm/bin/python scripts/train_arith_model.py perturb SRC DST [--scale 1.0] [--seed 0]
    .venv-vllm/bin/python scripts/train_arith_model.py check DIR [--n 200]

Needs torch, transformers and tokenizers (the vLLM venv has them).

``train``: a ``LlamaForCausalLM`` (22-token vocabulary: ``<s> </s> <pad> <unk>`` and the 18
characters ``0123456789+-=QA: \\n``; 2 layers, hidden 128, 4 heads, MLP 512, ≈ 0.53 M
parameters) trained from scratch on ``"Q: 37+48=\\nA:" -> "85\\n</s>"`` (loss on the answer
only) with AdamW (lr 3e-3, 50 warm-up steps, cosine decay), batch 256, fp32, 2 threads, a
fixed seed, for a fixed number of *steps* (never a time budget: the result must not depend
on how busy the machine is). The pairs of ``pytest_pdslo/accuracy/tasks/pdslo_arith/
pdslo_arith.jsonl`` (the lm-eval task) are held out of training. Saves a Hugging Face
checkpoint in bfloat16 (≈ 1.1 MB) with a ``PreTrainedTokenizerFast`` char tokenizer that
vLLM serves, then reports greedy accuracy on the held-out pairs.

``perturb``: a copy of a checkpoint with every weight tensor ``w`` replaced by
``w + scale · std(w) · N(0, 1)`` (seeded): the "degraded model" an accuracy gate must catch
(measured through vLLM: scale 0.3 → exact_match ≈ 0.88, 1.0 → ≈ 0.16).

``check``: greedy accuracy of a checkpoint on the held-out pairs, in-process (no vLLM).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASK_FILE = ROOT / "pytest_pdslo" / "accuracy" / "tasks" / "pdslo_arith" / "pdslo_arith.jsonl"
DEFAULT_OUT = ROOT / "tests" / "accuracy" / "arith-model"

SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]
CHARS = list("0123456789+-=QA: \n")
VOCAB = SPECIALS + CHARS  # 22 tokens
BOS, EOS, PAD = 0, 1, 2
LOW, HIGH = 10, 99
MAX_POS = 128


def prompt(a: int, b: int) -> str:
    return f"Q: {a}+{b}=\nA:"


def held_out(path: Path = TASK_FILE) -> list[tuple[int, int]]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python scripts/make_arith_task.py` first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["a"]), int(r["b"])) for r in rows]


def make_tokenizer():
    """A char-level fast tokenizer: one token per character, ``<s>`` prepended, chars fused on decode."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=MAX_POS, clean_up_tokenization_spaces=False,
    )
    return fast


def encode(text: str) -> list[int]:
    """Our own encoding (identical to the tokenizer's, without ``<s>``)."""
    index = {c: i for i, c in enumerate(VOCAB)}
    return [index[c] for c in text]


def make_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        tie_word_embeddings=False, hidden_act="silu",
    )


def batches(pairs: list[tuple[int, int]], batch: int, steps: int, seed: int):
    """Fixed-shape batches (input ids, labels) drawn by a seeded RNG; loss on the answer only."""
    import torch

    rng = random.Random(seed)
    seqs = []
    for a, b in pairs:
        p = [BOS] + encode(prompt(a, b))
        ans = encode(f"{a + b}\n") + [EOS]
        seqs.append((p, ans))
    width = max(len(p) + len(a) for p, a in seqs)
    for _ in range(steps):
        ids = torch.full((batch, width), PAD, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for row in range(batch):
            p, ans = seqs[rng.randrange(len(seqs))]
            full = p + ans
            ids[row, : len(full)] = torch.tensor(full)
            labels[row, len(p): len(full)] = torch.tensor(ans)
        yield ids, labels


def train(out: Path, steps: int, batch: int, lr: float, warmup: int, seed: int, threads: int) -> int:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    test = set(held_out())
    pairs = [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1) if (a, b) not in test]
    model = LlamaForCausalLM(make_config()).float()
    model.train()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters; {len(pairs)} training pairs, {len(test)} held out", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    t0 = time.monotonic()
    for step, (ids, labels) in enumerate(batches(pairs, batch, steps, seed)):
        attn = (ids != PAD).long()
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}/{steps} loss {loss.item():.4f} ({time.monotonic() - t0:.0f}s)", flush=True)
    save(model, out)
    correct, n = accuracy(out, sorted(test)[:200])
    print(f"held-out greedy accuracy: {correct}/{n}", flush=True)
    return 0 if correct >= 0.9 * n else 1


def save(model, out: Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    make_tokenizer().save_pretrained(out)
    (out / "pdslo-arith.json").write_text(json.dumps({"what": "pytest-pdslo arith model", "vocab": VOCAB}, sort_keys=True) + "\n")
    print(f"saved {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB)", flush=True)


@__import__("functools").lru_cache(maxsize=None)
def _loaded(path: str):
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def accuracy(model_dir: Path, pairs: list[tuple[int, int]]) -> tuple[int, int]:
    """Greedy decoding of every pair through the tokenizer saved with the model."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = _loaded(str(model_dir))
    correct = 0
    with torch.no_grad():
        for a, b in pairs:
            ids = tok(prompt(a, b), return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            correct += text.split("\n")[0].strip() == str(a + b)
    return correct, len(pairs)


def perturb(src: Path, dst: Path, scale: float, seed: int) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    tensors = load_file(str(weights))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(tensors):
        w = tensors[name]
        w32 = w.float()
        std = float(w32.std()) if w32.numel() > 1 else 0.0
        noise = torch.randn(w32.shape, generator=gen, dtype=torch.float32)
        out[name] = (w32 + scale * std * noise).to(w.dtype).contiguous()
    save_file(out, str(weights), metadata={"format": "pt"})
    print(f"{dst}: {len(out)} tensors perturbed by {scale:g}·std·N(0,1), seed {seed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train and save the model")
    t.add_argument("--out", type=Path, default=DEFAULT_OUT)
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("perturb", help="copy a checkpoint with noisy weights")
    q.add_argument("src", type=Path)
    q.add_argument("dst", type=Path)
    q.add_argument("--scale", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="greedy held-out accuracy of a checkpoint (no vLLM)")
    c.add_argument("model", type=Path)
    c.add_argument("--n", type=int, default=200)
    args = p.parse_args(argv)
    if args.cmd == "train":
        return train(args.out, args.steps, args.batch, args.lr, args.warmup, args.seed, args.threads)
    if args.cmd == "perturb":
        return perturb(args.src, args.dst, args.scale, args.seed)
    correct, n = accuracy(args.model, sorted(held_out())[: args.n])
    print(f"{args.model}: {correct}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
