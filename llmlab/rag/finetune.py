"""Fine-tuning the sentence encoder on our own (query, passage) pairs with in-batch negatives.

MultipleNegativesRankingLoss (Henderson et al. 2017; InfoNCE, van den Oord et al. 2018; the loss
all-MiniLM-L6-v2 itself was trained with): for a batch of B pairs (q_i, p_i), every other passage
is a negative for q_i:

    L = -1/B sum_i log( exp(s cos(q_i, p_i)) / sum_j exp(s cos(q_i, p_j)) ),   s = 20

Pairs are ours, e.g. a sentence of a Wikipedia extract (the cloze queries of llmlab.rag.evaluate)
and the extract it came from; evaluate on articles that were never in a pair. The result is saved
as a sentence-transformers folder (the base folder's files, new model.safetensors), which
`SentenceEncoder(model_dir)` and sentence-transformers both load.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from llmlab.errors import UserError


def mnrl_loss(q: torch.Tensor, p: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """q, p: (B, d) unit vectors, row i of p the positive of row i of q."""
    return F.cross_entropy(scale * q @ p.T, torch.arange(len(q), device=q.device))


def finetune_encoder(encoder, pairs: list[tuple[str, str]], steps: int = 50, batch_size: int = 16, lr: float = 2e-5,
                     seed: int = 0, max_length: int = 128, warmup: int = 5, progress=None) -> list[float]:
    """AdamW with linear warm-up then constant lr; batches drawn from a seeded shuffle of `pairs`
    (a batch never holds the same passage twice: a duplicate would be a false negative).
    Returns the loss of each step; the encoder's model is left in eval mode."""
    if len(pairs) < 2:
        raise UserError("fine-tuning the encoder needs at least 2 (query, passage) pairs")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = encoder.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order, pos, losses = [], 0, []
    model.train()
    try:
        for step in range(steps):
            batch, seen = [], set()
            while len(batch) < min(batch_size, len(pairs)):
                if pos >= len(order):
                    order, pos = rng.sample(range(len(pairs)), len(pairs)), 0
                q, p = pairs[order[pos]]
                pos += 1
                if p not in seen:
                    seen.add(p)
                    batch.append((q, p))
                elif len(seen) >= len({pp for _, pp in pairs}):
                    break
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
            loss = mnrl_loss(encoder.embed([q for q, _ in batch], max_length),
                             encoder.embed([p for _, p in batch], max_length))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step, losses[-1])
    finally:
        model.eval()
    return losses


def save_encoder(encoder, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the base sentence-transformers folder to out_dir with the fine-tuned weights."""
    from safetensors.torch import save_file
    base, out = Path(base_dir), Path(out_dir)
    if out.resolve() == base.resolve():
        raise UserError(f"{out}: refusing to overwrite the base encoder's folder")
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx",
                                                                               "openvino", "*.h5", "*.ot"))
    state = {k: v.detach().contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    return out
