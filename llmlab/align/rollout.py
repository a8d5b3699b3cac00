"""Batched sampling for RL rollouts: left-padded prompts, a KV cache, temperature + top-p.

Prompts are left-padded so every row's next token is at the same column; the attention mask hides
the padding and positions count real tokens only. After a row emits EOS its later tokens are
padding (mask 0). The EOS token itself stays in the completion mask, so the policy learns to stop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.errors import UserError
from llmlab.model.kv_cache import KVCache


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T) right-padded with pad_id
    completion_mask: torch.Tensor  # (B, T), 1 up to and including EOS

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], 1)

    def completions(self) -> list[list[int]]:
        return [row[m.bool()].tolist() for row, m in zip(self.completion_ids, self.completion_mask)]


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest prefix of sorted tokens whose mass
    reaches top_p; the most likely token always stays."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


@torch.no_grad()
def sample(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Rollout:
    device = next(model.parameters()).device
    p_ids, p_mask = (x.to(device) for x in pad_left(prompts, pad_id))
    B, P = p_ids.shape
    budget = min(max_new_tokens, model.config.max_position_embeddings - P)
    if budget <= 0:
        raise UserError(f"prompts of {P} tokens leave no room to generate in the "
                        f"{model.config.max_position_embeddings}-token context window")
    was_training = model.training
    model.eval()
    cache = KVCache.for_model(model, B, P + budget)
    mask = p_mask
    logits = model(p_ids, cache=cache, attention_mask=mask, last_only=True)[:, -1]
    out = torch.full((B, budget), pad_id, dtype=torch.long, device=device)
    out_mask = torch.zeros((B, budget), dtype=torch.long, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(budget):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = top_p_filter(logits.float() / temperature, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        out[:, t] = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        out_mask[:, t] = alive.long()
        if eos_id is not None:
            alive = alive & (nxt != eos_id)
        if not alive.any() or t + 1 == budget:
            out, out_mask = out[:, :t + 1], out_mask[:, :t + 1]
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], 1)
        logits = model(out[:, t:t + 1], cache=cache, attention_mask=mask)[:, -1]
    model.train(was_training)
    return Rollout(p_ids, p_mask, out, out_mask)
