"""Log-probabilities of completions given prompts, batched with padding.

For a row [prompt | completion | pad], the model's logits at position t predict token t+1, so the
completion tokens are scored by logits[:, P-1 : P+C-1]. Rows are right-padded; the attention
mask hides the padding keys and positions count real tokens only, so a row's log-prob does not
depend on what else is in the batch (tested against unbatched calls).
"""
from __future__ import annotations

import torch

from llmlab.errors import UserError


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] without materialising the full log-softmax."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def build_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """-> (ids (B, L), attention_mask (B, L), completion_mask (B, L-1) aligned with targets ids[:, 1:])."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if not p:
            raise UserError(f"row {i}: empty prompt")
        if not c:
            raise UserError(f"row {i}: empty completion")
    ids, attn = pad_right([p + c for p, c in zip(prompts, completions)], pad_id)
    comp = torch.zeros_like(attn)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        comp[i, len(p):len(p) + len(c)] = 1
    return ids, attn, comp[:, 1:]


def token_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                   return_logits: bool = False, start: int = 0):
    """Log-prob of each next token from position `start` on: (B, L-1-start), aligned with ids[:, start+1:].

    Only positions >= start go through the LM head: with long prompts and short completions that
    skips most of the vocabulary projection, the costliest matmul of a small model."""
    hidden = model(ids, attention_mask=attention_mask, return_hidden=True)[:, start:-1]
    logits = model.lm_head(hidden)
    lp = gather_logprobs(logits, ids[:, start + 1:], temperature)
    return (lp, logits) if return_logits else lp


def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int = 0,
                      average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (or mean, with average=True) of completion-token log-probs per row -> (logps (B,), n_tokens (B,)).
    Gradients flow unless the caller wraps it in torch.no_grad()."""
    device = next(model.parameters()).device
    ids, attn, comp = (x.to(device) for x in build_batch(prompts, completions, pad_id))
    start = min(len(p) for p in prompts) - 1  # no completion token is predicted before this position
    lp = token_logprobs(model, ids, attn, start=start)
    comp = comp[:, start:].to(lp.dtype)
    total = (lp * comp).sum(-1)
    n = comp.sum(-1)
    return (total / n if average else total), n
