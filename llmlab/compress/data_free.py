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
    from llmlab.infer.generate import generate_batch
    from llmlab.infer.sampling import SamplingParams
    if n < 1 or length < 2:
        raise UserError("data-free KD needs at least one window of at least 2 tokens")
    vocab = teacher.config.vocab_size
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(exclude)] = False
    g = torch.Generator().manual_seed(seed)
    pool = allowed.nonzero().squeeze(1)
    first = pool[torch.randint(len(pool), (n,), generator=g)]
    params = SamplingParams(max_new_tokens=length - 1, temperature=temperature)  # no stop ids: full length
    from tqdm.auto import tqdm
    rows = []
    for chunk in tqdm(first.split(batch_size), desc="teacher samples"):
        rows.append(generate_batch(teacher, [[int(t)] for t in chunk], params, generator=g).ids)
    return torch.cat(rows)
