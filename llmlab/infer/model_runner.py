"""The engine's forward for the model-zoo variants that the lean fused path (`runner.PagedRunner`)
does not implement (ALiBi/T5 biases, post-norm, QK-norm, sliding windows, MoE, soft-capping, ...;
`ModelConfig.beyond_llama_gpt()` names them): each sequence runs `Transformer.forward` itself, with
a view of its block table as the KV cache. So every scheduling feature of the engine (continuous
batching, chunked prefill, prefix caching, copy-on-write forks, swap, speculative decoding,
logits processors) works for every variant, and the server can serve it; the rows are not
batched into one matmul (one forward per sequence per step), so it is slower than the fused path.
A sequence's outputs never depend on the others (no shared matmul at all)."""
from __future__ import annotations

import torch

from llmlab.infer.paged import BlockTable, PagedKVCache


class PagedView:
    """One sequence's blocks behind the `KVCache` interface `Transformer.forward` uses
    (`length`, `update(layer, k, v)` -> all keys/values so far, `advance(n)`)."""

    def __init__(self, cache: PagedKVCache, table: BlockTable):
        self.cache, self.table, self.length = cache, table, table.num_tokens

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (1, Hkv, T, D) for positions length..length+T-1 (blocks already reserved)."""
        start, T = self.length, k.shape[2]
        slots = self.cache.slots(self.table, start, start + T).to(k.device)
        self.cache.write(layer, slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
        ks, vs = self.cache.gather(layer, self.table, start + T)
        return ks[None], vs[None]

    def advance(self, n: int) -> None:
        self.length += n
        self.table.num_tokens += n


class ModelRunner:
    """PagedRunner's interface (prefill_many, decode, device) over `model.forward`."""

    def __init__(self, model, cache: PagedKVCache):
        self.model, self.cache = model, cache
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def prefill_many(self, items: list[tuple[BlockTable, list[int], bool]],
                     decode_weights: bool = False) -> list[torch.Tensor]:
        outs = []
        for table, toks, all_logits in items:
            ids = torch.tensor([toks], device=self.device)
            logits = self.model(ids, cache=PagedView(self.cache, table), last_only=not all_logits)[0].float()
            outs.append(logits if all_logits else logits[-1])
        return outs

    @torch.inference_mode()
    def decode(self, tables: list[BlockTable], tokens: list[int]) -> torch.Tensor:
        return torch.stack([self.model(torch.tensor([[t]], device=self.device), cache=PagedView(self.cache, table))[0, -1]
                            for table, t in zip(tables, tokens)]).float()
