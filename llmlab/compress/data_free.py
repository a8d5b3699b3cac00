"""Data-free distillation: no training text, the teacher writes its own (digest-001 §2.21-2.23).

For images, data-free KD trains a generator against the frozen teacher (DAFL, Chen et al. 2019,
arXiv:1904.01186: one-hot, activation and class-entropy losses). A language model is its own
generator: LLM-QAT (Liu et al. 2023, arXiv:2305.17888) samples the teacher from a random first
token and distils on those sequences. Here: each sequence starts from a token drawn uniformly from
the vocabulary (special tokens excluded), the rest is sampled from the teacher at temperature 1
(LLM-QAT's choice: sampling keeps the diversity that greedy decoding loses), through the one
batched decoder (`llmlab.infer.generate.generate_batch`). The student is then distilled on these
windows with the teacher's logits, exactly as on real text.
"""
from __future__ import annotations

import torch

from llmlab.errors import UserError


@torch.no_grad()
def synthesize(teacher, n: int, length: int, seed: int = 0, batch_size: int = 8, temperature: float = 1.0,
               exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """(n, length) token windows sampled from the teacher, each from a uniform random first token."""
    if n < 1 or length < 2:
        raise UserError("data-free KD needs at least one window of at least 2 tokens")
    vocab = teacher.config.vocab_size
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(exclude)] = False
    g = torch.Generator().manual_seed(seed)
    pool = allowed.nonzero().squeeze(1)
    first = pool[torch.randint(len(pool), (n,), generator=g)]
    return continue_windows(teacher, first[:, None], length, g, batch_size, temperature)


@torch.no_grad()
def continue_windows(teacher, prompts: torch.Tensor, length: int, generator: torch.Generator, batch_size: int = 8,
                     temperature: float = 1.0) -> torch.Tensor:
    """prompts (n, P) -> (n, length): each prompt followed by length - P tokens sampled from the
    teacher (temperature 0: greedy), batch_size prompts decoded together, no stop tokens. Data-free KD
    (one random first token) and sequence-level KD (Kim & Rush 2016, arXiv:1606.07947: a real
    prefix, the teacher's continuation) both make their training windows here."""
    from tqdm.auto import tqdm

    from llmlab.infer.generate import generate_batch
    from llmlab.infer.sampling import SamplingParams
    if prompts.dim() != 2 or not 1 <= prompts.shape[1] < length:
        raise UserError(f"need prompts (n, P) with 1 <= P < {length}, got shape {tuple(prompts.shape)}")
    params = SamplingParams(max_new_tokens=length - prompts.shape[1], temperature=temperature)  # full length
    rows = []
    for chunk in tqdm(prompts.split(batch_size), desc="teacher samples"):
        rows.append(generate_batch(teacher, chunk.tolist(), params, generator=generator).ids)
    return torch.cat(rows)
