"""Make a tiny random-weight Llama model that real vLLM can serve, offline, in seconds.

    .venv-vllm/bin/python scripts/make_tiny_model.py [OUT_DIR]     (default: .venv-vllm/tiny-model)

Needs torch, transformers and tokenizers (the vLLM venv has them). The result (≈ 2 MB):
a byte-level BPE tokenizer (vocab 2048, <s> </s> <pad> <unk>, a simple chat template)
trained on generated text, wrapped as ``PreTrainedTokenizerFast``, and a ``LlamaForCausalLM``
with hidden 128, 2 layers, 4 heads, 2 KV heads, intermediate 256, 4096 positions, random
weights in bfloat16. Its outputs are meaningless: it is for measuring the serving path only.

Deterministic by ``--seed``; rerunning with an existing, complete OUT_DIR does nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

VOCAB = 2048
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
MARKER = "pdslo-tiny.json"


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """Generated English-ish text: the prompt generator's words plus digits and punctuation."""
    rng = random.Random(seed)
    words = (
        "the of and to in is was for on that with as by at from his her they this have are be not but "
        "had or one all were we when there can an which their said if do will each about how up out them "
        "then she many some so these would other into has more two like him see time could no make than "
        "first been its who now people my made over did down only way find use may water long little very "
        "after words called just where most know get through back much before go good new write our used "
        "me man too any day same right look think also around another came come work three word must "
        "because does part even place well such here take why help put years different away again off "
        "went old number great tell men say small every found still between name should home big give "
        "air line set own under read last never us left end along while might next sound below saw "
        "something thought both few those always show large often together asked house world going want "
        "school important until form food keep children feet land side without boy once life enough took"
    ).split()
    out = []
    for _ in range(lines):
        n = rng.randint(5, 30)
        parts = [rng.choice(words) if rng.random() > 0.1 else str(rng.randint(0, 999)) for _ in range(n)]
        out.append(" ".join(parts) + rng.choice([".", "?", "!", ",", ":"]))
    return out


def make_tokenizer(out: Path, seed: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return tok.get_vocab_size()


def make_model(out: Path, vocab: int, seed: int, tok_ids: dict[str, int]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok_ids["<s>"],
        eos_token_id=tok_ids["</s>"],
        pad_token_id=tok_ids["<pad>"],
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=".venv-vllm/tiny-model", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when OUT is complete")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (out / MARKER).is_file() and not args.force:
        print(f"tiny model already in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(out, args.seed)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    make_model(out, vocab, args.seed, ids)
    (out / MARKER).write_text(json.dumps({"vocab": vocab, "seed": args.seed, "specials": ids}, sort_keys=True) + "\n")
    print(f"tiny model written to {out} (vocab {vocab})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
