"""Synthetic request workloads without a tokenizer.

Prompts are common English words that are about one token each (with their
leading space) in GPT and Llama tokenizers, so a prompt of ``k`` words is about
``k`` tokens; the exact count comes back in the server's ``usage``. Each prompt
starts with a unique salt so prefix caching cannot hide prefill cost. Text is
sliced out of one random word stream per call, which keeps 10k prompts of 8k
tokens to a few hundred milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is was for on that with as by at from his her they this have
    are be not but had or one all were we when there can an which their said if do
    will each about how up out them then she many some so these would other into has
    more two like him see time could no make than first been its who now people my
    made over did down only way find use may water long little very after words
    called just where most know get through back much before go good new write our
    used me man too any day same right look think also around another came come work
    three word must because does part even place well such here take why help put
    years different away again off went old number great tell men say small every
    found still between name should home big give air line set own under read last
    never us left end along while might next sound below saw something thought both
    few those always show large often together asked house world going want school
    important until form food keep children feet land side without boy once life
    enough took four head above kind began almost live page got earth need far hand
    high year mother light country father let night being study second eyes soon
    story since white days ever paper hard near better best across during today
    others however sure means knew try told young sun thing whole hear example heard
    several change answer room sea against top turned learn point city play five
    himself usually money seen car morning body music color stand questions fish
    area mark dog horse birds problem complete rest red open green short
    """.split()
)

SALT_WORDS = 4
"""Words of unique salt at the start of every prompt (inside the first KV block)."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: its prompt, output budget and intended input tokens."""

    prompt: str
    max_tokens: int
    input_len: int = 0
    ignore_eos: bool = True


def _lengths(rng: np.random.Generator, n: int, length: int, spread: float,
             name: str) -> np.ndarray:
    """``n`` integers uniform in ``[(1 - spread) * length, length]``, at least 1."""
    if length < 1:
        raise ValueError(f"{name} must be >= 1, got {length}")
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread for {name} must be in [0, 1], got {spread}")
    low = max(1, int(np.ceil((1.0 - spread) * length)))
    return rng.integers(low, length + 1, size=n)


def _prompts(rng: np.random.Generator, lengths: np.ndarray) -> list[str]:
    """One prompt per length: salt words (index + seed noise), then a slice of random words."""
    n = len(lengths)
    if n == 0:
        return []
    vocab = np.array(WORDS)
    w = len(vocab)
    # Salt: the prompt's index in base len(WORDS) (unique within the call) padded
    # with random words (different between seeds), all within the first 16 tokens.
    digits = max(1, int(np.ceil(np.log(max(n, 2)) / np.log(w))))
    salt_len = max(SALT_WORDS, digits + 2)
    index = np.arange(n)
    salt = rng.integers(0, w, size=(n, salt_len))
    for d in range(digits):
        salt[:, d] = (index // w**d) % w
    salt_text = [" ".join(row) for row in vocab[salt].tolist()]

    body_lens = np.maximum(lengths - salt_len, 0)
    stream_len = int(body_lens.max()) * 2 + 1024
    stream_idx = rng.integers(0, w, size=stream_len)
    stream = " " + " ".join(vocab[stream_idx].tolist())
    # offsets[i] = char index of the space before word i
    word_chars = np.char.str_len(vocab)[stream_idx] + 1
    offsets = np.concatenate(([0], np.cumsum(word_chars)))
    starts = rng.integers(0, stream_len - body_lens + 1)

    prompts: list[str] = []
    for i, (body, start) in enumerate(zip(body_lens.tolist(), starts.tolist())):
        keep = int(lengths[i])
        if keep < salt_len:  # shorter than the salt: uniqueness not guaranteed
            prompts.append(" ".join(salt_text[i].split()[:keep]))
            continue
        prompts.append(salt_text[i] + stream[offsets[start]:offsets[start + body]])
    return prompts


def make_prompts(n: int, input_len: int, *, spread: float = 0.0, seed: int = 0) -> list[str]:
    """``n`` unique prompts of about ``input_len`` tokens, deterministic by ``seed``.

    Lengths are uniform in ``[(1 - spread) * input_len, input_len]`` words.
    """
    return [r.prompt for r in make_requests(n, input_len, 1, spread=spread, seed=seed)]


def make_requests(n: int, input_len: int, output_len: int, *, spread: float = 0.0,
                  output_spread: float = 0.0, seed: int = 0,
                  ignore_eos: bool = True) -> list[RequestSpec]:
    """``n`` requests with unique prompts; ``max_tokens`` spread by ``output_spread``."""
    if n < 0:
        raise ValueError(f"number of requests must be >= 0, got {n}")
    # Separate streams: the prompts for a seed do not depend on the output settings.
    prompt_rng, output_rng = (np.random.default_rng(s)
                              for s in np.random.SeedSequence(seed).spawn(2))
    in_lens = _lengths(prompt_rng, n, input_len, spread, "input_len")
    out_lens = _lengths(output_rng, n, output_len, output_spread, "output_len")
    prompts = _prompts(prompt_rng, in_lens)
    return [
        RequestSpec(prompt=p, max_tokens=o, input_len=i, ignore_eos=ignore_eos)
        for p, i, o in zip(prompts, in_lens.tolist(), out_lens.tolist())
    ]


def point_requests(point: Any, seed: int = 0, *, ignore_eos: bool = True) -> list[RequestSpec]:
    """The requests (warmup first) a suite point sends to a real endpoint.

    ``point`` is a ``suite.BenchmarkPoint``: ``input_len_spread`` spreads the prompt lengths,
    ``output_len_spread`` the requested ``max_tokens`` (uniform in ``[(1 - s) * O, O]``).
    """
    return make_requests(
        point.num_requests + point.warmup,
        point.input_len,
        point.output_len,
        spread=point.input_len_spread,
        output_spread=getattr(point, "output_len_spread", 0.0),
        seed=seed,
        ignore_eos=ignore_eos,
    )
